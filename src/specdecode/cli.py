"""The `specdecode` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdecode", description="Exact speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specdecode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text from a prompt")
    gen.add_argument("prompt", nargs="?", help="the prompt (default: read --file or stdin)")
    gen.add_argument("--file", help="read the prompt from this file")
    gen.add_argument("--target", required=True, help="transformers id, local directory or .gguf path")
    gen.add_argument("--draft", default="none", help="draft model (same forms), or 'none'")
    gen.add_argument("--gamma", type=int, default=4, help="draft tokens per target call")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: bf16 where fast)")
    gen.add_argument("--device", default=None)
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    return parser


def _generate(args: argparse.Namespace) -> int:
    from .generator import SpeculativeGenerator
    from .models import load_model

    prompt = args.prompt
    if prompt is None:
        prompt = open(args.file, encoding="utf-8").read() if args.file else sys.stdin.read()
    target = load_model(args.target, dtype=args.dtype, device=args.device)
    draft = None if args.draft == "none" else load_model(args.draft, dtype=args.dtype, device=args.device)
    gen = SpeculativeGenerator(target, draft)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, gamma=args.gamma, seed=args.seed, stop=args.stop,
        chat=not args.no_chat and bool(getattr(target.tokenizer, "chat_template", None)),
    )
    stream = gen.stream(prompt, **kwargs)
    try:
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        code = 130
    else:
        code = 0
    result = stream.result
    assert result is not None
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids,
                          "stats": result.stats.to_dict()}))
    else:
        sys.stdout.write("\n")
        print(result.stats.summary(), file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
    except ValueError as exc:
        print(f"specdecode: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
