"""`specdecode generate` and `specdecode models` on tiny models saved to local directories."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from specdecode import cli

from .tiny_models import build, char_tokenizer, save_pair

PROMPT = "def quicksort(xs):"


def _save(model, path: Path, tokenizer) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """A tiny Llama target and a noisy copy of it as draft, with one character-level tokenizer."""
    return save_pair(tmp_path_factory.mktemp("cli-models"))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def base(pair: tuple[str, str], *extra: str) -> list[str]:
    return ["generate", "--target", pair[0], "--draft", pair[1], "--dtype", "fp32", "--quiet", *extra]


def test_streamed_text_equals_json_text(pair, capsys):
    # a fixed gamma: with auto, these tiny models' measured costs may well say "never draft"
    code, streamed, err = run(base(pair, "--max-new-tokens", "40", "--gamma", "3", PROMPT), capsys)
    assert code == 0
    code, out, _ = run(base(pair, "--max-new-tokens", "40", "--gamma", "3", "--json", PROMPT), capsys)
    assert code == 0
    report = json.loads(out)
    assert streamed == report["text"] + "\n" and len(report["text"]) > 0
    assert err.startswith("speculative: 40 tokens in") and "acceptance" in err and "draft" in err


def test_json_schema(pair, capsys):
    code, out, _ = run(base(pair, "--max-new-tokens", "17", "--gamma", "3", "--seed", "5",
                            "--temperature", "0.8", "--top-p", "0.9", "--json", PROMPT), capsys)
    assert code == 0
    r = json.loads(out)
    assert {"text", "token_ids", "finish_reason", "stats", "settings", "target", "draft", "prompt_tokens",
            "chat", "backend", "dtype", "device", "interrupted"} <= set(r)
    assert r["backend"] == "transformers"
    assert r["draft"] == pair[1] and r["dtype"] == "float32" and r["chat"] is True
    assert r["interrupted"] is False and r["finish_reason"] == "length"
    assert len(r["token_ids"]) == r["stats"]["new_tokens"] == 17
    assert r["settings"] == {"max_new_tokens": 17, "temperature": 0.8, "top_k": 0, "top_p": 0.9,
                             "min_p": 0.0, "gamma": 3, "gamma_max": 8, "lookup_gamma_max": 32, "seed": 5,
                             "stop": None, "cache_prompt": True}
    stats = r["stats"]
    for key in ("acceptance_rate", "mean_tokens_per_target_call", "target_s", "draft_s", "tokens_per_s"):
        assert isinstance(stats[key], float)
    assert stats["drafted"] > 0 and 0 <= stats["accepted"] <= stats["drafted"]
    # same seed, same output
    assert json.loads(run(base(pair, "--max-new-tokens", "17", "--gamma", "3", "--seed", "5",
                                "--temperature", "0.8", "--top-p", "0.9", "--json", PROMPT),
                          capsys)[1])["token_ids"] == r["token_ids"]


def test_compare_reports_identical_greedy_output(pair, capsys):
    code, out, _ = run(base(pair, "--max-new-tokens", "30", "--compare", "--json", PROMPT), capsys)
    assert code == 0
    r = json.loads(out)
    c = r["compare"]
    assert c["greedy"] is True and c["identical"] is True and c["divergence"] is None
    assert c["plain"]["token_ids"] == r["token_ids"]
    assert c["plain"]["stats"]["drafted"] == 0 and c["plain"]["stats"]["target_calls"] == 30
    assert c["speedup"] == pytest.approx(c["speculative_tokens_per_s"] / c["plain_tokens_per_s"])
    code, _, err = run(base(pair, "--max-new-tokens", "30", "--compare", PROMPT), capsys)
    assert "speedup" in err and "greedy outputs identical" in err


def test_compare_with_sampling_does_not_claim_identity(pair, capsys):
    code, out, err = run(base(pair, "--max-new-tokens", "10", "--compare", "--temperature", "1",
                              "--seed", "0", "--json", PROMPT), capsys)
    assert code == 0
    assert json.loads(out)["compare"]["identical"] is None


@pytest.mark.parametrize("draft", ["ngram", "ngram+DRAFT", "DRAFT"])
def test_other_drafters_from_the_command_line(pair, capsys, draft):
    draft = draft.replace("DRAFT", pair[1])
    code, out, _ = run(["generate", "--target", pair[0], "--draft", draft, "--dtype", "fp32", "--quiet",
                        "--max-new-tokens", "30", "--compare", "--json", "--gamma", "4", "abcabcabcabc"],
                       capsys)
    r = json.loads(out)
    assert code == 0 and r["draft"] == draft and r["settings"]["gamma"] == 4
    assert r["stats"]["drafted"] > 0, "a fixed gamma drafts: the comparison is not plain against plain"
    assert r["compare"]["identical"] is True


def test_auto_gamma_from_the_command_line(pair, capsys):
    """The plumbing of --gamma auto (what it chooses depends on this machine's measured costs)."""
    code, out, _ = run(["generate", "--target", pair[0], "--draft", f"ngram+{pair[1]}", "--dtype", "fp32",
                        "--quiet", "--max-new-tokens", "30", "--compare", "--json", "--draft-threshold",
                        "0.2", "abcabcabcabc"], capsys)
    r = json.loads(out)
    assert code == 0 and r["settings"]["gamma"] == "auto" and r["compare"]["identical"] is True
    assert sum(r["stats"]["gamma_histogram"].values()) == r["stats"]["target_calls"]


def test_prompt_from_file_and_stdin(pair, capsys, tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text(PROMPT)
    expected = json.loads(run(base(pair, "--max-new-tokens", "8", "--json", PROMPT), capsys)[1])["text"]
    from_file = json.loads(run(base(pair, "--max-new-tokens", "8", "--json", "--file",
                                    str(tmp_path / "p.txt")), capsys)[1])["text"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    from_stdin = json.loads(run(base(pair, "--max-new-tokens", "8", "--json"), capsys)[1])["text"]
    assert from_file == from_stdin == expected


def test_plain_decoding_when_no_draft_is_given(pair, capsys):
    code, _, err = run(["generate", "--target", pair[0], "--dtype", "fp32", "--max-new-tokens", "5",
                        PROMPT], capsys)
    assert code == 0 and "no --draft given: plain decoding" in err and err.strip().endswith("tokens/call")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gamma", "0", PROMPT], "gamma must be 'auto' or an integer >= 1"),
        (["--max-new-tokens", "0", PROMPT], "max_new_tokens must be an integer >= 1"),
        (["--temperature", "-1", PROMPT], "temperature"),
        ([""], "prompt is empty"),
        (["--file", "/nonexistent/prompt.txt"], "cannot read the prompt file"),
        (["--file", __file__, PROMPT], "not both"),
        (["--draft-threshold", "1.5", PROMPT], "threshold must be in [0, 1)"),
        (["--dtype", "int3", PROMPT], "unknown dtype"),
    ],
)
def test_bad_input_exits_2_with_a_message(pair, capsys, extra, message):
    code, out, err = run(base(pair, *extra), capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_model_and_mismatched_tokenizer(pair, capsys, tmp_path):
    code, _, err = run(["generate", "--target", str(tmp_path / "nothing"), "--quiet", PROMPT], capsys)
    assert code == 2 and "could not load model" in err and "qwen2.5-coder-1.5b" in err
    other = _save(build("llama"), tmp_path / "other", char_tokenizer(shuffle_seed=3))
    code, _, err = run(["generate", "--target", pair[0], "--draft", other, "--quiet", PROMPT], capsys)
    assert code == 2 and "different tokenizers" in err


def test_models_list_and_fetch(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path))
    code, out, _ = run(["models", "list", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]
    assert all(r["cached"] is False and r["cache_bytes"] == 0 for r in rows)
    assert rows[0]["gguf_bytes"] == 1_117_320_768 and rows[0]["cache_dir"].startswith(str(tmp_path))
    code, out, _ = run(["models", "list"], capsys)
    assert code == 0 and "qwen2.5-coder-0.5b   draft" in out and str(tmp_path) in out
    code, _, err = run(["models", "fetch", "qwen-9000"], capsys)
    assert code == 2 and "unknown built-in model 'qwen-9000'" in err and "qwen2.5-coder-1.5b" in err


def test_ctrl_c_prints_partial_text_and_stats_and_exits_130(tmp_path):
    model = build("llama")
    model.config.max_position_embeddings = 1_000_000  # long enough to still be running when interrupted
    path = _save(model, tmp_path / "long", char_tokenizer())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C as a terminal delivers it, even where this test runs with SIGINT ignored (a background job:
    # the child would inherit SIG_IGN and never see it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdecode.cli", "generate", "--target", path, "--draft", "none",
         "--dtype", "fp32", "--quiet", "--max-new-tokens", "500000", PROMPT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.read(20)  # generation is under way
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave it generating
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert len(first) == 20 and rest.endswith(b"\n")
    err_text = err.decode()
    assert "[interrupted]" in err_text and "tokens in" in err_text and "Traceback" not in err_text


@pytest.mark.parametrize("module", ["fastapi", "uvicorn", "prometheus_client"])
def test_a_missing_extra_is_one_line_and_exit_2(monkeypatch, capsys, pair, module):
    for name in [m for m in sys.modules if m.startswith("specdecode.server")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    code = cli.main(["serve", "--target", pair[0], "--draft", "none", "--port", "8123", "--quiet"])
    extra = "server"
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"pip install 'specdecode[{extra}]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
