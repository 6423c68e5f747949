"""specdecode: exact speculative decoding (Leviathan et al. 2023) for PyTorch / transformers models."""

from .acceptance import verify
from .backends.hf import HFModel
from .generator import GenerationStream, SpeculativeGenerator
from .models import load_model, wrap
from .protocol import CausalLM
from .results import GenerationResult, GenerationStats
from .sampling import SamplingParams, adjusted_probs
from .structured import Constraint

__version__ = "0.1.0"

__all__ = [
    "CausalLM",
    "Constraint",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "HFModel",
    "SamplingParams",
    "SpeculativeGenerator",
    "adjusted_probs",
    "load_model",
    "verify",
    "wrap",
]
