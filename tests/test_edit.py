"""`specdecode edit`: the file as predicted output, on a real small model (SmolLM2-135M on llama.cpp):
the same text as without the prediction, the diff, --write with a backup, --json, and exit codes."""

from __future__ import annotations

import json

import pytest

from specdecode.cli import main
from specdecode.edit import extract_code, make_task, unified_diff

from .tiny_gguf import smollm2_path

SOURCE = '''def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    return a / b
'''


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "calc.py"
    path.write_text(SOURCE)
    return path


def _edit(capsys, *argv: str) -> tuple[int, str, str]:
    pytest.importorskip("llama_cpp")
    code = main(["edit", "--target", str(smollm2_path()), "--quiet", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_is_exact_and_uses_the_prediction(source, capsys):
    # a fixed gamma: what auto chooses depends on this machine's measured costs
    code, out, _ = _edit(capsys, str(source), "-i", "Rename the function sub to subtract.", "--json",
                         "--compare", "--max-new-tokens", "200", "--gamma", "8")
    report = json.loads(out)
    assert code in (0, 1)  # 1 only if the small model ran past the budget
    stats, cmp = report["stats"], report["compare"]
    # SmolLM2-135M copies only part of the file once the instruction follows it (the layout that lets a
    # prompt cache reuse the file across instructions); the built-in 1.5B returns the whole file
    assert stats["accepted_prediction_tokens"] > 10, "the file's text should come from the prediction"
    assert stats["target_calls"] < 0.8 * stats["new_tokens"], "predicted blocks were accepted"
    assert cmp["identical"] or cmp["divergence"]["top2_margin"] <= 0.75  # llama.cpp near-tie margin
    assert report["diff"] == unified_diff(make_task(source, "x"), report["text"])
    assert source.read_text() == SOURCE  # no --write: untouched


def test_edit_write_keeps_a_backup(source, capsys):
    code, _, err = _edit(capsys, str(source), "-i", "Add a one-line docstring to each function.", "--write",
                         "--max-new-tokens", "300")
    if code == 1:
        assert "nothing written" in err and source.read_text() == SOURCE
        return
    assert code == 0
    backup = source.with_name("calc.py.orig")
    assert backup.read_text() == SOURCE
    assert source.read_text() != SOURCE or not backup.exists()


@pytest.mark.parametrize("setup, args, message", [
    ("missing", ["-i", "x"], "no such file"),
    ("binary", ["-i", "x"], "looks binary"),
    ("large", ["-i", "x", "--max-bytes", "10"], "up to 10 bytes"),
    ("text", ["-i", "   "], "instruction is empty"),
])
def test_edit_bad_input_exits_2(tmp_path, capsys, setup, args, message):
    path = tmp_path / "f.py"
    if setup == "binary":
        path.write_bytes(b"\x00\x01binary")
    elif setup in ("large", "text"):
        path.write_text(SOURCE)
    code = main(["edit", str(path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_extract_code_and_prediction_shape(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("x = 1\n")
    task = make_task(path, "add y")
    assert task.prediction == "```python\nx = 1\n```" and task.language == "python"
    assert extract_code("Here:\n```python\nx = 1\ny = 2\n```\nDone.") == "x = 1\ny = 2\n"
    assert extract_code("no fences at all") == "no fences at all"
    assert unified_diff(task, "x = 1\n") == ""


def test_prompt_cache_on_disk_skips_reading_the_file_again(source, tmp_path, capsys):
    cache = tmp_path / "pc"
    args = [str(source), "--json", "--max-new-tokens", "40", "--prompt-cache", str(cache)]
    _, out, err = _edit(capsys, *args, "-i", "Rename the function sub to subtract.")
    first = json.loads(out)["stats"]
    assert first["cached_tokens"] == 0 and len(list(cache.rglob("*.kvc"))) == 1
    # another instruction on the same file: the file's tokens come from disk
    _, out, _ = _edit(capsys, *args, "-i", "Add a docstring to add.")
    second = json.loads(out)
    assert second["stats"]["cached_tokens"] > 0.8 * second["stats"]["prompt_tokens"] - 20
    # the same text as without the cache (greedy; SmolLM2 on f32-accumulating kernels: no near-tie here)
    _, out, _ = _edit(capsys, str(source), "--json", "--max-new-tokens", "40", "-i",
                      "Add a docstring to add.")
    uncached = json.loads(out)
    assert uncached["stats"]["cached_tokens"] == 0 and uncached["reply"] == second["reply"]
    # a corrupt file and a foreign file are skipped with a warning, never trusted
    for f in cache.rglob("*.kvc"):
        f.write_bytes(f.read_bytes()[:200])
    (next(cache.rglob("*.kvc")).parent / "foreign.kvc").write_bytes(b"hello")
    code, out, err = _edit(capsys, *args, "-i", "Add a docstring to add.")
    assert code in (0, 1) and json.loads(out)["stats"]["cached_tokens"] == 0


def test_disk_prompt_cache_round_trip(tmp_path):
    pytest.importorskip("llama_cpp")
    import torch

    from specdecode.backends.llamacpp import LlamaCppModel
    from specdecode.prompt_cache import DiskPromptCache

    model = LlamaCppModel(smollm2_path())
    prompt = model.tokenizer.encode(SOURCE * 3)
    model.forward(torch.tensor([prompt]), logits_to_keep=1)
    disk = DiskPromptCache(tmp_path, model)
    assert disk.save(prompt) is not None
    fresh = LlamaCppModel(smollm2_path())
    disk2 = DiskPromptCache(tmp_path, fresh)
    longer = prompt + model.tokenizer.encode(" # more", add_special_tokens=False)
    assert disk2.load(longer) == len(prompt) and fresh.length == len(prompt)
    got = fresh.forward(torch.tensor([longer[len(prompt):]]), logits_to_keep=1)[0, -1].clone()
    # the same calls without the disk in between: the restored state is the state that was saved (a
    # single call over the whole text differs by float noise: another batch size, other kernels)
    model.reset()
    model.forward(torch.tensor([prompt]), logits_to_keep=1)
    want = model.forward(torch.tensor([longer[len(prompt):]]), logits_to_keep=1)[0, -1]
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert disk2.load(model.tokenizer.encode("unrelated text")) == 0
