"""Everything the benchmark times, behind one small interface: our engine, transformers' `generate()`
(plain, assisted generation, prompt lookup) and llama.cpp through llama-cpp-python."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generator import SpeculativeGenerator


@dataclass
class Run:
    """One timed generation: the new tokens, wall time and our engine's stats where there are some."""

    token_ids: list[int]
    seconds: float
    first_s: float  # until the first new token(s) came out: prefill and the first step
    first_n: int  # how many tokens that first emission held
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """End to end, prefill included."""
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """After the first emission: the decoding speed, free of the prompt's length."""
        rest = self.seconds - self.first_s
        return (len(self.token_ids) - self.first_n) / rest if rest > 0 else 0.0


class _FirstEmission:
    """A transformers streamer that notes when the first new tokens arrive (its first `put` is the prompt)."""

    def __init__(self, start: float) -> None:
        self.start, self.puts, self.first_s, self.first_n = start, 0, 0.0, 0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_s, self.first_n = time.perf_counter() - self.start, int(value.numel())

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of a benchmark pass: temperature 0 is greedy."""

    temperature: float
    top_p: float = 1.0

    @property
    def label(self) -> str:
        return "greedy" if self.temperature == 0 else f"t={self.temperature:g}, top-p {self.top_p:g}"


class OursRunner:
    """specdecode's engine; draft None is plain decoding."""

    family = "ours"

    def __init__(self, target: Any, draft: Any | None, gamma: int | str = 4, label: str = "model",
                 lookup_gamma_max: int = 32, uses_prediction: bool = False) -> None:
        self.gen = SpeculativeGenerator(target, draft)
        self.gamma, self.lookup_gamma_max = gamma, lookup_gamma_max
        self.uses_prediction = uses_prediction  # drafts from the prompt's predicted output too
        drafts = draft is not None or uses_prediction
        self.name = f"ours/{label} gamma={gamma}" if drafts else "ours/plain"

    def run(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int,
            prediction: str | None = None) -> Run:
        stream = self.gen.stream(prompt_ids, max_new_tokens=max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, gamma=self.gamma, seed=seed, tokens=True,
                                 lookup_gamma_max=self.lookup_gamma_max,
                                 prediction=prediction if self.uses_prediction else None,
                                 cache_prompt=False)  # every configuration reads the prompt whole
        start = time.perf_counter()
        first_s, first_n = 0.0, 0
        for chunk in stream:
            if not first_n:
                first_s, first_n = time.perf_counter() - start, len(chunk)
        res = stream.result
        assert res is not None
        return Run(res.token_ids, time.perf_counter() - start, first_s, first_n, res.stats.to_dict())


class HFRunner:
    """transformers' own `generate()`: plain, assisted by a draft model (`assistant_k` draft tokens with
    a constant schedule, or None for its default dynamic schedule), or prompt lookup."""

    family = "transformers"

    def __init__(self, target: Any, mode: str = "plain", draft: Any | None = None,
                 assistant_k: int | None = None, lookup_tokens: int = 10) -> None:
        from transformers import GenerationConfig

        self.target, self.draft, self.mode = target, draft, mode
        self.assistant_k, self.lookup_tokens = assistant_k, lookup_tokens
        self.eos = sorted(getattr(target, "eos_token_ids", set()) or []) or None
        self._config = GenerationConfig
        if mode == "assisted":
            self.name = f"hf/assisted k={assistant_k}" if assistant_k else "hf/assisted default"
        else:
            self.name = {"plain": "hf/plain", "lookup": f"hf/prompt-lookup n={lookup_tokens}"}[mode]

    def _assistant(self) -> Any:
        model = self.draft.model
        gc = model.generation_config
        if self.assistant_k:  # fixed k: constant schedule, no confidence-based early stop
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = self.assistant_k, "constant"
            gc.assistant_confidence_threshold = 0.0
        else:  # transformers' defaults: up to 20 tokens, stop when the draft's confidence < 0.4
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = 20, "constant"
            gc.assistant_confidence_threshold = 0.4
        return model

    def run(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> Run:
        model = self.target.model
        greedy = sampling.temperature == 0
        # an explicit config: the checkpoint's own defaults (Qwen: top-k 20, repetition penalty 1.1)
        # would otherwise change what is generated
        cfg = self._config(
            max_new_tokens=max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0, repetition_penalty=1.0,
            eos_token_id=self.eos, pad_token_id=(self.eos or [0])[0],
        )
        kwargs: dict[str, Any] = {}
        if self.mode == "assisted":
            kwargs["assistant_model"] = self._assistant()
        elif self.mode == "lookup":
            kwargs["prompt_lookup_num_tokens"] = self.lookup_tokens
        ids = torch.tensor([prompt_ids], device=self.target.device)
        torch.manual_seed(seed)
        start = time.perf_counter()
        timer = _FirstEmission(start)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                                 streamer=timer, **kwargs)
        seconds = time.perf_counter() - start
        new = out[0, len(prompt_ids):].tolist()
        eos = set(self.eos or [])
        cut = next((i for i, t in enumerate(new) if t in eos), None)
        return Run(new[: cut + 1] if cut is not None else new, seconds, timer.first_s, timer.first_n)


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppRunner:
    """llama.cpp on the same GGUF file: plain decoding or its prompt-lookup drafter (greedy only)."""

    family = "llama.cpp"

    def __init__(self, gguf_path: str, eos_token_ids: set[int], lookup_tokens: int | None = None,
                 n_ctx: int = 4096) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup_tokens) if lookup_tokens else None
        self.llm = Llama(model_path=gguf_path, n_ctx=n_ctx, n_threads=os.cpu_count(), verbose=False,
                         draft_model=draft)
        self.eos = eos_token_ids
        self.name = f"llama.cpp/prompt-lookup n={lookup_tokens}" if lookup_tokens else "llama.cpp/plain"

    def run(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, seed: int) -> Run:
        if sampling.temperature != 0:
            raise ValueError("the llama.cpp peer runs greedy only")
        self.llm.reset()  # no prompt-prefix reuse from the previous run
        new: list[int] = []
        start = time.perf_counter()
        first_s = 0.0
        for token in self.llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            new.append(int(token))
            if len(new) == 1:
                first_s = time.perf_counter() - start
            if token in self.eos or len(new) >= max_new_tokens:
                break
        return Run(new, time.perf_counter() - start, first_s, 1)
