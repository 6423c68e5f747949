"""`make demo`: speculative vs plain decoding side by side, showing equal greedy output and the stats.

Uses tiny in-process models (random weights) until the built-in real model pair is available.
"""

from __future__ import annotations

from .generator import SpeculativeGenerator
from .toy import TableLM, random_table


def main() -> None:
    target = TableLM(random_table(16, 2, seed=0, sharpness=3.0))
    draft = TableLM((target.table + 0.05 * random_table(16, 2, seed=1)).float())
    prompt = [1, 2, 3]
    plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=64)
    spec = SpeculativeGenerator(target, draft).generate(prompt, max_new_tokens=64, gamma=4)
    print("toy models (vocab 16, explicit probability tables), greedy, 64 tokens")
    print("plain      :", plain.token_ids[:24], "...")
    print("speculative:", spec.token_ids[:24], "...")
    print("identical greedy output:", plain.token_ids == spec.token_ids)
    print("plain      :", plain.stats.summary())
    print("speculative:", spec.stats.summary())
    sampled = SpeculativeGenerator(target, draft).generate(prompt, max_new_tokens=64, temperature=1.0,
                                                           seed=0)
    print("sampled (t=1, seed 0):", sampled.stats.summary())


if __name__ == "__main__":
    main()
