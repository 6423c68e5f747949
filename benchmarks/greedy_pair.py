"""Plain vs speculative greedy decoding of the built-in Qwen2.5-Coder pair, interleaved in one process.

python benchmarks/greedy_pair.py [--max-new-tokens 128] [--gamma 4] [--rounds 2]
Prints tokens/s of each run, medians, the speedup, acceptance and greedy equality (with the top-2
logit margin at any divergence).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics

import torch

import specdecode as sd
from specdecode.compare import first_divergence

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Write a quicksort in Python.",
    "Explain what a Python generator is, with a short example.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    target = sd.load_model("qwen2.5-coder-1.5b")
    draft = sd.load_model("qwen2.5-coder-0.5b")
    print(f"{datetime.date.today()} {platform.processor() or platform.machine()} torch {torch.__version__} "
          f"threads {torch.get_num_threads()} dtype {next(target.model.parameters()).dtype}")
    plain, spec = sd.SpeculativeGenerator(target), sd.SpeculativeGenerator(target, draft)
    kw = dict(max_new_tokens=args.max_new_tokens, chat=True)
    plain.generate("warm up", max_new_tokens=4, chat=True)
    spec.generate("warm up", max_new_tokens=4, chat=True, gamma=args.gamma)
    speeds: dict[str, list[float]] = {"plain": [], "spec": []}
    for prompt in PROMPTS:
        for _ in range(args.rounds):
            a = plain.generate(prompt, **kw)
            b = spec.generate(prompt, gamma=args.gamma, **kw)
            speeds["plain"].append(a.stats.tokens_per_s)
            speeds["spec"].append(b.stats.tokens_per_s)
            prompt_ids = spec.encode(prompt, chat=True)
            div = first_divergence(target, prompt_ids, a.token_ids, b.token_ids)
            same = "identical" if div is None else (
                f"differ at {div.position} (tokens {div.tokens}, top-2 margin {div.top2_margin:.4f})")
            st = b.stats
            print(f"plain {a.stats.tokens_per_s:6.2f} tok/s | spec {st.tokens_per_s:6.2f} tok/s "
                  f"alpha {st.acceptance_rate:.3f} tokens/call {st.mean_tokens_per_target_call:.2f} "
                  f"target {st.target_s:.1f}s draft {st.draft_s:.1f}s | {same} | {prompt[:40]!r}")
    mp, ms = statistics.median(speeds["plain"]), statistics.median(speeds["spec"])
    print(f"median plain {mp:.2f} tok/s, speculative {ms:.2f} tok/s, speedup {ms / mp:.2f}x")


if __name__ == "__main__":
    main()
