"""Load a running `specdecode serve` with N concurrent streaming chat clients; print latency and throughput.

    specdecode serve --quiet &                      # wait for "serving ..."
    python benchmarks/serve_load.py --clients 8 --max-tokens 32 --out results/serve-load.json

Each client sends one chat request (prompts from benchmarks/prompts, one per task in turn), greedy, and
streams it. Reported per request: time to first token and total latency as the client saw them, the
server's queue wait, completion tokens; overall: requests/s and generated tokens/s over the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from specdecode.bench.workload import load_prompts  # noqa: E402


async def one(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int) -> dict:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    first = None
    usage: dict = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
    return {"ttft_s": first, "latency_s": time.perf_counter() - start, **usage}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--out", default=None, help="also write the samples and summary as JSON here")
    args = ap.parse_args()
    prompts = load_prompts(None, None, 1)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(timeout=3600, headers=headers) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(
            *[
                one(client, args.url, prompts[i % len(prompts)].messages, args.max_tokens)
                for i in range(args.clients)
            ]
        )
        wall = time.perf_counter() - start
    tokens = sum(r["completion_tokens"] for r in runs)
    summary = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "wall_s": wall,
        "generated_tokens": tokens,
        "throughput_tokens_per_s": tokens / wall,
        "requests_per_min": 60 * len(runs) / wall,
        "latency_s": {
            "median": statistics.median(r["latency_s"] for r in runs),
            "max": max(r["latency_s"] for r in runs),
        },
        "ttft_s": {
            "median": statistics.median(r["ttft_s"] for r in runs),
            "max": max(r["ttft_s"] for r in runs),
        },
        "queue_s": {
            "median": statistics.median(r["queue_s"] for r in runs),
            "max": max(r["queue_s"] for r in runs),
        },
        "decode_tokens_per_s_per_request": statistics.median(r["decode_tokens_per_s"] for r in runs),
        "acceptance_rate": statistics.fmean(r["acceptance_rate"] for r in runs),
        "tokens_per_target_call": statistics.fmean(r["tokens_per_target_call"] for r in runs),
    }
    print("| # | TTFT s | latency s | queue s | tokens | decode tok/s | tokens/call |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        print(
            f"| {i} | {r['ttft_s']:.1f} | {r['latency_s']:.1f} | {r['queue_s']:.1f} | "
            f"{r['completion_tokens']} | {r['decode_tokens_per_s']:.2f} | {r['tokens_per_target_call']:.2f} |"
        )
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
