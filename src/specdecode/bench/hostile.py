"""A hostile-input mix against a running `specdecode serve`: one valid request, with 30 malformed requests,
a 64 MB body, a chunked body past the body limit and clients that leave mid-stream sent beside it.

Used by tests/test_hostile.py and benchmarks/hostile.py; needs httpx.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

VALID: dict[str, Any] = {"model": "tiny", "prompt": "def f(x):", "max_tokens": 512, "temperature": 0}
BIG_PROMPT_TOKENS = 300_000  # " hello" is one token in the usual BPE vocabularies
USER = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Refusal:
    """One hostile request's answer: its status (0: no answer) and how long it took."""

    name: str
    expected: tuple[int, ...]
    status: int = 0
    seconds: float = 0.0
    body: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MixResult:
    valid_text: str | None = None
    valid_s: float = 0.0
    refused: list[Refusal] = field(default_factory=list)
    cut: int = 0  # streams that were cut after they had started


def malformed(model: str = "tiny") -> list[tuple[str, str, Any, tuple[int, ...]]]:
    """30 malformed requests: (name, path, JSON body or raw bytes, the statuses that refuse it)."""
    chat, comp = "/v1/chat/completions", "/v1/completions"
    big = "hello " * BIG_PROMPT_TOKENS
    cases: list[tuple[str, str, Any, tuple[int, ...]]] = [
        ("stream 'yes'", chat, {"messages": USER, "stream": "yes"}, (400,)),
        ("user message without content", chat, {"messages": [{"role": "user"}]}, (400,)),
        ("user content null", chat, {"messages": [{"role": "user", "content": None}]}, (400,)),
        ("max_tokens 10**12", comp, {"prompt": "hi", "max_tokens": 10**12}, (400,)),
        ("300k-token prompt", comp, {"prompt": big, "max_tokens": 4}, (400,)),
        ("300k-token chat", chat, {"messages": [{"role": "user", "content": big}]}, (400,)),
        ("logprobs 'yes'", chat, {"messages": USER, "logprobs": "yes"}, (400,)),
        ("max_tokens '5'", comp, {"prompt": "hi", "max_tokens": "5"}, (400,)),
        ("max_tokens true", comp, {"prompt": "hi", "max_tokens": True}, (400,)),
        ("JSON nested 100k deep", comp, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", (400,)),
        ("temperature '0.5'", comp, {"prompt": "hi", "temperature": "0.5"}, (400,)),
        ("not UTF-8", comp, b'{"prompt": "\xff\xfe"}', (400,)),
        ("top_p 0", comp, {"prompt": "hi", "top_p": 0}, (400,)),
        ("seed 1.5", comp, {"prompt": "hi", "seed": 1.5}, (400,)),
        ("n 2", comp, {"prompt": "hi", "n": 2}, (400,)),
        ("stop ['']", comp, {"prompt": "hi", "stop": [""]}, (400,)),
        ("messages a string", chat, {"messages": "hi"}, (400,)),
        ("messages empty", chat, {"messages": []}, (400,)),
        ("role wizard", chat, {"messages": [{"role": "wizard", "content": "hi"}]}, (400,)),
        ("image part", chat, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, (400,)),
        ("include_usage 'yes'", chat, {"messages": USER, "stream": True,
                                       "stream_options": {"include_usage": "yes"}}, (400,)),
        ("speculative gamma '3'", comp, {"prompt": "hi", "speculative": {"gamma": "3"}}, (400,)),
        ("bad tool name", chat, {"messages": USER, "tools": [{"type": "function",
                                                             "function": {"name": "no spaces!"}}]}, (400,)),
        ("token id out of range", comp, {"prompt": [1, 2, 10**9], "max_tokens": 4}, (400,)),
        ("empty prompt", comp, {"prompt": "", "max_tokens": 4}, (400,)),
        ("unknown model", comp, {"prompt": "hi", "model": "gpt-4"}, (404,)),
        ("truncated JSON", comp, b'{"prompt": "hi", "max_tokens": ', (400,)),
        ("a JSON array", comp, b"[1, 2, 3]", (400,)),
        ("empty body", comp, b"", (400,)),
        ("prompt missing", comp, {"max_tokens": 4}, (400,)),
    ]
    return [(name, path, body if isinstance(body, bytes) else {"model": model, **body}, expected)
            for name, path, body, expected in cases]


def _post(url: str, name: str, path: str, content: Any, expected: tuple[int, ...],
          headers: dict[str, str] | None = None) -> Refusal:
    out = Refusal(name, expected)
    start = time.perf_counter()
    try:
        r = httpx.post(f"{url}{path}", content=content, timeout=60,
                       headers={"Content-Type": "application/json", **(headers or {})})
        out.status, out.body = r.status_code, r.text
    except httpx.HTTPError as e:
        out.body = f"{type(e).__name__}: {e}"
    out.seconds = time.perf_counter() - start
    return out


def _chunks(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    yield b'{"prompt": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def _cut_stream(url: str, body: dict[str, Any], events: int = 2) -> int:
    """Start a streaming completion, read `events` events, leave: 1 once it had started, else 0."""
    seen = 0
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen >= events:
                    break
    return int(seen >= events)


def timed_valid(url: str, body: dict[str, Any] | None = None) -> tuple[float, str]:
    """The valid request alone: its time and text."""
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json=body or VALID, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["choices"][0]["text"]


def run_mix(url: str, valid: bool = True, cut: int = 6, body: dict[str, Any] | None = None,
            big_mb: int = 64, chunked_mb: int = 8) -> MixResult:
    """Send the valid request (unless not `valid`), then at once the 30 malformed requests, a `big_mb` MB
    body, a chunked `chunked_mb` MB body and `cut` streams that leave after two events."""
    body = body or VALID
    model = str(body.get("model", "tiny"))
    requests = [(name, path, raw if isinstance(raw, bytes) else json.dumps(raw).encode(), expected, None)
                for name, path, raw, expected in malformed(model)]
    requests.append((f"{big_mb} MB body", "/v1/completions",
                     b'{"prompt": "' + b"x" * (big_mb << 20) + b'"}', (413,), None))
    result = MixResult()
    ready = threading.Event()

    def run_valid() -> None:
        ready.set()
        result.valid_s, result.valid_text = timed_valid(url, body)

    with ThreadPoolExecutor(len(requests) + cut + 2) as pool:
        valid_done = pool.submit(run_valid) if valid else None
        ready.wait(5)
        if valid:
            time.sleep(0.05)  # its request is on the wire first
        refusals = [pool.submit(_post, url, name, path, raw, expected, headers)
                    for name, path, raw, expected, headers in requests]
        refusals.append(pool.submit(_post, url, f"chunked {chunked_mb} MB body", "/v1/completions",
                                    _chunks(chunked_mb << 20), (413,)))
        cuts = [pool.submit(_cut_stream, url, {**body, "prompt": f"{i}: {body.get('prompt', 'hi')}"})
                for i in range(cut)]
        result.refused = [f.result() for f in refusals]
        result.cut = sum(f.result() for f in cuts)
        if valid_done is not None:
            valid_done.result()
    return result
