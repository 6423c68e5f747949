"""Incremental detokenisation: the same text as one full decode, in O(n) decoding work, with multi-byte
characters split across tokens and stop strings anywhere."""

from __future__ import annotations

import random

import pytest

from specdecode.text import TextStream

from .tiny_gguf import smollm2_path


class CountingTokenizer:
    """Wraps a tokenizer and counts the tokens every `decode` call is given."""

    def __init__(self, inner) -> None:
        self.inner, self.decoded = inner, 0

    def decode(self, ids, skip_special_tokens=False):
        self.decoded += len(ids)
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("llama_cpp")
    from specdecode.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(smollm2_path()).tokenizer  # byte-level BPE: emoji and CJK split across tokens


def long_text(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["naïve", "café", "日本語", "😀", "Ünïcödé", "print(x)", "the", "ς", "🧪🔬", "\n", "  ", "data"]
    return " ".join(rng.choice(words) for _ in range(n_chars))


def test_four_thousand_tokens_decode_exactly_in_linear_work(tokenizer):
    ids = tokenizer(long_text(2500))["input_ids"]
    assert len(ids) >= 4000
    counting = CountingTokenizer(tokenizer)
    stream = TextStream(counting, [])
    rng = random.Random(1)
    pieces, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 17)  # chunks as the engine emits them: 1 .. gamma+1 tokens
        pieces.append(stream.add(ids[i : i + n]))
        i += n
    pieces.append(stream.finish())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any(p.endswith("\ufffd") for p in pieces[:-1]), "no half characters are ever released"
    assert counting.decoded < 12 * len(ids), f"decoding work {counting.decoded} is not linear in {len(ids)}"


@pytest.mark.parametrize("stop", ["日本", "😀 ", "ï"])
def test_stop_strings_across_multibyte_tokens(tokenizer, stop):
    text = long_text(300, seed=2)
    ids = tokenizer(text)["input_ids"]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    stream = TextStream(tokenizer, [stop])
    out = []
    for i in range(0, len(ids), 5):
        out.append(stream.add(ids[i : i + 5]))
        if stream.stopped:
            break
    out.append(stream.finish())
    assert stream.stopped and "".join(out) == full[: full.index(stop)]
    kept = tokenizer.decode(stream.token_ids, skip_special_tokens=True)
    assert stop in kept and stop not in tokenizer.decode(stream.token_ids[:-1], skip_special_tokens=True)
