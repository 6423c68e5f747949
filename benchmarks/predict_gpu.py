"""Predicted speed-ups on another machine (a GPU) from traces recorded here and that machine's cost curves.

    python benchmarks/predict_gpu.py --traces results/predict-check/traces.json --curves gpu/gpu_cost.json

For each target model and batch size of the curves file, and each configuration of the traces: the
replay (the recorded steps priced under the new curves), the closed form at the configuration's own gamma
and at the best gamma ("auto"), and for greedy model-draft traces the best fixed gamma by reblocking.
The traces' acceptance is the recorded pair's (Qwen2.5-Coder 1.5B checked by 0.5B); for another target
(7B) it is assumed unchanged. At batch > 1 every sequence is assumed to take the trace's steps in lockstep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from specdecode.predict import (
    MODEL_GAMMA_MAX,
    PairCosts,
    closed_form_traces,
    load_curves,
    reblock,
    replay,
)
from specdecode.trace import Trace, load_traces


def _is_model_only(trace: Trace) -> bool:
    """A greedy fixed-gamma trace of model drafts alone (what `reblock` can replay under another gamma)."""
    return trace.greedy and trace.gamma != "auto" and any(s.proposed for s in trace.steps) \
        and all(s.source == "model" or not s.proposed for s in trace.steps)


def predict(traces: list[Trace], costs: PairCosts) -> dict[str, dict[str, Any]]:
    """Per configuration: replay, closed form (own gamma, best gamma) and the best reblocked fixed gamma."""
    rows: dict[str, dict[str, Any]] = {}
    for config in sorted({t.config for t in traces} - {"plain"}):
        group = [t for t in traces if t.config == config and t.steps]
        if not group:
            continue
        reps = [replay(t, costs) for t in group]
        row: dict[str, Any] = {"prompts": len(group), "tokens": sum(t.new_tokens for t in group),
                               "replay": sum(r.plain_s for r in reps) / sum(r.spec_s for r in reps),
                               "closed_form_auto": closed_form_traces(group, costs, "auto")}
        if group[0].gamma != "auto":
            row["closed_form"] = closed_form_traces(group, costs)
        if all(_is_model_only(t) for t in group):
            best = (0, 1.0)
            for g in range(1, MODEL_GAMMA_MAX + 1):
                blocks = [reblock(t, g, costs) for t in group]
                speedup = sum(b.plain_s for b in blocks) / sum(b.spec_s for b in blocks)
                best = max(best, (g, speedup), key=lambda o: o[1])
            row["reblock_best_gamma"], row["reblock_best"] = best
        rows[config] = row
    return rows


def table(results: dict[str, Any]) -> str:
    lines = ["| target | batch | configuration | prompts | replay | closed form | closed form, best gamma "
             "| best fixed gamma (reblocked) |", "|---|---|---|---|---|---|---|---|"]
    for key, rows in results.items():
        target, batch = key.rsplit("@", 1)
        for config, r in rows.items():
            closed = f"{r['closed_form']:.2f}x" if "closed_form" in r else "-"
            reb = "-"
            if "reblock_best" in r:
                reb = f"{r['reblock_best']:.2f}x (gamma {r['reblock_best_gamma']})"
            lines.append(f"| {target} | {batch} | {config} | {r['prompts']} | {r['replay']:.2f}x | {closed} "
                         f"| {r['closed_form_auto']:.2f}x | {reb} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, required=True, help="traces.json of benchmarks/predict_check.py")
    ap.add_argument("--curves", type=Path, required=True, help="gpu_cost.json of benchmarks/gpu_cost.py")
    ap.add_argument("--targets", default="qwen2.5-coder-1.5b,qwen2.5-coder-7b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--out", type=Path, help="also write the table (.md) and the numbers (.json) here")
    args = ap.parse_args(argv)
    try:
        traces, _ = load_traces(args.traces)
        batches = [int(b) for b in args.batches.split(",")]
        results: dict[str, Any] = {}
        for batch in batches:
            curves = load_curves(args.curves, batch)
            for target in args.targets.split(","):
                if target not in curves or args.draft not in curves:
                    raise ValueError(f"{args.curves} has no batch-{batch} curve for {target!r} or "
                                     f"{args.draft!r}; it has {sorted(curves)}")
                results[f"{target}@{batch}"] = predict(traces, PairCosts(curves[target], curves[args.draft]))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table(results)
    print(text)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
