"""The browser page at `/`: a chat and a file editor that show speculation at work (which source wrote
each token, how fast, against the server's own plain rate). Static files, no build step, nothing
fetched from elsewhere; `GET /specdecode/info` tells the page what the server runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
NO_CACHE = {"Cache-Control": "no-cache"}  # a restarted server of a newer version serves its own page


def public(path: str) -> bool:
    """Whether `path` is one of the page's files, served without the API key (they hold no data; the
    page asks for the key before calling the API)."""
    return path in ("/", "/favicon.ico") or path.startswith("/static/")


def plain_tokens_per_s(gen: Any) -> float | None:
    """The target's plain decoding rate the server measured (1 / T(1) of its cost curve, refined by every
    observed call), or None when it measured none (no draft, or a fixed gamma)."""
    costs = getattr(gen, "_cost_models", None) or {}
    if not costs:
        return None
    t1 = costs[max(costs)].t(1)
    return round(1.0 / t1, 3) if t1 > 0 else None


def server_info(gen: Any, settings: Any, context: int | None) -> dict[str, Any]:
    """What the page shows and offers: the model, the drafter, the speculation settings, the measured
    plain rate, the context window."""
    drafter = gen.drafter
    return {
        "model": settings.model_name,
        "drafter": None if drafter is None else getattr(drafter, "name", type(drafter).__name__),
        "gamma": settings.gamma,
        "gamma_max": settings.gamma_max,
        "lookup_gamma_max": settings.lookup_gamma_max,
        "context": context,
        "parallel": settings.parallel,
        "prefix_cache": settings.prefix_cache,
        "plain_tokens_per_s": plain_tokens_per_s(gen),
    }


def add_web(app: FastAPI, gen: Any, settings: Any, context: int | None) -> None:
    """Serve the page at `/`, its files under `/static/`, and `GET /specdecode/info`."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/specdecode/info")
    async def info() -> dict[str, Any]:
        return server_info(gen, settings, context)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
