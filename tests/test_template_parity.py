"""benchmarks/template_parity.py: the request recorder and the comparison's bookkeeping (the comparison
itself needs llama-server and the real model, so it runs as a benchmark)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import template_parity  # noqa: E402


def test_first_difference() -> None:
    assert template_parity.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert template_parity.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert template_parity.first_difference([1, 2], [1, 2, 3]) == 2
    assert template_parity.first_difference("abc", "abd") == 2
    assert template_parity._at(None) == "none"
    assert template_parity._at(4, 0.0123) == "4 (0.012)"


def test_record_saves_the_body_and_answers_400(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix = str(tmp_path / "req")
    threading.Thread(target=template_parity.record, args=(port, prefix), daemon=True).start()
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    for _ in range(100):
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert json.loads((tmp_path / "req-1.json").read_text()) == body
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
    assert models["data"][0]["object"] == "model"
