"""`specdecode serve --replicas N`: start (or join) Ray, run the application, serve until interrupted."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

# what the replicas need from this environment (Ray workers do not always inherit it)
PASSED_ENV = ("PYTHONPATH", "SPECDECODE_CACHE", "SPECDECODE_API_KEY", "HF_HOME", "HF_HUB_OFFLINE")


def run_cluster(args: argparse.Namespace) -> int:
    """Serve `args` (the `serve` options) from `args.replicas` engine replicas on Ray Serve."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics sent anywhere
    import ray
    from ray import serve

    from .app import build_app
    from .options import changed_options

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    address = os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["RAY_USAGE_STATS_ENABLED"] = os.environ["RAY_USAGE_STATS_ENABLED"]
    say(f"starting Ray ({'joining ' + address if address else 'a local instance'}) ...")
    ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=not args.quiet, logging_level="WARNING" if args.quiet else "INFO")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        say(f"loading {args.replicas} engine replicas ...")
        serve.run(build_app(changed_options(args)), name="specdecode", route_prefix="/")
        say(f"serving '{args.served_model_name or args.target}' on http://{args.host}:{args.port}/v1 from "
            f"{args.replicas} replicas ({args.routing} routing; "
            f"{'API key required' if args.api_key else 'no API key'})")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("shutting down ...")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
