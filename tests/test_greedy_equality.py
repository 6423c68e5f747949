"""Test 3: speculative greedy output equals transformers' greedy generate(), token for token."""

from __future__ import annotations

import functools

import pytest
import torch

from specdecode import SpeculativeGenerator, wrap

from .tiny_models import build, noisy_copy, reference_greedy

ARCHS = ["llama", "qwen2", "gpt2", "t5"]
PROMPTS = [[5], [7, 3, 9, 11], list(range(10, 40))]


@functools.cache
def pair(arch: str):
    target = build(arch, seed=0)
    return target, noisy_copy(target, scale=0.15)


@functools.cache
def reference(arch: str, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    return reference_greedy(pair(arch)[0], list(prompt), max_new_tokens)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gamma", range(1, 9))
def test_greedy_equals_generate(arch, gamma):
    target, draft = pair(arch)
    gen = SpeculativeGenerator(wrap(target), wrap(draft))
    accepted = rejected = 0
    for prompt in PROMPTS:
        for max_new in (1, 7, 24):
            res = gen.generate(prompt, max_new_tokens=max_new, gamma=gamma)
            assert res.token_ids == reference(arch, tuple(prompt), max_new), (prompt, max_new)
            assert len(res.token_ids) == max_new
            accepted += res.stats.accepted
            rejected += res.stats.drafted - res.stats.accepted
    assert accepted > 0, "the noisy draft never agreed: the test would not exercise accepted blocks"
    assert rejected > 0, "the draft never disagreed: the test would not exercise rollback"


@pytest.mark.parametrize("arch", ARCHS)
def test_caches_never_recompute(arch):
    """Each position is processed once by the target; rejected ones are rolled back, not recomputed."""
    target, draft = pair(arch)
    gen = SpeculativeGenerator(wrap(target), wrap(draft))
    res = gen.generate(PROMPTS[1], max_new_tokens=30, gamma=5)
    st = res.stats
    start = 1 if target.config.is_encoder_decoder else len(PROMPTS[1])
    # every target call feeds its one pending token plus the drafted tokens
    assert st.target_tokens == start + st.drafted + (st.target_calls - 1)
    assert st.accepted < st.drafted  # some rejections happened, so rollback was exercised
    assert st.new_tokens == 30 == len(res.token_ids)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("gamma", [3, 4, 6])
def test_eos_inside_accepted_block(arch, gamma):
    """The draft is the target itself, so whole blocks are accepted and EOS lands inside one."""
    target = build(arch, seed=3)
    prompt = [4, 8, 15]
    free = reference_greedy(target, prompt, 20)
    position = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    target.generation_config.eos_token_id = free[position]
    try:
        expected = reference_greedy(target, prompt, 20)
        assert expected == free[: position + 1]
        res = SpeculativeGenerator(wrap(target), wrap(target)).generate(prompt, max_new_tokens=20,
                                                                         gamma=gamma)
        assert res.token_ids == expected
        assert res.finish_reason == "stop"
    finally:
        target.generation_config.eos_token_id = None


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_plain_decoding_equals_generate(arch):
    target, _ = pair(arch)
    res = SpeculativeGenerator(wrap(target)).generate(PROMPTS[1], max_new_tokens=24)
    assert res.token_ids == reference(arch, tuple(PROMPTS[1]), 24)
    assert res.stats.target_calls == 24 and res.stats.drafted == 0


def test_sliding_window_model_rolls_back_past_its_window():
    """A Mistral-style sliding-window config: rollback after the window is full still gives the model's
    own greedy output (transformers' sliding-window cache cannot crop, so the adapter keeps a full one)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=8)
    target = tf.MistralForCausalLM(cfg).eval()
    head = target.get_output_embeddings()
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape) * 0.5)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]  # longer than the window
    ref = reference_greedy(target, prompt, 30)
    draft = noisy_copy(target, 0.3)
    res = SpeculativeGenerator(wrap(target), wrap(draft)).generate(prompt, max_new_tokens=30, gamma=4)
    assert res.token_ids == ref
    assert res.stats.drafted > res.stats.accepted > 0  # rollbacks happened
