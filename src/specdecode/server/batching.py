"""Continuous batching: every engine step is one target call over all running requests.

A scheduler thread owns the models. Before each step it admits waiting requests (first come, first
served) into free sequence slots; each running request then adds its rows to one batched decode: the rest
of its prompt (in chunks, so that a long prompt does not stall the others) or its pending token and a
draft block whose length gamma=auto chooses for the whole step's throughput. After the call each request
verifies its own rows with its own generator and rolls back its own KV sequence; finished, cancelled and
failed requests leave at once and their slots take the next waiting request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..cache import common_prefix
from ..drafters import draft_models, fork_drafter
from ..gamma import BatchLoad
from .metrics import Metrics
from .schemas import APIError
from .worker import Admission, Job

log = logging.getLogger("specdecode.server")
POLL_S = 0.25  # how often a waiting request checks whether its client is still there
DEFAULT_KV_POSITIONS = 32768  # shared KV memory when --ctx-size is not given (~0.9 GB for the 1.5B target)
FOLLOW_MIN = 32  # a shared prompt prefix shorter than this is read again rather than waited for


@dataclass
class _Entry:
    """One request inside the scheduler."""

    job: Job
    start: Callable[..., Any]  # start(bind) -> Generation
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    closed: asyncio.Future
    cancelled: bool = False
    generation: Any = None
    slot: Any = None

    def post(self, kind: str, value: Any = None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))

    def close(self) -> None:
        def done() -> None:
            if not self.closed.done():
                self.closed.set_result(None)
        self.loop.call_soon_threadsafe(done)


_Item = tuple[_Entry, list[int], int, bool]  # a request's rows in a step: ids, logits kept, planned


def batchable(gen: Any) -> str | None:
    """Why `gen` cannot be served by the batching scheduler (None when it can)."""
    from ..backends.llamacpp import LlamaCppModel

    if not isinstance(gen.target, LlamaCppModel):
        return (f"the {getattr(gen.target, 'backend', 'transformers')} backend serves one request at a time "
                "(batching needs the llama.cpp backend)")
    if any(not isinstance(m, LlamaCppModel) for m in draft_models(gen.drafter)):
        return "the draft model is not on llama.cpp"
    return None


class BatchScheduler(Admission):
    """Runs up to `parallel` generations at once, sharing target calls; `max_waiting` bounds the queue."""

    def __init__(self, gen: Any, metrics: Metrics, parallel: int, ctx_size: int | None = None,
                 max_waiting: int = 64, prefill_chunk: int = 256, kv_unified: bool = True,
                 cache_tokens: int = 0, cache_ram: int = 0) -> None:
        from ..backends.llamacpp_pool import SequencePool

        why = batchable(gen)
        if why:
            raise ValueError(f"cannot batch requests: {why}; use --parallel 1")
        if prefill_chunk < 1:
            raise ValueError(f"the prefill chunk must be >= 1 token, got {prefill_chunk}")
        self.metrics, self.max_waiting, self.prefill_chunk = metrics, max_waiting, prefill_chunk
        n_batch = max(512, prefill_chunk)
        if ctx_size is None:  # the model's trained context, shared by all requests
            ctx_size = min(gen.target.max_length or DEFAULT_KV_POSITIONS, DEFAULT_KV_POSITIONS)
        self.pool = SequencePool(gen.target, parallel, ctx_size, n_batch=n_batch, kv_unified=kv_unified,
                                 cache_tokens=cache_tokens, cache_ram=cache_ram)
        drafts = draft_models(gen.drafter)
        self.draft_pool = (SequencePool(drafts[0], parallel, self.pool.n_ctx, n_batch=n_batch,
                                        kv_unified=kv_unified, cache_tokens=cache_tokens, cache_ram=cache_ram)
                           if drafts else None)
        self.context = self.pool.n_ctx_seq
        # the target's measured cost curve (calibrated at warm-up), to split a step into its cheapest calls
        self.costs = max(gen._cost_models.items(), default=(0, None))[1]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specdecode-tokenizer")
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="specdecode-scheduler", daemon=True)
        self._thread.start()

    # -- the request side (event loop) ----------------------------------------------------------------
    @property
    def waiting(self) -> int:  # type: ignore[override]  # requests not yet in a slot
        return len(self._waiting)

    async def run(self, job: Job, start: Callable[..., Any], disconnected: Callable[[], Awaitable[bool]],
                  admitted: bool = False) -> AsyncIterator[Any]:
        """Queue the request, then yield its pieces as the steps produce them (see `GenerationQueue.run`)."""
        if not admitted:
            self.admit()
        loop = asyncio.get_running_loop()
        entry = _Entry(job, start, loop, asyncio.Queue(), loop.create_future())
        with self._cv:
            self._waiting.append(entry)
            self.metrics.queue_length.set(len(self._waiting))
            self._cv.notify()
        ended = False
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(entry.queue.get(), timeout=POLL_S)
                except asyncio.TimeoutError:
                    if await disconnected():
                        job.cancelled = True
                        break
                    continue
                if kind == "end":
                    ended = True
                    break
                if kind == "error":
                    ended = True
                    raise value
                if job.first_piece is None:
                    job.first_piece = time.perf_counter()
                    self.metrics.first_token.observe(job.first_piece - job.arrived)
                yield value
                if await disconnected():
                    job.cancelled = True
                    break
        except (asyncio.CancelledError, GeneratorExit):
            job.cancelled = True  # the consumer went away mid-generation
            raise
        finally:
            if not ended:
                entry.cancelled = True
                with self._cv:
                    self._cv.notify()
            try:
                await asyncio.shield(entry.closed)  # the slot is free and the stats recorded
            except (asyncio.CancelledError, GeneratorExit, RuntimeError):
                job.cancelled = True

    # -- the scheduler thread -------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stopping:
                    return
                for entry in [e for e in self._waiting if e.cancelled]:
                    self._waiting.remove(entry)
                    self.metrics.cancelled.inc()
                    entry.job.finished = time.perf_counter()
                    entry.close()
                starting: list[_Entry] = []
                room = self.pool.room - sum(e.generation.loop.unfed() for e in self._active)
                while self._waiting and self.pool.free > len(starting):
                    need = self._waiting[0].job.prompt_tokens + 1
                    if need > room and (self._active or starting):  # its prompt waits for room to free
                        break
                    room -= need
                    starting.append(self._waiting.popleft())
                self.metrics.queue_length.set(len(self._waiting))
            for entry in starting:
                self._start(entry)
            for entry in [e for e in self._active if e.cancelled]:
                self._finish(entry, cancelled=True)
            self.metrics.running.set(len(self._active))
            if self._active:
                try:
                    self._step()
                except Exception as exc:  # a bug of the scheduler itself: fail what ran, keep serving
                    log.exception("batched step failed")
                    for entry in list(self._active):
                        self._fail(entry, exc)

    def _bind(self, slot: Any) -> Callable[[Any], dict[str, Any]]:
        draft_slot = self.draft_pool.slots[slot.seq_id] if self.draft_pool is not None else None

        def model_for(model: Any) -> Any:
            if draft_slot is None or model is not self.draft_pool.model:  # type: ignore[union-attr]
                raise ValueError("the draft model is not the one the server batches")
            draft_slot.reset()
            return draft_slot

        def bind(gen: Any) -> dict[str, Any]:
            return {"target": slot, "drafter": fork_drafter(gen.drafter, model_for)}

        return bind

    def _start(self, entry: _Entry) -> None:
        entry.slot = self.pool.acquire()
        entry.job.started = time.perf_counter()
        self.metrics.queue_wait.observe(entry.job.started - entry.job.arrived)
        try:
            entry.generation = entry.start(self._bind(entry.slot))
            entry.generation.begin()
            entry.generation.loop.begin_drafter()
        except BaseException as exc:
            self._fail(entry, exc)
            return
        self._active.append(entry)
        self.metrics.slots_in_use.set(self.pool.n_seq - self.pool.free)

    def _release(self, entry: _Entry) -> None:
        if entry in self._active:
            self._active.remove(entry)
        if entry.slot is not None:
            if self.draft_pool is not None:
                self.draft_pool.retire(self.draft_pool.slots[entry.slot.seq_id])
            self.pool.release(entry.slot)
            self.metrics.record_cache(self.pool.cache)
            entry.slot = None
        self.metrics.slots_in_use.set(self.pool.n_seq - self.pool.free)
        entry.job.finished = time.perf_counter()

    def _finish(self, entry: _Entry, cancelled: bool = False) -> None:
        try:
            if not cancelled:
                tail = entry.generation.finish()
                if tail:
                    entry.post("piece", tail)
            entry.job.result = entry.generation.close()
            self.metrics.record_generation(entry.job.result.stats)
            if cancelled:
                self.metrics.cancelled.inc()
        except Exception as exc:
            self._fail(entry, exc)
            return
        self._release(entry)
        entry.post("end")
        entry.close()

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        """End a request with `exc`, raised in its handler (which logs it with the request's id)."""
        if entry.generation is not None and entry.job.result is None:
            try:
                entry.job.result = entry.generation.close()
            except Exception:  # already broken: the error below is what the client learns
                pass
        self._release(entry)
        entry.post("error", exc)
        entry.close()

    def _step(self) -> None:
        """One batched target call over every running request."""
        budget = self.prefill_chunk
        chunks: list[tuple[_Entry, list[int]]] = []
        planning: list[_Entry] = []
        load = BatchLoad()
        for entry in self._active:
            loop = entry.generation.loop
            if loop.unfed() > 1 and self._follow(entry):
                continue  # an earlier request is reading the prompt prefix they share: wait for it
            unfed = loop.unfed()
            if unfed - 1 > budget:  # the rest of its prompt does not fit this step: a chunk of it
                if budget > 0:
                    at = loop.target.length
                    chunks.append((entry, loop.seq[at : at + budget]))
                    load.rows += budget
                    budget = 0
                continue
            budget -= max(unfed - 1, 0)
            planning.append(entry)
            load.rows += unfed
            load.sequences += 1
        items: list[tuple[_Entry, list[int], int, bool]] = [(e, ids, 0, False) for e, ids in chunks]
        for entry in planning:
            try:
                feed, keep = entry.generation.loop.plan(load)
            except Exception as exc:
                self._fail(entry, exc)
                continue
            items.append((entry, feed, keep, True))
        items = self._fit(items)
        if not items:
            return
        rows = sum(len(ids) for _, ids, _, _ in items)
        costs = {id(c): c for c in (e.generation.loop.policy.costs for e, *_ in items
                                    if e.generation.loop.policy is not None)}
        curve = next(iter(costs.values()), None) or self.costs
        calls = curve.split(rows) if curve is not None else None
        start = time.perf_counter()
        outputs = self._decode(items, calls)
        seconds = time.perf_counter() - start
        self.metrics.batch_size.observe(len(items))
        self.metrics.batch_rows.observe(rows)
        for c in costs.values():  # the calls as made: the curve's cheapest split of these rows
            c.observe_target(rows, seconds * c.t(rows) / c.t_split(rows))
        for (entry, ids, _, planned), logits in zip(items, outputs, strict=True):
            if logits is None:  # its rows failed: already reported
                continue
            stats = entry.generation.stats
            if not planned:
                stats.prefill_s += seconds
                stats.target_tokens += len(ids)
                continue
            try:
                new = entry.generation.loop.accept(logits, seconds, batched=True)
                piece = entry.generation.take(new)
            except Exception as exc:
                self._fail(entry, exc)
                continue
            if piece:
                entry.post("piece", piece)
            if entry.generation.done:
                self._finish(entry)

    def _fit(self, items: list[_Item]) -> list[_Item]:
        """The step's items that fit the shared KV memory: while they do not, the generating request that
        holds the most positions ends there, finish_reason length (its context is the memory left)."""
        room = self.pool.room
        while sum(len(ids) for _, ids, _, _ in items) > room:
            planned = [it for it in items if it[3]]
            if not planned:  # prompts only (admission leaves room for them): feed what fits
                fits = [it for it in items if len(it[1]) <= room][:1]
                if not fits:  # cannot happen while admission reserves room; never spin on it
                    entry = items[0][0]
                    self._fail(entry, APIError(503, "the shared KV memory is full: retry later, or start the "
                                               "server with a larger --ctx-size", code="server_busy"))
                return fits
            victim = max(planned, key=lambda it: it[0].slot.length)
            items.remove(victim)
            entry = victim[0]
            room += entry.slot.length
            entry.generation.loop.stats.finish_reason = "length"
            log.warning("the shared KV memory is full (--ctx-size %d): ending a request at %d positions",
                        self.pool.n_ctx, entry.slot.length)
            self._finish(entry)
        return items
    def _follow(self, entry: _Entry) -> bool:
        """Give a request still reading its prompt what an earlier running request has read of the prefix
        they share (shared KV cells, prefix cache on); True when that request has more of it to read, so
        this one waits instead of reading the same tokens at the same time."""
        if self.pool.cache is None:
            return False
        loop = entry.generation.loop
        seq, have = loop.seq, loop.target.length
        best, lead = 0, None
        for other in self._active:
            if other is entry:
                break  # only requests admitted earlier lead
            n = common_prefix(other.generation.loop.seq, seq)
            if n > best:
                best, lead = n, other
        limit = min(best, len(seq) - 1)
        if lead is None or limit - have < FOLLOW_MIN:
            return False
        upto = min(limit, lead.slot.length)
        if upto > have:
            self.pool.share(lead.slot, entry.slot, upto)
            entry.generation.stats.cached_tokens += upto - have
        return upto < limit

    def _decode(self, items: list[tuple[_Entry, list[int], int, bool]], calls: list[int] | None
                ) -> list[Any]:
        """The batched call; when it fails, each request's rows alone, so one bad request fails alone."""
        try:
            return self.pool.decode([(e.slot, ids, keep) for e, ids, keep, _ in items], calls)
        except Exception:
            log.warning("a batched decode of %d requests failed: retrying them one by one", len(items))
        outputs: list[Any] = []
        for entry, ids, keep, _ in items:
            try:
                outputs.append(self.pool.decode([(entry.slot, ids, keep)])[0].clone())
            except Exception as exc:
                self._fail(entry, exc)
                outputs.append(None)
        return outputs

    def close(self) -> None:
        """Stop the scheduler thread (running requests are failed) and free the pools."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)
        for entry in list(self._active):
            self._fail(entry, RuntimeError("the server is shutting down"))
        self.executor.shutdown(wait=False)
        self.pool.close()
        if self.draft_pool is not None:
            self.draft_pool.close()
