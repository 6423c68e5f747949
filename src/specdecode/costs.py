"""Measured cost of a model call as a function of the number of new tokens it processes: T(k)."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from .protocol import accepts_logits_to_keep, last_logits


@torch.inference_mode()
def cost_curve(model: Any, ks: list[int], context: int = 64, repeats: int = 3) -> dict[int, float]:
    """Median seconds of one `forward` on k new tokens on top of `context` cached tokens, for each k.

    The calls for different k are interleaved, repeat by repeat, so drifts in machine speed hit all alike.
    """
    n = context + max(ks)
    ids = (torch.arange(100, 100 + n) % int(model.vocab_size)).view(1, -1).to(getattr(model, "device", "cpu"))
    trim = accepts_logits_to_keep(model)
    model.reset()
    model.forward(ids[:, :context])
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(repeats + 1):  # the first round warms up and is discarded
        for k in ks:
            model.truncate(context)
            start = time.perf_counter()
            feed = ids[:, context : context + k]
            last_logits(model, feed, k, trim)[-1, 0].item()  # .item() waits for the device
            times[k].append(time.perf_counter() - start)
    model.reset()
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def draft_call_seconds(drafter: Any) -> float:
    """Seconds of one draft call of `drafter`: its model's T(1), or a token lookup's (near) nothing."""
    from .drafters import draft_models

    models = draft_models(drafter)
    return cost_curve(models[0], [1], context=16, repeats=2)[1] if models else 1e-5


def calibration_ks(k_max: int) -> list[int]:
    """The block sizes measured for a curve up to `k_max`: every k up to 9, then a few up to k_max (the
    cost model interpolates between them)."""
    ks = set(range(1, min(k_max, 9) + 1)) | {k for k in (12, 16, 24, 32, 48, 64, 96) if k < k_max} | {k_max}
    return sorted(ks)


STALE = 3.0  # a cached curve whose T(1) is this many times off a fresh measurement is measured again


def _still_true(cached: Any, target: Any) -> bool:
    """Whether a cached curve still describes this machine: a quick T(1) within STALE times its cached
    value (a curve measured while other work loaded the CPU can be tens of times too slow, and would
    steer gamma=auto and every "x vs plain" figure for good). A model that already holds a cache (a
    prompt loaded from disk, a reused prefix) is not disturbed: the cached curve is trusted then."""
    if int(getattr(target, "length", 0) or 0) > 0:
        return True
    now = cost_curve(target, [1], context=16, repeats=2)[1]
    cached_t1 = cached.t(1)
    return now > 0 and cached_t1 > 0 and 1 / STALE <= cached_t1 / now <= STALE


def calibrate(target: Any, drafter: Any, gamma_max: int) -> Any:
    """Measured T(k), k up to gamma_max+1 (see `calibration_ks`), of the target and the drafter's call
    time, cached on disk per (target, draft, dtype, device, machine, threads) when the models have names."""
    from .drafters import draft_models
    from .environment import cache_root
    from .gamma import CostModel, load_calibration, machine_key, save_calibration

    draft_names = [getattr(m, "name", "") for m in draft_models(drafter)] or [drafter.name]
    names = [getattr(target, "name", ""), *draft_names]
    path = cache_root() / "calibration.json"
    key = machine_key(*names, getattr(target, "dtype", ""), getattr(target, "device", ""), gamma_max,
                      threads=getattr(target, "n_threads", None))
    # only models loaded from a path or id have a stable name; in-process ones are measured every time
    named = all(isinstance(n, str) and ("/" in n or os.sep in n) for n in names
                if n not in ("ngram", "prediction", "grammar"))
    if named:
        cached = load_calibration(path, key)
        if cached is not None and max(cached.target_s) >= gamma_max + 1 and _still_true(cached, target):
            return cached
    costs = CostModel(cost_curve(target, calibration_ks(gamma_max + 1), context=32, repeats=2),
                      draft_call_seconds(drafter))
    if named:
        save_calibration(path, key, costs)
    return costs
