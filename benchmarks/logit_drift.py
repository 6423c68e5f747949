"""How far a target's logits move with the shape of the call: one call on a k-token block against k
one-token calls over the same text. A greedy speculative run can differ from plain greedy decoding only
where the top-2 margin is smaller than this drift, so it sets `compare.LLAMA_CPP_NEAR_TIE_MARGIN`.

    python benchmarks/logit_drift.py --target qwen2.5-coder-1.5b --backend llama.cpp --block 16
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import specdecode as sd
from specdecode.bench.workload import load_prompts
from specdecode.machine import describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--backend", default="llama.cpp")
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens generated per prompt")
    ap.add_argument("--prompts-per-task", type=int, default=1)
    args = ap.parse_args()
    model = sd.load_model(args.target, backend=args.backend, quiet=True)
    gen = sd.SpeculativeGenerator(model)
    top_drift, margin_drift, small_margins = [], [], []
    for prompt in load_prompts(None, None, args.prompts_per_task):
        ids = gen.encode(prompt.messages, chat=True)
        out = gen.generate(ids, max_new_tokens=args.tokens).token_ids
        seq = ids + out
        for start in range(len(ids), len(seq) - args.block, args.block):
            block = seq[start : start + args.block]
            model.reset()
            model.forward(torch.tensor([seq[:start]]), logits_to_keep=1)
            batched = model.forward(torch.tensor([block]), logits_to_keep=len(block)).clone()[0]
            model.truncate(start)
            single = torch.stack([model.forward(torch.tensor([[t]]), logits_to_keep=1)[0, -1].clone()
                                  for t in block])
            for b, s in zip(batched, single, strict=True):
                top = torch.topk(s, 2).indices
                top_drift.append(float((b[top] - s[top]).abs().max()))
                margin_s, margin_b = float(s[top[0]] - s[top[1]]), float(b[top[0]] - b[top[1]])
                margin_drift.append(abs(margin_b - margin_s))
                small_margins.append(margin_s)
    model.reset()
    flips = sum(1 for m, d in zip(small_margins, margin_drift, strict=True) if d > m)
    report = {
        "machine": describe(), "target": args.target, "backend": args.backend, "dtype": str(model.dtype),
        "block": args.block, "positions": len(margin_drift),
        "top2_logit_drift_max": max(top_drift), "top2_logit_drift_median": statistics.median(top_drift),
        "margin_drift_max": max(margin_drift), "margin_drift_p99": sorted(margin_drift)[
            int(0.99 * (len(margin_drift) - 1))],
        "margin_drift_median": statistics.median(margin_drift),
        "positions_where_the_argmax_could_flip": flips,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
