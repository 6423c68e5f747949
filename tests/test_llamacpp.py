"""The llama.cpp backend: exact speculation on it, KV rollback, the sampled distribution (G-test), its
tokenizer and chat template, backend selection, and clear errors for bad files and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from scipy.stats import power_divergence

pytest.importorskip("llama_cpp")

import specdecode as sd  # noqa: E402
from specdecode import SpeculativeGenerator  # noqa: E402
from specdecode.backends.llamacpp import LlamaCppModel  # noqa: E402
from specdecode.cli import main  # noqa: E402
from specdecode.compare import first_divergence, near_tie_margin  # noqa: E402
from specdecode.drafters import CallableDrafter, ModelDrafter, NgramDrafter, NgramThenModel  # noqa: E402
from specdecode.sampling import SamplingParams, adjusted_probs  # noqa: E402

from .tiny_gguf import smollm2_path, write_tiny_llama  # noqa: E402

PROMPTS = ["def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "The capital of France is Paris. The capital of France is",
           "a b c d e f g a b c d e f g a b c"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {
        "target": write_tiny_llama(d / "target.gguf", seed=0),
        # the same weights with a softer head: same ranking, other probabilities, so partial acceptance
        "draft": write_tiny_llama(d / "draft.gguf", seed=0, scale=0.7),
        "other": write_tiny_llama(d / "other.gguf", seed=1),
        "dir": d,
    }


@pytest.fixture(scope="module")
def target(files):
    return LlamaCppModel(files["target"])


@pytest.fixture(scope="module")
def smol():
    return LlamaCppModel(smollm2_path())


def assert_greedy_equal(model, plain: list[int], spec: list[int], prompt_ids: list[int]) -> None:
    """Identical, or first different at a measured near-tie of the target (reported, as in compare.py)."""
    if plain == spec:
        return
    div = first_divergence(model, prompt_ids, plain, spec)
    assert div is not None, "one output is a prefix of the other although both ran to the same budget"
    assert div.top2_margin <= near_tie_margin(model), (
        f"greedy outputs differ at token {div.position} with a top-2 margin of {div.top2_margin:.4f}, "
        f"beyond the llama.cpp near-tie margin {near_tie_margin(model)}"
    )


@pytest.mark.parametrize("kind", ["model", "ngram", "ngram+model", "other-model"])
def test_greedy_speculation_equals_plain_greedy(files, target, kind):
    draft_file = files["other"] if kind == "other-model" else files["draft"]
    model_draft = ModelDrafter(LlamaCppModel(draft_file))
    drafter = {"model": model_draft, "other-model": model_draft, "ngram": NgramDrafter(),
               "ngram+model": NgramThenModel(NgramDrafter(), model_draft)}[kind]
    plain_gen, spec_gen = SpeculativeGenerator(target), SpeculativeGenerator(target, drafter)
    drafted = 0
    for prompt in PROMPTS:
        ids = target.tokenizer(prompt)["input_ids"]
        plain = plain_gen.generate(ids, max_new_tokens=40).token_ids
        spec = spec_gen.generate(ids, max_new_tokens=40, gamma=4)
        drafted += spec.stats.drafted
        assert_greedy_equal(target, plain, spec.token_ids, ids)
    assert drafted > 0


def test_real_small_model_greedy_with_long_lookup_blocks(smol):
    """SmolLM2-135M (real weights): n-gram lookups in blocks up to 32 under gamma=auto, against plain."""
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n" \
        "    return a * b\n"
    messages = [{"role": "user", "content": "Copy this code exactly, adding a docstring to each function:\n\n"
                 + code}]
    ids = SpeculativeGenerator(smol).encode(messages, chat=True)
    plain = SpeculativeGenerator(smol).generate(ids, max_new_tokens=48)
    for gamma in (16, "auto"):
        spec = SpeculativeGenerator(smol, NgramDrafter()).generate(ids, max_new_tokens=48, gamma=gamma,
                                                                   lookup_gamma_max=32)
        assert_greedy_equal(smol, plain.token_ids, spec.token_ids, ids)
        if gamma == 16:
            assert spec.stats.drafted > 0 and spec.stats.accepted > 0
            assert spec.stats.mean_tokens_per_target_call > 1.5


def test_rollback_then_forward_equals_a_fresh_run(target):
    prefix, tail = list(range(100, 140)), [7, 8, 9, 10, 11]
    target.reset()
    target.forward(torch.tensor([prefix]), logits_to_keep=1)
    fresh = target.forward(torch.tensor([tail]), logits_to_keep=5).clone()
    target.reset()
    target.forward(torch.tensor([prefix + [1, 2, 3, 4, 5, 6]]), logits_to_keep=1)
    target.truncate(len(prefix))
    assert target.length == len(prefix)
    rolled = target.forward(torch.tensor([tail]), logits_to_keep=5)
    assert torch.equal(fresh, rolled)
    target.reset()
    assert target.length == 0


def test_logits_only_for_the_rows_asked(target):
    target.reset()
    ids = torch.tensor([list(range(200, 230))])
    all_rows = target.forward(ids).clone()
    assert all_rows.shape == (1, 30, target.vocab_size) and all_rows.dtype == torch.float32
    target.reset()
    last3 = target.forward(ids, logits_to_keep=3)
    assert last3.shape == (1, 3, target.vocab_size)
    assert torch.allclose(last3[0], all_rows[0, -3:], atol=1e-4)
    target.reset()


def test_prefill_longer_than_a_batch_and_context_growth(files):
    model = LlamaCppModel(files["target"], n_ctx=512, n_batch=64)
    ids = list(range(300, 300 + 700))  # beyond the initial context and several batches
    logits = model.forward(torch.tensor([ids]), logits_to_keep=2).clone()
    assert model.length == 700 and logits.shape == (1, 2, model.vocab_size)
    reference = LlamaCppModel(files["target"], n_ctx=1024, n_batch=64)
    assert torch.allclose(logits, reference.forward(torch.tensor([ids]), logits_to_keep=2), atol=1e-3)


def test_sampled_distribution_is_the_targets(files):
    """G-test on the llama.cpp backend: speculative samples (a softer twin as draft, so drafts are accepted
    and rejected) against the target's exact distribution over 2-token continuations."""
    target = LlamaCppModel(files["target"])
    draft = ModelDrafter(LlamaCppModel(files["draft"]))
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = target.tokenizer("Once upon a time")["input_ids"]

    def probs(prefix: list[int]) -> torch.Tensor:
        target.reset()
        logits = target.forward(torch.tensor([prefix]), logits_to_keep=1)[0, -1].double()
        return adjusted_probs(logits.unsqueeze(0), params)[0]

    exact: dict[tuple[int, int], float] = {}
    first = probs(prompt)
    for a in first.nonzero().view(-1).tolist():
        second = probs(prompt + [a])
        for b in second.nonzero().view(-1).tolist():
            exact[(a, b)] = float(first[a] * second[b])
    gen = SpeculativeGenerator(target, draft)
    rng = torch.Generator().manual_seed(7)
    counts: Counter = Counter()
    drafted = accepted = 0
    samples = 3000
    for _ in range(samples):
        res = gen.generate(prompt, max_new_tokens=2, gamma=2, generator=rng, temperature=1.0, top_k=3)
        counts[tuple(res.token_ids)] += 1
        drafted, accepted = drafted + res.stats.drafted, accepted + res.stats.accepted
    assert set(counts) <= set(exact), "sampled a continuation the target gives probability 0"
    cells = sorted(exact)
    pvalue = power_divergence([counts.get(c, 0) for c in cells], [exact[c] * samples for c in cells],
                              lambda_="log-likelihood").pvalue
    assert pvalue > 1e-3, f"speculative samples do not follow the target's distribution (p = {pvalue:.2e})"
    assert 0 < accepted < drafted, "the test must see both accepted and rejected drafts"


def test_min_p_and_top_p_sampling_run_and_are_reproducible(target, files):
    gen = SpeculativeGenerator(target, ModelDrafter(LlamaCppModel(files["draft"])))
    ids = target.tokenizer(PROMPTS[0])["input_ids"]
    a = gen.generate(ids, max_new_tokens=20, temperature=0.8, top_p=0.9, min_p=0.05, seed=3, gamma=3)
    b = gen.generate(ids, max_new_tokens=20, temperature=0.8, top_p=0.9, min_p=0.05, seed=3, gamma=3)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 20


def test_tokenizer_and_chat_template_match_transformers(smol):
    """The GGUF's own vocabulary and chat template give the ids transformers gives for the same file."""
    from transformers import AutoTokenizer

    path = smollm2_path()
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = smol.tokenizer
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Sort [3, 1, 2] — explain «why» in 5 words. 日本語?"}]
    rendered = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours(rendered, add_special_tokens=False)["input_ids"] == hf(rendered, add_special_tokens=False)[
        "input_ids"]
    for text in PROMPTS + ["naïve café — 😀 end", "  leading spaces\n\ttabs"]:
        ids = ours(text)["input_ids"]
        assert ids == hf(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    eos = hf.convert_tokens_to_ids("<|im_end|>")
    assert eos in smol.eos_token_ids


def test_partial_utf8_decodes_to_replacement_char(smol):
    ids = smol.tokenizer("😀")["input_ids"]
    assert len(ids) > 1  # a byte-level BPE splits the emoji
    assert smol.tokenizer.decode(ids[:1]).endswith("\ufffd")
    assert smol.tokenizer.decode(ids) == "😀"


def test_load_model_picks_llama_cpp_for_gguf_on_cpu(files):
    model = sd.load_model(str(files["target"]))
    assert isinstance(model, LlamaCppModel) and model.backend == "llama.cpp"
    model = sd.load_model(str(files["target"]), backend="llama.cpp", n_threads=1)
    assert model.n_threads == 1
    with pytest.raises(ValueError, match="llama.cpp backend loads .gguf files"):
        sd.load_model("Qwen/Qwen2.5-0.5B", backend="llama.cpp")
    with pytest.raises(ValueError, match="dtype 'bf16' applies to the transformers backend"):
        sd.load_model(str(files["target"]), dtype="bf16")
    with pytest.raises(ValueError, match="unknown backend"):
        sd.load_model(str(files["target"]), backend="vulkan")


def test_bad_files_give_clear_errors(files, tmp_path):
    with pytest.raises(ValueError, match="GGUF file not found"):
        LlamaCppModel(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        LlamaCppModel(text)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(files["target"].read_bytes()[: 3_000_000])
    with pytest.raises(ValueError, match="could not load .*truncated or corrupt"):
        LlamaCppModel(truncated)
    alien = write_tiny_llama(tmp_path / "alien.gguf", arch="nosucharch", dim=32, layers=1, ffn=32)
    with pytest.raises(ValueError, match="architecture 'nosucharch' is not supported"):
        LlamaCppModel(alien)


def test_bad_input_gives_clear_errors(target):
    target.reset()
    with pytest.raises(ValueError, match="token id 49152 is outside the vocabulary"):
        target.forward(torch.tensor([[1, 2, 49152]]))
    with pytest.raises(ValueError, match="token id -1 is outside"):
        target.forward(torch.tensor([[-1]]))
    assert target.length == 0
    gen = SpeculativeGenerator(target)
    with pytest.raises(ValueError, match="context window is 2048"):
        gen.generate(list(range(100, 2200)), max_new_tokens=4)
    with pytest.raises(ValueError, match="do not fit the context window"):
        target.reserve(5000)


def test_cli_generate_on_llama_cpp(files, capsys):
    code = main(["generate", "--target", str(files["target"]), "--draft", str(files["draft"]), "--gamma", "3",
                 "--max-new-tokens", "12", "--json", "--quiet", "--compare", "hello there"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["backend"] == "llama.cpp" and out["dtype"].startswith("gguf")
    assert len(out["token_ids"]) == 12 and out["stats"]["drafted"] > 0
    assert out["compare"]["identical"] or out["compare"]["divergence"]["top2_margin"] <= 0.75
    code = main(["generate", "--target", str(files["target"]), "--dtype", "bf16", "--quiet", "hi"])
    assert code == 2 and "applies to the transformers backend" in capsys.readouterr().err


def test_callable_drafter_on_llama_cpp_keeps_the_distribution_argument(target):
    """A user drafter's tokens outside the top-k have p = 0: they are always rejected, never emitted."""
    gen = SpeculativeGenerator(target, CallableDrafter(lambda seq, g: [seq[-1]] * g))
    ids = target.tokenizer(PROMPTS[1])["input_ids"]
    res = gen.generate(ids, max_new_tokens=10, gamma=3, temperature=0.7, top_k=2, seed=1)
    params = SamplingParams(temperature=0.7, top_k=2)
    seq = list(ids)
    for token in res.token_ids:  # every emitted token has positive target probability
        target.reset()
        p = adjusted_probs(target.forward(torch.tensor([seq]), logits_to_keep=1)[0, -1:], params)[0]
        assert p[token] > 0
        seq.append(token)
    target.reset()



def test_tokenizer_outlives_its_model(files):
    """The tokenizer keeps llama.cpp's vocabulary alive after its model object is gone."""
    import gc

    tokenizer = LlamaCppModel(files["target"]).tokenizer
    gc.collect()
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]) == "hello world"


def test_a_cached_cost_curve_far_from_this_machine_is_measured_again(target, tmp_path, monkeypatch):
    """A calibration cached while the CPU was busy (tens of times too slow) must not steer gamma=auto for
    good: a quick T(1) check finds it stale and the curve is measured again and saved."""
    from specdecode import costs
    from specdecode.costs import calibrate

    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    fresh = calibrate(target, NgramDrafter(), 4)
    path = tmp_path / "calibration.json"
    saved = json.loads(path.read_text())
    assert len(saved) == 1
    with monkeypatch.context() as m:  # a tiny model's millisecond timings are noisy: a wide bound here
        m.setattr(costs, "STALE", 1000.0)
        assert calibrate(target, NgramDrafter(), 4).target_s == fresh.target_s  # still true: used as cached
    key = next(iter(saved))
    saved[key]["target_s"] = {k: v * 500 for k, v in saved[key]["target_s"].items()}  # measured under load
    path.write_text(json.dumps(saved))
    again = calibrate(target, NgramDrafter(), 4)
    assert again.t(1) < 50 * fresh.t(1)  # measured anew, not the stale 500x
    assert json.loads(path.read_text())[key]["target_s"]["1"] < 50 * fresh.t(1)  # and saved


def test_attention_kernel_choice(files, target):
    """Matrix-product attention by default (faster block verification over long caches on a CPU), flash
    attention on request: the same logits up to rounding, and the calibration key tells them apart."""
    ids = torch.tensor([list(range(300, 340))])
    target.reset()
    default = target.forward(ids).clone()
    target.reset()
    flash = LlamaCppModel(files["target"], flash_attn=True)
    assert not target.flash_attn and flash.flash_attn
    assert "flash attention" in flash.dtype and "flash attention" not in target.dtype
    assert torch.allclose(flash.forward(ids), default, atol=1e-2)
    flash.close()
    loaded = sd.load_model(str(files["target"]), flash_attn=True)
    assert loaded.flash_attn
    loaded.close()
    with pytest.raises(ValueError, match="flash_attn chooses llama.cpp's attention kernel"):
        sd.load_model("some-org/some-model", backend="transformers", flash_attn=True)
