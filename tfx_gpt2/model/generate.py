"""Text generation with a key/value cache, compiled with XLA.

A batch of prompts of different lengths is left-padded to one length P; padding slots are masked
out of attention and each row's positions start at 0 at its first real token. The prompt is run
once (prefill), filling a fixed-size cache of `P + max_new_tokens` slots; each new token then costs
one position's forward pass (decode step). The prefill and the loop over new tokens are one
`tf.function(jit_compile=True)` (`decode_loop`), with the sampling settings as tensors, so changing
them does not recompile and no step returns to Python; the exported SavedModel runs the same loop.

Next-token choice, in order: repetition penalty (CTRL / Hugging Face style: a seen token's logit is
divided by the penalty when positive, multiplied when negative), temperature, top-k, top-p
(nucleus), then a sample by inverse CDF from uniform numbers drawn up front from `seed`
(`draw_uniforms`), so a seed gives the same text with or without XLA; temperature 0 is greedy.
Generation stops at `<|endoftext|>`, at a stop string, or after `max_new_tokens`.

`use_cache=False` runs the whole sequence through the model for each new token instead: slower,
the same result (a test checks greedy outputs are equal token for token).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.text.bpe import BPETokenizer


class GenerationError(ValueError):
    """A sampling setting is out of range, or a prompt does not fit the model."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to continue prompts.

    Attributes:
        max_new_tokens: tokens to generate at most (per sequence).
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: keep only the k most likely tokens (0: no limit).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1: no limit).
        repetition_penalty: > 1 discourages tokens already in the sequence (1: off).
        num_return_sequences: continuations per prompt.
        seed: seed of the sampler (None: a random one); the same seed gives the same text.
        stop: strings that end a continuation (the stop string is not returned).
        stop_at_eot: end a continuation at `<|endoftext|>`.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()
    stop_at_eot: bool = True

    def __post_init__(self):
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 means greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 means no top-k filtering)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1 means off)"),
            ("num_return_sequences", self.num_return_sequences >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise GenerationError(f"{name} = {getattr(self, name)!r} {rule}.")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))


def _sortable_keys(x):
    """int32 keys with the order of the float32 values `x` (flip the magnitude bits of negatives)."""
    bits = tf.bitcast(x, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.int32.max), bits)


def _largest_key_where(keys, holds):
    """Per row, the largest int32 key `t` for which `holds(t)` (monotone: true up to some key, false
    after); a 32-step bisection over the key range, so no sort over the vocabulary is needed (XLA
    sorts 50,257 floats slowly on CPUs)."""
    lo = tf.fill(tf.shape(keys)[:1], tf.constant(-(2**31), tf.int64))  # holds(lo) for every row
    hi = tf.fill(tf.shape(keys)[:1], tf.constant(2**31, tf.int64))  # holds(hi) for no row

    def halve(lo, hi):
        mid = lo + (hi - lo) // 2
        ok = holds(tf.cast(mid, tf.int32))
        return tf.where(ok, mid, lo), tf.where(ok, hi, mid)

    # A loop, not 33 unrolled copies: XLA compiles the body once (a fraction of the compile time).
    lo, _ = tf.while_loop(lambda lo, hi: True, halve, (lo, hi), maximum_iterations=33)
    return tf.cast(lo, tf.int32)


def _inverse_cdf(probs, u):
    """Per row, the smallest id `i` with `sum(probs[:i + 1]) > u * sum(probs)`, by bisection over
    the id range (XLA computes a cumulative sum over 50,257 entries in quadratic time on CPUs)."""
    vocab = tf.shape(probs)[-1]
    ids = tf.range(vocab)[None, :]
    target = u * tf.reduce_sum(probs, axis=-1)
    lo = tf.fill(tf.shape(u), -1)  # mass(ids <= lo) <= target
    hi = tf.fill(tf.shape(u), vocab - 1)  # mass(ids <= hi) > target

    def halve(lo, hi):
        mid = lo + (hi - lo) // 2
        mass = tf.reduce_sum(tf.where(ids <= mid[:, None], probs, 0.0), axis=-1)
        above = mass > target
        return tf.where(above, lo, mid), tf.where(above, mid, hi)

    # 20 halvings: enough for vocabularies up to 2**20 ids.
    _, hi = tf.while_loop(lambda lo, hi: True, halve, (lo, hi), maximum_iterations=20)
    return hi


def _choose(logits, seen, temperature, top_k, top_p, penalty, u):
    """Next ids `(B,)` from float32 logits `(B, V)`.

    The settings are per row, `(B,)` (a scalar applies to every row), so requests with different
    settings share a batch. `seen` `(B, V)` marks tokens already in each sequence (for the
    repetition penalty); `u` `(B,)` holds uniform numbers in [0, 1) drawn before generation: a
    sample is the first id whose cumulative probability exceeds `u` (inverse CDF, in vocabulary
    order), so the same numbers give the same tokens whether this runs under XLA or not. Nothing
    here sorts or takes a cumulative sum over the vocabulary: both are very slow under XLA on CPUs.
    Top-k, then top-p on the renormalised remainder (as Hugging Face applies them); tokens tied at
    a cut are all kept. Rows with temperature 0 are greedy.
    """
    b = tf.shape(logits)[0]
    temperature, top_k, top_p, penalty = (tf.broadcast_to(v, [b]) for v in (temperature, top_k, top_p, penalty))
    pen = penalty[:, None]
    logits = tf.cond(tf.reduce_any(penalty != 1.0),
                     lambda: tf.where(seen > 0, tf.where(logits > 0, logits / pen, logits * pen), logits),
                     lambda: logits)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sample():
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        vocab = tf.shape(scaled)[-1]
        neg = tf.float32.min

        def keep_top_k(x):
            keys = _sortable_keys(x)
            k = tf.minimum(top_k, vocab)
            # The k-th largest key: the largest t with at least k keys >= t.
            kth = _largest_key_where(keys, lambda t: tf.reduce_sum(tf.cast(keys >= t[:, None], tf.int32), -1) >= k)
            return tf.where((keys >= kth[:, None]) | (top_k[:, None] <= 0), x, neg)

        def keep_top_p(x):
            keys = _sortable_keys(x)
            probs = tf.nn.softmax(x, axis=-1)
            # The largest t whose tokens with key >= t hold at least top_p of the probability.
            cut = _largest_key_where(
                keys, lambda t: tf.reduce_sum(tf.where(keys >= t[:, None], probs, 0.0), -1) >= top_p)
            return tf.where((keys >= cut[:, None]) | (top_p[:, None] >= 1.0), x, neg)

        x = tf.cond(tf.reduce_any(top_k > 0), lambda: keep_top_k(scaled), lambda: scaled)
        x = tf.cond(tf.reduce_any(top_p < 1.0), lambda: keep_top_p(x), lambda: x)
        return _inverse_cdf(tf.nn.softmax(x, axis=-1), u)

    sampled = tf.cond(tf.reduce_any(temperature > 0), sample, lambda: greedy)
    return tf.where(temperature > 0, sampled, greedy)


def draw_uniforms(seed: int, batch: int, steps: int):
    """The uniform numbers `(B, steps)` a generation with `seed` samples with (TensorFlow's
    stateless Philox generator, the same in Python and in an exported SavedModel)."""
    return tf.random.stateless_uniform([batch, steps], seed=tf.stack([seed, 0]), dtype=tf.float32)


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """Per-row sampling settings of a batch, each `(B,)`: the tensors `prefill` and `decode` take.

    `max_new` counts the tokens a row may generate; `stop_at_eot` ends a row at `<|endoftext|>`.
    """

    temperature: tf.Tensor
    top_k: tf.Tensor
    top_p: tf.Tensor
    penalty: tf.Tensor
    max_new: tf.Tensor
    stop_at_eot: tf.Tensor

    @classmethod
    def of(cls, configs: Sequence["SamplingConfig"]) -> "RowSettings":
        """The settings of one row per config."""
        def column(name, dtype):
            return tf.constant([getattr(c, name) for c in configs], dtype)

        return cls(column("temperature", tf.float32), column("top_k", tf.int32), column("top_p", tf.float32),
                   column("repetition_penalty", tf.float32), column("max_new_tokens", tf.int32),
                   column("stop_at_eot", tf.bool))

    def choose(self, logits, seen, u):
        return _choose(logits, seen, self.temperature, self.top_k, self.top_p, self.penalty, u)


def prefill(model: GPT2, tokens, positions, key_mask, cache, start, slice_update: bool = True, head=None):
    """Runs prompt tokens `(B, S)` into `cache` at slots `start ... start + S - 1`.

    A prompt may go in several chunks of S tokens (left-padded to a multiple of S), so one compiled
    program serves every prompt length of a cache size.

    Args:
        tokens: `(B, S)` int32 prompt tokens of this chunk.
        positions, key_mask: `(B, T)` position of every cache slot, and False for padding slots.
        cache: the model's cache for T slots (`GPT2.empty_cache`).
        start: scalar int32 slot of the chunk's first token.
        head: `wte` transposed, `(C, V)` (see `GPT2.forward`); computed here if None. A caller
            that runs many chunks passes one copy: transposing costs as much as a decode step.

    Returns:
        `(logits, cache)`: the `(B, V)` logits after the chunk's last token, and the cache.
    """
    s = tf.shape(tokens)[1]
    head = tf.transpose(model.wte) if head is None else head  # (C, V); see GPT2.forward
    chunk_positions = tf.gather(positions, start + tf.range(s), axis=1)
    logits, cache = model.forward(tokens, chunk_positions, key_mask, cache, start, last_only=True, head=head,
                                  slice_update=slice_update)
    return logits[:, -1], cache


def seen_tokens(prompt_tokens, key_mask, n_vocab: int):
    """`(B, V)` 1.0 where a row's (unpadded) prompt `(B, P)` holds the token."""
    p = tf.shape(prompt_tokens)[1]
    valid = tf.cast(key_mask[:, :p, None], tf.float32)
    return tf.reduce_max(tf.one_hot(prompt_tokens, n_vocab) * valid, axis=1)


def decode(model: GPT2, logits, cache, seen, done, count, step, prompt_len, positions, key_mask,
           settings: RowSettings, uniforms, steps: int, eot_id: int, slice_update: bool = True, head=None,
           limit=None):
    """Chooses up to `steps` tokens per row, feeding each back through the model.

    Each step chooses a token from `logits` `(B, V)`, writes it at slot `prompt_len + step` and
    runs it through the model for the next logits. A row is done after `<|endoftext|>` (when its
    `stop_at_eot`), at its own `max_new`, or when it was passed in as done (a stop string, a
    cancelled request); done rows emit -1. The loop ends early when every row is done, or when the
    cache is full. Called repeatedly (a chunk of `steps` tokens each time), it streams.

    Args:
        logits: `(B, V)` float32 logits of each row's next token.
        cache, positions, key_mask: as for `prefill` (T slots).
        seen: `(B, V)` tokens each row holds so far (for the repetition penalty).
        done: `(B,)` bool.
        count: `(B,)` int32 tokens each row has generated so far.
        step: scalar int32, the steps the batch has taken (slots filled after the prompts).
        prompt_len: scalar int32, the slots the (padded) prompts fill.
        uniforms: `(B, T)` float32; a row's i-th token samples with its column i.
        steps: the most steps this call takes (a Python int: the output's shape).
        head: as for `prefill`.
        limit: optional scalar int32, at most `steps`: stop after this many steps (a streaming
            caller takes one step first, for a short time to first token, with the same program).

    Returns:
        `(new_tokens (B, steps), logits, cache, seen, done, count, step)`; `new_tokens` is -1
        where a row emitted nothing.
    """
    b = tf.shape(logits)[0]
    t = tf.shape(key_mask)[1]
    n_vocab = model.config.n_vocab
    head = tf.transpose(model.wte) if head is None else head
    limit = steps if limit is None else tf.minimum(limit, steps)
    out = tf.fill([b, steps], -1)

    def cond(i, logits, cache, seen, done, count, step, out):
        room = prompt_len + step < t
        return tf.logical_and(tf.logical_and(i < limit, room), tf.logical_not(tf.reduce_all(done)))

    def body(i, logits, cache, seen, done, count, step, out):
        u = tf.gather(uniforms, tf.minimum(count, t - 1), batch_dims=1)
        nxt = settings.choose(logits, seen, u)
        out = tf.where(tf.equal(tf.range(steps), i)[None, :], tf.where(done, -1, nxt)[:, None], out)
        count = count + tf.cast(tf.logical_not(done), tf.int32)
        done = done | (settings.stop_at_eot & tf.equal(nxt, eot_id)) | (count >= settings.max_new)
        # Mark each row's new token: a scatter of B ones (a one-hot would rewrite all B x V).
        seen = tf.tensor_scatter_nd_max(seen, tf.stack([tf.range(b), nxt], axis=1), tf.ones([b], seen.dtype))
        index = prompt_len + step  # the slot of the token just chosen
        position = tf.gather(positions, tf.fill([b], index), batch_dims=1)
        logits, cache = model.forward(nxt[:, None], position[:, None], key_mask, cache, index, last_only=True,
                                      head=head, slice_update=slice_update)
        logits = tf.reshape(logits[:, -1], [b, n_vocab])  # (B, V), the static shape the loop keeps
        return i + 1, logits, cache, seen, done, count, step + 1, out

    _, logits, cache, seen, done, count, step, out = tf.while_loop(
        cond, body, (tf.constant(0), logits, cache, seen, done, count, step, out))
    return out, logits, cache, seen, done, count, step


def decode_loop(model: GPT2, tokens, positions, key_mask, uniforms, temperature, top_k, top_p, penalty,
                eot_id: int, stop_at_eot, slice_update: bool = False):
    """Generates `S = uniforms.shape[1]` tokens after left-padded prompts, with a key/value cache:
    `prefill` and `decode` in one graph (the exported SavedModel runs this).

    Args:
        tokens: `(B, P)` int32 prompts, left-padded.
        positions: `(B, P + S)` int32 position of every slot (0 at each row's first real token).
        key_mask: `(B, P + S)` bool, False for padding slots.
        uniforms: `(B, S)` float32 in [0, 1), one per step (see `draw_uniforms`).
        temperature, top_k, top_p, penalty: scalar or `(B,)` tensors (see `SamplingConfig`).
        eot_id: the `<|endoftext|>` id; after it a row only repeats it.
        stop_at_eot: scalar bool tensor: stop a row at `<|endoftext|>`.

    Returns:
        `(B, S)` int32 new tokens (rows that ended hold `eot_id` after their end).
    """
    b, p_len = tf.shape(tokens)[0], tf.shape(tokens)[1]
    steps = tf.shape(uniforms)[1]
    settings = RowSettings(*(tf.broadcast_to(v, [b]) for v in (temperature, top_k, top_p, penalty, steps,
                                                                 stop_at_eot)))
    t = p_len + steps
    uniforms = tf.pad(uniforms, [[0, 0], [0, p_len]])  # (B, T)
    cache = model.empty_cache(b, t)
    logits, cache = prefill(model, tokens, positions, key_mask, cache, 0, slice_update=slice_update)
    seen = seen_tokens(tokens, key_mask, model.config.n_vocab)
    out, *_ = decode(model, logits, cache, seen, tf.zeros([b], tf.bool), tf.zeros([b], tf.int32), 0, p_len,
                     positions, key_mask, settings, uniforms, steps, eot_id, slice_update=slice_update)
    return tf.where(out < 0, eot_id, out)


def left_pad(rows: Sequence[Sequence[int]], steps: int, pad_id: int):
    """Left-padded `tokens (B, P)`, `positions (B, P+steps)` and `key_mask (B, P+steps)`."""
    p_len = max(len(r) for r in rows)
    pads = np.array([p_len - len(r) for r in rows], np.int32)
    tokens = np.full((len(rows), p_len), pad_id, np.int32)
    for i, r in enumerate(rows):
        tokens[i, pads[i]:] = r
    slots = np.arange(p_len + steps, dtype=np.int32)[None, :]
    return tokens, np.maximum(slots - pads[:, None], 0).astype(np.int32), slots >= pads[:, None]


class Generator:
    """Generates with a model; compiled functions are built once per Generator and reused.

    Args:
        model: a GPT-2 model.
        tokenizer: its tokenizer (for text in and out, `<|endoftext|>` and stop strings).
        jit_compile: compile the whole generation loop (prompt and every new token) with XLA.

    Example:
        >>> gen = Generator(model, tokenizer)
        >>> gen.generate(["The meaning of life is"], SamplingConfig(max_new_tokens=20, seed=0))
    """

    def __init__(self, model: GPT2, tokenizer: Optional[BPETokenizer] = None, jit_compile: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_id if tokenizer is not None else model.config.n_vocab - 1
        model_ = model

        @tf.function(jit_compile=jit_compile, reduce_retracing=True)
        def loop(tokens, positions, key_mask, uniforms, temperature, top_k, top_p, penalty, stop_at_eot):
            return decode_loop(model_, tokens, positions, key_mask, uniforms, temperature, top_k, top_p, penalty,
                               self.eot_id, stop_at_eot, slice_update=jit_compile)

        # Without a cache: the whole sequence runs through the model for each new token.
        @tf.function(reduce_retracing=True)
        def full(tokens, positions, key_mask):
            return model_.forward(tokens, positions, key_mask, last_only=True)[0][:, -1]

        @tf.function(reduce_retracing=True)
        def choose(logits, seen, temperature, top_k, top_p, penalty, u):
            nxt = _choose(logits, seen, temperature, top_k, top_p, penalty, u)
            return nxt, tf.maximum(seen, tf.one_hot(nxt, model_.config.n_vocab))

        self._loop, self._full, self._choose = loop, full, choose

    def _fit_prompts(self, prompts: Sequence[Sequence[int]], max_new: int) -> List[List[int]]:
        n_ctx = self.model.config.n_ctx
        if max_new >= n_ctx:
            raise GenerationError(
                f"max_new_tokens = {max_new} leaves no room for the prompt in the model's context of "
                f"{n_ctx} tokens; ask for at most {n_ctx - 1}."
            )
        room = n_ctx - max_new
        # Keep the end of a long prompt (the part next to the continuation); empty prompts start
        # from <|endoftext|>, as GPT-2 does for unconditional samples.
        return [list(p)[-room:] if p else [self.eot_id] for p in prompts]

    def generate_ids(self, prompts: Sequence[Sequence[int]], config: SamplingConfig = SamplingConfig(),
                     use_cache: bool = True) -> List[List[int]]:
        """New ids for each (prompt, sequence) pair, prompt-major; each list ends before any
        `<|endoftext|>` when `config.stop_at_eot`."""
        cfg = config
        rows = [p for p in self._fit_prompts(prompts, cfg.max_new_tokens) for _ in range(cfg.num_return_sequences)]
        steps = cfg.max_new_tokens
        tokens, positions, key_mask = left_pad(rows, steps, self.eot_id)
        seed = np.random.randint(0, 2**31 - 1) if cfg.seed is None else cfg.seed
        uniforms = draw_uniforms(seed, len(rows), steps)
        settings = (tf.constant(cfg.temperature, tf.float32), tf.constant(cfg.top_k, tf.int32),
                    tf.constant(cfg.top_p, tf.float32), tf.constant(cfg.repetition_penalty, tf.float32))
        if use_cache:
            out = self._loop(tokens, positions, key_mask, uniforms, *settings, tf.constant(cfg.stop_at_eot)).numpy()
        else:
            out = self._generate_without_cache(tokens, positions, key_mask, uniforms, settings, cfg.stop_at_eot)
        results = []
        for row in out.tolist():
            if cfg.stop_at_eot and self.eot_id in row:
                row = row[:row.index(self.eot_id)]
            results.append(row)
        return results

    def _generate_without_cache(self, tokens, positions, key_mask, uniforms, settings, stop_at_eot) -> np.ndarray:
        b, p_len = tokens.shape
        steps = uniforms.shape[1]
        seen = tf.reduce_max(tf.one_hot(tokens, self.model.config.n_vocab)
                             * tf.cast(key_mask[:, :p_len, None], tf.float32), axis=1)
        seq = tokens
        out = np.full((b, steps), self.eot_id, np.int32)
        done = np.zeros(b, bool)
        for step in range(steps):
            n = p_len + step
            logits = self._full(tf.constant(seq), tf.constant(positions[:, :n]), tf.constant(key_mask[:, :n]))
            nxt, seen = self._choose(logits, seen, *settings, uniforms[:, step])
            ids = np.where(done, self.eot_id, nxt.numpy())
            out[:, step] = ids
            done |= stop_at_eot & (ids == self.eot_id)
            if done.all():
                break
            seq = np.concatenate([seq, ids[:, None]], axis=1)
        return out

    def generate(self, prompts: Sequence[str], config: SamplingConfig = SamplingConfig(),
                 use_cache: bool = True) -> List[str]:
        """Continuations of each prompt (`num_return_sequences` per prompt, prompt-major), cut at
        the first stop string."""
        if self.tokenizer is None:
            raise GenerationError("this Generator has no tokenizer; use generate_ids() with token ids.")
        ids = self.generate_ids([self.tokenizer.encode(p) for p in prompts], config, use_cache)
        texts = [self.tokenizer.decode(r) for r in ids]
        return [cut_at_stop(t, config.stop) for t in texts]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    end = len(text)
    for s in stops:
        i = text.find(s)
        if s and i != -1:
            end = min(end, i)
    return text[:end]


def generate_text(model: GPT2, tokenizer: BPETokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                  temperature: float = 1.0, top_k: int = 0, seed: Optional[int] = None, **kwargs) -> List[str]:
    """One-call helper: continues each prompt once; see `SamplingConfig` for the settings."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed, **kwargs)
    return Generator(model, tokenizer).generate(prompts, config)
