"""The serving engine: worker threads own a model and generate for every request with continuous
batching, streaming each row's text back as it is generated.

HTTP handlers never run model code (see `tfx_gpt2.serving.server`): they `submit` a `Request` and
await its events. A request goes to the least busy worker, and each worker repeats one step:

1. take the rows submitted since the last step, and drop those of cancelled requests;
2. admit waiting rows into free slots (`tfx_gpt2.serving.scheduler`);
3. run one prompt chunk of the rows still in their prompt (`Runner.prefill`);
4. run one decode call of every row past its prompt (`Runner.decode`, up to `chunk_tokens` steps,
   fewer when the call would outlast `call_ms`), hand each row its new text
   (`tfx_gpt2.serving.detokenizer`: UTF-8 holdback, stop strings) and free the slots of rows that
   ended.

So a request that arrives while others generate joins them at the next decode call, after its
prefill, and a row that ends leaves its slot to the next one at once. Each row keeps its own
settings, position and cache slots, so its text does not depend on what it is batched with.
Workers share the weights and the compiled programs; each has its own slots and caches.

Programs: a bounded set per model shape (`programs_expected`), all compiled by `warm_up()` before
the server reports ready, and shared by every engine of that shape (a new version of the same
shape compiles nothing; see `tfx_gpt2.serving.runner`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tfx_gpt2.model.lora import merged_weights
from tfx_gpt2.model.sampling import GenerationError, SamplingConfig
from tfx_gpt2.serving.runner import Layout, Runner
from tfx_gpt2.serving.scheduler import Live, Scheduler

log = logging.getLogger("tfx_gpt2.serving")

# The small prefill chunk (see `EngineConfig.prefill_chunks`).
SMALL_PREFILL = 8
# Rows of a prefill call at most (more pending prompts go in the next steps' calls).
PREFILL_ROWS = 4
SCHEDULING = ("continuous", "static")
# Below this width a model's decode step runs on one core (see `EngineConfig.workers`).
SMALL_WIDTH = 512


class QueueFull(RuntimeError):
    """The engine's queue holds `max_queue` rows; the client should retry later (HTTP 503)."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine batches.

    Attributes:
        max_batch_size: rows generated together at most (slots).
        max_wait_ms: when a row arrives at an idle engine, how long to wait for as many rows as
            the last step decoded (clients answered together come back together, and their
            prompts share a prefill call); a lone client never waits.
        max_queue: rows waiting for a slot at most; beyond it `submit` raises `QueueFull` (HTTP 503).
        chunk_tokens: decode steps per call at most (between hand-outs of text, cancellation
            checks and admissions).
        call_ms: the aim of a decode call's duration: fewer steps per call when steps are slow, so
            a request that arrives during a call waits about this long to join.
        prefill_tokens: prompt tokens per prefill call (the big chunk).
        length_buckets: cache sizes attention reads; () picks 64, 256 and the model's context plus
            one prefill chunk (the cache size), capped at the latter, each at least twice the last.
        scheduling: "continuous" (rows join and leave at every decode call) or "static" (a batch
            runs until its last row ends; for comparison).
        workers: engine threads, each with `max_batch_size` slots of its own, sharing the weights
            and programs; 0 picks one per CPU core for a model narrower than `SMALL_WIDTH` (XLA runs
            its steps on one core: on 2 cores, 2 workers answered 1.5x the requests of one for
            `tiny`), else one (a wider model's products use every core already: 2 workers answered
            0.7x the requests of one at 124M).
    """

    max_batch_size: int = 16
    max_wait_ms: float = 20.0
    max_queue: int = 256
    chunk_tokens: int = 16
    call_ms: float = 30.0
    prefill_tokens: int = 32
    length_buckets: Tuple[int, ...] = ()
    scheduling: str = "continuous"
    workers: int = 0

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "chunk_tokens", "prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1.")
        for name in ("max_wait_ms", "call_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 0.")
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling = {self.scheduling!r} must be one of {SCHEDULING}.")
        if self.workers < 0:
            raise ValueError(f"workers = {self.workers} must be >= 0 (0: chosen by the model's width).")

    def worker_count(self, n_embd: int) -> int:
        if self.workers:
            return self.workers
        return max(1, os.cpu_count() or 1) if n_embd < SMALL_WIDTH else 1

    def batch_buckets(self) -> List[int]:
        """1, 2, 4, ... up to `max_batch_size` (which is always one)."""
        sizes = [1]
        while sizes[-1] * 2 < self.max_batch_size:
            sizes.append(sizes[-1] * 2)
        return sorted(set(sizes + [self.max_batch_size]))

    def prefill_rows(self) -> List[int]:
        """Row buckets of a prefill call: 1, 2, 4, capped at `max_batch_size`."""
        return [b for b in self.batch_buckets() if b <= PREFILL_ROWS]

    def prefill_chunks(self, n_ctx: int) -> Tuple[int, int]:
        """(big, small): prompts run in big chunks when longer than a small one."""
        big = max(1, min(self.prefill_tokens, n_ctx // 2))
        return big, min(big, SMALL_PREFILL)

    def cache_buckets(self, n_ctx: int) -> List[int]:
        """The cache lengths attention reads; the largest holds any prompt and continuation that
        fit the context (plus the padding of a last prompt chunk). A bucket less than half the next
        is dropped: its steps would save little."""
        largest = n_ctx + self.prefill_chunks(n_ctx)[0]
        sizes = sorted({min(s, largest) for s in (self.length_buckets or (64, 256))} | {largest})
        kept = [largest]
        for s in reversed(sizes[:-1]):
            if 2 * s <= kept[0]:
                kept.insert(0, s)
        return kept

    def layout(self, n_ctx: int) -> Layout:
        return Layout(self.max_batch_size, tuple(self.batch_buckets()), tuple(self.prefill_rows()),
                      tuple(self.cache_buckets(n_ctx)), self.prefill_chunks(n_ctx), self.chunk_tokens)


@dataclasses.dataclass
class Row:
    """One prompt of a request and what has been generated for it."""

    prompt_ids: List[int]
    config: SamplingConfig
    ids: List[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None
    first_token_at: Optional[float] = None
    # Scoring (`logprobs`, `echo`): with `scored`, a row that ends is scored (the model's
    # log-probability of each of its tokens, prompt and generated, and the most likely tokens at
    # each position) into `scores` = `Runner.score`'s arrays; with `generate` False, the prompt is
    # only scored. Without `streams_text`, a stream's text is sent when the row is done.
    scored: bool = False
    generate: bool = True
    streams_text: bool = True
    scores: Optional[tuple] = None


class Request:
    """Rows submitted together, and where their events go.

    `emit(event)` is called from the engine thread with `("done", row, finish_reason)` and
    `("error", row, message)`, and for a `stream` request with `("text", row, delta)` as text is
    generated (see `tfx_gpt2.serving.server` for the asyncio side); every row's text is in
    `row.text` when it is done. Set `cancelled` to take its rows out at the engine's next step. A
    stream's first token is handed out alone (a short time to first token).
    """

    def __init__(self, rows: Sequence[Row], emit: Callable[[tuple], None], stream: bool = False):
        self.rows = list(rows)
        self.emit = emit
        self.stream = stream
        self.cancelled = False
        self.created = time.monotonic()


class Engine:
    """Owns a model's weights and its tokenizer; generates for submitted requests on `workers`
    threads, each batching its own rows (the weights and the compiled programs are shared).

    Args:
        model: a GPT-2 model (only its weights and shape are kept).
        tokenizer: its BPE tokenizer.
        config: batching settings.
        on_batch: called with the rows of each decode call (for metrics).

    Example:
        >>> engine = Engine(model, tokenizer, EngineConfig(max_batch_size=8)); engine.warm_up(); engine.start()
        >>> engine.submit(Request([Row(tokenizer.encode("Hi"), SamplingConfig(max_new_tokens=8))], print))
    """

    def __init__(self, model, tokenizer, config: EngineConfig = EngineConfig(),
                 on_batch: Optional[Callable[[int], None]] = None):
        self.tokenizer, self.config, self.on_batch = tokenizer, config, on_batch
        self.n_ctx = model.config.n_ctx
        weights = merged_weights(model) if getattr(model, "lora", None) else model.weights_by_name()  # the runner has no adapters
        first = Runner(weights, model.config, config.layout(self.n_ctx), tokenizer.eot_id)
        runners = [first] + [first.sibling() for _ in range(config.worker_count(model.config.n_embd) - 1)]
        self.workers = [_Worker(self, runner, i) for i, runner in enumerate(runners)]
        self._lock = threading.Lock()
        self._waiting = 0  # rows submitted and not yet in a slot
        self._stopping = threading.Event()

    @property
    def programs(self) -> set:
        """The programs compiled for this engine's shape (shared with engines of the same shape)."""
        runner = self.workers[0].runner
        return runner.programs.compiled if runner else set()

    @property
    def released(self) -> bool:
        """The weights and caches are released (the engine stopped)."""
        return all(w.runner is None for w in self.workers)

    @property
    def live(self) -> List[Live]:
        """Rows in slots, every worker's."""
        return [s for w in self.workers for s in w.scheduler.live]

    def warm_up(self) -> float:
        """Compiles every program a request can use; returns the seconds it took."""
        t0 = time.perf_counter()
        for worker in self.workers:  # the first compiles; the others find the programs compiled
            worker.runner.warm_up()
        seconds = time.perf_counter() - t0
        layout = self.workers[0].runner.layout
        log.info("%d programs ready for %d worker(s) (batch buckets %s, cache buckets %s) in %.1f s",
                 len(self.programs), len(self.workers), list(layout.batch_buckets), list(layout.cache_buckets),
                 seconds)
        return seconds

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues the request's rows on the least busy worker; raises `QueueFull`, `EngineStopped`
        or `GenerationError` (a prompt that leaves no room in the context) instead of waiting."""
        if self._stopping.is_set():
            raise EngineStopped("the server is shutting down")
        for row in request.rows:
            if len(row.prompt_ids) >= self.n_ctx:
                raise GenerationError(f"a prompt of {len(row.prompt_ids)} tokens leaves no room in the model's "
                                      f"context of {self.n_ctx} tokens; send at most {self.n_ctx - 1}")
        with self._lock:
            if self._waiting + len(request.rows) > self.config.max_queue:
                raise QueueFull(f"the queue holds {self._waiting} of at most {self.config.max_queue} prompts")
            self._waiting += len(request.rows)
            worker = min(self.workers, key=lambda w: w.assigned)
            worker.assigned += len(request.rows)
        for row in request.rows:
            worker.queue.put((request, row))

    def _admitted(self, rows: int) -> None:
        with self._lock:
            self._waiting -= rows

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a slot."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Rows waiting or being generated."""
        return sum(w.assigned for w in self.workers)

    def start(self) -> "Engine":
        for worker in self.workers:
            worker.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stops taking requests; with `drain`, finishes the queued and running ones first. Then
        releases the weights and caches (the programs stay for engines of the same shape)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while drain and self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        for worker in self.workers:
            worker.queue.put(None)
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()) + 1)


class _Worker:
    """One engine thread: its slots (scheduler), its state (runner), and the loop that runs them."""

    def __init__(self, engine: Engine, runner: Runner, index: int):
        self.engine, self.runner = engine, runner
        config = engine.config
        self.scheduler = Scheduler(runner.layout, engine.n_ctx, engine.tokenizer,
                                   static=config.scheduling == "static", call_seconds=config.call_ms / 1000)
        self.queue: "queue.Queue[Optional[Tuple[Request, Row]]]" = queue.Queue()
        self.assigned = 0  # rows given to this worker and not yet finished
        self.name = f"tfx-gpt2-engine-{index}"
        self._thread: Optional[threading.Thread] = None
        self._company = 1  # rows of the last decode call

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.runner = None

    def _run(self):
        while self._take_arrivals():
            try:
                self._step()
            except Exception as e:  # a bug or an out-of-memory: fail the live rows, keep serving
                log.exception("generation failed")
                for live in self.scheduler.live:
                    self.scheduler.free(live)
                    self._fail(live.request, live.row, f"generation failed: {e}")
        for request, row in list(self.scheduler.waiting) + [(s.request, s.row) for s in self.scheduler.live]:
            self._fail(request, row, "the server stopped before this request finished")

    def _take_arrivals(self) -> bool:
        """Moves submitted rows to the scheduler, blocking while there is nothing to do; False
        once the engine is stopped."""
        if self.scheduler.idle:
            first = self.queue.get()
            if first is None:
                return False
            self._accept(*first)
            self._wait_for_company()
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            self._accept(*item)

    def _accept(self, request: Request, row: Row) -> None:
        """Schedules a row; one that is only scored is scored at once."""
        if row.generate:
            self.scheduler.add(request, row)
            return
        self.engine._admitted(1)
        self._done(request, row, "cancelled" if request.cancelled else "length")

    def _wait_for_company(self) -> None:
        """After a first row at an idle worker, waits (at most `max_wait_ms`) for as many rows as
        the last decode call had: they share the prefill call."""
        deadline = time.monotonic() + self.engine.config.max_wait_ms / 1000
        while len(self.scheduler.waiting) < self._company:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if item is None:
                self.queue.put(None)
                return
            self._accept(*item)

    def _step(self) -> None:
        sch = self.scheduler
        waited, live = sch.cancelled()
        for request, row in waited:
            self._done(request, row, "cancelled")
        for s in live:
            self._send(s.request, s.row, s.detokenizer.flush())
            self._done(s.request, s.row, "cancelled")
        admitted = sch.admit()
        self.engine._admitted(len(waited) + len(admitted))
        prefill = sch.plan_prefill()
        if prefill is not None:
            self.runner.prefill(prefill.length, prefill.tokens, prefill.slots, prefill.starts, prefill.lasts)
            sch.prefilled(prefill)
        plan = sch.plan_decode()
        if plan is None:
            return
        self._company = len(plan.rows)
        if self.engine.on_batch is not None:
            self.engine.on_batch(len(plan.rows))
        started = time.perf_counter()
        tokens, _, _, _ = self.runner.decode(plan.length, plan.tokens, plan.lengths, plan.count, plan.active,
                                             plan.fresh, plan.settings, plan.uniforms, plan.limit,
                                             plan.yield_on_finish)
        sch.decoded(plan, tokens, time.perf_counter() - started)
        self._hand_out(plan.rows, tokens)

    def _hand_out(self, rows: List[Live], tokens) -> None:
        """Sends each row its new text; finishes and frees the rows that ended."""
        now = time.monotonic()
        for live in rows:
            ids = [int(t) for t in tokens[live.slot] if t >= 0]
            if ids and live.row.first_token_at is None:
                live.row.first_token_at = now
            text, reason = live.detokenizer.push(ids)
            self._send(live.request, live.row, text)
            if reason is not None:
                self.scheduler.free(live)
                self._done(live.request, live.row, reason)

    def _send(self, request: Request, row: Row, text: str) -> None:
        """Adds `text` to the row, and sends it to a streaming request (the others read `row.text`
        when the row is done: one event per row, not one per decode call)."""
        if text:
            row.text += text
            if request.stream and row.streams_text:
                request.emit(("text", row, text))

    def _done(self, request: Request, row: Row, reason: str) -> None:
        if row.finish_reason is not None:
            return
        if row.scored and reason not in ("cancelled", "error"):
            row.scores = self.runner.score((row.prompt_ids + row.ids)[:self.engine.n_ctx])
        row.finish_reason = reason
        self._finished()
        request.emit(("done", row, reason))

    def _fail(self, request: Request, row: Row, message: str) -> None:
        if row.finish_reason is None:
            row.finish_reason = "error"
            self._finished()
            request.emit(("error", row, message))

    def _finished(self) -> None:
        with self.engine._lock:
            self.assigned -= 1


def programs_expected(config: EngineConfig, n_ctx: int) -> Dict[str, int]:
    """How many programs `warm_up` compiles: per cache bucket, a decode program per batch bucket,
    a prefill program per row bucket and chunk size that fits it, and a scoring program."""
    big, small = config.prefill_chunks(n_ctx)
    lengths = config.cache_buckets(n_ctx)
    chunks = sum(len([c for c in {small, big} if c <= length]) for length in lengths)
    return {"prefill": len(config.prefill_rows()) * chunks, "decode": len(config.batch_buckets()) * len(lengths),
            "score": len(lengths)}
