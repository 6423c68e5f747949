"""The benchmark workload: prompts grouped by task, one JSON object per line in `benchmarks/prompts/`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt: chat messages and the number of tokens to generate."""

    id: str
    task: str
    messages: list[dict[str, str]]
    max_new_tokens: int
    prediction: str | None = None  # the predicted output (edit tasks: the file itself)


def default_prompt_dir() -> Path:
    """`benchmarks/prompts` of the source checkout this package runs from (or of the working directory)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "benchmarks" / "prompts").is_dir():
            return root / "benchmarks" / "prompts"
    raise ValueError("no benchmarks/prompts directory found: pass --prompts DIR (one .jsonl file per task)")


EDITS = "edits"  # benchmarks/prompts/edits.jsonl: the edit workload, run with --workload edits


def load_prompts(
    directory: str | Path | None = None, tasks: list[str] | None = None, per_task: int | None = None,
    workload: str = "chat",
) -> list[BenchPrompt]:
    """Prompts of the chosen tasks (all by default), the first `per_task` of each, tasks in name order.

    workload "chat": every prompt file but edits.jsonl; "edits": the edit tasks, each built from a
    source file and an instruction as `specdecode edit` builds it, with the file as prediction.
    """
    folder = Path(directory) if directory is not None else default_prompt_dir()
    if workload == EDITS:
        return load_edits(folder / f"{EDITS}.jsonl", tasks, per_task)
    if workload != "chat":
        raise ValueError(f"unknown workload {workload!r}: chat or edits")
    files = sorted(f for f in folder.glob("*.jsonl") if f.stem != EDITS)
    if not files:
        raise ValueError(f"no .jsonl prompt files in {folder}")
    known = [f.stem for f in files]
    if tasks:
        unknown = sorted(set(tasks) - set(known))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}: the tasks in {folder} are {known}")
        files = [f for f in files if f.stem in tasks]
    prompts: list[BenchPrompt] = []
    for path in files:
        rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for number, line in enumerate(rows[:per_task] if per_task else rows, 1):
            try:
                row = json.loads(line)
                prompts.append(BenchPrompt(str(row["id"]), str(row["task"]), list(row["messages"]),
                                           int(row["max_new_tokens"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{number}: a prompt needs id, task, messages and max_new_tokens ({exc})"
                ) from None
    return prompts


def load_edits(path: Path, tasks: list[str] | None = None, per_task: int | None = None) -> list[BenchPrompt]:
    """The edit tasks of `path` (rows: id, task, file, instruction, max_new_tokens), files looked up in
    `benchmarks/edits/files/`; `tasks` filters by task name, `per_task` keeps the first of each."""
    from ..edit import make_task

    if not path.is_file():
        raise ValueError(f"no edit workload at {path}")
    files_dir = path.parent.parent / "edits" / "files"
    prompts: list[BenchPrompt] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task = str(row["task"])
            if (tasks and task not in tasks) or (per_task and seen.get(task, 0) >= per_task):
                continue
            edit = make_task(files_dir / row["file"], str(row["instruction"]))
            prompts.append(BenchPrompt(str(row["id"]), task, edit.messages, int(row["max_new_tokens"]),
                                       edit.prediction))
            seen[task] = seen.get(task, 0) + 1
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}:{number}: an edit needs id, task, file, instruction and "
                             f"max_new_tokens ({exc})") from None
    return prompts
