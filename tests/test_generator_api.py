"""Test 5 and the rest of the public API: seeds, bad input, text, streaming, stop strings, vocab widths."""

from __future__ import annotations

import functools

import pytest
import torch

import specdecode as sd
from specdecode.toy import TableLM, random_table

from .tiny_models import VOCAB, build, char_tokenizer, noisy_copy


@functools.cache
def text_pair() -> tuple[sd.HFModel, sd.HFModel]:
    target = build("llama", seed=0)
    tok = char_tokenizer()
    return sd.wrap(target, tok), sd.wrap(noisy_copy(target, 0.15), char_tokenizer())


@pytest.fixture
def gen() -> sd.SpeculativeGenerator:
    return sd.SpeculativeGenerator(*text_pair())


def test_same_seed_same_output_and_different_seed_differs(gen):
    kw = dict(max_new_tokens=40, temperature=1.0, top_p=0.95, gamma=3)
    a = gen.generate("def f(x):", seed=7, **kw)
    b = gen.generate("def f(x):", seed=7, **kw)
    c = gen.generate("def f(x):", seed=8, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert gen.generate("x", generator=g1, **kw).token_ids == gen.generate("x", generator=g2, **kw).token_ids


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gamma=0), "gamma must be 'auto' or an integer >= 1"),
        (dict(gamma=2.5), "gamma must be 'auto' or an integer >= 1"),
        (dict(temperature=-0.1), "temperature must be in \\[0, 2.0\\]"),
        (dict(temperature=2.5), "temperature must be in \\[0, 2.0\\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(min_p=2.0), r"min_p must be in \[0, 1\]"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    ],
)
def test_bad_settings_raise_specific_errors(gen, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gen.generate("hello", **kwargs)


@pytest.mark.parametrize("prompt,message", [("", "prompt is empty"), ([], "prompt is empty"),
                                            ([1, VOCAB + 5], "outside the target's vocabulary"),
                                            (3.5, "prompt must be a string or a list of token ids")])
def test_bad_prompts_raise_specific_errors(gen, prompt, message):
    with pytest.raises(ValueError, match=message):
        gen.generate(prompt)


def test_text_prompt_without_tokenizer_is_a_clear_error():
    gen = sd.SpeculativeGenerator(sd.wrap(build("llama")))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        gen.generate("hello")
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        gen.generate([1, 2], stop=["x"])


def test_different_tokenizers_are_refused_before_generation():
    target = build("llama")
    with pytest.raises(ValueError, match="different tokenizers"):
        sd.SpeculativeGenerator(sd.wrap(target, char_tokenizer()), sd.wrap(target, char_tokenizer(1)))


def test_encoder_decoder_with_decoder_only_is_refused():
    with pytest.raises(ValueError, match="both be decoder-only or both be encoder-decoder"):
        sd.SpeculativeGenerator(sd.wrap(build("t5")), sd.wrap(build("llama")))


def test_non_model_is_refused():
    with pytest.raises(ValueError, match="CausalLM protocol"):
        sd.SpeculativeGenerator(object())


def test_stream_pieces_join_to_the_text_and_share_the_stats(gen):
    stream = gen.stream("print(", max_new_tokens=30, seed=1, temperature=0.8, gamma=4)
    pieces = list(stream)
    result = stream.result
    assert "".join(pieces) == result.text
    assert result.stats.new_tokens == len(result.token_ids) == 30
    again = gen.generate("print(", max_new_tokens=30, seed=1, temperature=0.8, gamma=4)
    assert (again.token_ids, again.text) == (result.token_ids, result.text)
    token_stream = gen.stream("print(", max_new_tokens=30, seed=1, temperature=0.8, gamma=4, tokens=True)
    chunks = list(token_stream)
    assert sum(chunks, []) == result.token_ids
    assert 1 <= max(len(c) for c in chunks) <= 5  # up to gamma + 1 tokens per target call


def test_closing_a_stream_early_keeps_the_partial_result(gen):
    full = gen.generate("print(", max_new_tokens=30, gamma=2)
    assert full.finish_reason == "length"
    stream = gen.stream("print(", max_new_tokens=30, gamma=2)
    first = next(stream) + next(stream)
    stream.close()
    res = stream.result
    assert res.finish_reason == "interrupted" and full.text.startswith(res.text) and first == res.text
    assert 2 <= res.stats.new_tokens == len(res.token_ids) < 30 and res.stats.wall_s > 0


def test_stop_string_cuts_text_and_tokens(gen):
    free = gen.generate("abc", max_new_tokens=40)
    stop = free.text[12:15]
    cut = free.text.index(stop)
    res = gen.generate("abc", max_new_tokens=40, stop=[stop, "\x00never"])
    assert res.text == free.text[:cut]
    assert res.finish_reason == "stop"
    decode = gen.tokenizer.decode
    assert stop in decode(res.token_ids) and stop not in decode(res.token_ids[:-1])
    streamed = "".join(gen.stream("abc", max_new_tokens=40, stop=stop))
    assert streamed == res.text
    s = res.stats  # every figure agrees with the text returned, not with the uncut last chunk
    assert s.new_tokens == len(res.token_ids) < len(free.token_ids)
    assert s.tokens_per_s == pytest.approx(s.new_tokens / s.wall_s)
    assert s.mean_tokens_per_target_call == pytest.approx(s.new_tokens / s.target_calls)
    assert s.decode_tokens_per_s == pytest.approx(s.new_tokens / (s.wall_s - s.prefill_s))


def test_chat_template_and_messages(gen):
    a = gen.generate("hi", chat=True, max_new_tokens=5)
    b = gen.generate([{"role": "user", "content": "hi"}], chat=True, max_new_tokens=5)
    c = gen.generate("<user>hi<assistant>", max_new_tokens=5)
    assert a.token_ids == b.token_ids == c.token_ids
    assert a.stats.prompt_tokens == len("<user>hi<assistant>")


def test_eos_of_the_tokenizer_stops_generation():
    target = build("llama", seed=2)
    model = sd.wrap(target, char_tokenizer())
    assert model.eos_token_ids == {95}
    free = sd.SpeculativeGenerator(sd.wrap(target)).generate([3, 4], max_new_tokens=30).token_ids
    assert 95 not in free[:12]
    model.eos_token_ids = {free[11]}  # an EOS the greedy output is certain to reach, inside a block
    expected = free[: free.index(free[11]) + 1]
    res = sd.SpeculativeGenerator(model, sd.wrap(target)).generate([3, 4], max_new_tokens=30, gamma=4)
    assert res.token_ids == expected and res.finish_reason == "stop"
    assert res.stats.new_tokens == len(expected) < 30
    with pytest.raises(ValueError, match="same adapter object"):
        sd.SpeculativeGenerator(model, model)


def test_stats_are_consistent(gen):
    res = gen.generate("while True:", max_new_tokens=33, gamma=4, temperature=0.7, seed=0)
    st = res.stats
    assert st.new_tokens == 33 and st.prompt_tokens == len("while True:")
    assert st.new_tokens == st.accepted + st.target_calls  # each call: accepted drafts + one token
    assert st.draft_calls == st.drafted
    assert sum(st.drafted_per_position) == st.drafted and sum(st.accepted_per_position) == st.accepted
    assert 0.0 < st.acceptance_rate <= 1.0
    assert st.mean_tokens_per_target_call == pytest.approx(33 / st.target_calls)
    assert st.wall_s >= st.target_s + st.draft_s * 0.99 and st.tokens_per_s > 0
    assert "tok/s" in st.summary()


def test_draft_catches_up_on_bonus_token_without_extra_call():
    """With the target as its own draft everything is accepted; the draft is fed the bonus token
    together with its next step, so it makes exactly gamma calls per iteration and no extra ones."""
    target = TableLM(random_table(4, 1, seed=0, sharpness=3.0))
    draft = TableLM(target.table.clone())
    res = sd.SpeculativeGenerator(target, draft).generate([1], max_new_tokens=25, gamma=4, seed=0,
                                                          temperature=1.0)
    st = res.stats
    assert st.accepted == st.drafted == 20 and st.target_calls == 5
    assert draft.calls == st.draft_calls == 20
    # block 1: the prompt token, then x1..x3; every later block: (x4, bonus) in one call, then 3 singles
    assert st.draft_tokens == (1 + 3) + 4 * (2 + 3)
    assert target.processed == st.target_tokens == 1 + 4 + 4 * 5


@pytest.mark.parametrize("draft_vocab", [4, 6])
def test_different_logit_widths_keep_the_target_distribution(draft_vocab):
    """Qwen pads its embedding: draft and target may differ in width with one tokenizer. Draft ids the
    target lacks are never proposed; target ids the draft lacks get q = 0 (only reachable by resampling)."""
    torch.manual_seed(0)
    target = TableLM(random_table(5, 1, seed=1))
    table = random_table(draft_vocab, 1, seed=2, sharpness=2.0)
    draft = TableLM(table)
    gen = sd.SpeculativeGenerator(target, draft)
    rng = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(3000):
        res = gen.generate([1], max_new_tokens=2, gamma=1, temperature=1.0, generator=rng)
        counts[res.token_ids[0]] += 1
    expected = target.probs_after([1]).float() * 3000
    assert ((counts - expected).abs() < 5 * expected.sqrt() + 5).all()


def test_the_drafts_smaller_context_window_limits_a_generation():
    target, draft = TableLM(random_table(6, 1, seed=0)), TableLM(random_table(6, 1, seed=1))
    draft.max_length = 10  # a draft that reads only 10 positions
    gen = sd.SpeculativeGenerator(target, draft)
    with pytest.raises(ValueError, match="the draft's context window is 10"):
        gen.generate(list(range(6)) * 2, max_new_tokens=3, gamma=2)
    res = gen.generate([1, 2, 3], max_new_tokens=50, gamma=2)
    assert len(res.token_ids) <= 10 - 3  # the budget is cut to what the draft can hold
