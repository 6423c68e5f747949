"""Does `specdecode.predict` predict measured speed-ups? Checked on this machine (issue 24, part 2).

Runs the real pair on chat, code and edit prompts (benchmarks/prompts/, benchmarks/edits/): plain decoding
and each speculative configuration, greedy, interleaved prompt by prompt, every run traced. Measures the
target's and the draft's cost curves T(k) here, then sets each configuration's measured decoding speed-up
(plain decode seconds over its decode seconds, prefill excluded, summed over its prompts) next to the
predictions from its traces and those curves: the replay and the paper's closed form. Target: within 10%.
Writes traces.json (for `benchmarks/predict_gpu.py`), cpu_curves.json, report.json and report.md.

    python benchmarks/predict_check.py --out results/predict-check          # the built-in pair, ~20 min
    python benchmarks/predict_check.py --out /tmp/pc --tiny                  # tiny random models, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from specdecode import SpeculativeGenerator, load_model
from specdecode.bench.workload import BenchPrompt, load_prompts
from specdecode.costs import calibration_ks, cost_curve
from specdecode.drafters import NgramDrafter
from specdecode.predict import PairCosts, closed_form_traces, curves_payload, load_curves, replay
from specdecode.trace import Trace, load_traces, save_traces

CHAT_TASKS = ["chat", "code_completion", "code_editing"]
# the real edit prompts hold whole files: longer than the tiny models' 1024 positions in characters
TINY_EDIT = BenchPrompt("tiny-edit", "edit", [{"role": "user", "content": "Rename: def f(x): return x"}], 16,
                        prediction="def f(y): return y")
# configuration -> (drafter: "model" | "ngram" | None, gamma, use the prompt's prediction)
CHAT_CONFIGS = {"model gamma=4": ("model", 4, False), "model auto": ("model", "auto", False),
                "ngram auto": ("ngram", "auto", False)}
EDIT_CONFIGS = {"edits: prediction+ngram auto": ("ngram", "auto", True),
                "edits: ngram auto": ("ngram", "auto", False)}


def run_one(gen: SpeculativeGenerator, prompt: BenchPrompt, drafter: Any, gamma: int | str, prediction: bool,
            max_new_tokens: int | None, config: str) -> Trace:
    """One greedy generation of `prompt`, traced; the trace holds its measured prefill and decode seconds."""
    kwargs: dict[str, Any] = {"drafter": drafter} if drafter is not None else {}
    if prediction:
        kwargs["prediction"] = prompt.prediction
    budget = min(prompt.max_new_tokens, max_new_tokens) if max_new_tokens else prompt.max_new_tokens
    res = gen.generate(prompt.messages, chat=True, max_new_tokens=budget, temperature=0.0, gamma=gamma,
                       cache_prompt=False, trace=True, **kwargs)
    stats = res.stats
    return Trace(list(res.trace or []), config, prompt.id, prompt.task, stats.prompt_tokens, stats.prefill_s,
                 stats.wall_s - stats.prefill_s, True, gamma)


def measure_curves(target: Any, draft: Any, contexts: list[int], k_max: int, repeats: int
                   ) -> dict[str, dict[int, dict[int, float]]]:
    """T(k) of the target (k = 1..k_max as auto calibrates) and of the draft (k up to 64, for catch-up
    calls) at each cached length."""
    limit = min(getattr(m, "max_length", None) or 10**9 for m in (target, draft))
    draft_ks = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= limit // 4]
    out: dict[str, dict[int, dict[int, float]]] = {"target": {}, "draft": {}}
    for context in tqdm(contexts, desc="cost curves", unit="length", file=sys.stdout):
        if context + max(k_max, 64) >= limit:
            continue
        for model in (target, draft):  # a llama.cpp context sized up front, not grown while timing
            if hasattr(model, "reserve"):
                model.reserve(context + max(k_max, 64) + 1)
        out["target"][context] = cost_curve(target, calibration_ks(k_max), context=context, repeats=repeats)
        out["draft"][context] = cost_curve(draft, draft_ks, context=context, repeats=repeats)
    return out


def step_overhead(plain: list[Trace], costs: PairCosts) -> float:
    """The engine's own seconds per target call beyond the curve's T(1), from the plain runs' calls."""
    extra = [s.target_s - costs.target.t(1, s.context) for t in plain for s in t.steps]
    return max(statistics.median(extra), 0.0) if extra else 0.0


def compare(traces: list[Trace], costs: PairCosts) -> dict[str, Any]:
    """Per configuration: measured speed-up over plain decoding of the same prompts, and the predictions."""
    plain = {t.prompt_id: t for t in traces if t.config == "plain"}
    rows: dict[str, Any] = {}
    for config in sorted({t.config for t in traces} - {"plain"}):
        group = [t for t in traces if t.config == config and t.prompt_id in plain]
        if not group:
            continue
        measured_plain = sum(plain[t.prompt_id].decode_s for t in group)
        measured = measured_plain / sum(t.decode_s for t in group)
        replays = [replay(t, costs) for t in group]
        predicted = sum(r.plain_s for r in replays) / sum(r.spec_s for r in replays)
        closed = closed_form_traces(group, costs)
        per_prompt = [{"prompt": t.prompt_id, "tokens": t.new_tokens,
                       "measured": plain[t.prompt_id].decode_s / t.decode_s, "replay": r.speedup}
                      for t, r in zip(group, replays, strict=True)]
        rows[config] = {"prompts": len(group), "tokens": sum(t.new_tokens for t in group),
                        "measured": measured, "replay": predicted, "closed_form": closed,
                        "replay_error": predicted / measured - 1, "closed_form_error": closed / measured - 1,
                        "per_prompt": per_prompt}
    return rows


def report_md(rows: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# Predicted vs measured speed-ups ({meta['date']})", "",
             f"Target {meta['target']}, draft {meta['draft']}, backend {meta['backend']}, greedy; "
             f"engine overhead per target call {1000 * meta['step_overhead_s']:.2f} ms (plain decoding); "
             f"{meta['machine']}.",
             "", "| configuration | prompts | tokens | measured | replay | error | closed form | error |",
             "|---|---|---|---|---|---|---|---|"]
    for config, r in rows.items():
        lines.append(f"| {config} | {r['prompts']} | {r['tokens']} | {r['measured']:.2f}x "
                     f"| {r['replay']:.2f}x | {100 * r['replay_error']:+.1f}% | {r['closed_form']:.2f}x "
                     f"| {100 * r['closed_form_error']:+.1f}% |")
    within = [abs(r["replay_error"]) <= 0.10 for r in rows.values()]
    lines += ["", f"Replay within 10% of the measurement: {sum(within)} of {len(within)} configurations."]
    return "\n".join(lines) + "\n"


def load_pair(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.tiny:
        from specdecode.toy import tiny_llama_pair

        return tiny_llama_pair(seed=args.seed, noise=0.05)
    return (load_model(args.target, backend=args.backend, quiet=True),
            load_model(args.draft, backend=args.backend, quiet=True))


def run_prompts(args: argparse.Namespace, target: Any, draft: Any) -> list[Trace]:
    """Plain decoding and each configuration on every prompt, interleaved prompt by prompt, traced."""
    prompts = [(p, CHAT_CONFIGS) for p in load_prompts(tasks=CHAT_TASKS, per_task=args.per_task)]
    if args.edits:
        edits = [TINY_EDIT] if args.tiny else load_prompts(workload="edits")[: args.edits]
        prompts += [(p, EDIT_CONFIGS) for p in edits]
    plain_gen, gen = SpeculativeGenerator(target), SpeculativeGenerator(target, draft)
    gen.generate("def warm_up():", max_new_tokens=8, gamma=2)  # first calls pay one-off setup costs
    traces: list[Trace] = []
    for prompt, configs in tqdm(prompts, desc="prompts", unit="prompt", file=sys.stdout):
        traces.append(run_one(plain_gen, prompt, None, 1, False, args.max_new_tokens, "plain"))
        for config, (source, gamma, prediction) in configs.items():
            drafter = NgramDrafter() if source == "ngram" else None
            traces.append(run_one(gen, prompt, drafter, gamma, prediction, args.max_new_tokens, config))
    return traces


def covering(contexts: list[int], longest: int) -> list[int]:
    """`contexts`, plus the next power of two at or above `longest` when the runs went past the longest
    of them (a curve is only extrapolated flat beyond its longest measured length: attention keeps
    growing, so long edits would look cheaper than they ran)."""
    if not contexts or longest <= contexts[-1]:
        return contexts
    return [*contexts, 1 << (longest - 1).bit_length()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--backend", default="auto", help="auto (llama.cpp on a CPU), llama.cpp or transformers")
    ap.add_argument("--per-task", type=int, default=3, help="prompts per chat/code task")
    ap.add_argument("--edits", type=int, default=3, help="edit tasks (0: none)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="cap every prompt's budget")
    ap.add_argument("--contexts", default="128,1024,2048", help="cached lengths of the measured curves")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="tiny random models, 1 prompt per task, short")
    ap.add_argument("--traces", type=Path, default=None,
                    help="traces.json of an earlier run: measure the curves again and re-price its runs "
                    "(no generation)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.per_task, args.edits, args.repeats = 1, min(args.edits, 1), 1
        args.max_new_tokens, args.contexts = args.max_new_tokens or 12, "16,64"
    try:
        contexts = sorted({int(c) for c in args.contexts.split(",")})
    except ValueError:
        ap.error(f"--contexts takes comma-separated integers, got {args.contexts!r}")
    target, draft = load_pair(args)
    if args.traces is not None:  # re-price recorded runs under curves measured now
        traces, _ = load_traces(args.traces)
    else:
        traces = run_prompts(args, target, draft)
    k_max = max([s.fed for t in traces for s in t.steps] + [9])
    contexts = covering(contexts, max((s.context + s.fed for t in traces for s in t.steps), default=0))
    curves = measure_curves(target, draft, contexts, k_max, args.repeats)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "target": "tiny" if args.tiny else args.target,
            "draft": "tiny" if args.tiny else args.draft, "backend": getattr(target, "backend", "?"),
            "machine": _machine()}
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_curves.json").write_text(json.dumps(curves_payload(curves, meta=meta), indent=1))
    loaded = load_curves(args.out / "cpu_curves.json")
    costs = PairCosts(loaded["target"], loaded["draft"])
    plain = [t for t in traces if t.config == "plain"]
    costs.step_overhead_s = meta["step_overhead_s"] = step_overhead(plain, costs)
    save_traces(args.out / "traces.json", traces, meta)
    rows = compare(traces, costs)
    (args.out / "report.json").write_text(json.dumps({"meta": meta, "configs": rows}, indent=1))
    text = report_md(rows, meta)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


def _machine() -> str:
    from specdecode.machine import available_cores, cpu_isa, cpu_model

    return f"{cpu_model()} ({cpu_isa()}), {available_cores()} cores"


if __name__ == "__main__":
    sys.exit(main())
