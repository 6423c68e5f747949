"""Plain decoding per token: our llama.cpp backend against llama-cpp-python's `Llama.eval`, each in a
process of its own, alternating (loading two models into one process makes whichever loads second
10-15% faster per token on some hosts, so an in-process comparison measures load order).

    python benchmarks/plain_parity.py --rounds 3 [--gguf PATH] [--prompt-tokens 60] [--steps 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def one(which: str, gguf: str, prompt_tokens: int, steps: int) -> float:
    """ms per one-token decode step after a prompt of `prompt_tokens` tokens, in this process."""
    prompt = list(range(1000, 1000 + prompt_tokens))
    if which == "ours":
        import torch

        from specdecode.backends.llamacpp import LlamaCppModel

        model = LlamaCppModel(gguf)
        model.forward(torch.tensor([prompt]), logits_to_keep=1)

        def step(i: int) -> None:
            model.forward(torch.tensor([[1500 + i]]), logits_to_keep=1)
    else:
        from llama_cpp import Llama

        llm = Llama(model_path=gguf, n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        llm.eval(prompt)

        def step(i: int) -> None:
            llm.eval([1500 + i])
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    from specdecode.machine import describe
    from specdecode.registry import BUILTINS, gguf_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", default=None, help="default: the built-in 1.5B target")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=60)
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--child", choices=["ours", "llama-cpp-python"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    gguf = args.gguf or str(gguf_file(BUILTINS["qwen2.5-coder-1.5b"], quiet=True))
    if args.child:
        print(one(args.child, gguf, args.prompt_tokens, args.steps))
        return
    times: dict[str, list[float]] = {"ours": [], "llama-cpp-python": []}
    for _ in range(args.rounds):
        for which in times:
            out = subprocess.run([sys.executable, __file__, "--child", which, "--gguf", gguf,
                                  "--prompt-tokens", str(args.prompt_tokens), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            times[which].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"{which:>17}: {times[which][-1]:.1f} ms/token", flush=True)
    ours, peer = statistics.median(times["ours"]), statistics.median(times["llama-cpp-python"])
    print(f"{describe()}; {Path(gguf).name}; medians: ours {ours:.1f} ms, llama-cpp-python {peer:.1f} ms "
          f"per token: ours at {peer / ours:.3f}x its speed")


if __name__ == "__main__":
    main()
