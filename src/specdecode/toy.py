"""Toy causal LMs defined by explicit conditional probability tables (for tests and quick benchmarks)."""

from __future__ import annotations

import copy
from typing import Any

import torch


class TableLM:
    """A `CausalLM` whose next-token distribution depends only on the last `context` tokens.

    `table` has shape (V,) * context + (V,): table[a, b] is the distribution after "... a b". Positions
    before the start of the sequence read as token 0. Counts every processed position in `processed`.
    """

    def __init__(self, table: torch.Tensor, eos_token_ids: set[int] | None = None) -> None:
        if table.dim() < 2 or len(set(table.shape)) != 1:
            raise ValueError(f"table must have shape (V,)*context + (V,), got {tuple(table.shape)}")
        self.table = table.double() / table.double().sum(-1, keepdim=True)
        self.context = table.dim() - 1
        self.vocab_size = table.shape[-1]
        self.eos_token_ids = set(eos_token_ids or ())
        self.device = torch.device("cpu")
        self.tokens: list[int] = []
        self.length = 0
        self.processed = 0
        self.calls = 0

    def probs_after(self, tokens: list[int]) -> torch.Tensor:
        """The next-token distribution after the sequence `tokens`."""
        ctx = ([0] * self.context + list(tokens))[-self.context :]
        return self.table[tuple(ctx)]

    def logits_after(self, tokens: list[int]) -> torch.Tensor:
        return self.probs_after(tokens).log()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for token in input_ids.view(-1).tolist():
            self.tokens.append(int(token))
            rows.append(self.logits_after(self.tokens))
        self.length = len(self.tokens)
        self.processed += len(rows)
        self.calls += 1
        return torch.stack(rows).unsqueeze(0)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        del self.tokens[length:]
        self.length = length

    def reset(self) -> None:
        self.truncate(0)


def random_table(vocab: int, context: int, seed: int, sharpness: float = 1.0) -> torch.Tensor:
    """A random conditional probability table; larger `sharpness` gives peakier distributions."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((vocab,) * (context + 1), generator=gen, dtype=torch.float64) * sharpness
    return logits.softmax(-1)


def noisy_copy(model: Any, scale: float, seed: int = 1) -> Any:
    """A draft that agrees with `model` often but not always: its weights plus Gaussian noise."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale * param.std().clamp_min(1e-3))
    return draft.eval()


def char_tokenizer(shuffle_seed: int | None = None) -> Any:
    """A character-level tokenizer over printable ASCII plus "</s>" (id 95): 96 ids in all.

    `shuffle_seed` permutes the ids, giving a tokenizer incompatible with the default one.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    if shuffle_seed is not None:
        order = torch.randperm(len(chars), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        chars = [chars[i] for i in order]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["</s>"] = len(chars)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="</s>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def tiny_llama_pair(seed: int = 0, noise: float = 0.3) -> tuple[Any, Any]:
    """A tiny random Llama (vocabulary = `char_tokenizer`) and a noisy copy of it as draft, wrapped."""
    import transformers as tf

    from .models import wrap

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    target = tf.LlamaForCausalLM(cfg)
    head = target.get_output_embeddings()  # random init is near-uniform: sharpen the head
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape) * 0.5)
    target.generation_config.pad_token_id = 0
    target.eval()
    return wrap(target, char_tokenizer()), wrap(noisy_copy(target, noise), char_tokenizer())
