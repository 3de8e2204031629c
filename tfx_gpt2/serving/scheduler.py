"""The scheduler: which rows run, in which slots, in which buckets, at each step of the engine.

Iteration-level scheduling, as vLLM and TGI do it. A row waits in FIFO order until a slot is
free; it is admitted into the lowest free slot, its prompt runs in chunks (`plan_prefill`), and
from the decode call after its last chunk it decodes with the rows already running
(`plan_decode`). A row that ends (end of text, a stop string, its token limit, a cancelled
request) frees its slot at once, for the next waiting row. With `static=True` rows are admitted
only when every slot is free, so a batch runs until its last row ends (for comparison).

Each plan is padded to a bucket of the runner's layout: a decode call runs rows `0 .. b - 1` for
the smallest batch bucket `b` that holds every decoding slot, with the smallest cache bucket that
holds their tokens; a prefill call runs a row bucket of pending prompts.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np

from tfx_gpt2.model.sampling import RowSettings, SamplingConfig, draw_uniforms
from tfx_gpt2.serving.detokenizer import Detokenizer
from tfx_gpt2.serving.runner import Layout

_RNG = np.random.default_rng()
_IDLE = SamplingConfig(temperature=0.0)  # the settings of slots a decode call masks


@dataclasses.dataclass
class Live:
    """A row in a slot: where it is in its prompt and its generation."""

    slot: int
    request: object  # the engine's Request
    row: object  # the engine's Row
    prompt: List[int]
    detokenizer: Detokenizer
    uniforms: np.ndarray  # (max_tokens,): the uniform number of each of its tokens
    length: int = 0  # tokens in the cache: its prompt's first ones, then each fed token
    count: int = 0  # tokens generated
    next_token: int = 0  # the token its next decode step feeds: its prompt's last, then its last sampled

    @property
    def decoding(self) -> bool:
        """Past its prefill: every prompt token but the last is in the cache (the first decode
        step feeds the last)."""
        return self.count > 0 or self.length == len(self.prompt) - 1


@dataclasses.dataclass
class PrefillPlan:
    rows: List[Live]
    length: int
    tokens: np.ndarray  # (P, S)
    slots: np.ndarray  # (P,)
    starts: np.ndarray  # (P,)
    lasts: np.ndarray  # (P,)


@dataclasses.dataclass
class DecodePlan:
    rows: List[Live]  # the decoding rows
    length: int
    tokens: np.ndarray  # (B,)
    lengths: np.ndarray
    count: np.ndarray
    active: np.ndarray
    fresh: np.ndarray
    settings: Tuple[np.ndarray, ...]
    uniforms: np.ndarray  # (B, steps)
    limit: int
    yield_on_finish: bool


class Scheduler:
    """Slots, the waiting rows, and the plan of each prefill and decode call.

    Args:
        layout: the runner's layout (slots, buckets, chunks, steps per call).
        n_ctx: the model's context (a row ends when its cache holds that many tokens).
        tokenizer: for each row's detokenizer.
        static: admit rows only when every slot is free (a batch runs until its last row ends).
        call_seconds: aim of a decode call's duration (a request arriving meanwhile waits for it).
    """

    def __init__(self, layout: Layout, n_ctx: int, tokenizer, static: bool = False, call_seconds: float = 0.01):
        self.layout, self.n_ctx, self.tokenizer = layout, n_ctx, tokenizer
        self.static, self.call_seconds = static, call_seconds
        self.slots: List[Optional[Live]] = [None] * layout.slots
        self.waiting: Deque[Tuple[object, object]] = collections.deque()
        self.step_seconds: Dict[tuple, float] = {}  # measured seconds per decode step, by bucket

    # -- rows in and out ------------------------------------------------------------------------

    @property
    def live(self) -> List[Live]:
        return [s for s in self.slots if s is not None]

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.live

    def add(self, request, row) -> None:
        self.waiting.append((request, row))

    def cancelled(self) -> Tuple[List[Tuple[object, object]], List[Live]]:
        """Removes the rows of cancelled requests: `(waiting (request, row) pairs, live rows)`."""
        waited = [(r, row) for r, row in self.waiting if r.cancelled]
        if waited:
            self.waiting = collections.deque((r, row) for r, row in self.waiting if not r.cancelled)
        live = [s for s in self.live if s.request.cancelled]
        for s in live:
            self.free(s)
        return waited, live

    def admit(self) -> List[Live]:
        """Moves waiting rows into free slots (lowest first)."""
        admitted = []
        if self.static and self.live:
            return admitted
        for slot, taken in enumerate(self.slots):
            if not self.waiting:
                break
            if taken is None:
                request, row = self.waiting.popleft()
                admitted.append(self._place(slot, request, row))
        return admitted

    def _place(self, slot: int, request, row) -> Live:
        prompt = list(row.prompt_ids) or [self.tokenizer.eot_id]
        config: SamplingConfig = row.config
        max_tokens = min(config.max_new_tokens, self.n_ctx - len(prompt))
        if config.temperature <= 0:
            uniforms = np.zeros(max_tokens, np.float32)
        elif config.seed is None:
            uniforms = _RNG.random(max_tokens, dtype=np.float32)
        else:  # the numbers a seeded row draws, whatever it is batched with
            uniforms = draw_uniforms(config.seed, 1, max_tokens).numpy()[0]
        live = Live(slot, request, row, prompt, Detokenizer(self.tokenizer, config, max_tokens), uniforms,
                     next_token=prompt[-1])
        row.ids = live.detokenizer.ids
        self.slots[slot] = live
        return live

    def free(self, live: Live) -> None:
        if self.slots[live.slot] is live:
            self.slots[live.slot] = None

    # -- plans ----------------------------------------------------------------------------------

    def plan_prefill(self) -> Optional[PrefillPlan]:
        """The next chunk of the prompts (all but their last token) of up to the largest row
        bucket of rows still in their prefill."""
        pending = [s for s in self.live if not s.decoding][:self.layout.prefill_rows[-1]]
        if not pending:
            return None
        big, small = self.layout.chunks
        chunk = big if any(len(s.prompt) - 1 - s.length > small for s in pending) else small
        rows = next(b for b in self.layout.prefill_rows if b >= len(pending))
        tokens = np.full((rows, chunk), self.tokenizer.eot_id, np.int32)
        slots = np.full(rows, self.layout.slots, np.int32)  # padding rows: the scratch slot
        starts, lasts = np.zeros(rows, np.int32), np.zeros(rows, np.int32)
        for i, s in enumerate(pending):
            part = s.prompt[s.length:min(s.length + chunk, len(s.prompt) - 1)]
            tokens[i, :len(part)], slots[i], starts[i], lasts[i] = part, s.slot, s.length, len(part) - 1
        length = self._bucket(int(starts.max()) + chunk)
        return PrefillPlan(pending, length, tokens, slots, starts, lasts)

    def prefilled(self, plan: PrefillPlan) -> None:
        for s, last in zip(plan.rows, plan.lasts):
            s.length += int(last) + 1

    def plan_decode(self) -> Optional[DecodePlan]:
        """The next decode call: every decoding row, its settings and uniforms, and how many steps."""
        rows = [s for s in self.live if s.decoding]
        if not rows:
            return None
        batch = next(b for b in self.layout.batch_buckets if b > max(s.slot for s in rows))
        longest = max(s.length for s in rows)
        length = self._bucket(longest + 1)
        limit = min(self.layout.steps, length - longest, self._steps_in_budget(batch, length))
        if any(s.request.stream and s.count == 0 for s in rows):
            limit = 1  # a stream's first token alone: a short time to first token
        tokens, lengths, count = (np.zeros(batch, np.int32) for _ in range(3))
        active, fresh = np.zeros(batch, bool), np.zeros(batch, bool)
        configs, max_tokens = [_IDLE] * batch, np.ones(batch, np.int32)
        uniforms = np.zeros((batch, self.layout.steps), np.float32)
        for s in rows:
            tokens[s.slot], lengths[s.slot], count[s.slot] = s.next_token, s.length, s.count
            active[s.slot], fresh[s.slot] = True, len(s.prompt) == 1 and s.count == 0
            configs[s.slot], max_tokens[s.slot] = s.row.config, s.detokenizer.max_tokens  # within the context
            part = s.uniforms[s.count:s.count + self.layout.steps]
            uniforms[s.slot, :len(part)] = part
        settings = RowSettings.columns(configs, max_tokens)
        # When rows wait for a slot, stop at the first row that ends so they can take it.
        return DecodePlan(rows, length, tokens, lengths, count, active, fresh, settings, uniforms, limit,
                          yield_on_finish=bool(self.waiting) and not self.static)

    def decoded(self, plan: DecodePlan, tokens: np.ndarray, seconds: float) -> None:
        """Records a decode call's progress and how long its steps took."""
        steps = int((tokens >= 0).any(axis=0).sum())
        if steps:
            key = (len(plan.lengths), plan.length)
            previous = self.step_seconds.get(key, seconds / steps)
            self.step_seconds[key] = 0.8 * previous + 0.2 * seconds / steps
        for s in plan.rows:
            emitted = tokens[s.slot][tokens[s.slot] >= 0]
            if len(emitted):  # each emitted token followed a fed one
                s.count += len(emitted)
                s.length += len(emitted)
                s.next_token = int(emitted[-1])

    def _steps_in_budget(self, batch: int, length: int) -> int:
        seconds = self.step_seconds.get((batch, length))
        return self.layout.steps if not seconds else max(1, int(self.call_seconds / seconds))

    def _bucket(self, need: int) -> int:
        return next(b for b in self.layout.cache_buckets if b >= need)
