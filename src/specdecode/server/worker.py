"""One generation at a time, in arrival order: the queue between HTTP requests and the model.

Every model call runs on one worker thread, so the models (and their KV caches) are never touched by two
requests at once, and the event loop stays free to accept requests, stream tokens and answer /health
while a generation runs. A request waits for an asyncio lock (first come, first served); its generation
advances one engine iteration per step, and between steps it checks whether the client is still there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .metrics import Metrics
from .schemas import APIError

_END = object()


@dataclass
class Job:
    """One request's generation: when it arrived, started and first produced text, and its result."""

    arrived: float
    started: float | None = None
    first_piece: float | None = None
    finished: float | None = None
    cancelled: bool = False
    predicted: bool = False  # the request sent a prediction (usage then reports its counts)
    prompt_tokens: int = 0  # KV positions its prompt takes (the batching scheduler admits by room)
    result: Any = None  # GenerationResult, once the stream is closed


def _next(stream: Any) -> Any:
    return next(stream, _END)


class Admission:
    """What the request queues share: a 503 once `max_waiting` requests wait, and `call` to run work off
    the event loop on the queue's one worker thread (the model thread, or a tokenizer thread)."""

    max_waiting: int
    executor: ThreadPoolExecutor
    waiting: int

    def admit(self) -> None:
        """Raise a 503 when `max_waiting` requests already wait."""
        if self.waiting >= self.max_waiting:
            raise APIError(
                503,
                f"the server is busy: {self.waiting} requests are already waiting "
                "(--max-waiting); retry later",
                code="server_busy",
            )

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the worker thread (after whatever is already queued there)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


class GenerationQueue(Admission):
    """Serialises generations; `max_waiting` bounds how many requests may wait (503 beyond)."""

    def __init__(self, metrics: Metrics, max_waiting: int = 64, held: Callable[[], int] | None = None
                 ) -> None:
        self.metrics, self.max_waiting = metrics, max_waiting
        self.held = held  # positions the model keeps for the next request (the prefix cache gauge)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdecode-model")
        self._lock: asyncio.Lock | None = None
        self.waiting = 0

    async def run(
        self, job: Job, start: Callable[[], Any], disconnected: Callable[[], Awaitable[bool]],
        admitted: bool = False,
    ) -> AsyncIterator[Any]:
        """Wait for the model, start the stream with `start()` on the model thread, yield its pieces.

        Stops early (job.cancelled) when `disconnected()` turns true between two pieces. Whatever ends
        it, the stream is closed on the model thread and its stats are recorded; `job.result` is set
        once that is done. `admitted`: the caller already checked admission (a stream checks before its
        200 goes out, so a 503 never arrives inside a stream).
        """
        if not admitted:
            self.admit()
        self._lock = self._lock or asyncio.Lock()
        self.waiting += 1
        self.metrics.queue_length.set(self.waiting)
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_length.set(self.waiting)
        stream = None
        try:
            job.started = time.perf_counter()
            self.metrics.queue_wait.observe(job.started - job.arrived)
            self.metrics.running.set(1)
            stream = await self.call(start)
            while True:
                if await disconnected():
                    job.cancelled = True
                    break
                piece = await self.call(_next, stream)
                if piece is _END:
                    break
                if job.first_piece is None:
                    job.first_piece = time.perf_counter()
                    self.metrics.first_token.observe(job.first_piece - job.arrived)
                yield piece
        except (asyncio.CancelledError, GeneratorExit):
            job.cancelled = True  # the consumer went away mid-generation (task cancelled, stream closed)
            raise
        finally:
            done = asyncio.get_running_loop().create_future()

            def finish() -> None:  # on the model thread, after any step still in flight
                try:
                    if stream is not None:
                        stream.close()
                        job.result = stream.result
                        if job.result is not None:
                            self.metrics.record_generation(job.result.stats)
                    if self.held is not None:
                        self.metrics.record_cache(held=self.held())
                    if job.cancelled:
                        self.metrics.cancelled.inc()
                finally:
                    job.finished = time.perf_counter()
                    self.metrics.running.set(0)
                    done.get_loop().call_soon_threadsafe(lambda: done.done() or done.set_result(None))

            self.executor.submit(finish)
            self._lock.release()  # the next request's first step queues behind `finish` on the thread
            try:
                await asyncio.shield(done)
            except (asyncio.CancelledError, GeneratorExit, RuntimeError):
                job.cancelled = True  # the consumer went away: the bookkeeping still happens on the thread
