"""The prefix cache where users feel it: time to first token when a request repeats what earlier ones read.

    python benchmarks/multiturn.py --out docs/benchmarks/DATE-prefix-cache

Servers, one at a time on the built-in target (greedy, 2 threads, 4 slots): `specdecode serve` (prefix
cache on, the default), `specdecode serve --no-prefix-cache`, and `llama-server -np 4` (its slots keep
their caches; `make llama-server`). Each runs the same workloads, built from files of the running
Python's standard library (text none of our defaults were tuned on):
  a) a 4-turn chat over a ~2k-token module: the file and a question, then three follow-ups;
  b) 8 users sharing one ~1.5k-token system prompt, different questions: sent all at once (on one
     system prompt) and one after another (on another);
  c) an agent loop: 6 requests, each the previous conversation plus ~100 tokens of tool output;
and, without a server, d) `specdecode edit` of one file three times with different instructions, with
--prompt-cache and without. Writes results.json, report.md and ttft.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
from serve_load import Ours, _gguf  # noqa: E402
from serve_load import one as _one  # noqa: E402
from specdecode.bench.llama_server import LlamaServerRunner, find_llama_server  # noqa: E402
from specdecode.machine import describe  # noqa: E402

CTX = 4096  # positions per slot
SYSTEM = "You are a senior Python reviewer. Answer briefly and precisely."


RETRIES: list[str] = []  # requests sent again after the server dropped the connection (reported)


async def one(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat request (serve_load.one); sent once more on a fresh connection when the server
    drops it before answering (seen with llama-server on a reused keep-alive connection)."""
    try:
        return await _one(client, url, messages, max_tokens, extra)
    except httpx.RemoteProtocolError as exc:
        RETRIES.append(f"{url}: {exc}")
        async with httpx.AsyncClient(timeout=3600) as fresh:
            return await _one(fresh, url, messages, max_tokens, extra)


def stdlib_text(module: str, tokens: int) -> str:
    """The first ~`tokens` tokens (4 characters each, roughly) of a standard-library module's source."""
    import importlib

    source = Path(importlib.import_module(module).__file__).read_text()  # type: ignore[arg-type]
    out, size = [], 0
    for line in source.splitlines(keepends=True):
        if size > 3.6 * tokens:
            break
        out.append(line)
        size += len(line)
    return "".join(out)


def chat_a() -> tuple[list[dict[str, str]], list[str]]:
    doc = stdlib_text("textwrap", 2000)
    first = f"Here is a Python module:\n\n```python\n{doc}```\n\nWhat does this module do? Two sentences."
    follow = ["Which function would you use to indent every line of a string?",
              "Does TextWrapper handle tabs? Answer in one sentence.",
              "Name one edge case a test suite for this module should cover."]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first}], follow


def shared_b(module: str) -> str:
    doc = stdlib_text(module, 1500)
    return f"{SYSTEM} Answer questions about this reference module.\n\n```python\n{doc}```"


QUESTIONS_B = ["What is the main class here?", "Name two public functions.", "Is this module thread-safe?",
               "What would you rename, and why?", "Write a one-line docstring for the module.",
               "Which function is the most complex?", "What exceptions can be raised?",
               "Suggest one unit test."]


def agent_c() -> tuple[list[dict[str, str]], list[str]]:
    task = ("You are a coding agent. You may call tools by writing `CALL tool(args)`. Tools: read(path), "
            "grep(pattern), run(cmd). Task: find why the configuration parser in this project ignores "
            "comments that start after a value, and propose a fix. Think step by step, one tool per reply.")
    source = stdlib_text("configparser", 1200).splitlines(keepends=True)
    chunk = max(1, len(source) // 6)
    outputs = ["".join(source[i * chunk : (i + 1) * chunk])[:400] for i in range(6)]
    return [{"role": "system", "content": task}], [f"Tool output:\n```\n{o}```" for o in outputs]


async def run_a(url: str, extra: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    messages, follow = chat_a()
    turns = []
    async with httpx.AsyncClient(timeout=3600) as client:
        for t in range(4):
            r = await one(client, url, messages, max_tokens, extra)
            turns.append({k: r[k] for k in ("ttft_s", "latency_s", "completion_tokens", "usage")})
            if t < 3:
                messages = messages + [{"role": "assistant", "content": r["text"]},
                                       {"role": "user", "content": follow[t]}]
    return turns


async def run_b(url: str, extra: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=3600) as client:
        system = shared_b("difflib")
        runs = await asyncio.gather(*[one(client, url, [{"role": "system", "content": system},
                                                        {"role": "user", "content": q}], max_tokens, extra)
                                      for q in QUESTIONS_B])
        out["concurrent"] = [{k: r[k] for k in ("ttft_s", "latency_s", "usage")} for r in runs]
        system = shared_b("calendar")
        seq = []
        for q in QUESTIONS_B:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            r = await one(client, url, messages, max_tokens, extra)
            seq.append({k: r[k] for k in ("ttft_s", "latency_s", "usage")})
        out["sequential"] = seq
    return out


async def run_c(url: str, extra: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    messages, outputs = agent_c()
    steps = []
    async with httpx.AsyncClient(timeout=3600) as client:
        for i in range(6):
            messages = messages + [{"role": "user", "content": outputs[i]}]
            r = await one(client, url, messages, max_tokens, extra)
            steps.append({k: r[k] for k in ("ttft_s", "latency_s", "completion_tokens", "usage")})
            messages = messages + [{"role": "assistant", "content": r["text"]}]
    return steps


def run_d(cache: bool, max_tokens: int) -> list[dict[str, Any]]:
    import importlib

    path = Path(importlib.import_module("shlex").__file__)  # type: ignore[arg-type]
    work = Path(tempfile.mkdtemp(prefix="edit-d-"))
    target = work / "shlex_copy.py"
    target.write_text(path.read_text())
    instructions = ["Add type hints to the split function.", "Rename the class shlex to Lexer.",
                    "Add a module docstring line saying the file is vendored."]
    runs = []
    for instruction in instructions:
        cmd = [sys.executable, "-m", "specdecode.cli", "edit", str(target), "-i", instruction, "--json",
               "--quiet", "--max-new-tokens", str(max_tokens)]
        if cache:
            cmd += ["--prompt-cache", str(work / "cache")]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"edit failed: {proc.stderr[-800:]}")
        stats = json.loads(proc.stdout)["stats"]
        runs.append({"instruction": instruction, "wall_s": wall, "prefill_s": stats["prefill_s"],
                     "prompt_tokens": stats["prompt_tokens"], "cached_tokens": stats["cached_tokens"]})
    return runs


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(res: dict[str, Any]) -> str:
    names = list(res["servers"])
    peer = "llama-server -np 4"
    lines = [f"# Prefix cache: time to first token, {res['date']}", "", f"Machine: {res['machine']}", "",
             f"Command: `{res['command']}`; built-in target Qwen2.5-Coder-1.5B Q4_K_M, greedy, 4 slots of "
             f"{CTX} positions, 2 threads; max tokens {res['max_tokens']}.", ""]

    def ran(key: str) -> bool:  # a workload every server ran (--only may leave some out)
        return all(key in res["servers"][n] for n in names)

    if ran("a"):
        lines += ["## a) 4-turn chat over a ~2k-token module (TTFT s per turn)", "",
                  "| server | turn 1 | turn 2 | turn 3 | turn 4 | median 2-4 | vs llama-server "
                  "| cached (turns 2-4) |",
                  "|---|---|---|---|---|---|---|---|"]
    med_a = {n: median([t["ttft_s"] for t in res["servers"][n]["a"][1:]]) for n in names} if ran("a") else {}
    for n in names if ran("a") else []:
        turns = res["servers"][n]["a"]
        cached = [str(t["usage"].get("prompt_tokens_details", {}).get("cached_tokens", "-"))
                  for t in turns[1:]]
        ratio = f"{med_a[n] / med_a[peer]:.2f}x" if peer in med_a else "-"
        lines.append(f"| {n} | " + " | ".join(f"{t['ttft_s']:.2f}" for t in turns) +
                     f" | {med_a[n]:.2f} | {ratio} | {', '.join(cached)} |")
    if ran("b"):
        lines += ["", "## b) 8 users, one ~1.5k-token system prompt (TTFT s)", "",
                  "| server | all at once: median | max | one after another: median | first | rest median |",
                  "|---|---|---|---|---|---|"]
    for n in names if ran("b") else []:
        b = res["servers"][n]["b"]
        conc, seq = [r["ttft_s"] for r in b["concurrent"]], [r["ttft_s"] for r in b["sequential"]]
        lines.append(f"| {n} | {median(conc):.2f} | {max(conc):.2f} | {median(seq):.2f} | {seq[0]:.2f} | "
                     f"{median(seq[1:]):.2f} |")
    if ran("c"):
        lines += ["", "## c) agent loop: 6 requests, each the conversation so far + ~100 tokens (TTFT s)", "",
                  "| server | " + " | ".join(f"step {i + 1}" for i in range(6))
                  + " | median 2-6 | vs llama-server |",
                  "|---|" + "---|" * 8]
    med_c = {n: median([s["ttft_s"] for s in res["servers"][n]["c"][1:]]) for n in names} if ran("c") else {}
    for n in names if ran("c") else []:
        steps = res["servers"][n]["c"]
        ratio = f"{med_c[n] / med_c[peer]:.2f}x" if peer in med_c else "-"
        lines.append(f"| {n} | " + " | ".join(f"{s['ttft_s']:.2f}" for s in steps) +
                     f" | {med_c[n]:.2f} | {ratio} |")
    if res.get("d"):
        lines += ["", "## d) `specdecode edit` of one file, three instructions (prompt read time, s)", "",
                  "| | edit 1 | edit 2 | edit 3 | 2nd and 3rd vs 1st | cached tokens |",
                  "|---|---|---|---|---|---|"]
        for label, runs in res["d"].items():
            p = [r["prefill_s"] for r in runs]
            lines.append(f"| {label} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} | "
                         f"{p[1] / p[0]:.2f}x, {p[2] / p[0]:.2f}x | "
                         f"{', '.join(str(r['cached_tokens']) for r in runs)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for n, s in res["servers"].items():
        if "a" in s:
            axes[0].plot(range(1, 5), [t["ttft_s"] for t in s["a"]], marker="o", label=n)
        if "c" in s:
            axes[2].plot(range(1, 7), [t["ttft_s"] for t in s["c"]], marker="o", label=n)
    names = [n for n, s in res["servers"].items() if "b" in s]
    conc = [median([r["ttft_s"] for r in res["servers"][n]["b"]["concurrent"]]) for n in names]
    seq = [median([r["ttft_s"] for r in res["servers"][n]["b"]["sequential"]]) for n in names]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], conc, width=0.4, label="8 at once")
    axes[1].bar([i + 0.2 for i in x], seq, width=0.4, label="one after another")
    axes[1].set_xticks(list(x), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    titles = ["a) 4-turn chat, ~2k-token file", "b) 8 users, shared 1.5k system prompt",
              "c) agent loop, +100 tokens per step"]
    for ax, title, xl in zip(axes, titles, ["turn", "", "step"], strict=True):
        ax.set_title(title)
        ax.set_ylabel("time to first token (s)")
        if xl:
            ax.set_xlabel(xl)
        ax.set_yscale("log")
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"Prefix cache, {res['machine']}, {res['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--only", default="a,b,c,d", help="workloads to run (a,b,c,d)")
    ap.add_argument("--servers", default="ours,llama-server,ours-no-cache")
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true",
                    help="add to the servers already in --out's results.json (a run in parts)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    gguf = _gguf()
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": describe(),
                           "max_tokens": args.max_tokens, "servers": {},
                           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if args.append and args.out and (Path(args.out) / "results.json").exists():
        res = json.loads((Path(args.out) / "results.json").read_text())
        res["command"] += " ; " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    port = 18900
    for kind in args.servers.split(","):
        port += 1
        if kind == "llama-server":
            binary = find_llama_server()
            if binary is None:
                print("llama-server not built (`make llama-server`): skipped", flush=True)
                continue
            server: Any = LlamaServerRunner(binary, gguf, "plain", n_ctx=CTX, parallel=4)
            name = "llama-server -np 4"
        else:
            # the same KV memory as llama-server's: 4 x CTX positions (ours shares them between the slots)
            flags = ["--ctx-size", str(4 * CTX)] + (["--no-prefix-cache"] if kind == "ours-no-cache" else [])
            server = Ours(4, port, flags)
            name = "specdecode serve" + (" --no-prefix-cache" if kind == "ours-no-cache" else "")
        try:
            asyncio.run(run_a_warm(server.url))
            entry: dict[str, Any] = {}
            for key, fn in (("a", run_a), ("b", run_b), ("c", run_c)):
                if key in only:
                    entry[key] = asyncio.run(fn(server.url, {}, args.max_tokens))
                    print(f"{name}: {key} done", flush=True)
            res["servers"][name] = entry
        finally:
            server.close()
        res["retries"] = res.get("retries", []) + RETRIES
        RETRIES.clear()
        if args.out:  # what is measured so far survives an interrupted run
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.json").write_text(json.dumps(res, indent=1))
    if "d" in only:
        res["d"] = {"--prompt-cache": run_d(True, 16), "no cache": run_d(False, 16)}
    text = report(res)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=1))
        (out / "report.md").write_text(text)
        plot(res, out / "ttft.png")


async def run_a_warm(url: str) -> None:
    """One short unrelated request: first-call set-up is not what the workloads measure."""
    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, url, [{"role": "user", "content": "Say hi."}], 4, {})


if __name__ == "__main__":
    main()
