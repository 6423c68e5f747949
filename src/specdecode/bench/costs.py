"""Measured cost of a model call as a function of the number of new tokens it processes: T(k)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


@torch.inference_mode()
def cost_curve(model: Any, ks: list[int], context: int = 64, repeats: int = 3) -> dict[int, float]:
    """Median seconds of one `forward` on k new tokens on top of `context` cached tokens, for each k.

    The calls for different k are interleaved, repeat by repeat, so drifts in machine speed hit all alike.
    """
    n = context + max(ks)
    ids = (torch.arange(100, 100 + n) % int(model.vocab_size)).view(1, -1).to(getattr(model, "device", "cpu"))
    model.reset()
    model.forward(ids[:, :context])
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(repeats + 1):  # the first round warms up and is discarded
        for k in ks:
            model.truncate(context)
            start = time.perf_counter()
            out = model.forward(ids[:, context : context + k], logits_to_keep=k)
            out[0, -1, 0].item()  # waits for the device
            times[k].append(time.perf_counter() - start)
    model.reset()
    return {k: statistics.median(v[1:]) for k, v in times.items()}
