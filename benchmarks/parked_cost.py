"""What parked prefixes cost every decode step: one request decoding while 0..N positions of other
sequences sit in the same (unified) KV buffer, on the real target, interleaved, medians.

    python benchmarks/parked_cost.py --parked 0,2048,4096,8192,16384 --steps 24 --rounds 5

The parked cells come from one prompt read once and restored into several parked sequences (distinct
cells, as separate conversations would hold). Writes JSON next to --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from specdecode.backends.llamacpp_cache import restore_sequence, save_sequence
from specdecode.backends.llamacpp_pool import SequencePool
from specdecode.machine import describe
from specdecode.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--parked", default="0,2048,4096,8192,16384")
    ap.add_argument("--chunk", type=int, default=1024, help="positions per restored parked sequence")
    ap.add_argument("--context", type=int, default=512, help="the decoding request's own cached tokens")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="results/parked_cost.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.parked.split(",")]
    model = load_model(args.model)
    lib = model._lib
    ids = [int(t) for t in (torch.arange(1000, 1000 + args.chunk) % model.vocab_size)]
    model.reset()
    model.forward(torch.tensor([ids]), logits_to_keep=1)
    state = save_sequence(lib, model._ctx, 0)
    pools = {}
    for p in sizes:
        pool = SequencePool(model, 1, 4096, cache_tokens=max(p, 1))
        for i in range(p // args.chunk):
            assert restore_sequence(lib, pool._ctx, state, 1 + i), "restore failed"
        slot = pool.acquire()
        pool.decode([(slot, ids[: args.context], 1)])
        pools[p] = (pool, slot)
    times: dict[int, list[float]] = {p: [] for p in sizes}
    for _ in range(args.rounds):
        for p in sizes:
            pool, slot = pools[p]
            slot.truncate(args.context)
            start = time.perf_counter()
            for j in range(args.steps):
                pool.decode([(slot, [ids[j]], 1)])
            times[p].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times[sizes[0]])
    rows = [{"parked": p, "ms_per_step": 1000 * statistics.median(t),
             "ratio_to_first": statistics.median(t) / base} for p, t in times.items()]
    out = {"cpu": describe(), "model": model.path, "args": vars(args), "rows": rows,
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(out["cpu"])
    print("| parked positions | ms per decode step | vs none |\n|---|---|---|")
    for r in rows:
        print(f"| {r['parked']} | {r['ms_per_step']:.1f} | {r['ratio_to_first']:.3f}x |")


if __name__ == "__main__":
    main()
