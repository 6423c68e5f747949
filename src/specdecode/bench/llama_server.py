"""llama.cpp's own server as a benchmark peer: plain decoding and its speculative modes (n-gram lookups, a
draft model), measured through its HTTP API with the `timings` it reports. `make llama-server` builds it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .peers import Run, Sampling

# our name for each mode -> llama-server's arguments (a draft model's path is appended for draft-simple)
MODES: dict[str, list[str]] = {
    "plain": [],
    "ngram-simple": ["--spec-type", "ngram-simple"],
    "ngram-mod": ["--spec-type", "ngram-mod"],
    "draft-simple": ["--spec-type", "draft-simple", "-md"],
}


def find_llama_server() -> Path | None:
    """The llama-server binary: $SPECDECODE_LLAMA_SERVER, build/llama-server/bin (from `make llama-server`),
    or one on PATH; None when there is none."""
    candidates = [os.environ.get("SPECDECODE_LLAMA_SERVER"), "build/llama-server/bin/llama-server",
                  shutil.which("llama-server")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c).resolve()
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServerRunner:
    """One llama-server process in one mode, on a free localhost port; `close()` stops it. `parallel`: its
    slots (-np), each with `n_ctx` positions; `extra`: more llama-server arguments."""

    family = "llama-server"

    def __init__(self, binary: Path, gguf: str, mode: str = "plain", draft_gguf: str | None = None,
                 threads: int | None = None, n_ctx: int = 8192, startup_s: float = 180.0,
                 parallel: int = 1, extra: list[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown llama-server mode {mode!r}: choose from {', '.join(MODES)}")
        args = list(MODES[mode])
        if mode == "draft-simple":
            if not draft_gguf:
                raise ValueError("llama-server's draft-simple mode needs the draft's GGUF file")
            args.append(draft_gguf)
        from ..machine import available_cores

        threads = threads or available_cores()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"llama-server/{mode}"
        env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        cmd = [str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads),
               "-tb", str(threads), "-c", str(n_ctx * parallel), "-np", str(parallel), *args, *(extra or [])]
        # its log goes to a file: a pipe nobody reads fills up (or, closed, kills it with SIGPIPE mid-request)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed with the runner)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-800:]
                raise RuntimeError(f"llama-server ({mode}) exited with {self.proc.returncode}: {err}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            self.close()
            raise RuntimeError(f"llama-server ({mode}) did not become healthy in {startup_s:.0f}s")

    def run(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> Run:
        body: dict[str, Any] = {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "seed": seed,
                                "cache_prompt": False, "return_tokens": True, "stream": False,
                                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                                "min_p": 0.0, "repeat_penalty": 1.0}
        req = urllib.request.Request(f"{self.url}/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            out = json.loads(r.read())
        t = out.get("timings", {})
        prompt_s, predicted_s = t.get("prompt_ms", 0.0) / 1000, t.get("predicted_ms", 0.0) / 1000
        tokens = [int(x) for x in out.get("tokens", [])]
        drafted, accepted = int(t.get("draft_n", 0) or 0), int(t.get("draft_n_accepted", 0) or 0)
        stats = {"drafted": drafted, "accepted": accepted,
                 "acceptance_rate": accepted / drafted if drafted else 0.0,
                 "prefill_s": prompt_s, "server_tokens_per_s": t.get("predicted_per_second")}
        # its own timings, without HTTP: the first token comes out of the prompt's processing
        return Run(tokens, prompt_s + predicted_s, prompt_s, 1 if tokens else 0, stats)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
