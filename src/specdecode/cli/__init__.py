"""The `specdecode` command line: `generate`, `edit`, `serve`, `bench` and `models list|fetch`.

Exit codes: 0 done, 2 bad input (with a message naming the problem), 130 interrupted by Ctrl-C (the
partial text and its stats are still printed).
"""

from __future__ import annotations

import sys

from .commands import _bench, _edit, _generate, _models, _serve
from .parser import _parser

__all__ = ["main"]


EXTRAS = {"fastapi": "server", "uvicorn": "server", "prometheus_client": "server", "matplotlib": "bench",
          "gguf": "gguf", "accelerate": "gguf", "llama_cpp": "llamacpp", "ray": "cluster"}


def missing_extra(exc: ImportError) -> str:
    """What to install for a missing optional module."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return f"a module is missing ({exc}); reinstall specdecode: pip install specdecode"
    return (f"this command needs the '{extra}' extra ({module} is not installed): "
            f"pip install 'specdecode[{extra}]'")


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
        if args.command == "edit":
            return _edit(args)
        return _models(args)
    except ValueError as exc:
        print(f"specdecode: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional extra is not installed: one line naming the install
        print(f"specdecode: error: {missing_extra(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specdecode: interrupted", file=sys.stderr)
        return 130

