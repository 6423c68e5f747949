"""Built-in model registry: chunk assembly with sha256 checks and the atomic cache (no real weights)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import specdecode.registry as reg


def fake_model(tmp_path: Path, monkeypatch, payload: bytes, parts: int = 3, sha: str | None = None):
    """Install `parts` fake chunk packages holding `payload` split in order; return their BuiltinModel."""
    pkgdir = tmp_path / "site"
    size = -(-len(payload) // parts)
    for i in range(1, parts + 1):
        mod = pkgdir / f"fakechunk_part{i}"
        (mod / "data").mkdir(parents=True)
        (mod / "data" / f"part{i:02d}.bin").write_bytes(payload[(i - 1) * size : i * size])
        # importing a chunk package would run its code: specdecode must only locate it
        (mod / "__init__.py").write_text("raise RuntimeError('a chunk package was imported')\n")
    monkeypatch.syspath_prepend(str(pkgdir))
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    for i in range(1, 10):  # forget chunk modules an earlier test imported from its own directory
        sys.modules.pop(f"fakechunk_part{i}", None)
    return reg.BuiltinModel(
        name="fake-model", role="target", hub_id="none/none", gguf_name="fake.gguf",
        package="fakechunk-part", version="1.0", parts=parts, size=len(payload),
        sha256=sha or hashlib.sha256(payload).hexdigest(),
    )


def test_assembly_concatenates_in_order_and_checks_sha(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 100
    spec = fake_model(tmp_path, monkeypatch, payload)
    parts = reg.part_paths(spec)
    assert parts is not None and len(parts) == 3
    out = reg.assemble(spec, parts, tmp_path / "out.gguf", quiet=True)
    assert out.read_bytes() == payload


def test_bad_sha_names_the_file_and_the_fix(tmp_path, monkeypatch):
    spec = fake_model(tmp_path, monkeypatch, b"x" * 1000, sha="0" * 64)
    with pytest.raises(ValueError, match=r"corrupt download for fake-model.*pip install --force-reinstall"):
        reg.assemble(spec, reg.part_paths(spec), tmp_path / "out.gguf", quiet=True)
    assert not (tmp_path / "out.gguf").exists()


def test_missing_chunk_package_is_reported(tmp_path, monkeypatch):
    spec = fake_model(tmp_path, monkeypatch, b"abc" * 10, parts=2)
    missing = reg.BuiltinModel(**{**spec.__dict__, "parts": 3})
    assert reg.part_paths(missing) is None


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    spec = fake_model(tmp_path, monkeypatch, b"weights" * 100)

    def dequantise_then_die(directory, gguf_name, dest, quiet):
        dest.mkdir()
        (dest / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way through writing the model

    monkeypatch.setattr(reg, "_dequantise", dequantise_then_die)
    with pytest.raises(KeyboardInterrupt):
        reg.fetch(spec, quiet=True)
    assert not reg.is_cached(spec) and not reg.cached_dir(spec).exists()
    assert list(reg.cached_dir(spec).parent.iterdir()) == []  # no temp leftovers either

    def dequantise(directory, gguf_name, dest, quiet):
        assert (Path(directory) / gguf_name).read_bytes() == b"weights" * 100
        dest.mkdir()
        (dest / "config.json").write_text("{}")

    monkeypatch.setattr(reg, "_dequantise", dequantise)
    path = reg.fetch(spec, quiet=True)
    assert reg.is_cached(spec) and (path / "config.json").is_file()
    assert sorted(p.name for p in path.iterdir()) == ["config.json", reg.MARKER]  # GGUF not kept


def test_unknown_local_path_is_a_clear_error():
    import specdecode as sd

    with pytest.raises(ValueError, match="GGUF file not found"):
        sd.load_model("/nonexistent/model.gguf")
    with pytest.raises(ValueError, match="could not load model"):
        sd.load_model("/nonexistent/dir-model")


def test_models_extra_lists_every_chunk_package():
    """The error messages point at `pip install 'specdecode[models]'`: that extra must exist and be whole."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["models"]
    expected = [f"{d}=={s.version}" for s in reg.BUILTINS.values() for d in s.distributions]
    assert sorted(extra) == sorted(expected + ["specdecode[gguf]"])  # dequantising needs the gguf extra


def test_missing_gguf_loader_names_the_extra(tmp_path, monkeypatch):
    spec = fake_model(tmp_path, monkeypatch, b"weights" * 10)
    real_find_spec = reg.importlib.util.find_spec
    monkeypatch.setattr(reg.importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"needs the accelerate package.*pip install 'specdecode\[gguf\]'"):
        reg.fetch(spec, quiet=True)
    assert not reg.cached_dir(spec).exists()


def test_dequantised_config_drops_the_gguf_quantization(tmp_path):
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2)
    config.quantization_config = {"quant_method": "gguf"}
    assert reg.strip_gguf_quantization(config) is True
    config.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    assert reg.strip_gguf_quantization(config) is False  # nothing left to strip
    other = tf.LlamaConfig()
    other.quantization_config = {"quant_method": "bitsandbytes"}
    assert reg.strip_gguf_quantization(other) is False and other.quantization_config
