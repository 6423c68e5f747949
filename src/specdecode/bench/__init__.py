"""`specdecode bench`: speed, acceptance and the paper's prediction, side by side with the peers."""

from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
