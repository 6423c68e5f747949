"""Scale `specdecode serve` out on Ray Serve: an ingress with the same OpenAI-compatible API, N engine
replicas (one model pair and its sequence pool each) and prefix-affinity routing between them.

Needs the `cluster` extra: pip install 'specdecode[cluster]'. The single-process server never imports
this package (or Ray).

    specdecode serve --replicas 2 ...                          # a local Ray instance
    serve run specdecode.cluster:app target=... replicas=2     # an existing Ray cluster
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
    from ray import serve  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"the cluster needs the 'cluster' extra ({exc.name} is missing): pip install 'specdecode[cluster]'",
        name="ray",
    ) from None

from .app import app, build_app

__all__ = ["app", "build_app"]
