"""Tiny random transformers models built in-process (float32), for engine tests against generate()."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from specdecode.toy import char_tokenizer, noisy_copy  # noqa: F401  (re-exported for the tests)

VOCAB = 96


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of the given architecture: llama, qwen2, gpt2 or t5."""
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = tf.Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=256,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=1)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "t5":
        cfg = tf.T5Config(vocab_size=VOCAB, d_model=48, d_ff=96, d_kv=12, num_layers=2, num_heads=4,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                          tie_word_embeddings=False)
        model = tf.T5ForConditionalGeneration(cfg)
    else:
        raise ValueError(arch)
    # random init gives near-uniform logits (or, with tied weights, copies the input token): give the
    # head its own weights, scaled so greedy choices are well separated
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape) * 0.5)
    model.config.eos_token_id = None  # tests that need an EOS set it on generation_config
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def reference_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding: the new tokens only."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0)
    new = out[0].tolist()
    new = new[1:] if model.config.is_encoder_decoder else new[len(prompt):]
    eos = model.generation_config.eos_token_id
    if eos is not None and eos in new:  # generate pads after EOS
        new = new[: new.index(eos) + 1]
    return new


def save_pair(root: Path, max_positions: int = 256) -> tuple[str, str]:
    """A tiny Llama target and a noisy copy of it as draft, saved with one character-level tokenizer."""
    target = build("llama")
    target.config.max_position_embeddings = max_positions
    tok = char_tokenizer()
    paths = []
    for name, model in (("target", target), ("draft", noisy_copy(target, 0.3))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths[0], paths[1]
