"""Where specdecode keeps things and how loud its dependencies are: a leaf module (it imports nothing of
specdecode), so the model loader and the registry both use it without importing each other."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """`$SPECDECODE_CACHE`, default ~/.cache/specdecode: built-in models, calibrations, wheels."""
    return Path(os.environ.get("SPECDECODE_CACHE") or Path.home() / ".cache" / "specdecode")


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars and warnings inside the block (no-op when quiet is False)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as tf_logging

    bars, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
