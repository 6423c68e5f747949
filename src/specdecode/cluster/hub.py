"""The cluster's metrics and replica list: engine replicas report here; GET /metrics and /health read it.

Each engine replica sends its Prometheus text (the single-process server's metrics) and who it is every
`REPORT_S` seconds. /metrics sums the replicas' samples (a replica that died keeps its counters, so totals
never fall; its gauges go when it stops reporting) and recomputes the two ratio gauges from the summed
counters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

REPORT_S = 1.0  # how often a replica reports
STALE_S = 5.0  # a replica silent this long no longer counts as running
RATIOS = {  # gauges that are ratios of summed counters
    "specdecode_acceptance_rate": ("specdecode_draft_tokens_accepted_total", "specdecode_draft_tokens_total"),
    "specdecode_mean_tokens_per_target_call": ("specdecode_generated_tokens_total",
                                               "specdecode_target_calls_total"),
}


def merge_metrics(texts: list[str], live: list[bool]) -> str:
    """One Prometheus text summing the samples of `texts` (gauges only from those whose `live` is true)."""
    from prometheus_client.parser import text_string_to_metric_families

    kinds: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = defaultdict(dict)
    for text, alive in zip(texts, live, strict=True):
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):  # creation timestamps do not add up
                continue
            kinds.setdefault(family.name, (family.type, family.documentation))
            if family.type == "gauge" and not alive:
                continue
            samples = sums[family.name]
            for s in family.samples:
                if s.name.endswith("_created"):  # creation timestamps do not add up
                    continue
                at = (s.name, tuple(sorted(s.labels.items())))
                samples[at] = samples.get(at, 0.0) + s.value
    totals = {name: value for fam in sums.values() for (name, labels), value in fam.items() if not labels}
    for gauge, (num, den) in RATIOS.items():
        if gauge in sums and totals.get(den):
            sums[gauge] = {(gauge, ()): totals.get(num, 0.0) / totals[den]}
    lines = []
    for name, (kind, doc) in kinds.items():
        shown = name + "_total" if kind == "counter" else name
        lines += [f"# HELP {shown} {doc}", f"# TYPE {shown} {kind}"]
        for (sample, labels), value in sums.get(name, {}).items():
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{sample}{{{lab}}} {value!r}" if lab else f"{sample} {value!r}")
    return "\n".join(lines) + "\n"


class MetricsHub:
    """Collects the engine replicas' reports (a Ray Serve deployment of one replica)."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}

    def report(self, replica: str, info: dict[str, Any], metrics: str) -> None:
        """A replica's latest state: `info` (pid, node, slots ...) and its Prometheus text."""
        self.reports[replica] = {"info": info, "metrics": metrics, "at": time.monotonic()}

    def replicas(self) -> list[dict[str, Any]]:
        """The replicas that reported in the last `STALE_S` seconds."""
        now = time.monotonic()
        fresh = sorted((rid, r) for rid, r in self.reports.items() if now - r["at"] < STALE_S)
        return [{"id": rid, **r["info"]} for rid, r in fresh]

    def render(self, own: str = "") -> str:
        """The merged metrics of every replica that ever reported, plus `own` (the ingress's)."""
        now = time.monotonic()
        reports = list(self.reports.values())
        texts = [r["metrics"] for r in reports] + ([own] if own else [])
        live = [now - r["at"] < STALE_S for r in reports] + ([True] if own else [])
        running = sum(live[: len(reports)])
        extra = ("# HELP specdecode_replicas engine replicas reporting\n# TYPE specdecode_replicas gauge\n"
                 f"specdecode_replicas {running}\n")
        return merge_metrics(texts, live) + extra
