"""The Ray Serve application: an ingress, N engine replicas and a metrics hub."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .hub import MetricsHub
from .ingress import Ingress
from .options import replica_threads, serve_args

ROUTER = "specdecode.cluster.router:PrefixAffinityRouter"


def build_app(options: dict[str, Any]) -> Any:
    """The application for `specdecode serve` options `options` (`replicas` engine replicas, at least 1)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    args = serve_args(options)
    replicas = max(1, args.replicas)
    threads = replica_threads(args)
    options = {**options, "threads": threads}  # each replica runs exactly the threads it reserves
    if args.routing == "affinity":
        router = RequestRouterConfig(request_router_class=ROUTER,
                                     request_router_kwargs={"max_imbalance": max(1, args.parallel // 2)})
    else:  # Ray Serve's default: power of two choices
        router = RequestRouterConfig()
    engine = serve.deployment(
        Engine, name="Engine", num_replicas=replicas, max_ongoing_requests=args.parallel,
        max_queued_requests=args.max_waiting, ray_actor_options={"num_cpus": threads},
        request_router_config=router, health_check_period_s=2, graceful_shutdown_timeout_s=5,
    )
    hub = serve.deployment(MetricsHub, name="MetricsHub", num_replicas=1, max_ongoing_requests=1000,
                           ray_actor_options={"num_cpus": 0}, logging_config={"enable_access_log": False})
    ingress = serve.deployment(
        serve.ingress()(Ingress), name="Ingress", num_replicas=1,
        max_ongoing_requests=replicas * args.parallel + args.max_waiting + 64,
        ray_actor_options={"num_cpus": 0},
    )
    hub_app = hub.bind()
    return ingress.bind(options, engine.bind(options, hub_app), hub_app)


def app(args: dict[str, Any]) -> Any:
    """The builder `serve run specdecode.cluster:app target=... replicas=2` (or a Serve config file's
    `import_path: specdecode.cluster:app` with `args:`) calls: `specdecode serve`'s options as keys."""
    return build_app(dict(args))
