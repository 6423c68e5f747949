"""Files that are either whole or absent: written to a temporary file beside the target, then renamed
over it in one step, so a reader (or a crash half-way) never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in `final`'s directory; on success it replaces `final` atomically, on an
    exception it is removed and `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(final: str | os.PathLike[str], text: str, keep_mode_of: Path | None = None) -> None:
    """Write `text` (UTF-8) to `final` atomically; `keep_mode_of`: copy that file's permission bits."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if keep_mode_of is not None and keep_mode_of.exists():
            os.chmod(tmp, keep_mode_of.stat().st_mode & 0o7777)
