"""The options of a cluster: the same as `specdecode serve`'s, from the command line, from `serve run`
arguments (`key=value`, strings) or from a Serve config file's `args:` (typed values)."""

from __future__ import annotations

import argparse
import os
from typing import Any

ROUTINGS = ("affinity", "random")  # prefix-affinity routing, or Ray Serve's default power of two choices


def _serve_parser() -> argparse.ArgumentParser:
    from ..cli.parser import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def serve_args(options: dict[str, Any]) -> argparse.Namespace:
    """`specdecode serve`'s parsed options with `options` (keys as the long flags, `-` or `_`) applied;
    ValueError naming an unknown key or a bad value."""
    parser = _serve_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in options.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest == "help":
            known = ", ".join(sorted(d for d in actions if d != "help"))
            raise ValueError(f"unknown cluster option '{key}'; the options are those of specdecode serve: "
                             f"{known}")
        if value is None:
            continue
        flag = action.option_strings[0] if isinstance(action, argparse.BooleanOptionalAction) else max(
            action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):
            on = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            argv.append(flag if on else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true
            if value is True or str(value).lower() in ("1", "true", "yes", "on"):
                argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]

    def fail(message: str) -> None:
        raise ValueError(f"invalid cluster option: {message} (the options are those of specdecode serve)")

    parser.error = fail  # type: ignore[method-assign]  # a ValueError, not an exit
    return parser.parse_args(argv)


def changed_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `serve` options of `args` that differ from their defaults (what the replicas are sent)."""
    defaults = vars(_serve_parser().parse_args([]))
    return {k: v for k, v in vars(args).items() if k in defaults and v != defaults[k]}


def replica_threads(args: argparse.Namespace) -> int:
    """CPU threads per engine replica: --threads, else this machine's cores shared by the replicas."""
    if args.threads is not None:
        return int(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, args.replicas))
