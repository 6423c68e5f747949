"""An on-disk prompt cache: the KV state of a prompt a llama.cpp model has read, saved in a file keyed by
the model file's hash and the prompt's tokens, so a later run whose prompt shares a prefix (the same file
edited again with another instruction) loads that prefix instead of reading it.

File layout: MAGIC, a 4-byte little-endian header length, a JSON header (format, version, model hash,
token count), the tokens as int32, then llama.cpp's sequence state. Files are written atomically; a
corrupt or foreign file is skipped with a warning, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .cache import common_prefix
from .fileio import atomic_path

log = logging.getLogger("specdecode.cache")
MAGIC = b"SPECDECODE-PROMPT-CACHE\n"
VERSION = 1
KEEP_FILES = 8  # per model: the least recently used beyond this are deleted
MIN_TOKENS = 16  # shorter prefixes are read, not loaded


def default_directory() -> Path:
    """Where `--prompt-cache` without a path keeps its files ($SPECDECODE_CACHE/prompt-cache)."""
    root = os.environ.get("SPECDECODE_CACHE") or Path.home() / ".cache" / "specdecode"
    return Path(root) / "prompt-cache"


def model_hash(path: str | os.PathLike[str], index_dir: Path) -> str:
    """sha256 of a model file, remembered by (path, size, mtime) in `index_dir`/hashes.json."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}:{st.st_size}:{st.st_mtime_ns}"
    index = index_dir / "hashes.json"
    known: dict[str, str] = {}
    try:
        known = json.loads(index.read_text())
    except (OSError, ValueError):
        pass
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    try:
        with atomic_path(index) as tmp:
            tmp.write_text(json.dumps(known))
    except OSError:  # a read-only cache still works, only slower
        pass
    return known[key]


class DiskPromptCache:
    """Prompt KV states of one llama.cpp model (`LlamaCppModel`) in `directory`."""

    def __init__(self, directory: str | os.PathLike[str], model: Any) -> None:
        if not hasattr(model, "save_state"):
            raise ValueError(f"--prompt-cache needs the llama.cpp backend; {getattr(model, 'backend', '?')} "
                             "models keep no state on disk")
        self.root = Path(directory)
        self.model = model
        self.hash = model_hash(model.path, self.root)
        self.dir = self.root / self.hash[:24]

    def _entries(self) -> list[tuple[Path, list[int]]]:
        out = []
        for path in sorted(self.dir.glob("*.kvc")):
            try:
                header, tokens, _ = _read(path, with_state=False)
                if header.get("model") != self.hash:
                    raise ValueError("saved by another model")
                out.append((path, tokens))
            except (OSError, ValueError) as exc:
                log.warning("prompt cache: ignoring %s (%s)", path, exc)
        return out

    def load(self, prompt_ids: list[int]) -> int:
        """Fill the model's cache with the longest saved prefix of `prompt_ids` (at most all but its last
        token); how many positions it now holds (0: nothing usable)."""
        best: tuple[int, Path | None, list[int]] = (0, None, [])
        for path, tokens in self._entries():
            n = min(common_prefix(tokens, prompt_ids), len(prompt_ids) - 1)
            if n > best[0]:
                best = (n, path, tokens)
        n, path, tokens = best
        if path is None or n < MIN_TOKENS:
            return 0
        try:
            _, _, state = _read(path, with_state=True)
        except (OSError, ValueError) as exc:
            log.warning("prompt cache: ignoring %s (%s)", path, exc)
            return 0
        if not self.model.load_state(state, tokens):
            log.warning("prompt cache: llama.cpp refused %s; reading the prompt", path)
            return 0
        self.model.truncate(n)
        os.utime(path)  # recently used: kept longest
        return n

    def save(self, prompt_ids: list[int]) -> Path | None:
        """Save the model's cache cut to the part of `prompt_ids` it holds; the file's path (None when the
        model holds too little of the prompt)."""
        n = common_prefix(self.model.tokens, prompt_ids)
        if n < MIN_TOKENS:
            return None
        self.model.truncate(n)
        tokens = list(prompt_ids[:n])
        state = self.model.save_state()
        name = hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:32] + ".kvc"
        final = self.dir / name
        header = json.dumps({"format": "specdecode-prompt-cache", "version": VERSION, "model": self.hash,
                             "model_path": str(self.model.path), "tokens": n}).encode()
        with atomic_path(final) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(np.asarray(tokens, dtype="<i4").tobytes())
            f.write(state)
        self._prune()
        return final

    def _prune(self) -> None:
        files = sorted(self.dir.glob("*.kvc"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[KEEP_FILES:]:
            old.unlink(missing_ok=True)


def _read(path: Path, with_state: bool) -> tuple[dict[str, Any], list[int], bytes]:
    """(header, tokens, state) of a cache file; a ValueError naming what is wrong with it."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a specdecode prompt-cache file")
        raw = f.read(4)
        if len(raw) != 4:
            raise ValueError("truncated header")
        (size,) = struct.unpack("<I", raw)
        if size > 1 << 20:
            raise ValueError("corrupt header")
        header = json.loads(f.read(size))
        if not isinstance(header, dict) or header.get("version") != VERSION:
            raise ValueError(f"unknown version {header.get('version') if isinstance(header, dict) else '?'}")
        n = int(header.get("tokens", -1))
        data = f.read(4 * n) if n > 0 else b""
        if n <= 0 or len(data) != 4 * n:
            raise ValueError("truncated tokens")
        tokens = np.frombuffer(data, dtype="<i4").astype(int).tolist()
        state = f.read() if with_state else b""
    if with_state and not state:
        raise ValueError("no state")
    return header, tokens, state
