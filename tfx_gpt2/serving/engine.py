"""The serving engine: one thread owns the model, merges concurrent requests into batches and
streams each row's text back as it is generated.

HTTP handlers never run model code (see `tfx_gpt2.serving.server`): they `submit` a `Request` and
await its events. The engine thread takes rows from a bounded queue (up to `max_batch_size`,
waiting at most `max_wait_ms` for more after the first), pads the batch to a *batch bucket* and
its cache to a *length bucket*, runs the prompts in chunks of `prefill_tokens` and then decodes
`chunk_tokens` steps per call. Between calls it hands new text to each request, applies stop
strings, and drops rows whose request was cancelled. Every row carries its own sampling settings,
so requests with different settings share a batch.

Compiled programs: one prefill and one decode program per (batch bucket, length bucket), all
compiled by `warm_up()` before the server reports ready, so no request waits for XLA.

Text: byte-level BPE can end a token inside a UTF-8 character. Each row decodes its bytes
incrementally and holds back an incomplete character until the next token completes it (an
incomplete character at the very end is dropped), so no replacement character appears that the
model did not generate. Text that could be the start of a stop string is held back too.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfx_gpt2.model.generate import SamplingConfig

log = logging.getLogger("tfx_gpt2.serving")


# Decode steps per call when no request in the batch streams (see `Request`).
NON_STREAMING_CHUNK = 64
# After a batch's first row, the engine waits for more at most max(max_wait_ms, this share of the
# last batch's time).
WAIT_SHARE = 0.05
# The small prefill chunk (see `EngineConfig.prefill_chunks`).
SMALL_PREFILL = 8


class QueueFull(RuntimeError):
    """The engine's queue holds `max_queue` rows; the client should retry later (HTTP 503)."""


class EngineStopped(RuntimeError):
    """The engine is shutting down and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine batches.

    Attributes:
        max_batch_size: rows generated together at most.
        max_wait_ms: after the first row arrives, how long to wait for more (or 5% of the last
            batch's time, when longer): for as many rows as the last batch had (so a lone client never waits, and clients answered together are
            batched together again).
        max_queue: rows waiting at most; beyond it `submit` raises `QueueFull` (HTTP 503).
        chunk_tokens: decode steps per compiled call (between streaming and cancellation checks).
        prefill_tokens: prompt tokens per prefill call (prompts are left-padded to a multiple).
        length_buckets: cache sizes (slots for the padded prompt plus new tokens); () picks 64, 256 and
            the model's context plus one prefill chunk, capped at the latter.
    """

    max_batch_size: int = 16
    max_wait_ms: float = 20.0
    max_queue: int = 256
    chunk_tokens: int = 16
    prefill_tokens: int = 32
    length_buckets: Tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "chunk_tokens", "prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 1.")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms = {self.max_wait_ms} must be >= 0.")

    def batch_buckets(self) -> List[int]:
        """1, 2, 4, ... up to `max_batch_size` (which is always one)."""
        sizes = [1]
        while sizes[-1] * 2 < self.max_batch_size:
            sizes.append(sizes[-1] * 2)
        return sorted(set(sizes + [self.max_batch_size]))

    def prefill_chunk(self, n_ctx: int) -> int:
        return max(1, min(self.prefill_tokens, n_ctx // 2))

    def prefill_chunks(self, n_ctx: int) -> Tuple[int, int]:
        """(big, small): prompts are left-padded to a multiple of the small chunk and run in big
        chunks, then small ones, so a short prompt costs a small chunk, not a big one."""
        big = self.prefill_chunk(n_ctx)
        return big, min(big, SMALL_PREFILL)

    def cache_buckets(self, n_ctx: int) -> List[int]:
        """The cache sizes; the largest holds any prompt and continuation that fit the context."""
        largest = n_ctx + self.prefill_chunk(n_ctx)
        sizes = self.length_buckets or (64, 256)
        return sorted({min(s, largest) for s in sizes} | {largest})


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

    `emit(event)` is called from the engine thread with `("text", row, delta)` and
    `("done", row, finish_reason)` (see `tfx_gpt2.serving.server` for the asyncio side). Set
    `cancelled` to stop its rows at the next check. A batch with a `stream` request hands out
    text after the first token and then every `chunk_tokens`; a batch without one checks every
    `NON_STREAMING_CHUNK` tokens (fewer calls: stop strings and cancellation are seen later, and
    text past a stop string is cut).
    """

    def __init__(self, rows: Sequence[Row], emit: Callable[[tuple], None], stream: bool = False):
        self.rows = list(rows)
        self.emit = emit
        self.stream = stream
        self.cancelled = False
        self.created = time.monotonic()


class TextStream:
    """Turns a row's token bytes into text that is safe to send: whole UTF-8 characters only, and
    nothing that could still become a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, data: bytes) -> Tuple[str, bool]:
        """(text to send now, whether a stop string was reached)."""
        self.held += self.decoder.decode(data)
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i != -1), default=-1)
        if cut != -1:
            out, self.held = self.held[:cut], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(out):]
        return out, False

    def flush(self) -> str:
        """The text held back, at the end of the row (an incomplete character is dropped)."""
        out = self.held + self.decoder.decode(b"", final=True)
        self.held = ""
        return out


@dataclasses.dataclass
class _Slot:
    request: Request
    row: Row
    stream: TextStream


class Engine:
    """Owns a model and its tokenizer; generates for submitted requests on one thread.

    Args:
        model: a GPT-2 model.
        tokenizer: its BPE tokenizer.
        config: batching settings.
        on_batch: called with the size of each batch (for metrics).

    Example:
        >>> engine = Engine(model, tokenizer, EngineConfig(max_batch_size=8)); engine.warm_up(); engine.start()
        >>> engine.submit(Request([Row(tokenizer.encode("Hi"), SamplingConfig(max_new_tokens=8))], print))
    """

    def __init__(self, model, tokenizer, config: EngineConfig = EngineConfig(),
                 on_batch: Optional[Callable[[int], None]] = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.n_ctx = model.config.n_ctx
        self.eot_id = tokenizer.eot_id
        self.on_batch = on_batch
        self.programs: set = set()
        self._queue: "queue.Queue[_Slot]" = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._busy = 0
        self._last_batch = 1
        self._last_seconds = 0.0
        self._build_functions()

    # -- compiled programs --------------------------------------------------------------------

    def _build_functions(self):
        import tensorflow as tf

        # The output projection, transposed once (each program would otherwise transpose it per call).
        self._head = tf.Variable(tf.transpose(self.model.wte), trainable=False, name="head")
        self._functions: Dict[tuple, object] = {}
        self._concrete: Dict[tuple, object] = {}

    def _function(self, kind: str):
        """The `tf.function` of `kind`, "prefill" or "decode"."""
        import tensorflow as tf

        from tfx_gpt2.model.generate import RowSettings, decode, prefill

        fn = self._functions.get(kind)
        if fn is not None:
            return fn
        model, head, eot, steps = self.model, self._head, self.eot_id, max(self.config.chunk_tokens,
                                                                           NON_STREAMING_CHUNK)
        if kind == "prefill":
            def run(tokens, positions, key_mask, cache, start):
                return prefill(model, tokens, positions, key_mask, cache, start, head=head)
        else:
            def run(logits, cache, seen, done, count, step, prompt_len, positions, key_mask, settings, uniforms,
                    limit):
                return decode(model, logits, cache, seen, done, count, step, prompt_len, positions, key_mask,
                              RowSettings(*settings), uniforms, steps, eot, head=head, limit=limit)
        fn = self._functions[kind] = tf.function(run, jit_compile=True, reduce_retracing=True)
        return fn

    def _call(self, kind: str, key: tuple, *args):
        """Runs the compiled program of `kind` for bucket `key` ((batch, length, chunk) for a
        prefill, (batch, length) for a decode). The concrete function is looked up once
        per bucket: `tf.function`'s own dispatch costs milliseconds per call."""
        import tensorflow as tf

        fn = self._concrete.get((kind, key))
        if fn is None:
            specs = tf.nest.map_structure(lambda a: tf.TensorSpec(np.shape(a), tf.as_dtype(np.asarray(a).dtype)
                                                                  if not tf.is_tensor(a) else a.dtype), args)
            fn = self._concrete[(kind, key)] = self._function(kind).get_concrete_function(*specs)
            self.programs.add((kind,) + key)
        return fn(*args)

    def warm_up(self) -> float:
        """Compiles every program a request can use; returns the seconds it took."""
        t0 = time.perf_counter()
        big, small = self.config.prefill_chunks(self.n_ctx)
        for length in self.config.cache_buckets(self.n_ctx):
            for batch in self.config.batch_buckets():
                args = _idle_batch(self.model, batch, length)
                # A prompt of one small chunk, and one of a big chunk where the cache holds it.
                for size in sorted({small} | ({big} if big < length else set())):
                    self._call("prefill", (batch, length, size), np.zeros((batch, size), np.int32),
                               args["positions"], args["key_mask"], args["cache"], np.int32(0))
                self._call("decode", (batch, length), *args.values())
        seconds = time.perf_counter() - t0
        log.info("compiled %d programs (batch buckets %s, cache buckets %s) in %.1f s", len(self.programs),
                 self.config.batch_buckets(), self.config.cache_buckets(self.n_ctx), seconds)
        return seconds

    # -- the queue ------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues the request's rows; raises `QueueFull` or `EngineStopped` instead of waiting."""
        if self._stopping.is_set():
            raise EngineStopped("the server is shutting down")
        with self._lock:
            if self._waiting + len(request.rows) > self.config.max_queue:
                raise QueueFull(f"the queue holds {self._waiting} of at most {self.config.max_queue} prompts")
            self._waiting += len(request.rows)
        for row in request.rows:
            self._queue.put(_Slot(request, row, TextStream(row.config.stop)))

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Rows queued or being generated."""
        return self._waiting + self._busy

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="tfx-gpt2-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Stops taking requests; with `drain`, finishes the queued and running ones first."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while drain and self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 1)

    def _take_batch(self) -> List[_Slot]:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        # Wait (at most max_wait_ms) only for as many rows as the last batch had: a lone client is
        # not delayed, and clients that were answered together come back together.
        # The wait grows with the batch time (a big model's batch takes seconds: waiting 5% of it
        # for a straggler costs less than leaving it for the next batch).
        expected = min(self.config.max_batch_size, max(self._last_batch, 1))
        wait = max(self.config.max_wait_ms / 1000, WAIT_SHARE * self._last_seconds)
        deadline = time.monotonic() + wait
        while len(batch) < self.config.max_batch_size and (len(batch) < expected or not self._queue.empty()):
            try:
                slot = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if slot is None:
                self._queue.put(None)
                break
            batch.append(slot)
        with self._lock:
            self._waiting -= len(batch)
            self._busy = len(batch)
        self._last_batch = len(batch)
        return batch

    def _run(self):
        while True:
            batch = self._take_batch()
            if not batch:
                return
            live = [s for s in batch if not s.request.cancelled]
            for s in batch:
                if s.request.cancelled:
                    self._finish(s, "cancelled")
            try:
                if live:
                    started = time.monotonic()
                    self._generate(live)
                    self._last_seconds = time.monotonic() - started
            except Exception as e:  # a bug or an out-of-memory: fail these rows, keep serving
                log.exception("generation failed")
                for s in live:
                    if s.row.finish_reason is None:
                        s.row.finish_reason = "error"
                        s.request.emit(("error", s.row, f"generation failed: {e}"))
            finally:
                self._busy = 0

    # -- one batch ------------------------------------------------------------------------------

    def _generate(self, slots: List[_Slot], length: Optional[int] = None) -> None:
        """Generates for `slots` until every row is done."""
        import tensorflow as tf

        cfg, n_real = self.config, len(slots)
        batch = next(b for b in cfg.batch_buckets() if b >= n_real)
        if self.on_batch and slots[0].request.rows:
            self.on_batch(n_real)
        big, small = cfg.prefill_chunks(self.n_ctx)
        prompts = [s.row.prompt_ids or [self.eot_id] for s in slots]
        prompts += [[self.eot_id]] * (batch - n_real)
        p_len = -(-max(len(p) for p in prompts) // small) * small
        need = p_len + max(s.row.config.max_new_tokens for s in slots)
        length = length or next(t for t in cfg.cache_buckets(self.n_ctx) if t >= need)
        tokens, positions, key_mask = _left_pad(prompts, p_len, length, self.eot_id)
        positions, key_mask = tf.constant(positions), tf.constant(key_mask)  # converted once, used by every call
        configs = [s.row.config for s in slots] + [SamplingConfig(max_new_tokens=1, temperature=0.0)] * (batch - n_real)
        settings, uniforms = _row_settings(configs, length)
        uniforms, prompt_len = tf.constant(uniforms), tf.constant(p_len, tf.int32)
        cache = self.model.empty_cache(batch, length)
        for start, size in _chunks(p_len, big, small):
            logits, cache = self._call("prefill", (batch, length, size), tokens[:, start:start + size], positions,
                                       key_mask, cache, np.int32(start))
        seen = np.zeros((batch, self.model.config.n_vocab), np.float32)
        for i, p in enumerate(prompts):
            seen[i, p] = 1.0
        done = np.arange(batch) >= n_real
        streaming = any(s.request.stream for s in slots)
        every = cfg.chunk_tokens if streaming else NON_STREAMING_CHUNK
        count, step = np.zeros(batch, np.int32), np.int32(0)
        limit = np.int32(1 if streaming else every)  # a stream's first token alone: a short time to first token
        while not done.all():
            before = int(step)
            out, logits, cache, seen, done_t, count, step = self._call(
                "decode", (batch, length), logits, cache, seen, done, count, step, prompt_len, positions,
                key_mask, settings, uniforms, limit)
            limit = np.int32(every)
            done = done_t.numpy() | self._hand_out(slots, out.numpy())
            if int(step) + p_len >= length or int(step) == before:  # the cache is full (or no progress)
                if int(step) == before and not done.all():
                    log.error("a decode call made no progress (step %d, done %s); ending the batch", before, done)
                done[:] = True
        for s in slots:
            if s.row.finish_reason is None:
                self._finish(s, "length")

    def _hand_out(self, slots: List[_Slot], out: np.ndarray) -> np.ndarray:
        """Sends each row's new text (one event per row and call); returns which rows are now done
        (stop string, end of text, limit reached, or cancelled)."""
        done = np.zeros(out.shape[0], bool)
        now = time.monotonic()
        for i, s in enumerate(slots):
            row = s.row
            if row.finish_reason is None and s.request.cancelled:
                self._finish(s, "cancelled")
            if row.finish_reason is None:
                self._take_tokens(s, [int(t) for t in out[i] if t >= 0], now)
            done[i] = row.finish_reason is not None
        return done

    def _take_tokens(self, s: _Slot, tokens: List[int], now: float) -> None:
        row, text, reason = s.row, "", None
        for t in tokens:
            if row.config.stop_at_eot and t == self.eot_id:
                reason = "stop"
                break
            row.first_token_at = row.first_token_at or now
            row.ids.append(t)
            piece, stopped = s.stream.push(self.tokenizer.decode_bytes([t]))
            text += piece
            if stopped:
                reason = "stop_string"
                break
            if len(row.ids) >= row.config.max_new_tokens:
                reason = "length"
                break
        self._send(s, text)
        if reason:
            self._finish(s, "stop" if reason == "stop_string" else reason, flush=reason != "stop_string")

    def _send(self, slot: _Slot, text: str) -> None:
        if text:
            slot.row.text += text
            slot.request.emit(("text", slot.row, text))

    def _finish(self, slot: _Slot, reason: str, flush: bool = True) -> None:
        if slot.row.finish_reason is not None:
            return
        if flush:
            self._send(slot, slot.stream.flush())
        slot.row.finish_reason = reason
        slot.request.emit(("done", slot.row, reason))


def _chunks(p_len: int, big: int, small: int):
    """(start, size) of the prefill calls for `p_len` slots: big chunks, then small ones."""
    cut = p_len - p_len % big
    return [(i, big) for i in range(0, cut, big)] + [(i, small) for i in range(cut, p_len, small)]


def _left_pad(prompts: List[List[int]], p_len: int, length: int, pad_id: int):
    """Prompts left-padded to `p_len` tokens, and the positions and key mask of `length` slots."""
    from tfx_gpt2.model.generate import left_pad

    tokens, positions, key_mask = left_pad(prompts, length - p_len, pad_id)
    extra = p_len - tokens.shape[1]  # more padding on the left, so the prompts fill whole prefill chunks
    tokens = np.concatenate([np.full((len(prompts), extra), pad_id, np.int32), tokens], axis=1)
    positions = np.concatenate([np.zeros((len(prompts), extra), np.int32), positions], axis=1)
    key_mask = np.concatenate([np.zeros((len(prompts), extra), bool), key_mask], axis=1)
    return tokens, positions, key_mask


_RNG = np.random.default_rng()


def _row_settings(configs: Sequence[SamplingConfig], length: int):
    """The per-row settings tuple `decode` takes, and each row's uniforms `(B, length)` (from its
    own seed, so a seeded row gives the same text whatever it is batched with; a greedy row uses
    none, and an unseeded one any)."""
    from tfx_gpt2.model.generate import RowSettings, draw_uniforms

    settings = RowSettings.of(configs)
    uniforms = np.zeros((len(configs), length), np.float32)
    for i, c in enumerate(configs):
        if c.temperature > 0:
            uniforms[i] = (_RNG.random(length, dtype=np.float32) if c.seed is None else
                           draw_uniforms(c.seed, 1, length).numpy()[0])
    return (settings.temperature, settings.top_k, settings.top_p, settings.penalty, settings.max_new,
            settings.stop_at_eot), uniforms


def _idle_batch(model, batch: int, length: int) -> Dict[str, object]:
    """Arguments of a decode call for a batch of done rows (it compiles, then returns at once)."""
    import tensorflow as tf

    v = model.config.n_vocab
    settings, uniforms = _row_settings([SamplingConfig(max_new_tokens=1, temperature=0.0)] * batch, length)
    return {"logits": np.zeros((batch, v), np.float32), "cache": model.empty_cache(batch, length),
            "seen": np.zeros((batch, v), np.float32), "done": np.ones(batch, bool), "count": np.zeros(batch, np.int32),
            "step": np.int32(0), "prompt_len": tf.constant(0, tf.int32),
            "positions": tf.zeros((batch, length), tf.int32), "key_mask": tf.ones((batch, length), tf.bool),
            "settings": settings, "uniforms": tf.constant(uniforms), "limit": np.int32(1)}


def programs_expected(config: EngineConfig, n_ctx: int) -> Dict[str, int]:
    """How many programs `warm_up` compiles: per (batch, cache) bucket pair, one decode program and
    one prefill program per chunk size."""
    big, small = config.prefill_chunks(n_ctx)
    batches, lengths = len(config.batch_buckets()), config.cache_buckets(n_ctx)
    prefill = sum(len({small} | ({big} if big < length else set())) for length in lengths)
    return {"prefill": batches * prefill, "decode": batches * len(lengths)}
