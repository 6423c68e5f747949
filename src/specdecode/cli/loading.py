"""What the commands share: status lines, the prompt, and loading the models and drafter options ask for."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .parser import DEFAULT_DRAFT, DEFAULT_TARGET


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
    if draft is None and getattr(args, "default_draft", None):
        return str(args.default_draft)
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
    from ..drafters import ModelDrafter, NgramDrafter, NgramThenModel

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
    from ..models import load_model

    start = time.perf_counter()
    _status(args, f"loading {role} {name} ...")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    model = load_model(name, dtype=args.dtype, device=args.device, quiet=args.quiet, backend=args.backend,
                       n_threads=args.threads,
                       deterministic=role == "target" and getattr(args, "deterministic", False),
                       flash_attn=getattr(args, "flash_attn", False))
    elapsed = time.perf_counter() - start
    _status(args, f"loaded {role} {name} on {model.backend} ({str(model.dtype).removeprefix('torch.')}, "
            f"{model.device}) in {elapsed:.1f}s")
    return model
