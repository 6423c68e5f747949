"""Cost curves T(k) of real architectures on a GPU: Qwen2.5-Coder 0.5B, 1.5B and 7B built from their configs
(benchmarks/gpu_configs/) with random bf16 weights, timed through specdecode's transformers backend
(`HFModel`: its DynamicCache, rollback by crop, logits_to_keep) as the engine calls it.

For each model, batch size and cached length: a cache of `context` tokens, then, round after round (the
first discarded as warm-up), one call on k new tokens for every k in turn, each after rolling the cache
back to `context`; CUDA-synchronised wall time, median over rounds. Writes `gpu_cost.json` (the format
`specdecode.predict.load_curves` reads) and `gpu_cost.png`.

    python benchmarks/gpu_cost.py --out results/gpu            # on a CUDA GPU, the full grid
    python benchmarks/gpu_cost.py --out /tmp/tiny --tiny       # the same path on the CPU, tiny configs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

CONFIG_DIR = Path(__file__).resolve().parent / "gpu_configs"
MODELS = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "qwen2.5-coder-7b"]
KS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64]
CONTEXTS = [128, 1024, 4096]
BATCHES = [1, 8]
TINY = {"ks": [1, 2, 3, 4, 8], "contexts": [16, 64], "batches": [1, 2], "repeats": 2}
PREFILL_CHUNK = 1024  # tokens per row and call while filling the cache


def load_config(name: str, tiny: bool = False) -> dict[str, Any]:
    """The config of `name` from benchmarks/gpu_configs (tiny: its head layout, 2 layers, a small width)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"unknown model config {name!r}: known are {known}")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if tiny:
        hidden = 8 * cfg["num_attention_heads"]
        cfg.update(num_hidden_layers=2, max_window_layers=2, hidden_size=hidden, intermediate_size=2 * hidden,
                   vocab_size=512, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    return cfg


def build(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """A randomly initialised model of `cfg`, created on `device`, wrapped as specdecode's `HFModel`."""
    import transformers as tf

    from specdecode import wrap

    torch.manual_seed(seed)
    rest = {k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype", "model_type")}
    config = tf.AutoConfig.for_model(cfg["model_type"], **rest)
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return wrap(model.to(device).eval())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(model: Any, ks: list[int], context: int, batch: int, repeats: int, seed: int) -> dict[int, float]:
    """Median seconds of one call on k new tokens per row after `context` cached ones, batch rows at once."""
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.vocab_size, (batch, context + max(ks)), generator=gen).to(device)
    model.reset()
    for start in range(0, context, PREFILL_CHUNK):
        model.forward(ids[:, start : min(start + PREFILL_CHUNK, context)], logits_to_keep=1)
    times: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(repeats + 1):  # the first round warms up and is discarded
        for k in ks:
            model.truncate(context)
            _sync(device)
            start = time.perf_counter()
            model.forward(ids[:, context : context + k], logits_to_keep=k)
            _sync(device)
            times[k].append(time.perf_counter() - start)
    model.reset()
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(out: Path, models: list[str], ks: list[int], contexts: list[int], batches: list[int], repeats: int,
        device: torch.device, dtype: torch.dtype, tiny: bool, seed: int, budget_s: float) -> dict[str, Any]:
    """Measure the grid and write gpu_cost.json (and the plot); cells past `budget_s` are skipped, listed."""
    import transformers

    started = time.perf_counter()
    result: dict[str, Any] = {"meta": {
        "device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "dtype": str(dtype).replace("torch.", ""), "tiny": tiny,
        "ks": ks, "contexts": contexts, "batches": batches, "repeats": repeats, "seed": seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "backend": "specdecode HFModel (transformers, eager)",
        "skipped": []}, "models": {}}
    cells = [(m, b, c) for m in models for b in batches for c in contexts]
    bar = tqdm(total=len(cells), desc="cost curves", unit="curve", file=sys.stdout)
    for name in models:
        cfg = load_config(name, tiny)
        if time.perf_counter() - started > budget_s:  # not even built
            result["meta"]["skipped"].append(f"{name}: past the {budget_s:.0f} s budget")
            bar.update(len(batches) * len(contexts))
            continue
        t0 = time.perf_counter()
        model = build(cfg, device, dtype, seed)
        _sync(device)
        params = sum(p.numel() for p in model.model.parameters())
        entry: dict[str, Any] = {"config": cfg, "params": params, "build_s": time.perf_counter() - t0,
                                 "curves": []}
        result["models"][name] = entry
        for batch in batches:
            for context in contexts:
                bar.set_postfix_str(f"{name} batch {batch} context {context}")
                cell = f"{name} batch={batch} context={context}"
                if time.perf_counter() - started > budget_s:
                    result["meta"]["skipped"].append(f"{cell}: past the {budget_s:.0f} s budget")
                elif context + max(ks) > cfg["max_position_embeddings"]:
                    result["meta"]["skipped"].append(f"{cell}: beyond the model's positions")
                else:
                    try:
                        seconds = measure(model, ks, context, batch, repeats, seed)
                        entry["curves"].append({"context": context, "batch": batch,
                                                "seconds": {str(k): s for k, s in seconds.items()}})
                    except torch.cuda.OutOfMemoryError:
                        model.reset()
                        result["meta"]["skipped"].append(f"{cell}: out of GPU memory")
                bar.update(1)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    result["meta"]["total_s"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_cost.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    plot(result, out / "gpu_cost.png")
    return result


def plot(result: dict[str, Any], path: Path) -> bool:
    """T(k) in ms and T(k) / T(1) per model, one line per (batch, cached length); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot (`python {__file__} --plot {path.parent}` elsewhere)")
        return False
    models = result["models"]
    fig, axes = plt.subplots(2, max(len(models), 1), figsize=(5 * max(len(models), 1), 8), squeeze=False)
    for col, (name, entry) in enumerate(models.items()):
        for curve in entry["curves"]:
            ks = sorted(int(k) for k in curve["seconds"])
            ms = [1000 * curve["seconds"][str(k)] for k in ks]
            label = f"batch {curve['batch']}, {curve['context']} cached"
            axes[0][col].plot(ks, ms, marker="o", ms=3, label=label)
            axes[1][col].plot(ks, [m / ms[0] for m in ms], marker="o", ms=3, label=label)
        axes[0][col].set_title(name)
        axes[0][col].set_ylabel("T(k), ms")
        axes[1][col].set_ylabel("T(k) / T(1)")
        for row in (0, 1):
            axes[row][col].set_xlabel("k (new tokens per row)")
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].grid(True, alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.suptitle(f"{result['meta']['device']}, {result['meta']['dtype']}, specdecode transformers backend")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for gpu_cost.json and gpu_cost.png")
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, a small grid (seconds)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated config names")
    ap.add_argument("--ks", type=_ints, help=f"block sizes (default {KS})")
    ap.add_argument("--contexts", type=_ints, help=f"cached lengths (default {CONTEXTS})")
    ap.add_argument("--batches", type=_ints, help=f"batch sizes (default {BATCHES})")
    ap.add_argument("--repeats", type=int, help="timed rounds after the warm-up round (default 5)")
    ap.add_argument("--device", help="cuda (default) or cpu (default with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip the cells left after this many s")
    ap.add_argument("--plot", type=Path, metavar="DIR", help="only redraw DIR/gpu_cost.png from its JSON")
    args = ap.parse_args(argv)
    if args.plot is not None:
        saved = json.loads((args.plot / "gpu_cost.json").read_text(encoding="utf-8"))
        return 0 if plot(saved, args.plot / "gpu_cost.png") else 1
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
              "run with --tiny for the CPU path", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        for name in models:
            load_config(name)  # an unknown name fails before anything is built
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ks = sorted(args.ks or (TINY["ks"] if args.tiny else KS))
    contexts = sorted(args.contexts or (TINY["contexts"] if args.tiny else CONTEXTS))
    batches = sorted(args.batches or (TINY["batches"] if args.tiny else BATCHES))
    repeats = args.repeats or (TINY["repeats"] if args.tiny else 5)
    print(f"device: {device_name(device)}; torch {torch.__version__}; models {models}")
    result = run(args.out, models, ks, contexts, batches, repeats, device,
                 getattr(torch, args.dtype), args.tiny, args.seed, args.budget_s)
    for name, entry in result["models"].items():
        for c in entry["curves"]:
            s = c["seconds"]
            t1, tk = s[str(ks[0])], s[str(ks[-1])]
            print(f"{name:20s} batch {c['batch']} context {c['context']:5d}: T({ks[0]}) {1000 * t1:.2f} ms, "
                  f"T({ks[-1]}) / T({ks[0]}) {tk / t1:.2f}")
    for line in result["meta"]["skipped"]:
        print(f"skipped: {line}")
    print(f"wrote {args.out / 'gpu_cost.json'} in {result['meta']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
