"""Deterministic mode (llama.cpp's batch-invariant kernels): a token's logits are bitwise the same whatever
else shares its call, so greedy texts are identical plain, drafted at any gamma, alone and batched."""

from __future__ import annotations

import concurrent.futures as cf
import socket

import httpx
import pytest
import torch

pytest.importorskip("llama_cpp")

import specdecode as sd  # noqa: E402
from specdecode.backends.llamacpp import LlamaCppModel  # noqa: E402
from specdecode.backends.llamacpp_pool import SequencePool  # noqa: E402
from specdecode.drafters import NgramDrafter  # noqa: E402

from .serve_process import serve_process  # noqa: E402
from .tiny_gguf import smollm2_path, write_tiny_llama  # noqa: E402

PROMPTS = [f"def f{i}(x):\n    return x * {i} + {i % 3}\n\n# {'abc ' * (i % 4)}" for i in range(8)]


@pytest.fixture(scope="module")
def target():
    # SmolLM2's Q4_1 weights run llama.cpp's one-row dot kernel at every row count
    return LlamaCppModel(smollm2_path(), deterministic=True)


@pytest.fixture(scope="module")
def draft(tmp_path_factory):
    return LlamaCppModel(write_tiny_llama(tmp_path_factory.mktemp("det") / "draft.gguf", seed=3))


def test_a_block_gives_bitwise_the_logits_of_its_tokens_one_at_a_time(target):
    ids = target.tokenizer.encode(PROMPTS[1] * 3)
    target.reset()
    block = target.forward(torch.tensor([ids]))[0].clone()
    target.reset()
    single = torch.cat([target.forward(torch.tensor([[t]]))[0].clone() for t in ids])
    assert torch.equal(block, single)


def test_a_batched_pool_call_gives_bitwise_the_logits_of_each_sequence_alone(target):
    pool = SequencePool(target, 3, 1024, kv_unified=True)
    slots = [pool.acquire() for _ in range(3)]
    feeds = [target.tokenizer.encode(p) for p in PROMPTS[:3]]
    target.reset()
    alone = [target.forward(torch.tensor([ids]), logits_to_keep=3)[0].clone() for ids in feeds[:1]]
    for ids in feeds[1:]:
        target.reset()
        alone.append(target.forward(torch.tensor([ids]), logits_to_keep=3)[0].clone())
    # the prompts read in pieces that interleave the sequences (a deterministic pool keeps a buffer each)
    pool.decode([(slots[0], feeds[0][:5], 0), (slots[1], feeds[1][:9], 0), (slots[2], feeds[2][:2], 0)])
    out = pool.decode([(s, ids[n:], 3) for s, ids, n in zip(slots, feeds, (5, 9, 2), strict=True)])
    for got, ref in zip(out, alone, strict=True):
        assert torch.equal(got, ref)
    pool.close()


@pytest.mark.parametrize("gamma", [1, 3, 6, "auto"])
def test_drafted_greedy_equals_plain_greedy_token_for_token(target, draft, gamma):
    plain = sd.SpeculativeGenerator(target, None)
    spec = sd.SpeculativeGenerator(target, draft)
    ngram = sd.SpeculativeGenerator(target, NgramDrafter())
    for prompt in PROMPTS[:3]:
        ref = plain.generate(prompt, max_new_tokens=40, cache_prompt=False).token_ids
        assert spec.generate(prompt, max_new_tokens=40, gamma=gamma, cache_prompt=False).token_ids == ref
        assert ngram.generate(prompt, max_new_tokens=40, gamma=gamma).token_ids == ref  # cached prefix too


def test_unsupported_models_are_refused_with_the_reason(tmp_path):
    # Q8_0 KV rows need heads of a multiple of 32 values; f32 weights have no batch-invariant kernel here
    with pytest.raises(ValueError, match="multiple of 32"):
        LlamaCppModel(write_tiny_llama(tmp_path / "h16.gguf", heads=4), deterministic=True)
    with pytest.raises(ValueError, match="no batch-invariant kernel for the model's weight type"):
        LlamaCppModel(write_tiny_llama(tmp_path / "h32.gguf", heads=2, kv_heads=1), deterministic=True)
    with pytest.raises(ValueError, match="llama.cpp's batch-invariant kernels"):
        sd.load_model("some/hub-model", backend="transformers", deterministic=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batched_server_texts_equal_one_at_a_time_texts_exactly(tmp_path_factory):
    draft = write_tiny_llama(tmp_path_factory.mktemp("det-serve") / "draft.gguf", seed=3)
    args = ["--target", str(smollm2_path()), "--draft", f"ngram+{draft}", "--parallel", "4",
            "--deterministic", "--ctx-size", "4096", "--served-model-name", "det", "--quiet"]
    with serve_process(args, _free_port(), tmp_path_factory.mktemp("det-log") / "server.log") as url:
        def complete(i: int) -> str:
            body = {"model": "det", "prompt": PROMPTS[i], "max_tokens": 20 + 4 * i, "temperature": 0}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=180)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = [complete(i) for i in range(8)]
        with cf.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(complete, range(8)))
        assert together == alone
        assert len(set(alone)) > 1
