"""aider, unmodified, editing real Python files through `specdecode serve` and through llama-server (plain
and `--spec-type ngram-mod`) on the same GGUF: wall time per edit, whether the edit applied, and whether
the edited files are equal across servers (aider sends temperature 0).

    python -m venv /tmp/aider-venv && /tmp/aider-venv/bin/pip install aider-chat
    python benchmarks/clients.py --aider /tmp/aider-venv/bin/aider --out docs/benchmarks/DATE-clients

The files (benchmarks/clients/files: Python standard-library modules, none in the edit benchmark's set)
and their rename tasks are listed in TASKS; `--heldout` edits another set (benchmarks/clients/heldout, its
tasks in tasks.json), written by a helper who never saw the drafters, for checks after tuning. All servers
are started once, one slot each, and stay up;
each file is edited by each server in turn (interleaved), in a fresh directory, `--no-git`, with
aider's lint step off (`--no-auto-lint`: the files share names with standard-library modules, which
break flake8 when run beside them, and aider then asks the model to "fix" them until the time limit). Writes
results.json and report.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from specdecode.bench.llama_server import MODES, find_llama_server  # noqa: E402
from specdecode.machine import describe  # noqa: E402

FILES = ROOT / "benchmarks" / "clients" / "files"
HELDOUT = ROOT / "benchmarks" / "clients" / "heldout"  # written by a helper who never saw the drafters
# file -> (old name, new name, kind): a rename touches the definition and every use, the rest is copied
TASKS = {
    "genericpath.py": ("commonprefix", "common_prefix", "function"),
    "fnmatch.py": ("fnmatchcase", "match_case", "function"),
    "codeop.py": ("_maybe_compile", "_try_compile", "function"),
    "copyreg.py": ("_reconstructor", "_rebuild_object", "function"),
    "chunk.py": ("getname", "get_name", "method"),
}


def heldout_tasks() -> dict[str, tuple[str, str, str]]:
    """The held-out set's tasks (benchmarks/clients/heldout/tasks.json), as TASKS."""
    path = HELDOUT / "tasks.json"
    if not path.is_file():
        return {}
    tasks = json.loads(path.read_text())
    return {f: (t["old"], t["new"], t.get("kind", "function")) for f, t in tasks.items()}


def all_tasks() -> dict[str, tuple[str, str, str]]:
    """Both sets' tasks: TASKS and the held-out set's."""
    return {**heldout_tasks(), **TASKS}


def task_file(file: str) -> Path:
    """Where `file` of either set lives."""
    return FILES / file if file in TASKS else HELDOUT / file


class OurServer:
    """`specdecode serve` on the built-in pair, one request at a time (aider sends one)."""

    name = "specdecode"

    def __init__(self, port: int, extra: list[str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(tempfile.mktemp(suffix="-specdecode.log"), "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "specdecode.cli", "serve", "--port", str(port),
                                      "--served-model-name", "qwen", "--parallel", "1", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"our server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("our server did not come up in 600 s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class LlamaServer:
    """llama-server on the same GGUF, one slot, its log in a file (a closed pipe would kill it)."""

    def __init__(self, binary: Path, gguf: str, mode: str, port: int, n_ctx: int = 16384) -> None:
        from specdecode.machine import available_cores

        self.name, self.url = f"llama-server/{mode}", f"http://127.0.0.1:{port}"
        threads = str(available_cores())
        self.log = open(tempfile.mktemp(suffix="-llama-server.log"), "w+b")  # noqa: SIM115
        env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        self.proc = subprocess.Popen([str(binary), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                                      "-t", threads, "-tb", threads, "-c", str(n_ctx), "-np", "1", "--jinja",
                                      *MODES[mode]], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up in 300 s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        OurServer.close(self)  # type: ignore[arg-type]


def edit(aider: str, url: str, fmt: str, file: str, timeout_s: float) -> dict[str, Any]:
    """One aider run on a fresh copy of `file`; what it took and what it left."""
    old, new, kind = all_tasks()[file]
    work = Path(tempfile.mkdtemp(prefix="aider-"))
    shutil.copy(task_file(file), work / file)
    message = (f"Rename the {kind} `{old}` to `{new}` everywhere in this file, including its uses. "
               "Change nothing else.")
    cmd = [aider, "--model", "openai/qwen", "--openai-api-base", f"{url}/v1", "--openai-api-key", "unused",
           "--edit-format", fmt, "--yes-always", "--no-git", "--no-auto-commits", "--no-check-update",
           "--no-analytics", "--no-show-model-warnings", "--no-pretty", "--map-tokens", "0",
           "--no-show-release-notes", "--no-detect-urls", "--no-auto-lint", "--message", message, file]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "AIDER_ANALYTICS": "false"}, stdin=subprocess.DEVNULL)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"timeout after {timeout_s} s: {exc.stdout or ''}", -1
    wall = time.perf_counter() - start
    text = (work / file).read_text()
    original = task_file(file).read_text()
    expected = re.sub(rf"\b{re.escape(old)}\b", new, original)
    shutil.rmtree(work, ignore_errors=True)
    return {"file": file, "format": fmt, "wall_s": round(wall, 2), "rc": rc,
            "applied": text != original and not re.search(rf"\b{re.escape(old)}\b", text) and new in text,
            "exact": text == expected, "text": text,
            "token_limit": "hit a token limit" in out or "exceeds" in out, "log_tail": out[-1500:]}


@contextlib.contextmanager
def exclusive(lock: str | None):
    """Hold `lock` (a file, flock'ed exclusively) while timing, so that nothing else shares the CPU."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def report(results: list[dict[str, Any]], servers: list[str], machine: str, cmd: str) -> str:
    lines = ["# aider edits against specdecode serve and llama-server", "",
             f"Machine: {machine}", f"Command: `{cmd}`", "",
             "| file | format | " + " | ".join(f"{s} s (applied, exact)" for s in servers)
             + " | texts equal |",
             "|---|---|" + "---|" * len(servers) + "---|"]
    keys = sorted({(r["file"], r["format"]) for r in results})
    for file, fmt in keys:
        row = {r["server"]: r for r in results if r["file"] == file and r["format"] == fmt}
        cells = [f"{row[s]['wall_s']:.1f} ({'yes' if row[s]['applied'] else 'NO'}, "
                 f"{'yes' if row[s]['exact'] else 'no'})" if s in row else "-" for s in servers]
        texts = {row[s]["text"] for s in servers if s in row}
        same = "yes" if len(texts) == 1 else "no"
        lines.append(f"| {file} | {fmt} | " + " | ".join(cells) + f" | {same} |")
    lines += ["", "| server | format | median wall s | applied | exact rename | vs llama-server/plain |",
              "|---|---|---|---|---|---|"]
    for fmt in sorted({r["format"] for r in results}):
        base = [r["wall_s"] for r in results if r["server"] == "llama-server/plain" and r["format"] == fmt]
        for s in servers:
            runs = [r for r in results if r["server"] == s and r["format"] == fmt]
            if not runs:
                continue
            med = statistics.median(r["wall_s"] for r in runs)
            ratio = f"{med / statistics.median(base):.2f}x" if base else "-"
            lines.append(f"| {s} | {fmt} | {med:.1f} | {sum(r['applied'] for r in runs)}/{len(runs)} | "
                         f"{sum(r['exact'] for r in runs)}/{len(runs)} | {ratio} |")
    return "\n".join(lines) + "\n"


def write(out: Path, results: list[dict[str, Any]], servers: list[str], args: argparse.Namespace) -> None:
    """results.json and report.md as they stand."""
    machine = describe()
    (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args),
                                                  "results": results}, indent=1))
    (out / "report.md").write_text(report(results, servers, machine, " ".join(sys.argv)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aider", default="/tmp/aider-venv/bin/aider")
    p.add_argument("--formats", nargs="+", default=["whole"], choices=["whole", "diff"])
    p.add_argument("--files", nargs="+", default=None,
                   help=f"files to edit (default: {' '.join(TASKS)}; with --heldout, the held-out set's)")
    p.add_argument("--heldout", action="store_true",
                   help="edit the held-out files (benchmarks/clients/heldout)")
    p.add_argument("--modes", nargs="+", default=["plain", "ngram-mod"], help="llama-server modes")
    p.add_argument("--ours-args", default="", help="extra `specdecode serve` arguments")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="results/clients")
    p.add_argument("--lock", default=None, help="a file to flock exclusively around each timed edit and "
                   "each server start (a machine shared with others), e.g. /tmp/cpu.lock")
    args = p.parse_args()
    known = all_tasks()
    args.files = args.files or list(heldout_tasks() if args.heldout else TASKS)
    unknown = [f for f in args.files if f not in known]
    if unknown or not args.files:
        p.error(f"no task for {unknown or 'the held-out set'}; known files: {', '.join(known)}")
    binary = find_llama_server()
    if binary is None:
        print("llama-server is not built (make llama-server): only our server runs", file=sys.stderr)
    from specdecode.registry import BUILTINS, gguf_file

    gguf = str(gguf_file(BUILTINS["qwen2.5-coder-1.5b"], quiet=True))
    with exclusive(args.lock):
        servers: dict[str, Any] = {"specdecode": OurServer(8765, args.ours_args.split())}
    try:
        for mode in args.modes if binary else []:
            with exclusive(args.lock):
                servers[f"llama-server/{mode}"] = LlamaServer(binary, gguf, mode, 8766 + len(servers))
        results: list[dict[str, Any]] = []
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in args.formats:
            for file in args.files:
                for name, srv in servers.items():  # interleaved: each file by each server in turn
                    with exclusive(args.lock):
                        r = {"server": name, **edit(args.aider, srv.url, fmt, file, args.timeout)}
                    print(f"{name:24s} {fmt:6s} {file:16s} {r['wall_s']:7.1f} s applied={r['applied']} "
                          f"exact={r['exact']}", flush=True)
                    if hasattr(srv, "alive") and not srv.alive():
                        raise RuntimeError(f"{name} died: see {srv.log.name}")
                    results.append(r)
                    write(out, results, list(servers), args)  # after every edit: a stopped run keeps them
    finally:
        for srv in servers.values():
            srv.close()
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
