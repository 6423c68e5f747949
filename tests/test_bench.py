"""The benchmark pipeline on tiny in-process models (structure, not speed), its workload and formulas."""

from __future__ import annotations

import json

import pytest

from specdecode import cli
from specdecode.bench import BenchConfig, run_bench
from specdecode.bench.workload import load_prompts
from specdecode.theory import expected_tokens, general_speedup, thm38_speedup


def test_paper_formulas():
    assert expected_tokens(0.0, 4) == 1.0 and expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert thm38_speedup(0.8, 4, 0.0) == pytest.approx(expected_tokens(0.8, 4))
    flat = general_speedup(0.8, 4, lambda k: 0.1, 0.01)  # T(k) = T(1): the general form is Thm 3.8
    assert flat == pytest.approx(thm38_speedup(0.8, 4, 0.1))
    assert general_speedup(0.8, 4, lambda k: 0.1 * k, 0.0) < 1.0  # linear T(k): speculation cannot win
    with pytest.raises(ValueError):
        expected_tokens(1.5, 2)


def test_workload_has_six_tasks_of_eight_prompts():
    prompts = load_prompts()
    tasks = {p.task for p in prompts}
    assert tasks == {"code_completion", "code_editing", "code_explanation", "summarisation", "translation",
                     "chat"}
    assert all(sum(p.task == t for p in prompts) == 8 for t in tasks)
    assert len({p.id for p in prompts}) == 48 and all(p.max_new_tokens > 0 for p in prompts)
    assert [p.id for p in load_prompts(tasks=["chat"], per_task=2)] == ["chat-1", "chat-2"]
    with pytest.raises(ValueError, match="unknown task"):
        load_prompts(tasks=["poetry"])


def test_workload_errors_name_the_line(tmp_path):
    good = '{"id": "a", "task": "x", "messages": [], "max_new_tokens": 3}'
    (tmp_path / "x.jsonl").write_text(good + '\n{"id": 1}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: a prompt needs"):
        load_prompts(tmp_path)


def test_quick_bench_writes_a_complete_report(tmp_path):
    out = run_bench(BenchConfig.quick_suite(out=str(tmp_path), tasks=["code_editing", "chat"], quiet=True))
    results = json.loads((out / "results.json").read_text())
    assert {"date", "command", "config", "machine", "target", "draft", "dtype", "costs", "samples",
            "skipped"} <= set(results)
    assert set(results["costs"]["target_s"]) == {"1", "2", "3", "5"} and results["costs"]["c"] > 0
    samples = results["samples"]
    greedy = [s for s in samples if s["temperature"] == 0]
    configs = {s["config"] for s in greedy}
    ours_auto = {"ours/model gamma=auto", "ours/ngram gamma=auto", "ours/ngram+model gamma=auto"}
    assert configs == {"ours/plain", "ours/model gamma=1", "ours/model gamma=4", "hf/plain",
                       "hf/assisted k=4", "hf/assisted default", "hf/prompt-lookup n=10"} | ours_auto
    assert len(greedy) == 2 * len(configs)  # 2 prompts, 1 round
    assert {s["config"] for s in samples if s["temperature"] == 1} == {
        "ours/plain", "hf/plain", "hf/assisted default", "hf/prompt-lookup n=10"} | ours_auto
    assert any("llama.cpp" in line for line in results["skipped"])  # no GGUF for in-process models
    for s in samples:
        assert s["new_tokens"] == len(s["token_ids"]) > 0 and s["tokens_per_s"] > 0
        if s["config"].startswith("ours/model gamma=") and s["config"][-1].isdigit():
            assert 0 <= s["acceptance_rate"] <= 1 and s["tokens_per_target_call"] >= 1
        if s["config"].endswith("gamma=auto"):
            assert sum(s["gamma_histogram"].values()) >= 1
    for s in greedy:  # greedy exactness is checked against our plain decoding, sample by sample
        assert s["identical_to_plain"] is True, s["config"]
    report = (out / "report.md").read_text()
    for heading in ("## greedy (temperature 0)", "## temperature 1.0", "speedup over our plain decoding",
                    "against each peer", "paper's prediction", "Greedy exactness", "Acceptance rate alpha",
                    "Gammas chosen by gamma=auto"):
        assert heading in report
    assert "hf/assisted k=4" in report and "code_editing" in report
    for png in ("speedup_vs_gamma.png", "alpha_per_task.png", "predicted_vs_measured.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in report


def test_bench_cli_rejects_bad_settings(capsys):
    assert cli.main(["bench", "--quick", "--gammas", "0,2"]) == 2
    assert "gammas must be integers >= 1" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--peers", "vllm"]) == 2
    assert "unknown peer" in capsys.readouterr().err
