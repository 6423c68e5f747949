"""`specdecode edit FILE -i INSTRUCTION`: rewrite a file with the model, using the file itself as the
predicted output, so every unchanged stretch is verified in long blocks instead of generated token by
token. The result is exactly what the model writes without the prediction (greedy), only sooner."""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text

MAX_FILE_BYTES = 200_000
SYSTEM = ("You are a careful software engineer. Apply the user's instruction to the file and reply with "
          "the complete updated file in one fenced code block, with no explanation before or after it.")
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust",
             ".java": "java", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".rb": "ruby", ".sh": "bash",
             ".md": "markdown", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
             ".html": "html", ".css": "css", ".sql": "sql", ".kt": "kotlin", ".swift": "swift", ".php": "php"}


@dataclass
class EditTask:
    """A file and what to do to it: the chat sent to the model and the predicted reply."""

    path: Path
    original: str
    instruction: str
    language: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    prediction: str = ""


def read_source(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text, or a ValueError naming why it cannot be edited (missing, binary, too large)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{p} is {size} bytes; edit handles files up to {max_bytes} bytes "
                         "(split it, or raise --max-bytes)")
    data = p.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{p} looks binary (it contains NUL bytes): edit rewrites text files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def make_task(path: str | os.PathLike[str], instruction: str, max_bytes: int = MAX_FILE_BYTES) -> EditTask:
    """The chat and the prediction for editing `path` as `instruction` says."""
    if not instruction or not instruction.strip():
        raise ValueError("the instruction is empty: say what to change, e.g. -i 'add type hints'")
    original = read_source(path, max_bytes)
    p = Path(path)
    language = LANGUAGES.get(p.suffix.lower(), "")
    fenced = f"```{language}\n{original}{'' if original.endswith(chr(10)) else chr(10)}```"
    # the file before the instruction: edits of one file with different instructions share the prompt up to
    # the instruction, so a prompt cache (--prompt-cache, a server's prefix cache) reads the file once
    user = (f"File `{p.name}`:\n\n{fenced}\n\nInstruction: {instruction.strip()}\n\nReply with the complete "
            "updated file in one fenced code block.")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return EditTask(p, original, instruction.strip(), language, messages, fenced)


def extract_code(reply: str) -> str:
    """The contents of the reply's first fenced code block (the whole reply when it has none)."""
    start = reply.find("```")
    if start < 0:
        return reply
    body_start = reply.find("\n", start)
    if body_start < 0:
        return ""
    end = reply.find("\n```", body_start)
    body = reply[body_start + 1 : end + 1 if end >= 0 else len(reply)]
    return body


def unified_diff(task: EditTask, new_text: str) -> str:
    """The change as a unified diff of the file (empty when nothing changed)."""
    name = str(task.path)
    return "".join(difflib.unified_diff(task.original.splitlines(keepends=True),
                                        new_text.splitlines(keepends=True), f"a/{name}", f"b/{name}"))


def write_atomically(path: Path, text: str, backup: bool = True) -> Path | None:
    """Replace `path` with `text` in one rename (keeping its mode); returns the backup's path if made."""
    saved = None
    if backup:
        saved = path.with_name(path.name + ".orig")
        shutil.copy2(path, saved)
    atomic_write_text(path, text, keep_mode_of=path)
    return saved


def run_edit(gen: Any, task: EditTask, settings: dict[str, Any], progress: bool = True) -> Any:
    """Generate the edited file with the task's prediction; a live line on stderr shows the speed and the
    prediction tokens accepted and rejected. Returns the `GenerationResult`."""
    from tqdm.auto import tqdm

    stream = gen.stream(task.messages, chat=True, prediction=task.prediction, tokens=True, **settings)
    start = time.perf_counter()
    with tqdm(total=settings.get("max_new_tokens"), unit="tok", disable=not progress, file=sys.stderr,
              desc="editing", leave=False) as bar:
        try:
            for chunk in stream:
                bar.update(len(chunk))
                stats = stream.live_stats
                if stats is not None:
                    accepted, rejected = stats.prediction_counts()
                    rate = bar.n / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{rate:.1f} tok/s, prediction tokens accepted {accepted}, "
                                        f"rejected {rejected}", refresh=False)
        finally:
            stream.close()
    return stream.result
