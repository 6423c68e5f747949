"""`specdecode serve` in a subprocess on loopback, for the tests that need a real server process: started
with the given arguments, waited for until /health answers, stopped (and its log shown) afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def serve_process(args: list[str], port: int, log_path: Path, wait_s: float = 180) -> Iterator[str]:
    """Run `python -m specdecode.cli serve ARGS --port PORT`, logging to `log_path`; yields its base URL."""
    log = open(log_path, "w+b")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "specdecode.cli", "serve", *args, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        print(log.read().decode(errors="replace")[-3000:])  # shown by pytest when a test failed
        log.close()
