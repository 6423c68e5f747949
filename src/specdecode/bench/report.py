"""From `results.json` samples to the summary tables of `report.md` and the PNG plots."""

from __future__ import annotations

import importlib.util
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..theory import general_speedup, thm38_speedup

PAPER_ALPHA_RANGE = (0.53, 0.88)  # model drafts in the paper's Table 3 (../shared/PAPER.md)
PLAIN = "ours/plain"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _histogram(runs: list[dict[str, Any]]) -> dict[int, int]:
    total: dict[int, int] = defaultdict(int)
    for r in runs:
        for g, n in (r.get("gamma_histogram") or {}).items():
            total[int(g)] += n
    return dict(sorted(total.items()))


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per temperature, configuration and task ("all" = the whole suite).

    speedup = median over prompts of (a configuration's tokens/s) / (our plain decoding's tokens/s on the
    same prompt and round); `vs` compares our default configuration with each peer the same way.
    """
    cfg = results["config"]
    costs = results["costs"]
    t_target = {int(k): v for k, v in costs["target_s"].items()}
    by_key: dict[tuple[float, int, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in results["samples"]:
        by_key[(s["temperature"], s["round"], s["prompt_id"])][s["config"]] = s
    out: dict[str, Any] = {}
    for temp in sorted({s["temperature"] for s in results["samples"]}):
        groups = {k: v for k, v in by_key.items() if k[0] == temp}
        configs = list(dict.fromkeys(s["config"] for g in groups.values() for s in g.values()))
        tasks = list(dict.fromkeys(s["task"] for g in groups.values() for s in g.values()))
        default = (EDIT_DEFAULT if cfg.get("workload") == "edits"
                   else f"ours/model gamma={cfg['default_gamma']}")
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for config in configs:
            table[config] = {}
            for task in [*tasks, "all"]:
                rows = [g for g in groups.values()
                        if config in g and (task == "all" or g[config]["task"] == task)]
                runs = [g[config] for g in rows]
                ratio = [g[config]["tokens_per_s"] / g[PLAIN]["tokens_per_s"] for g in rows
                         if PLAIN in g and g[PLAIN]["tokens_per_s"] > 0]
                alphas = [r["acceptance_rate"] for r in runs if r["acceptance_rate"] is not None]
                calls = [r["tokens_per_target_call"] for r in runs if r["tokens_per_target_call"]]
                same = [r["identical_to_plain"] for r in runs if "identical_to_plain" in r]
                margins = [r["divergence"]["top2_margin"] for r in runs if r.get("divergence")]
                e2e = [g[config]["e2e_tokens_per_s"] / g[PLAIN]["e2e_tokens_per_s"] for g in rows
                       if PLAIN in g and g[PLAIN]["e2e_tokens_per_s"] > 0]
                table[config][task] = {
                    "tokens_per_s": _median([r["tokens_per_s"] for r in runs]), "speedup": _median(ratio),
                    "e2e_tokens_per_s": _median([r["e2e_tokens_per_s"] for r in runs]),
                    "e2e_speedup": _median(e2e), "first_s": _median([r["first_s"] for r in runs]),
                    "alpha": statistics.fmean(alphas) if alphas else None,
                    "tokens_per_target_call": statistics.fmean(calls) if calls else None,
                    "identical": sum(same) / len(same) if same else None, "margins": margins, "n": len(runs),
                    "gamma_histogram": _histogram(runs),
                    "accepted_prediction": sum(r.get("accepted_prediction_tokens") or 0 for r in runs),
                    "rejected_prediction": sum(r.get("rejected_prediction_tokens") or 0 for r in runs),
                    "bound": _bound(alphas, t_target),
                }
        assisted = [c for c in configs if c.startswith("hf/assisted")]
        best_assisted = (max(assisted, key=lambda c: table[c]["all"]["tokens_per_s"] or 0)
                         if assisted else None)
        peers = [c for c in configs if c.startswith(("hf/plain", "hf/prompt", "llama.cpp", "llama-server"))]
        if best_assisted:
            peers.insert(1, best_assisted)
        vs: dict[str, dict[str, float | None]] = {}
        for peer in peers:
            vs[peer] = {}
            for task in [*tasks, "all"]:
                ratio = [g[default]["tokens_per_s"] / g[peer]["tokens_per_s"] for g in groups.values()
                         if default in g and peer in g and g[peer]["tokens_per_s"] > 0
                         and (task == "all" or g[default]["task"] == task)]
                vs[peer][task] = _median(ratio)
        prediction: dict[str, dict[str, dict[str, float | None]]] = {}
        for config in configs:
            if not config.startswith("ours/model gamma=") or not config.split("=")[1].isdigit():
                continue
            gamma = int(config.split("=")[1])
            prediction[config] = {}
            for task in [*tasks, "all"]:
                cell = table[config][task]
                alpha = cell["alpha"]
                if alpha is None or gamma + 1 not in t_target:
                    continue
                general = general_speedup(alpha, gamma, t_target.__getitem__, costs["draft_s"])
                measured = cell["speedup"]
                prediction[config][task] = {
                    "alpha": alpha, "thm38": thm38_speedup(alpha, gamma, costs["c"]), "general": general,
                    "measured": measured, "measured_over_general": measured / general if measured else None,
                }
        vs_server: dict[str, dict[str, float | None]] = {}
        if SERVER_PLAIN in configs:  # every configuration against llama-server's plain decoding
            for config in configs:
                vs_server[config] = {}
                for task in [*tasks, "all"]:
                    ratio = [g[config]["tokens_per_s"] / g[SERVER_PLAIN]["tokens_per_s"]
                             for g in groups.values()
                             if config in g and SERVER_PLAIN in g and g[SERVER_PLAIN]["tokens_per_s"] > 0
                             and (task == "all" or g[config]["task"] == task)]
                    vs_server[config][task] = _median(ratio)
        out[str(temp)] = {"tasks": tasks, "configs": configs, "table": table, "default": default,
                          "best_assisted": best_assisted, "vs": vs, "prediction": prediction,
                          "vs_server": vs_server}
    return out


AUTO, NGRAM, NGRAM_MODEL = "ours/model gamma=auto", "ours/ngram gamma=auto", "ours/ngram+model gamma=auto"
SERVER_PLAIN = "llama-server/plain"
EDIT_DEFAULT = "ours/prediction+ngram gamma=auto"


def _bound(alphas: list[float], t_target: dict[int, float]) -> float | None:
    """The best speedup over plain decoding that free drafts (lookups) accepted at the mean measured
    alpha could reach on the measured T(k), over blocks of 1..64 tokens (i.i.d. acceptance)."""
    if not alphas:
        return None
    from ..gamma import LOOKUP_S, CostModel

    t = CostModel(dict(t_target), 0.0).t
    alpha = min(statistics.fmean(alphas), 0.999)
    return max(general_speedup(alpha, g, t, LOOKUP_S) for g in range(1, 65))


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _all_plain(s: dict[str, Any], config: str, task: str) -> str:
    """A note when auto chose plain steps only: its ratio to plain decoding is then run-to-run noise."""
    hist = s["table"][config][task]["gamma_histogram"] if config in s["table"] else {}
    return " (all plain steps)" if hist and set(hist) == {0} else ""


def drafter_targets(summary: dict[str, Any]) -> list[list[str]]:
    """Rows checking issue 5's targets per temperature and task: auto >= 0.97x plain, auto within 5% of
    the best fixed gamma, ngram+model >= the better of ngram and model, ngram >= 2x plain on editing."""
    rows = []
    for temp, s in summary.items():
        fixed = [c for c in s["configs"] if c.startswith("ours/model gamma=") and c.split("=")[1].isdigit()]
        for task in [*s["tasks"], "all"]:
            speed = {c: s["table"][c][task]["speedup"] for c in s["table"]}
            auto, ngram, both = speed.get(AUTO), speed.get(NGRAM), speed.get(NGRAM_MODEL)
            editing = "edit" in task
            best = max(fixed, key=lambda c: speed[c] or 0.0, default=None)
            best_speed = max(speed[best] or 0.0, 1.0) if best else None  # plain (gamma 0) is a choice too
            best_name = best.split("=")[1] if best and (speed[best] or 0.0) > 1.0 else "plain"
            better = max((x for x in (ngram, auto) if x is not None), default=None)
            rows.append([
                temp, task,
                f"{_fmt(auto)}x {_mark(auto >= 0.97)}{_all_plain(s, AUTO, task)}" if auto else "-",
                f"{best_name} ({_fmt(best_speed)}x)" if best_speed else "-",
                f"{_fmt(auto / best_speed)} {_mark(auto / best_speed >= 0.95)}"
                if auto and best_speed else "-",
                (f"{_fmt(ngram)}x" + (f" {_mark(ngram >= 2.0)}" if editing else "")) if ngram else "-",
                (f"{_fmt(both)}x" + (f" {_mark(both >= better)}" if editing and better else ""))
                if both else "-",
            ])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(results: dict[str, Any], summary: dict[str, Any]) -> str:
    """report.md: the setup, then per temperature the speed, peer, prediction and exactness tables."""
    m, costs = results["machine"], results["costs"]
    t_ms = ", ".join(f"T({k}) {v * 1000:.0f}" for k, v in costs["target_s"].items())
    parts = [
        "# specdecode benchmark report", "",
        f"- date: {results['date']}", f"- command: `{results['command']}`",
        f"- machine: {m['cpu']} ({m.get('isa', '?')}), {m['cores']} cores (torch: {m['cpu_capability']}), "
        f"torch threads {m['torch_threads']}, GPU {m['gpu'] or 'none'}",
        f"- our backend: {results.get('backend', 'transformers')}",
        f"- software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}"
        + (f", llama-cpp-python {m['llama_cpp_python']}" if m.get("llama_cpp_python") else ""),
        f"- models: target {results['target']}, draft {results['draft']}, dtype {results['dtype']}, "
        f"device {results['device']}",
        f"- measured costs (ms, 64 cached tokens): {t_ms}; draft T(1) {costs['draft_s'] * 1000:.0f}; "
        f"c = {costs['c']:.3f}",
        *[f"- {line}" for line in results["skipped"]], "",
        "tokens/s is the decoding speed: the tokens after the first emission over the time after it (the "
        "prompt's prefill and the first step excluded; end-to-end figures in their own table). speedup = "
        "median over prompts of a configuration's tokens/s divided by our plain decoding's tokens/s on the "
        "same prompt, measured back to back in one process.", "",
    ]
    targets = drafter_targets(summary)
    if any(r[2] != "-" for r in targets):
        parts += [
            "## Drafters and gamma=auto against their targets", "",
            "Speedups over our plain decoding (median per-prompt ratios of decoding tokens/s). Targets: "
            "auto >= 0.97x plain everywhere; auto >= 0.95 of the best fixed choice (a gamma of the model "
            "draft, or plain); on editing, n-gram >= 2x plain and ngram+model >= the better of ngram and "
            "model (auto).",
            "", _table(["temperature", "task", "model, auto", "best fixed gamma", "auto / best fixed",
                        "ngram, auto", "ngram+model, auto"], targets), "",
        ]
    for temp, s in summary.items():
        tasks = [*s["tasks"], "all"]
        label = "greedy (temperature 0)" if float(temp) == 0 else f"temperature {temp}"
        parts += [f"## {label}", "", "### Tokens/s (median) and speedup over our plain decoding", ""]
        rows = [[c] + [f"{_fmt(s['table'][c][t]['tokens_per_s'])} ({_fmt(s['table'][c][t]['speedup'])}x)"
                       for t in tasks] for c in s["configs"]]
        parts += [_table(["configuration", *tasks], rows), ""]
        rows = [[c, _fmt(s["table"][c]["all"]["first_s"]), _fmt(s["table"][c]["all"]["e2e_tokens_per_s"]),
                 _fmt(s["table"][c]["all"]["e2e_speedup"], suffix="x")] for c in s["configs"]]
        parts += ["### End to end, prefill included (whole suite, medians)", "",
                  _table(["configuration", "first token (s)", "tokens/s", "speedup"], rows), ""]
        if s["vs"]:
            parts += [f"### Our default ({s['default']}) against each peer (ratio of tokens/s)", ""]
            rows = [[p] + [_fmt(s["vs"][p][t], suffix="x") for t in tasks] for p in s["vs"]]
            parts += [_table(["peer", *tasks], rows), ""]
        predicted = [c for c in s["configs"] if s["table"][c]["all"]["accepted_prediction"]
                     or s["table"][c]["all"]["rejected_prediction"]]
        if predicted:
            parts += ["### Predicted outputs", "",
                      "Prediction tokens accepted and rejected (sums over the prompts, OpenAI's meanings), "
                      "tokens per target call, and the bound: the speedup over plain decoding that free "
                      "drafts accepted at the measured alpha could reach on the measured T(k).", ""]
            rows = [[c, t, str(s["table"][c][t]["accepted_prediction"]),
                     str(s["table"][c][t]["rejected_prediction"]),
                     _fmt(s["table"][c][t]["tokens_per_target_call"]), _fmt(s["table"][c][t]["alpha"], 3),
                     _fmt(s["table"][c][t]["speedup"], suffix="x"),
                     _fmt(s["table"][c][t]["bound"], suffix="x")]
                    for c in predicted for t in tasks]
            parts += [_table(["configuration", "task", "accepted", "rejected", "tokens/call", "alpha",
                              "speedup vs our plain", "bound"], rows), ""]
        if s.get("vs_server"):
            parts += ["### Every configuration against llama-server's plain decoding (median per-prompt "
                      "ratio of decoding tokens/s)", ""]
            rows = [[c] + [_fmt(s["vs_server"][c][t], suffix="x") for t in tasks] for c in s["vs_server"]]
            parts += [_table(["configuration", *tasks], rows), ""]
        if s["prediction"]:
            parts += ["### Measured speedup against the paper's prediction (suite-wide alpha)", "",
                      "Thm 3.8 assumes T(gamma+1) = T(1); the general form uses the measured T(k) and c.", ""]
            rows = [[c, _fmt(p["all"]["alpha"], 3), _fmt(p["all"]["thm38"]), _fmt(p["all"]["general"]),
                     _fmt(p["all"]["measured"]), _fmt(p["all"]["measured_over_general"])]
                    for c, p in s["prediction"].items() if "all" in p]
            parts += [_table(["configuration", "alpha", "Thm 3.8", "general form", "measured",
                              "measured / general"], rows), ""]
            rows = [[t] + [_fmt(s["table"][c][t]["alpha"], 3) for c in s["prediction"]] for t in tasks]
            parts += ["### Acceptance rate alpha per task", "",
                      _table(["task", *s["prediction"]], rows), ""]
        auto = [c for c in s["configs"] if s["table"][c]["all"]["gamma_histogram"]]
        if auto:
            rows = [[c, t, " ".join(f"{g}:{n}" for g, n in s["table"][c][t]["gamma_histogram"].items())]
                    for c in auto for t in tasks if s["table"][c][t]["gamma_histogram"]]
            parts += ["### Gammas chosen by gamma=auto (target calls per gamma; 0 = plain step)", "",
                      _table(["configuration", "task", "gamma:calls"], rows), ""]
        if float(temp) == 0:
            rows = []
            for c in s["configs"]:
                cell = s["table"][c]["all"]
                if c == PLAIN or cell["identical"] is None:
                    continue
                margins = cell["margins"]
                rows.append([c, f"{cell['identical'] * 100:.0f}%", str(len(margins)),
                             ", ".join(f"{x:.3f}" for x in sorted(margins)[:8]) or "-"])
            parts += ["### Greedy exactness: outputs identical to our plain decoding", "",
                      "Margins: the target's top-2 logit gap at the first divergence (with the "
                      "transformers backend, the llama.cpp peers run other numerics on the quantised file, "
                      "so no margin is computed for them).", "",
                      _table(["configuration", "identical", "divergences", "top-2 margins"], rows), ""]
    return "\n".join(parts)


def _save(fig: Any, ax: Any, path: Path) -> str:
    """Add the legend, write the figure as PNG, free it; returns the file name."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def plot(results: dict[str, Any], summary: dict[str, Any], out: Path) -> list[str]:
    """PNG plots; returns the file names written (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    greedy = summary.get("0.0") or next(iter(summary.values()))
    gamma_cfgs = sorted(greedy["prediction"], key=lambda c: int(c.split("=")[1]))
    gammas = [int(c.split("=")[1]) for c in gamma_cfgs]
    if gammas:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task in [*greedy["tasks"], "all"]:
            ys = [greedy["table"][c][task]["speedup"] for c in gamma_cfgs]
            ax.plot(gammas, ys, marker="o", label=task, linewidth=3 if task == "all" else 1.2)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="gamma (draft tokens per target call)", ylabel="speedup over plain decoding",
               title="Speedup vs gamma per task (greedy)")
        written.append(_save(fig, ax, out / "speedup_vs_gamma.png"))

        default = greedy["default"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        tasks = greedy["tasks"]
        ax.bar(tasks, [greedy["table"][default][t]["alpha"] or 0 for t in tasks], color="tab:blue")
        ax.axhspan(*PAPER_ALPHA_RANGE, color="tab:orange", alpha=0.2, label="paper, model drafts (Table 3)")
        ax.set(ylim=(0, 1), ylabel="alpha", title=f"Acceptance rate per task ({default}, greedy)")
        ax.tick_params(axis="x", rotation=30)
        written.append(_save(fig, ax, out / "alpha_per_task.png"))

        fig, ax = plt.subplots(figsize=(5.5, 5))
        points = [(p["general"], p["measured"], p["thm38"]) for c in gamma_cfgs
                  for t, p in greedy["prediction"][c].items() if t != "all" and p["measured"]]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], label="general form (measured T(k))")
            ax.scatter([p[2] for p in points], [p[1] for p in points], marker="x", label="Thm 3.8")
            hi = max(max(p) for p in points) * 1.1
            ax.plot([0, hi], [0, hi], color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="predicted speedup", ylabel="measured speedup",
               title="Predicted vs measured (per task and gamma)")
        written.append(_save(fig, ax, out / "predicted_vs_measured.png"))
    if SERVER_PLAIN in greedy.get("vs_server", {}):
        written.append(_plot_vs_server(plt, greedy, out / "vs_llama_server.png"))
    return written


def _plot_vs_server(plt: Any, s: dict[str, Any], path: Path) -> str:
    """Grouped bars: each configuration's speed relative to llama-server plain, per task."""
    tasks, configs = s["tasks"], [c for c in s["configs"] if c != SERVER_PLAIN]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(tasks) + 3), 4.8))
    width = 0.8 / max(len(configs), 1)
    for i, config in enumerate(configs):
        xs = [t + (i - (len(configs) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(xs, [s["vs_server"][config][t] or 0 for t in tasks], width, label=config)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=25, ha="right")
    ax.set(ylabel="tokens/s relative to llama-server plain", title="Against llama-server's plain decoding")
    fig.tight_layout()
    return _save(fig, ax, path)


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Write report.md (and the plots) next to results.json; returns the report's path."""
    summary = summarise(results)
    plots = plot(results, summary, out)
    text = render(results, summary)
    if plots:
        text += "\n## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n"
    elif importlib.util.find_spec("matplotlib") is None:
        text += "\n(no plots: pip install 'specdecode[bench]' for matplotlib)\n"
    (out / "report.md").write_text(text)
    return out / "report.md"
