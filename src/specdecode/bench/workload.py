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


def default_prompt_dir() -> Path:
    """`benchmarks/prompts` of the source checkout this package runs from (or of the working directory)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "benchmarks" / "prompts").is_dir():
            return root / "benchmarks" / "prompts"
    raise ValueError("no benchmarks/prompts directory found: pass --prompts DIR (one .jsonl file per task)")


def load_prompts(
    directory: str | Path | None = None, tasks: list[str] | None = None, per_task: int | None = None
) -> list[BenchPrompt]:
    """Prompts of the chosen tasks (all by default), the first `per_task` of each, tasks in name order."""
    folder = Path(directory) if directory is not None else default_prompt_dir()
    files = sorted(folder.glob("*.jsonl"))
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
