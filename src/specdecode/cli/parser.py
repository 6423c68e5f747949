"""The `specdecode` argument parser: every command, its options and their help."""

from __future__ import annotations

import argparse

from .. import __version__
from ..prompt_cache import default_directory as default_prompt_cache
from ..registry import BUILTINS

DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT_MODEL = "qwen2.5-coder-0.5b"
DEFAULT_DRAFT = f"ngram+{DEFAULT_DRAFT_MODEL}"  # prompt lookup where it matches, else the 0.5B model
BACKEND_HELP = ("auto (default: llama.cpp for built-in names and .gguf files on a CPU, else transformers), "
                "llama.cpp or transformers")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdecode", description="Exact speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specdecode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="generate text from a prompt",
        description="Stream the completion to stdout and a stats line to stderr. Defaults: the built-in "
        "Qwen2.5-Coder pair, the chat template, greedy decoding.",
    )
    gen.add_argument("prompt", nargs="?", help="the prompt ('-' or nothing: read --file or stdin)")
    gen.add_argument("--file", help="read the prompt from this file")
    _model_args(gen)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    gen.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--no-chat", action="store_true",
                     help="feed the prompt as is, without the chat template")
    gen.add_argument("--compare", action="store_true",
                     help="also run plain decoding of the target and report both speeds, the speedup and "
                     "whether greedy outputs are identical")
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, stats)")
    gen.add_argument("--quiet", action="store_true", help="no progress bars or status lines")

    ed = sub.add_parser(
        "edit", help="rewrite a file as an instruction says, with the file itself as predicted output",
        description="Prints the change as a unified diff (--write applies it, keeping FILE.orig). The file "
        "is the predicted output: unchanged stretches are verified in long blocks, so the edit comes out "
        "sooner and exactly as without the prediction. Exit 2 for a missing, binary or too large file, or "
        "an empty instruction; 1 when the reply was cut by --max-new-tokens (nothing written).",
    )
    ed.add_argument("file", help="the text file to edit")
    ed.add_argument("-i", "--instruction", required=True, help="what to change, e.g. 'add type hints'")
    _model_args(ed)
    ed.set_defaults(default_draft="ngram")
    ed.add_argument("--max-new-tokens", type=int, default=None,
                    help="default: 1.5x the file's tokens + 256")
    ed.add_argument("--max-bytes", type=int, default=200_000, help="largest file accepted (default 200000)")
    ed.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ed.add_argument("--seed", type=int, default=None)
    ed.add_argument("--write", action="store_true", help="replace the file (atomically; backup FILE.orig)")
    ed.add_argument("--no-backup", action="store_true", help="with --write: keep no FILE.orig")
    ed.add_argument("--json", action="store_true", help="print one JSON object: text, diff, stats")
    ed.add_argument("--compare", action="store_true",
                    help="also generate without the prediction (plain decoding) and report both speeds and "
                    "whether the outputs are identical")
    ed.add_argument("--prompt-cache", nargs="?", const=str(default_prompt_cache()), default=None,
                    metavar="DIR", help="keep the prompt's KV state on disk (llama.cpp backend), keyed by "
                    "the model file's hash and the prompt's tokens: a later edit of the same file skips "
                    f"reading it (default off; without DIR: {default_prompt_cache()})")
    ed.add_argument("--quiet", action="store_true", help="no progress bars or status lines")

    bench = sub.add_parser(
        "bench", help="benchmark speed against plain decoding and the peers",
        description="Runs every configuration on every prompt of the workload, interleaved, and writes "
        "results/<timestamp>/ (results.json, report.md, plots).",
    )
    bench.add_argument("--quick", action="store_true", help="tiny in-process models, one prompt per task")
    bench.add_argument("--target", default=DEFAULT_TARGET)
    bench.add_argument("--draft", default=DEFAULT_DRAFT_MODEL, help="the draft model (default %(default)s)")
    bench.add_argument("--tasks", type=_names, default=None, help="comma-separated (default: all)")
    bench.add_argument("--prompts-per-task", type=int, default=None, help="default: all")
    bench.add_argument("--prompts", default=None, help="prompt directory (default benchmarks/prompts)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="default: each prompt's own")
    bench.add_argument("--gammas", type=_ints, default=None, help="greedy gamma sweep (default 1,2,3,4,6,8)")
    bench.add_argument("--gamma", type=_gamma, default="auto",
                       help="our default configuration's gamma, compared with the peers (default auto)")
    bench.add_argument("--drafters", type=_names, default=["ngram", "ngram+model"],
                       help="other drafters to run with gamma auto: ngram,ngram+model or 'none'")
    bench.add_argument("--temperatures", type=_floats, default=[0.0, 1.0])
    bench.add_argument("--top-p", type=float, default=0.95, help="top-p of the sampled passes")
    bench.add_argument("--rounds", type=int, default=1, help="repeats of each prompt (interleaved)")
    bench.add_argument("--peers", type=_names,
                       default=["hf", "assisted", "lookup", "llamacpp", "llama-server"],
                       help="comma-separated subset of hf,assisted,lookup (transformers' generate(), with "
                       "--backend transformers), llamacpp (llama-cpp-python), llama-server (built by "
                       "make llama-server); 'none' for none")
    bench.add_argument("--server-modes", type=_names, default=None,
                       help="llama-server modes (default plain,ngram-simple,ngram-mod,draft-simple)")
    bench.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                       help="our engine's backend: " + BACKEND_HELP)
    bench.add_argument("--workload", choices=["chat", "edits"], default=None,
                       help="chat: the six tasks (default); edits: benchmarks/prompts/edits.jsonl, "
                       "real files edited with the file as predicted output")
    bench.add_argument("--lookup-gamma-max", type=int, default=None,
                       help="largest block gamma=auto may choose for n-gram lookups (default 32)")
    bench.add_argument("--assisted-ks", type=_ints, default=None,
                       help="assisted generation's fixed draft lengths (default 2,4,6,8)")
    bench.add_argument("--configs", type=_names, default=None,
                       help="run only the configurations whose names start with these, e.g. "
                       "ours/plain,ours/prediction+ngram,llama-server/ngram-mod (default: all)")
    bench.add_argument("--dtype", default=None)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default="results")
    bench.add_argument("--quiet", action="store_true")
    bench.add_argument("--report", metavar="DIR", default=None,
                       help="only re-render DIR/report.md and the plots from DIR/results.json")

    srv = sub.add_parser(
        "serve", help="serve an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)",
        description="Starts after loading and warming up the models. Defaults: the built-in pair on "
        "127.0.0.1:8000, no API key.",
    )
    _model_args(srv)
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                     "(default: $SPECDECODE_API_KEY, else none)")
    srv.add_argument("--served-model-name", default=None,
                     help="the model id clients send (default: --target)")
    srv.add_argument("--max-waiting", type=int, default=64,
                     help="requests allowed to wait for the model; more get 503 (default 64)")
    srv.add_argument("--parallel", "-np", type=int, default=8,
                     help="requests decoded at once, sharing each target call (continuous batching, "
                     "llama.cpp backend; the transformers backend serves one at a time). 1: one request at "
                     "a time, first come first served (default 8)")
    srv.add_argument("--ctx-size", "-c", type=int, default=None,
                     help="KV positions, fixed up front and shared by the parallel requests (llama.cpp "
                     "backend); with --kv-unified one request may use them all, up to the model's trained "
                     "context, else each gets ctx-size / parallel (default: the model's trained context, "
                     "at most 32768)")
    srv.add_argument("--prefill-chunk", type=int, default=256,
                     help="prompt tokens fed per batched step, so that a long prompt does not stall the "
                     "other requests and the first prompts answer sooner (default 256)")
    srv.add_argument("--kv-unified", action=argparse.BooleanOptionalAction, default=True,
                     help="one KV buffer shared by all parallel requests, as llama.cpp's --kv-unified "
                     "(default; a buffer per request makes llama.cpp split any step where requests bring "
                     "different numbers of tokens, i.e. every step with a draft block)")
    srv.add_argument("--prefix-cache", action=argparse.BooleanOptionalAction, default=True,
                     help="reuse the KV of any prompt prefix an earlier or running request already read, so "
                     "a chat or an agent loop reads only its new tokens (default; --no-prefix-cache reads "
                     "every prompt whole, for measurement)")
    srv.add_argument("--cache-ram", type=int, default=4096, metavar="MiB",
                     help="host memory (MiB) for the prompts and answers of finished requests, restored into "
                     "the KV memory when a later prompt starts with them, as llama-server's --cache-ram; "
                     "least recently used ones go first (default 4096; 0: none)")
    srv.add_argument("--cache-tokens", type=int, default=0,
                     help="KV positions that keep finished requests in the KV memory itself (no restore, "
                     "but every parked position slows every decode step; beyond it they go to --cache-ram; "
                     "default 0)")
    srv.add_argument("--default-max-tokens", type=int, default=None,
                     help="chat completion length when the request gives no max_tokens (default: until end "
                     "of sequence or a full context, as OpenAI and llama-server)")
    srv.add_argument("--max-body-mb", type=float, default=4.0, metavar="MiB",
                     help="largest request body accepted; a larger one gets a 413 before it is read "
                     "(default 4)")
    srv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="a browser origin (e.g. https://app.example) allowed to call the API besides "
                     "loopback pages and the server's own; repeatable; '*' allows any (default: any when "
                     "--api-key is set)")
    srv.add_argument("--replicas", type=int, default=0,
                     help="serve from N engine replicas on Ray Serve (each loads the model pair; requests "
                     "sharing a long prompt prefix go to the replica holding it). Starts a local Ray "
                     "instance, or joins the one RAY_ADDRESS names; needs the 'cluster' extra (default 0: "
                     "one process, no Ray)")
    srv.add_argument("--routing", choices=["affinity", "random"], default="affinity",
                     help="with --replicas: 'affinity' sends a request whose prompt shares a long prefix "
                     "with an earlier one to the replica that read it, while load allows (default); "
                     "'random' is Ray Serve's default power of two choices")
    srv.add_argument("--quiet", action="store_true", help="no progress bars, status lines or access log")

    models = sub.add_parser("models", help="list or fetch the built-in models")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="built-in models, whether they are cached, their sizes")
    mlist.add_argument("--json", action="store_true")
    fetch = msub.add_parser("fetch", help="assemble, verify and cache built-in models")
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join(BUILTINS)} or 'all'")
    fetch.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                       help="what to prepare: the verified GGUF file (llama.cpp) or also the dequantised "
                       "copy (transformers); " + BACKEND_HELP)
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    """The target, draft and speculation options `generate` and `serve` share."""
    p.add_argument("--target", default=DEFAULT_TARGET,
                     help="built-in name, transformers id, local directory or .gguf path "
                     f"(default {DEFAULT_TARGET})")
    p.add_argument("--draft", default=None,
                     help="draft model (same forms), 'ngram' (prompt lookup), 'ngram+MODEL' (lookup, else "
                     f"the model) or 'none' for plain decoding (default {DEFAULT_DRAFT} "
                     "with the built-in target, else none)")
    p.add_argument("--gamma", type=_gamma, default="auto",
                     help="draft tokens per target call, or 'auto' (default: chosen per call from measured "
                     "costs and the running acceptance rate, 0 = plain step)")
    p.add_argument("--gamma-max", type=int, default=8,
                   help="largest gamma 'auto' may choose for a draft model (default 8)")
    p.add_argument("--lookup-gamma-max", type=int, default=32,
                   help="largest gamma 'auto' may choose for n-gram lookups, which cost nothing (default 32)")
    p.add_argument("--draft-threshold", type=float, default=0.0,
                     help="a draft model stops proposing when its probability of the next token is below "
                     "this (default 0: never)")
    p.add_argument("--ngram-max", type=int, default=3, help="longest n-gram the lookup matches (default 3)")
    _backend_args(p)


def _backend_args(p: argparse.ArgumentParser) -> None:
    """--backend, --threads, --dtype and --device: how models are run."""
    p.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "transformers"],
                   help=BACKEND_HELP)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores available to this process)")
    p.add_argument("--dtype", default=None,
                   help="transformers only: bf16, fp16 or fp32 (default: bf16 where the hardware runs it "
                   "fast)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--deterministic", action="store_true",
                   help="llama.cpp only: batch-invariant kernels, so greedy texts are identical alone, "
                   "batched, drafted or plain (slower: see BENCHMARKS.md)")
    p.add_argument("--flash-attn", action="store_true",
                   help="llama.cpp only: flash attention instead of matrix-product attention (on a CPU, "
                   "slower to verify draft blocks over long caches, a little faster on short ones and in "
                   "long prompts: see BENCHMARKS.md)")


def _gamma(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"gamma is 'auto' or an integer, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [] if text == "none" else [x.strip() for x in text.split(",") if x.strip()]
