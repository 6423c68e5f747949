"""`specdecode serve`: an OpenAI-compatible HTTP server over a `SpeculativeGenerator`.

Needs the `server` extra: pip install 'specdecode[server]'.
"""

from __future__ import annotations

import sys
import time
from typing import Any

try:
    from .app import ServerSettings, create_app
except ImportError as exc:  # fastapi / uvicorn / prometheus_client missing
    raise ImportError(
        f"the server needs the 'server' extra ({exc.name} is missing): pip install 'specdecode[server]'",
        name=exc.name,
    ) from None

__all__ = ["ServerSettings", "create_app", "run_server", "warm_up"]


def warm_up(gen: Any, settings: ServerSettings) -> float:
    """One short generation, so the first request does not pay for kernel set-up or gamma calibration."""
    start = time.perf_counter()
    prompt = gen.encode("Hello") if gen.tokenizer is not None else [1, 2, 3]
    # with a prediction too: its long blocks are calibrated now, never on a request
    for prediction in (None, prompt):
        gen.generate(prompt, max_new_tokens=2, gamma=settings.gamma, gamma_max=settings.gamma_max,
                     lookup_gamma_max=settings.lookup_gamma_max, prediction=prediction)
    return time.perf_counter() - start


def _off_main_thread(fn: Any, *args: Any) -> Any:
    """`fn(*args)` on a short-lived thread. llama.cpp's OpenMP threads, once started by the main thread,
    slow every later decode from another thread (the server's model thread) by about a quarter
    (measured: 32 vs 40 ms a token on 2 cores); started from another thread first, they do not."""
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # re-raised on the caller's thread
            out["error"] = exc

    worker = threading.Thread(target=run, name="specdecode-warm-up")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def run_server(
    gen: Any, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False
) -> None:
    """Warm up, then serve until interrupted."""
    import uvicorn

    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say("warming up (first run also measures the costs gamma=auto works from) ...")
    say(f"warmed up in {_off_main_thread(warm_up, gen, settings):.1f}s")
    app = create_app(gen, settings)
    queue = app.state.queue
    mode = (f"{queue.pool.n_seq} requests at once, {queue.context} positions each"
            if hasattr(queue, "pool") else "one request at a time")
    say(
        f"serving '{settings.model_name}' on http://{host}:{port}/v1 ({mode}; "
        f"{'API key required' if settings.api_key else 'no API key'})"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=not quiet)
