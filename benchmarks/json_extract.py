"""JSON extraction: constrained speculative decoding against our own unconstrained plain decoding.

    python benchmarks/json_extract.py --rounds 2 --out docs/benchmarks/DATE-json

Eight extraction tasks (a text and a JSON schema each: nested objects, arrays, enums, numbers, booleans),
written for this benchmark, on the built-in target (Qwen2.5-Coder-1.5B-Instruct, llama.cpp), greedy.
Three runs per task and round, interleaved (the order rotates each round):
- `plain`: plain decoding of the target, no constraint (what a user gets without structured output);
- `constrained`: plain decoding under the schema (no drafts at all, not even forced tokens);
- `speculative`: the schema as a constraint, the grammar's forced tokens and n-gram lookups as drafts.
Reports per run tokens, wall and decode tok/s, target calls, drafted/accepted by source, schema validity
(checked by a small validator here, independent of the grammar engine), and whether the speculative text
equals the constrained one (greedy, so it must up to floating-point near-ties). Medians over tasks and
rounds. Writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import specdecode as sd  # noqa: E402
from specdecode.drafters import NgramDrafter  # noqa: E402
from specdecode.machine import describe  # noqa: E402

# the eight tasks, a text and a JSON schema each (written for this benchmark); --heldout: six more, written
# by a helper who never saw the grammar engine, the drafters or any results
TASKS_FILE = Path(__file__).parent / "json_extract_tasks.json"
HELDOUT_FILE = Path(__file__).parent / "heldout" / "json_extract_tasks.json"


def valid(value: Any, schema: dict[str, Any]) -> bool:
    """`value` matches `schema` (the keywords the task sets use: type or a list of types, enum, const,
    properties, required, additionalProperties, items, minItems/maxItems, minimum/maximum), checked
    without the grammar engine."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    kinds = schema.get("type")
    if kinds is None:
        return True
    return any(_valid_as(value, kind, schema) for kind in (kinds if isinstance(kinds, list) else [kinds]))


def _valid_as(value: Any, kind: str, schema: dict[str, Any]) -> bool:
    if kind == "object":
        props = schema.get("properties", {})
        if not isinstance(value, dict) or any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
        return all(valid(v, props[k]) for k, v in value.items() if k in props)
    if kind == "array":
        if not isinstance(value, list) or not schema.get("minItems", 0) <= len(value):
            return False
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return False
        return all(valid(v, schema.get("items", {})) for v in value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        return False
    return ok and schema.get("minimum", value) <= value <= schema.get("maximum", value)


def parse(text: str) -> Any:
    """The JSON in a reply: the whole text, else the first fenced or braced block (for unconstrained runs)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            return json.loads(text[start : end + 1])
        except ValueError:
            return None
    return None


def messages(task: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You extract structured data. Reply with one JSON object "
             "that follows the given JSON schema, nothing else."},
            {"role": "user",
             "content": f"JSON schema:\n{json.dumps(task['schema'])}\n\nText:\n{task['text']}"}]


def run(gen: sd.SpeculativeGenerator, task: dict[str, Any], mode: str, max_tokens: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(chat=True, max_new_tokens=max_tokens, temperature=0, cache_prompt=False)
    if mode != "plain":
        kwargs["constraint"] = sd.Constraint.json(task["schema"], strict=True)
    if mode == "constrained":
        kwargs["grammar_drafts"] = False
    start = time.perf_counter()
    res = gen.generate(messages(task), **kwargs)
    wall = time.perf_counter() - start
    s = res.stats
    obj = parse(res.text)
    return {"task": task["name"], "mode": mode, "tokens": s.new_tokens, "wall_s": wall,
            "tokens_per_s": s.new_tokens / wall, "decode_tokens_per_s": s.decode_tokens_per_s,
            "prefill_s": s.prefill_s, "target_calls": s.target_calls, "finish_reason": s.finish_reason,
            "drafted_by_source": s.drafted_by_source, "accepted_by_source": s.accepted_by_source,
            "gamma_histogram": {str(k): v for k, v in s.gamma_histogram.items()},
            "valid": obj is not None and valid(obj, task["schema"]), "text": res.text}


def run_llama_server(server: Any, task: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """The same task through llama-server's OpenAI endpoint with the same schema as `response_format`."""
    import httpx

    body = {"messages": messages(task), "max_tokens": max_tokens, "temperature": 0, "cache_prompt": False,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": task["name"], "schema": task["schema"], "strict": True}}}
    start = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=900)
    wall = time.perf_counter() - start
    r.raise_for_status()
    out = r.json()
    text = out["choices"][0]["message"]["content"] or ""
    tokens = int(out["usage"]["completion_tokens"])
    timings = out.get("timings", {})
    obj = parse(text)
    return {"task": task["name"], "mode": server.name, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall,
            "decode_tokens_per_s": float(timings.get("predicted_per_second", 0)),
            "prefill_s": float(timings.get("prompt_ms", 0)) / 1000, "target_calls": 0,
            "finish_reason": out["choices"][0].get("finish_reason"),
            "valid": obj is not None and valid(obj, task["schema"]), "text": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--tasks", nargs="*", help="task names (default: all of the set)")
    ap.add_argument("--heldout", action="store_true",
                    help="the held-out set (benchmarks/heldout/json_extract_tasks.json) instead of the eight")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--llama-server-modes", default="",
                    help="also run llama-server in these modes (e.g. plain,ngram-mod) with the same schema")
    args = ap.parse_args()
    target = sd.load_model(args.target)
    plain_gen = sd.SpeculativeGenerator(target)
    spec_gen = sd.SpeculativeGenerator(target, NgramDrafter(max_n=3))
    gens = {"plain": plain_gen, "constrained": plain_gen, "speculative": spec_gen}
    every = json.loads((HELDOUT_FILE if args.heldout else TASKS_FILE).read_text())
    tasks = [t for t in every if not args.tasks or t["name"] in args.tasks]
    if not tasks:
        sys.exit(f"no task named {args.tasks}; the set has {', '.join(t['name'] for t in every)}")
    modes = ["plain", "constrained", "speculative"]
    servers = _llama_servers(args.llama_server_modes, tasks[0])
    modes += [s.name for s in servers]
    run(spec_gen, tasks[0], "speculative", 16)  # warm-up (and auto-gamma's cost calibration, cached on disk)
    run(plain_gen, tasks[0], "plain", 16)
    results = []
    for r in range(args.rounds):
        for i, task in enumerate(tasks):
            k = (r + i) % len(modes)
            for mode in modes[k:] + modes[:k]:
                if mode in gens:
                    out = run(gens[mode], task, mode, args.max_tokens)
                else:
                    out = run_llama_server(next(s for s in servers if s.name == mode), task, args.max_tokens)
                out["round"] = r
                results.append(out)
                print(f"round {r} {task['name']:15s} {mode:12s} {out['tokens']:4d} tok {out['wall_s']:6.2f}s "
                      f"{out['decode_tokens_per_s']:6.2f} tok/s decode, {out['target_calls']:4d} calls, "
                      f"valid={out['valid']}", flush=True)
    for server in servers:
        server.close()
    summary = summarise(results, tasks, [s.name for s in servers])
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": describe(), "target": args.target, "rounds": args.rounds, "heldout": args.heldout,
            "max_tokens": args.max_tokens, "drafter": "ngram (max_n=3) + grammar forced tokens",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": results},
                                                      indent=1))
    (args.out / "report.md").write_text(report(meta, summary))
    print(report(meta, summary))


def _llama_servers(modes: str, warmup: dict[str, Any]) -> list[Any]:
    """llama-server (one slot) per requested mode, on the built-in target's GGUF."""
    if not modes:
        return []
    from specdecode.bench.llama_server import LlamaServerRunner, find_llama_server
    from specdecode.registry import BUILTINS, gguf_file

    binary = find_llama_server()
    if binary is None:
        sys.exit("llama-server is not built: run `make llama-server`, or drop --llama-server-modes")
    gguf = str(gguf_file(BUILTINS["qwen2.5-coder-1.5b"], quiet=True))
    servers = [LlamaServerRunner(binary, gguf, m.strip(), n_ctx=4096) for m in modes.split(",") if m.strip()]
    for s in servers:  # warm-up
        run_llama_server(s, warmup, 16)
    return servers


def summarise(results: list[dict[str, Any]], tasks: list[dict[str, Any]],
              peers: list[str] | None = None) -> dict[str, Any]:
    med = statistics.median
    out: dict[str, Any] = {"modes": {}, "tasks": {}}
    for mode in ("plain", "constrained", "speculative", *(peers or [])):
        rs = [r for r in results if r["mode"] == mode]
        out["modes"][mode] = {
            "median_tokens_per_s": med(r["tokens_per_s"] for r in rs),
            "median_decode_tokens_per_s": med(r["decode_tokens_per_s"] for r in rs),
            "median_wall_s": med(r["wall_s"] for r in rs), "median_tokens": med(r["tokens"] for r in rs),
            "valid": f"{sum(r['valid'] for r in rs)}/{len(rs)}",
            "tokens_per_call": sum(r["tokens"] for r in rs) / max(sum(r["target_calls"] for r in rs), 1)}
    for task in tasks:
        by = {m: [r for r in results if r["task"] == task["name"] and r["mode"] == m]
              for m in ("plain", "constrained", "speculative")}
        same = all(a["text"] == b["text"] for a, b in zip(by["constrained"], by["speculative"], strict=True))
        out["tasks"][task["name"]] = {
            m: {"decode_tokens_per_s": med(r["decode_tokens_per_s"] for r in rs),
                "wall_s": med(r["wall_s"] for r in rs), "tokens": rs[0]["tokens"],
                "valid": all(r["valid"] for r in rs)} for m, rs in by.items()}
        out["tasks"][task["name"]]["speculative_equals_constrained"] = same
    m = out["modes"]
    out["speedup_decode_vs_plain"] = m["speculative"]["median_decode_tokens_per_s"] / \
        m["plain"]["median_decode_tokens_per_s"]
    out["speedup_tokens_per_s_vs_plain"] = m["speculative"]["median_tokens_per_s"] / \
        m["plain"]["median_tokens_per_s"]
    out["speedup_decode_vs_constrained"] = m["speculative"]["median_decode_tokens_per_s"] / \
        m["constrained"]["median_decode_tokens_per_s"]
    per_task = [t["plain"]["wall_s"] / t["speculative"]["wall_s"] for t in out["tasks"].values()]
    out["median_wall_ratio_plain_over_speculative"] = med(per_task)
    for peer in peers or []:
        walls = [r["wall_s"] for r in results if r["mode"] == peer]
        ratios = [med(r["wall_s"] for r in results if r["mode"] == peer and r["task"] == t["name"])
                  / med(r["wall_s"] for r in results if r["mode"] == "speculative" and r["task"] == t["name"])
                  for t in tasks]
        out.setdefault("peers", {})[peer] = {
            "median_wall_s": med(walls), "median_wall_ratio_peer_over_speculative": med(ratios),
            "decode_ratio_speculative_over_peer": m["speculative"]["median_decode_tokens_per_s"]
            / max(out["modes"][peer]["median_decode_tokens_per_s"], 1e-9)}
    return out


def report(meta: dict[str, Any], s: dict[str, Any]) -> str:
    lines = [f"# JSON extraction: constrained speculative vs plain ({meta['date']})", "",
             f"Machine: {meta['machine']}. Target {meta['target']} (llama.cpp), greedy, "
             f"{meta['rounds']} rounds interleaved, drafts: {meta['drafter']}.", "",
             "| mode | median tok/s | median decode tok/s | median wall s | median tokens | tokens/call | "
             "schema-valid |", "|---|---|---|---|---|---|---|"]
    for mode, v in s["modes"].items():
        if mode not in ("plain", "constrained", "speculative"):
            v = {**v, "tokens_per_call": float("nan")}
        lines.append(f"| {mode} | {v['median_tokens_per_s']:.2f} | {v['median_decode_tokens_per_s']:.2f} | "
                     f"{v['median_wall_s']:.2f} | {v['median_tokens']:.0f} | {v['tokens_per_call']:.2f} | "
                     f"{v['valid']} |")
    lines += ["", f"Speculative (constrained) over plain (unconstrained): decode tok/s "
              f"{s['speedup_decode_vs_plain']:.2f}x, end-to-end tok/s "
              f"{s['speedup_tokens_per_s_vs_plain']:.2f}x, "
              f"median per-task wall-time ratio {s['median_wall_ratio_plain_over_speculative']:.2f}x; "
              f"over constrained plain decoding: decode tok/s "
              f"{s['speedup_decode_vs_constrained']:.2f}x.", "",
              "| task | plain tok / decode tok/s / valid | constrained tok / decode tok/s | "
              "speculative tok / decode tok/s / valid | speculative == constrained |",
              "|---|---|---|---|---|"]
    for name, t in s["tasks"].items():
        p, c, sp = t["plain"], t["constrained"], t["speculative"]
        lines.append(f"| {name} | {p['tokens']} / {p['decode_tokens_per_s']:.1f} / {p['valid']} | "
                     f"{c['tokens']} / {c['decode_tokens_per_s']:.1f} | {sp['tokens']} / "
                     f"{sp['decode_tokens_per_s']:.1f} / {sp['valid']} | "
                     f"{t['speculative_equals_constrained']} |")
    for peer, v in s.get("peers", {}).items():
        lines += ["", f"Against {peer} with the same schema: per-task wall time {peer} / ours "
                  f"{v['median_wall_ratio_peer_over_speculative']:.2f}x (median), decode tok/s ours / {peer} "
                  f"{v['decode_ratio_speculative_over_peer']:.2f}x."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
