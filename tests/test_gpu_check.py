"""scripts/gpu-check.sh (issue 24): its --tiny mode runs the GPU benchmark's path on the CPU in seconds, and
without a GPU the real mode refuses with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdecode.predict import PairCosts, load_curves

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=170)


def test_tiny_mode_writes_the_curves_and_a_plot(tmp_path):
    out = tmp_path / "gpu"
    proc = run("--tiny", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "gpu_cost.json").read_text())
    meta = data["meta"]
    assert meta["tiny"] is True and meta["dtype"] == "bfloat16" and meta["skipped"] == []
    assert {"device", "torch", "transformers", "ks", "contexts", "batches", "repeats", "date"} <= set(meta)
    assert set(data["models"]) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen2.5-coder-7b"}
    for entry in data["models"].values():
        cells = {(c["batch"], c["context"]) for c in entry["curves"]}
        assert cells == {(b, c) for b in meta["batches"] for c in meta["contexts"]}
        for curve in entry["curves"]:
            assert sorted(int(k) for k in curve["seconds"]) == meta["ks"]
            assert all(s > 0 for s in curve["seconds"].values())
    # the tiny 7B keeps the real one's head layout and untied head
    cfg = data["models"]["qwen2.5-coder-7b"]["config"]
    layout = (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"])
    assert layout == (28, 4, False)
    png = (out / "gpu_cost.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / "env.txt").read_text().startswith("date:")
    # the predictor reads the file at both batch sizes
    for batch in meta["batches"]:
        curves = load_curves(out / "gpu_cost.json", batch)
        costs = PairCosts(curves["qwen2.5-coder-7b"], curves["qwen2.5-coder-0.5b"])
        assert costs.target_call(4, 40) > 0 and costs.draft_call(40) > 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so(tmp_path):
    proc = run(str(tmp_path / "gpu"))
    assert proc.returncode == 3
    assert "no CUDA GPU" in proc.stderr and "--tiny" in proc.stderr


def test_bad_usage_is_refused(tmp_path):
    assert run().returncode == 2
    proc = run("--bogus", str(tmp_path))
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr


def test_unknown_model_config_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_cost.py"), "--tiny", "--out",
                           str(tmp_path), "--models", "qwen9-huge"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    assert proc.returncode != 0 and "unknown model config 'qwen9-huge'" in proc.stderr
