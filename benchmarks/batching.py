"""Concurrent requests against one-at-a-time on `specdecode serve`: aggregate throughput, each request's
latency against its latency alone, and whether the greedy texts are the same.

    python benchmarks/batching.py --max-tokens 64 256 --out docs/benchmarks/DATE-batching

For each server configuration (defaults, --parallel 8, no draft model while batched, --deterministic ...)
and each answer length it starts the server afresh, sends 8 chat requests one after another (each alone:
its latency and text are the references), then the same 8 at the same moment. Requests ask for no prefix
reuse, so the second pass reads its prompts again as the first did. The prompts are general chat
requests written for this benchmark (not the tuned suite). At the end the built-in target is loaded here
to give the top-2 logit margin where a concurrent text first differs from its one-at-a-time text.
Writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import Ours, one, write_outputs  # noqa: E402
from specdecode.machine import describe  # noqa: E402

PROMPTS = [
    "Explain the difference between a process and a thread to a new programmer.",
    "Write a Python function that parses a duration like '1h30m' into seconds, with tests.",
    "What are three good habits for writing commit messages? Give an example of each.",
    "Write a SQL query that finds the five customers with the highest total order value.",
    "Summarise how HTTPS protects a connection, step by step.",
    "Write a short story opening about a lighthouse keeper who finds a radio.",
    "Convert this JavaScript to Python: const xs = [1,2,3].map(x => x * 2).filter(x => x > 2);",
    "Give me a checklist for reviewing a pull request in a small team.",
]
CONFIGS = {
    "--parallel 4 (the default before 2026-12-06)": ["--parallel", "4"],
    "--parallel 8": ["--parallel", "8"],
    "--parallel 8 --draft ngram": ["--parallel", "8", "--draft", "ngram"],
    "--parallel 8 --deterministic": ["--parallel", "8", "--deterministic"],
}


async def sequential(url: str, max_tokens: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=3600) as client:
        return [await one(client, url, [{"role": "user", "content": p}], max_tokens, {"cache_prompt": False})
                for p in PROMPTS]


async def together(url: str, max_tokens: int) -> tuple[list[dict[str, Any]], float]:
    async with httpx.AsyncClient(timeout=3600) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*[one(client, url, [{"role": "user", "content": p}], max_tokens,
                                          {"cache_prompt": False}) for p in PROMPTS])
        return list(runs), time.perf_counter() - start


def measure(name: str, args: list[str], max_tokens: int, port: int) -> dict[str, Any]:
    parallel = int(args[args.index("--parallel") + 1]) if "--parallel" in args else 8  # serve's default
    rest = [a for i, a in enumerate(args) if a != "--parallel" and (i == 0 or args[i - 1] != "--parallel")]
    server = Ours(parallel, port, [*rest, "--ctx-size", "16384"])  # room for 8 answers in any layout
    try:
        asyncio.run(together(server.url, 4))  # warm-up: first-call set-up, calibration
        alone = asyncio.run(sequential(server.url, max_tokens))
        concurrent, wall = asyncio.run(together(server.url, max_tokens))
    finally:
        server.close()
    tokens_alone = sum(r["completion_tokens"] for r in alone)
    tokens = sum(r["completion_tokens"] for r in concurrent)
    seq_wall = sum(r["latency_s"] for r in alone)
    ratios = [c["latency_s"] / a["latency_s"] for a, c in zip(alone, concurrent, strict=True)]
    equal = sum(a["text"] == c["text"] for a, c in zip(alone, concurrent, strict=True))
    row = {"config": name, "args": args, "max_tokens": max_tokens,
           "one_at_a_time_tokens_per_s": tokens_alone / seq_wall, "concurrent_tokens_per_s": tokens / wall,
           "speedup": (tokens / wall) / (tokens_alone / seq_wall),
           "latency_ratio_max": max(ratios), "latency_ratio_median": statistics.median(ratios),
           "alone_latency_s": [a["latency_s"] for a in alone],
           "concurrent_latency_s": [c["latency_s"] for c in concurrent],
           "texts_equal": equal, "texts": len(PROMPTS), "alone": alone, "concurrent": concurrent}
    print(f"{name}, {max_tokens} tokens: one at a time {row['one_at_a_time_tokens_per_s']:.2f} tok/s, "
          f"8 at once {row['concurrent_tokens_per_s']:.2f} tok/s ({row['speedup']:.2f}x), latency "
          f"max {row['latency_ratio_max']:.2f}x alone, texts equal {equal}/{len(PROMPTS)}", flush=True)
    return row


def margins(rows: list[dict[str, Any]]) -> None:
    """Add the target's top-2 logit margin at the first difference of each unequal pair."""
    import specdecode as sd
    from specdecode.compare import first_divergence

    if all(r["texts_equal"] == r["texts"] for r in rows):
        return
    target = sd.load_model("qwen2.5-coder-1.5b", quiet=True)
    tok = target.tokenizer
    for row in rows:
        if "--deterministic" in row["args"]:
            continue  # its kernels differ from the default ones the margin would be read with
        row["margins"] = []
        for prompt, a, c in zip(PROMPTS, row["alone"], row["concurrent"], strict=True):
            if a["text"] == c["text"]:
                continue
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
            div = first_divergence(target, ids, tok.encode(a["text"], add_special_tokens=False),
                                   tok.encode(c["text"], add_special_tokens=False))
            row["margins"].append(None if div is None else round(div.top2_margin, 3))


def report(results: dict[str, Any]) -> str:
    lines = [f"# Concurrent requests against one at a time, {results['date']}", "",
             f"Machine: {results['machine']}", "", f"Command: `{results['command']}`", "",
             "| configuration | answer tokens | one at a time tok/s | 8 at once tok/s | speed-up | "
             "latency vs alone, max | median | texts equal | margins where they differ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        m = ", ".join("-" if x is None else f"{x:.3f}" for x in r.get("margins", [])) or "-"
        lines.append(f"| {r['config']} | {r['max_tokens']} | {r['one_at_a_time_tokens_per_s']:.2f} | "
                     f"{r['concurrent_tokens_per_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['latency_ratio_max']:.2f}x | {r['latency_ratio_median']:.2f}x | "
                     f"{r['texts_equal']}/{r['texts']} | {m} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": describe(),
                               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "rows": []}
    port = 18800
    for max_tokens in args.max_tokens:
        for name in names:
            port += 1
            results["rows"].append(measure(name, CONFIGS[name], max_tokens, port))
    margins(results["rows"])
    text = report(results)
    print(text)
    write_outputs(args.out, results, text)


if __name__ == "__main__":
    main()
