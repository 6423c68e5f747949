"""Concurrent clients against `specdecode serve` and `llama-server -np N` on the same GGUF: aggregate tok/s,
time to first token, per-request tok/s.

    python benchmarks/serve_load.py --clients 1 4 8 16 --out docs/benchmarks/DATE-serve-load
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8     # a server already running

With no --url it starts, for each client count N and each round (servers interleaved, one at a time):
ours with --parallel N (continuous batching), ours with --parallel 1 (one request at a time; only at the
counts in --fifo-at), and llama-server -np N (`make llama-server`), each on the built-in target, 2048
positions per slot, greedy. Every client sends one streaming chat request (prompts from
benchmarks/prompts, one per task in turn) at the same moment. Writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from specdecode.bench.llama_server import LlamaServerRunner, find_llama_server  # noqa: E402
from specdecode.bench.workload import load_prompts  # noqa: E402
from specdecode.machine import describe  # noqa: E402

CTX = 2048


async def one(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    start = time.perf_counter()
    first = None
    usage: dict[str, Any] = {}
    text = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            pieces = [c.get("delta", {}).get("content") or "" for c in chunk.get("choices", [])]
            if any(pieces):
                text += pieces
                if first is None:
                    first = time.perf_counter() - start
    latency = time.perf_counter() - start
    tokens = int(usage.get("completion_tokens", 0))
    decode = latency - (first or 0.0)
    return {"ttft_s": first, "latency_s": latency, "completion_tokens": tokens, "text": "".join(text),
            "request_tokens_per_s": (tokens - 1) / decode if tokens > 1 and decode > 0 else None,
            "usage": usage}


async def load(url: str, clients: int, max_tokens: int, api_key: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    prompts = load_prompts(None, None, 1)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=3600, headers=headers) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*[one(client, url, prompts[i % len(prompts)].messages, max_tokens,
                                          extra or {}) for i in range(clients)])
        wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for r in runs)
    per_request = [r["request_tokens_per_s"] for r in runs if r["request_tokens_per_s"]]
    return {"clients": clients, "wall_s": wall, "generated_tokens": tokens,
            "aggregate_tokens_per_s": tokens / wall,
            "ttft_s": {"median": statistics.median(r["ttft_s"] for r in runs),
                       "max": max(r["ttft_s"] for r in runs)},
            "latency_s": {"median": statistics.median(r["latency_s"] for r in runs),
                          "max": max(r["latency_s"] for r in runs)},
            "request_tokens_per_s_median": statistics.median(per_request) if per_request else None,
            "runs": runs}


def _wait_healthy(url: str, proc: subprocess.Popen, what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} did not come up in {seconds:.0f} s")


class Ours:
    """`specdecode serve` as a subprocess."""

    def __init__(self, parallel: int, port: int, args: list[str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "specdecode.cli", "serve", "--port", str(port), "--parallel",
               str(parallel), "--ctx-size", str(CTX), "--quiet", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _wait_healthy(self.url, self.proc, "specdecode serve")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _gguf() -> str:
    from specdecode.registry import gguf_file, lookup

    path = gguf_file(lookup("qwen2.5-coder-1.5b"))
    if path is None:
        sys.exit("the built-in target's GGUF is not cached: run `specdecode models fetch qwen2.5-coder-1.5b`")
    return str(path)


def report(results: dict[str, Any]) -> str:
    lines = [f"# Serving under load, {results['date']}", "", f"Machine: {results['machine']}", "",
             f"Command: `{results['command']}`", "",
             "| clients | server | aggregate tok/s | vs llama-server | TTFT median s | TTFT max s | "
             "per-request tok/s | latency median s |", "|---|---|---|---|---|---|---|---|"]
    by = {}
    for row in results["rows"]:
        by.setdefault((row["clients"], row["server"]), []).append(row)
    for (clients, server), rows in sorted(by.items()):
        agg = statistics.median(r["aggregate_tokens_per_s"] for r in rows)
        peer = by.get((clients, f"llama-server -np {clients}"))
        ratio = f"{agg / statistics.median(r['aggregate_tokens_per_s'] for r in peer):.2f}x" if peer else "-"
        ttft = statistics.median(r["ttft_s"]["median"] for r in rows)
        ttft_max = statistics.median(r["ttft_s"]["max"] for r in rows)
        per = [r["request_tokens_per_s_median"] for r in rows if r["request_tokens_per_s_median"]]
        lat = statistics.median(r["latency_s"]["median"] for r in rows)
        lines.append(f"| {clients} | {server} | {agg:.2f} | {ratio} | {ttft:.2f} | {ttft_max:.2f} | "
                     f"{statistics.median(per) if per else 0:.2f} | {lat:.1f} |")
    lines += ["", f"Medians over {results['rounds']} round(s); each round starts every server afresh, "
              "servers interleaved."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="load this running server instead of starting servers")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fifo-at", type=int, nargs="*", default=[8],
                    help="client counts at which ours also runs one request at a time (--parallel 1)")
    ap.add_argument("--serve-args", default="", help="extra arguments for specdecode serve")
    ap.add_argument("--no-llama-server", action="store_true")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--out", default=None, help="a folder for results.json and report.md")
    args = ap.parse_args()
    if args.url:
        for n in args.clients:
            res = asyncio.run(load(args.url, n, args.max_tokens, args.api_key))
            print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
        return
    binary = None if args.no_llama_server else find_llama_server()
    if binary is None and not args.no_llama_server:
        sys.exit("llama-server not found: run `make llama-server`, or pass --no-llama-server")
    gguf = _gguf()
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": describe(),
                               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                               "rounds": args.rounds, "max_tokens": args.max_tokens, "ctx_per_slot": CTX,
                               "rows": []}
    port = 18700
    for rnd in range(args.rounds):
        for n in args.clients:
            servers: list[tuple[str, Any]] = [(f"specdecode --parallel {n}", ("ours", n))]
            if binary is not None:
                servers.append((f"llama-server -np {n}", ("llama", n)))
            if n in args.fifo_at and n > 1:
                servers.append(("specdecode --parallel 1", ("ours", 1)))
            for name, (kind, parallel) in servers:
                port += 1
                if kind == "ours":
                    server: Any = Ours(parallel, port, args.serve_args.split())
                    extra: dict[str, Any] = {"cache_prompt": False}  # as llama-server's: no reuse
                else:
                    server = LlamaServerRunner(binary, gguf, "plain", n_ctx=CTX, parallel=parallel)
                    extra = {"cache_prompt": False}
                try:
                    asyncio.run(load(server.url, 1, 4, args.api_key, extra))  # warm: first-call set-up
                    res = asyncio.run(load(server.url, n, args.max_tokens, args.api_key, extra))
                finally:
                    server.close()
                res.update(server=name, round=rnd)
                results["rows"].append(res)
                agg, ttft = res["aggregate_tokens_per_s"], res["ttft_s"]["median"]
                print(f"round {rnd}, {n} clients, {name}: {agg:.2f} tok/s, TTFT {ttft:.2f} s", flush=True)
    text = report(results)
    print(text)
    write_outputs(args.out, results, text)


def write_outputs(out: str | None, results: dict[str, Any], text: str) -> None:
    """results.json and report.md in the folder `out` (nothing when None)."""
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
        (folder / "report.md").write_text(text)


if __name__ == "__main__":
    main()
