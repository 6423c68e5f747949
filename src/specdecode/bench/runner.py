"""`specdecode bench`: every configuration on every prompt, interleaved, into `results/<timestamp>/`."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compare import first_divergence
from ..costs import cost_curve
from .peers import HFRunner, LlamaCppRunner, OursRunner, Sampling, llama_cpp_available
from .workload import BenchPrompt, load_prompts

PEERS = ("hf", "assisted", "lookup", "llamacpp", "llama-server")
HF_PEERS = ("hf", "assisted", "lookup")  # transformers' generate(): only with the transformers backend


@dataclass
class BenchConfig:
    """What `specdecode bench` runs (the defaults are the full suite)."""

    target: str = "qwen2.5-coder-1.5b"
    draft: str = "qwen2.5-coder-0.5b"
    backend: str = "auto"  # our engine's: auto (llama.cpp on a CPU for GGUF models), llama.cpp, transformers
    server_modes: list[str] = field(
        default_factory=lambda: ["plain", "ngram-simple", "ngram-mod", "draft-simple"])
    lookup_gamma_max: int = 32
    workload: str = "chat"  # chat (the six tasks) or edits (benchmarks/prompts/edits.jsonl, with predictions)
    tasks: list[str] | None = None
    per_task: int | None = None
    max_new_tokens: int | None = None  # None: each prompt's own
    gammas: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8])
    default_gamma: int | str = "auto"  # our default configuration, compared with the peers
    drafters: list[str] = field(default_factory=lambda: ["ngram", "ngram+model"])  # also run, gamma auto
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    top_p: float = 0.95
    rounds: int = 1
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    assisted_ks: list[int] = field(default_factory=lambda: [2, 4, 6, 8])
    lookup_tokens: int = 10
    cost_ks: list[int] = field(default_factory=lambda: [*range(1, 10), 12, 16, 24, 32, 48, 64])
    out: str = "results"
    prompts_dir: str | None = None
    dtype: str | None = None
    seed: int = 0
    quick: bool = False
    quiet: bool = False
    configs: list[str] | None = None  # run only the configurations whose names start with one of these

    @classmethod
    def quick_suite(cls, **overrides: Any) -> BenchConfig:
        """The whole pipeline on tiny in-process models: one prompt per task, few configurations."""
        settings: dict[str, Any] = dict(quick=True, per_task=1, max_new_tokens=12, gammas=[1, 4],
                                        assisted_ks=[4], cost_ks=[1, 2, 3, 5], backend="transformers")
        settings.update(overrides)
        return cls(**settings)

    def validate(self) -> None:
        if not self.gammas or min(self.gammas) < 1:
            raise ValueError(f"gammas must be integers >= 1, got {self.gammas}")
        bad_default = not isinstance(self.default_gamma, int) or self.default_gamma < 1
        if self.default_gamma != "auto" and bad_default:
            raise ValueError(f"the default gamma is 'auto' or an integer >= 1, got {self.default_gamma!r}")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        unknown_drafters = sorted(set(self.drafters) - {"ngram", "ngram+model"})
        if unknown_drafters:
            raise ValueError(f"unknown drafter(s) {unknown_drafters}: choose from ngram, ngram+model")
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown:
            raise ValueError(f"unknown peer(s) {unknown}: choose from {list(PEERS)}")
        from .llama_server import MODES

        unknown_modes = sorted(set(self.server_modes) - set(MODES))
        if unknown_modes:
            raise ValueError(f"unknown llama-server mode(s) {unknown_modes}: choose from {list(MODES)}")
        if self.workload not in ("chat", "edits"):
            raise ValueError(f"unknown workload {self.workload!r}: chat or edits")
        if self.backend not in ("auto", "llama.cpp", "transformers"):
            raise ValueError(f"unknown backend {self.backend!r}: auto, llama.cpp or transformers")
        if any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {self.temperatures}")


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    import transformers

    from ..machine import available_cores, cpu_isa, cpu_model

    info = {
        "cpu": cpu_model(), "isa": cpu_isa(), "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if llama_cpp_available():
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
    return info


def _gguf(name: str, quiet: bool) -> str | None:
    """The GGUF file of a built-in name or a .gguf path (None when there is none)."""
    from .. import registry

    if name in registry.BUILTINS:
        path = registry.gguf_file(registry.BUILTINS[name], quiet=quiet)
        return str(path) if path else None
    return name if name.endswith(".gguf") else None


def _load_pair(cfg: BenchConfig) -> tuple[Any, Any, str | None, str | None]:
    """Target, draft and their GGUF paths (for the llama.cpp peers; None when unknown)."""
    if cfg.quick:
        from ..toy import tiny_llama_pair

        target, draft = tiny_llama_pair()
        return target, draft, None, None
    from ..models import load_model

    target = load_model(cfg.target, dtype=cfg.dtype, quiet=cfg.quiet, backend=cfg.backend)
    draft = load_model(cfg.draft, dtype=cfg.dtype, quiet=cfg.quiet, backend=cfg.backend)
    return target, draft, _gguf(cfg.target, cfg.quiet), _gguf(cfg.draft, cfg.quiet)


def _skip(skipped: list[str], line: str) -> None:
    if line not in skipped:
        skipped.append(line)


def _server_runners(cfg: BenchConfig, gguf: str | None, draft_gguf: str | None, skipped: list[str],
                    cache: dict[str, Any]) -> list[Any]:
    """llama-server in each mode (started once, shared by the sampling passes), or a line saying why not."""
    from .llama_server import LlamaServerRunner, find_llama_server

    binary = find_llama_server()
    if binary is None:
        _skip(skipped, "skipped llama-server peers: not built (make llama-server)")
        return []
    if gguf is None:
        _skip(skipped, "skipped llama-server peers: no GGUF file for this target")
        return []
    runners = []
    for mode in cfg.server_modes:
        if mode not in cache:
            cache[mode] = LlamaServerRunner(binary, gguf, mode, draft_gguf=draft_gguf)
        runners.append(cache[mode])
    return runners


def _runners(cfg: BenchConfig, target: Any, draft: Any, gguf: str | None, sampling: Sampling,
             skipped: list[str], draft_gguf: str | None = None, servers: dict[str, Any] | None = None
             ) -> list[Any]:
    greedy = sampling.temperature == 0
    from ..drafters import ModelDrafter, NgramDrafter, NgramThenModel

    if cfg.workload == "edits":
        return _edit_runners(cfg, target, draft, gguf, greedy, skipped, servers)
    runners: list[Any] = [OursRunner(target, None)]
    gammas: list[int | str] = list(sorted(set(cfg.gammas))) if greedy else []
    runners += [OursRunner(target, draft, gamma=g) for g in [*gammas, "auto"]]
    if cfg.default_gamma not in [*gammas, "auto"]:
        runners.append(OursRunner(target, draft, gamma=cfg.default_gamma))
    if "ngram" in cfg.drafters:
        runners.append(OursRunner(target, NgramDrafter(), gamma="auto", label="ngram",
                                  lookup_gamma_max=cfg.lookup_gamma_max))
    if "ngram+model" in cfg.drafters:
        runners.append(OursRunner(target, NgramThenModel(NgramDrafter(), ModelDrafter(draft)), gamma="auto",
                                  label="ngram+model", lookup_gamma_max=cfg.lookup_gamma_max))
    if "llama-server" in cfg.peers and greedy:
        runners += _server_runners(cfg, gguf, draft_gguf, skipped, servers if servers is not None else {})
    if getattr(target, "backend", "transformers") != "transformers":
        if set(cfg.peers) & set(HF_PEERS):
            _skip(skipped, "skipped transformers generate() peers: they need --backend transformers")
        return runners + _llama_cpp_peers(cfg, target, gguf, greedy, skipped)
    if "hf" in cfg.peers:
        runners.append(HFRunner(target))
    if "assisted" in cfg.peers:
        ks = cfg.assisted_ks if greedy else []
        runners += [HFRunner(target, "assisted", draft, assistant_k=k) for k in ks]
        runners.append(HFRunner(target, "assisted", draft))
    if "lookup" in cfg.peers:
        runners.append(HFRunner(target, "lookup", lookup_tokens=cfg.lookup_tokens))
    return runners + _llama_cpp_peers(cfg, target, gguf, greedy, skipped)


def _edit_runners(cfg: BenchConfig, target: Any, draft: Any, gguf: str | None, greedy: bool,
                  skipped: list[str], servers: dict[str, Any] | None) -> list[Any]:
    """The edit workload: plain, n-gram, the prediction, prediction + n-gram, prediction + n-gram + the
    draft model (`specdecode edit`'s default); llama-server plain and its n-gram modes; transformers'
    prompt lookup on that backend."""
    from ..drafters import ModelDrafter, NgramDrafter, NgramThenModel

    lmax = cfg.lookup_gamma_max
    runners: list[Any] = [
        OursRunner(target, None),
        OursRunner(target, NgramDrafter(), gamma="auto", label="ngram", lookup_gamma_max=lmax),
        OursRunner(target, None, gamma="auto", label="prediction", lookup_gamma_max=lmax,
                   uses_prediction=True),
        OursRunner(target, NgramDrafter(), gamma="auto", label="prediction+ngram", lookup_gamma_max=lmax,
                   uses_prediction=True),
        OursRunner(target, NgramThenModel(NgramDrafter(), ModelDrafter(draft)), gamma="auto",
                   label="prediction+ngram+model", lookup_gamma_max=lmax, uses_prediction=True),
    ]
    if "llama-server" in cfg.peers and greedy:
        modes = BenchConfig(**{**asdict(cfg), "server_modes": [m for m in cfg.server_modes
                                                                if m != "draft-simple"]})
        runners += _server_runners(modes, gguf, None, skipped, servers if servers is not None else {})
    if "lookup" in cfg.peers and getattr(target, "backend", "transformers") == "transformers":
        runners.append(HFRunner(target, "lookup", lookup_tokens=cfg.lookup_tokens))
    return runners


def _llama_cpp_peers(cfg: BenchConfig, target: Any, gguf: str | None, greedy: bool, skipped: list[str]
                     ) -> list[Any]:
    """llama-cpp-python's own `Llama.generate` (plain and prompt lookup) on the target's GGUF."""
    if "llamacpp" not in cfg.peers or not greedy:
        return []
    reason = None
    if not llama_cpp_available():
        reason = "llama-cpp-python is not installed (pip install 'specdecode[llamacpp]')"
    elif gguf is None:
        reason = "no GGUF file for this target (built-in models with their chunk packages, or a .gguf)"
    if reason:
        _skip(skipped, f"skipped llama.cpp peers: {reason}")
        return []
    eos = set(getattr(target, "eos_token_ids", set()) or set())
    return [LlamaCppRunner(gguf, eos), LlamaCppRunner(gguf, eos, lookup_tokens=cfg.lookup_tokens)]


def _sample(prompt: BenchPrompt, sampling: Sampling, rnd: int, runner: Any, run: Any) -> dict[str, Any]:
    stats = run.stats
    return {
        "temperature": sampling.temperature, "top_p": sampling.top_p, "prompt_id": prompt.id,
        "task": prompt.task, "round": rnd, "config": runner.name, "family": runner.family,
        "new_tokens": len(run.token_ids), "seconds": run.seconds, "first_s": run.first_s,
        "first_n": run.first_n, "tokens_per_s": run.decode_tokens_per_s, "e2e_tokens_per_s": run.tokens_per_s,
        "acceptance_rate": stats.get("acceptance_rate") if stats.get("drafted") else None,
        "tokens_per_target_call": stats.get("mean_tokens_per_target_call"),
        "accepted_per_position": stats.get("accepted_per_position"),
        "drafted_per_position": stats.get("drafted_per_position"),
        "target_s": stats.get("target_s"), "draft_s": stats.get("draft_s"), "token_ids": run.token_ids,
        "gamma_histogram": stats.get("gamma_histogram") or None,
        "accepted_prediction_tokens": stats.get("accepted_prediction_tokens"),
        "rejected_prediction_tokens": stats.get("rejected_prediction_tokens"),
    }


def _exactness(target: Any, prompt_ids: list[int], samples: list[dict[str, Any]]) -> None:
    """Mark each greedy sample identical or not to our plain decoding, with the top-2 margin where not."""
    plain = next(s for s in samples if s["config"] == "ours/plain")
    for s in samples:
        s["identical_to_plain"] = s["token_ids"] == plain["token_ids"]
        s["divergence"] = None
        other_numerics = s["family"] in ("llama.cpp", "llama-server") and getattr(
            target, "backend", "transformers") != "llama.cpp"  # a GGUF peer against a bf16 target
        if not s["identical_to_plain"] and not other_numerics:
            div = first_divergence(target, prompt_ids, plain["token_ids"], s["token_ids"])
            s["divergence"] = asdict(div) if div else None


def run_bench(cfg: BenchConfig) -> Path:
    """Run the benchmark; returns the results directory (results.json, report.md, plots)."""
    from .report import write_report

    cfg.validate()
    prompts = load_prompts(cfg.prompts_dir, cfg.tasks, cfg.per_task, cfg.workload)
    started = datetime.datetime.now()
    out = Path(cfg.out) / started.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    target, draft, gguf, draft_gguf = _load_pair(cfg)
    say = (lambda msg: None) if cfg.quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))
    say("measuring the cost curve T(k) of the target and T(1) of the draft ...")
    t_target = cost_curve(target, cfg.cost_ks, repeats=2 if cfg.quick else 3)
    t_draft = cost_curve(draft, [1], repeats=2 if cfg.quick else 5)[1]
    say("T(k) ms: " + ", ".join(f"{k}: {v * 1000:.0f}" for k, v in t_target.items()) +
        f"; draft T(1) {t_draft * 1000:.0f} ms; c = {t_draft / t_target[1]:.3f}")
    encoder = OursRunner(target, None).gen
    skipped: list[str] = []
    plan = [(Sampling(t, 1.0 if t == 0 else cfg.top_p),) for t in cfg.temperatures]
    servers: dict[str, Any] = {}
    runner_sets = {s[0]: _runners(cfg, target, draft, gguf, s[0], skipped, draft_gguf, servers) for s in plan}
    if cfg.configs:
        wanted = tuple(cfg.configs)
        runner_sets = {s: [r for r in rs if r.name.startswith(wanted)] for s, rs in runner_sets.items()}
    for line in skipped:
        say(line)
    total = sum(len(r) for r in runner_sets.values()) * len(prompts) * cfg.rounds
    samples: list[dict[str, Any]] = []
    with tqdm(total=total, desc="bench", unit="run", disable=cfg.quiet, file=sys.stderr) as bar:
        for sampling, runners in runner_sets.items():
            for prompt in prompts:
                prompt_ids = encoder.encode(prompt.messages, chat=True)
                budget = cfg.max_new_tokens or prompt.max_new_tokens
                for rnd in range(cfg.rounds):
                    batch = []
                    for runner in runners:
                        bar.set_description(f"{prompt.id} {runner.name}")
                        extra = {"prediction": prompt.prediction} if getattr(runner, "uses_prediction",
                                                                             False) else {}
                        run = runner.run(prompt_ids, budget, sampling, seed=cfg.seed + rnd, **extra)
                        batch.append(_sample(prompt, sampling, rnd, runner, run))
                        bar.update(1)
                        a = batch[-1]["acceptance_rate"]
                        say(f"{sampling.label:>18} {prompt.id:<20} {runner.name:<28} "
                            f"{run.decode_tokens_per_s:7.2f} tok/s (first token {run.first_s:5.2f}s)"
                            + (f"  alpha {a:.3f}" if a is not None else ""))
                    if sampling.temperature == 0:
                        _exactness(target, prompt_ids, batch)
                    samples.extend(batch)
    for server in servers.values():
        server.close()
    results = {
        "date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv), "config": asdict(cfg),
        "backend": getattr(target, "backend", "transformers"),
        "machine": machine_info(), "target": cfg.target if not cfg.quick else "tiny-llama (random)",
        "draft": cfg.draft if not cfg.quick else "tiny-llama (noisy copy)",
        "dtype": str(target.dtype).removeprefix("torch."), "device": str(target.device),
        "costs": {"target_s": {str(k): v for k, v in t_target.items()}, "draft_s": t_draft,
                  "c": t_draft / t_target[1]},
        "skipped": skipped, "samples": samples,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, out)
    say(f"results in {out}")
    return out

