"""The serving engine: one thread owns a model and generates for every request with continuous
batching, streaming each row's text back as it is generated.

HTTP handlers never run model code (see `tfx_gpt2.serving.server`): they `submit` a `Request` and
await its events. The engine thread repeats one step:

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

Programs: a bounded set per model shape (`programs_expected`), all compiled by `warm_up()` before
the server reports ready, and shared by every engine of that shape (a new version of the same
shape compiles nothing; see `tfx_gpt2.serving.runner`).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tfx_gpt2.model.sampling import GenerationError, SamplingConfig
from tfx_gpt2.serving.runner import Layout, Runner
from tfx_gpt2.serving.scheduler import Live, Scheduler

log = logging.getLogger("tfx_gpt2.serving")

# The small prefill chunk (see `EngineConfig.prefill_chunks`).
SMALL_PREFILL = 8
# Rows of a prefill call at most (more pending prompts go in the next steps' calls).
PREFILL_ROWS = 4
SCHEDULING = ("continuous", "static")


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
    """

    max_batch_size: int = 16
    max_wait_ms: float = 20.0
    max_queue: int = 256
    chunk_tokens: int = 16
    call_ms: float = 30.0
    prefill_tokens: int = 32
    length_buckets: Tuple[int, ...] = ()
    scheduling: str = "continuous"

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "chunk_tokens", "prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1.")
        for name in ("max_wait_ms", "call_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 0.")
        if self.scheduling not in SCHEDULING:
            raise ValueError(f"scheduling = {self.scheduling!r} must be one of {SCHEDULING}.")

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
    """Owns a model's weights and its tokenizer; generates for submitted requests on one thread.

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
        layout = config.layout(self.n_ctx)
        self.runner: Optional[Runner] = Runner(model.weights_by_name(), model.config, layout, tokenizer.eot_id)
        self.scheduler = Scheduler(layout, self.n_ctx, tokenizer,
                                   static=config.scheduling == "static", call_seconds=config.call_ms / 1000)
        self._queue: "queue.Queue[Optional[Tuple[Request, Row]]]" = queue.Queue()
        self._waiting = 0  # rows submitted and not yet in a slot
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._company = 1  # rows of the last decode call

    @property
    def programs(self) -> set:
        """The programs compiled for this engine's shape (shared with engines of the same shape)."""
        return self.runner.programs.compiled if self.runner else set()

    def warm_up(self) -> float:
        """Compiles every program a request can use; returns the seconds it took."""
        t0 = time.perf_counter()
        self.runner.warm_up()
        seconds = time.perf_counter() - t0
        layout = self.runner.layout
        log.info("%d programs ready (batch buckets %s, cache buckets %s) in %.1f s", len(self.programs),
                 list(layout.batch_buckets), list(layout.cache_buckets), seconds)
        return seconds

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues the request's rows; raises `QueueFull`, `EngineStopped` or `GenerationError`
        (a prompt that leaves no room in the context) instead of waiting."""
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
        for row in request.rows:
            self._queue.put((request, row))

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a slot."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Rows waiting or being generated."""
        return self._waiting + len(self.scheduler.live)

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="tfx-gpt2-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stops taking requests; with `drain`, finishes the queued and running ones first. Then
        releases the weights and caches (the programs stay for engines of the same shape)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while drain and self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1)
            if not self._thread.is_alive():
                self.runner = None

    # -- the loop -------------------------------------------------------------------------------

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
            first = self._queue.get()
            if first is None:
                return False
            self.scheduler.add(*first)
            self._wait_for_company()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            self.scheduler.add(*item)

    def _wait_for_company(self) -> None:
        """After a first row at an idle engine, waits (at most `max_wait_ms`) for as many rows as
        the last decode call had: they share the prefill call."""
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(self.scheduler.waiting) < self._company:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)
                return
            self.scheduler.add(*item)

    def _step(self) -> None:
        sch = self.scheduler
        waited, live = sch.cancelled()
        for request, row in waited:
            self._done(request, row, "cancelled")
        for s in live:
            self._send(s.request, s.row, s.detokenizer.flush())
            self._done(s.request, s.row, "cancelled")
        admitted = sch.admit()
        with self._lock:
            self._waiting -= len(waited) + len(admitted)
        prefill = sch.plan_prefill()
        if prefill is not None:
            self.runner.prefill(prefill.length, prefill.tokens, prefill.slots, prefill.starts, prefill.lasts)
            sch.prefilled(prefill)
        plan = sch.plan_decode()
        if plan is None:
            return
        self._company = len(plan.rows)
        if self.on_batch is not None:
            self.on_batch(len(plan.rows))
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
            if request.stream:
                request.emit(("text", row, text))

    def _done(self, request: Request, row: Row, reason: str) -> None:
        if row.finish_reason is not None:
            return
        row.finish_reason = reason
        request.emit(("done", row, reason))

    def _fail(self, request: Request, row: Row, message: str) -> None:
        if row.finish_reason is None:
            row.finish_reason = "error"
            request.emit(("error", row, message))


def programs_expected(config: EngineConfig, n_ctx: int) -> Dict[str, int]:
    """How many programs `warm_up` compiles: per cache bucket, a decode program per batch bucket
    and a prefill program per row bucket and chunk size that fits it."""
    big, small = config.prefill_chunks(n_ctx)
    lengths = config.cache_buckets(n_ctx)
    chunks = sum(len([c for c in {small, big} if c <= length]) for length in lengths)
    return {"prefill": len(config.prefill_rows()) * chunks, "decode": len(config.batch_buckets()) * len(lengths)}
