"""The model runner: the serving engine's compiled prefill and decode programs, and the state
they update in place.

State (one `Runner` per served model version): per layer a key and a value cache
`(slots + 1, H, T, D)`, and the tokens each row has seen `(slots + 1, V)` (for the repetition
penalty), `tf.Variable`s that the XLA programs update in place. Slot `s` belongs to one row at a time; a row's tokens sit at cache slots 0, 1, 2, ... of its
slot, so every row has its own position. The last slot is scratch: padding rows write there.

Programs (one `Programs` per model shape and layout, shared by every runner of that shape): the
weights are arguments, not captured variables, so a new version of the same shape (a retrained
champion) runs on the programs already compiled; nothing is compiled, and nothing kept, per
version. Their number is bounded: one prefill program per (rows, chunk, cache length) bucket and
one decode program per (batch, cache length) bucket.

* `prefill` runs one chunk of prompt tokens (all but a prompt's last) for some rows, each at its
  own start slot, and writes their keys and values.
* `decode` runs up to `steps` decode steps for rows `0 .. batch - 1`: each step feeds a row's next
  token (its prompt's last, then the token it sampled last) through the model at the row's own
  next slot and samples the token after it (`tfx_gpt2.model.sampling`). Between calls a row's state
  is its next token and its length: no logits are kept. Rows that are not active (free slots,
  rows still in prefill) are masked: they emit nothing and write only to the scratch slot. The call returns early when every row is done, or
  when a row finishes and `yield_on_finish` (so its slot can be given to a waiting request).

Attention reads only the first `length` slots of the cache (a length bucket): every decode step
reads what it attends to, so short rows run in a short bucket.

* `score` runs one whole sequence (no cache) and returns each token's log-probability given the
  tokens before it, with the `TOP_LOGPROBS` most likely tokens at each position: the model's own
  log-softmax, for `logprobs` and `echo`. It runs without XLA (TensorFlow's kernels need no
  compilation, and a scored request is rare beside the decode steps).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import affine, attention_weights, gelu, layer_norm, merge_heads, split_heads
from tfx_gpt2.model.sampling import choose

TOP_LOGPROBS = 5  # alternatives per position that `score` returns (OpenAI's limit for `logprobs`)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a runner's programs are compiled for.

    Attributes:
        slots: rows generated together at most.
        batch_buckets: decode batch sizes (rows `0 .. b - 1`).
        prefill_rows: row counts of a prefill call.
        cache_buckets: cache lengths attention reads; the largest is every row's cache size.
        chunks: prompt tokens per prefill call, (big, small).
        steps: decode steps per call at most.
    """

    slots: int
    batch_buckets: Tuple[int, ...]
    prefill_rows: Tuple[int, ...]
    cache_buckets: Tuple[int, ...]
    chunks: Tuple[int, int]
    steps: int

    @property
    def cache_size(self) -> int:
        return self.cache_buckets[-1]


def weight_names(config: GPT2Config) -> List[str]:
    """The model's weights by OpenAI name, in the order the programs take them."""
    per_layer = ["ln_1/g", "ln_1/b", "attn/c_attn/w", "attn/c_attn/b", "attn/c_proj/w", "attn/c_proj/b",
                 "ln_2/g", "ln_2/b", "mlp/c_fc/w", "mlp/c_fc/b", "mlp/c_proj/w", "mlp/c_proj/b"]
    return ["wte", "wpe", "ln_f/g", "ln_f/b"] + [f"h{i}/{n}" for i in range(config.n_layer) for n in per_layer]


def _block(w, i: int, x, config: GPT2Config, attend):
    """Transformer block `i` on `x` `(B, S, C)`; `attend(i, q, k, v)` returns the attention output
    `(B, H, S, D)` of this block's queries, keys and values (and writes the keys and values)."""
    p = f"h{i}/"
    qkv = affine(layer_norm(x, w[p + "ln_1/g"], w[p + "ln_1/b"], config.layer_norm_epsilon),
                 w[p + "attn/c_attn/w"], w[p + "attn/c_attn/b"])
    q, k, v = (split_heads(t, config.n_head) for t in tf.split(qkv, 3, axis=-1))
    x = x + affine(merge_heads(attend(i, q, k, v)), w[p + "attn/c_proj/w"], w[p + "attn/c_proj/b"])
    h = affine(layer_norm(x, w[p + "ln_2/g"], w[p + "ln_2/b"], config.layer_norm_epsilon),
               w[p + "mlp/c_fc/w"], w[p + "mlp/c_fc/b"])
    return x + affine(gelu(h), w[p + "mlp/c_proj/w"], w[p + "mlp/c_proj/b"])


def _forward(w, config: GPT2Config, tokens, slots, attend):
    """Hidden states `(B, S, C)` (after `ln_f`) of `tokens` `(B, S)` at cache `slots`."""
    positions = tf.minimum(slots, config.n_ctx - 1)  # padding slots past the context reuse the last
    x = tf.gather(w["wte"], tokens) + tf.gather(w["wpe"], positions)
    for i in range(config.n_layer):
        x = _block(w, i, x, config, attend)
    return layer_norm(x, w["ln_f/g"], w["ln_f/b"], config.layer_norm_epsilon)


def _cache_writer(state, rows, slots, length: int, n_head: int):
    """`attend(i, q, k, v)` for rows `rows` `(B,)` whose new tokens sit at cache `slots` `(B, S)`:
    writes k and v into layer i's caches (in place), then attends over the first `length` slots."""
    b, s = tf.shape(slots)[0], tf.shape(slots)[1]
    grid = [tf.broadcast_to(t, [b, n_head, s]) for t in
            (rows[:, None, None], tf.range(n_head)[None, :, None], slots[:, None, :])]
    index = tf.reshape(tf.stack(grid, -1), [-1, 3])  # (B * H * S, 3): (row, head, slot)
    allowed = (tf.range(length)[None, None, :] <= slots[:, :, None])[:, None]  # (B, 1, S, T): causal
    keys_of, values_of = state["k"], state["v"]

    def attend(i, q, k, v):
        for cache, new in ((keys_of[i], k), (values_of[i], v)):
            cache.scatter_nd_update(index, tf.reshape(new, [-1, new.shape[-1]]))
        keys = tf.gather(keys_of[i][:, :, :length], rows)
        values = tf.gather(values_of[i][:, :, :length], rows)
        return tf.matmul(attention_weights(q, keys, allowed, q.dtype), values)

    return attend


def _prefill(names, config: GPT2Config, length: int, weights, head, state, tokens, rows, starts, lasts):
    """One prompt chunk `tokens` `(P, S)` for cache rows `rows` `(P,)`, starting at slots `starts`
    `(P,)`; `lasts` `(P,)` is the index of each row's last real token in the chunk. Writes their
    keys and values, and marks them seen (a row's first chunk, at start 0, clears its marks).
    Computes no logits: a prompt's last token is fed by the first decode step."""
    w = dict(zip(names, weights))
    chunk = tokens.shape[1]
    slots = starts[:, None] + tf.range(chunk)[None, :]
    _forward(w, config, tokens, slots, _cache_writer(state, rows, slots, length, config.n_head))
    real = tf.range(chunk)[None, :] <= lasts[:, None]  # (P, S)
    seen = tf.where((starts == 0)[:, None], 0.0, tf.gather(state["seen"], rows))
    pairs = tf.stack([tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(tokens)), tokens], -1)
    seen = tf.tensor_scatter_nd_max(seen, tf.reshape(pairs, [-1, 2]), tf.reshape(tf.cast(real, seen.dtype), [-1]))
    state["seen"].scatter_nd_update(rows[:, None], seen)
    return tf.constant(0)


def _decode(names, config: GPT2Config, layout: Layout, eot_id: int, batch: int, length: int, weights, head, state,
            tokens, lengths, count, active, fresh, temperature, top_k, top_p, penalty, max_new, stop_at_eot,
            uniforms, limit, yield_on_finish):
    """Up to `limit` decode steps for rows `0 .. batch - 1`: each feeds a row's next token through
    the model at its own slot, then samples the token after it (see the module docstring).

    Args:
        tokens: `(B,)` the token each row feeds next: its prompt's last, then its last sampled.
        lengths: `(B,)` tokens in each row's cache (the slot the fed token is written at).
        count: `(B,)` tokens each row has generated.
        active: `(B,)` rows that decode; the others emit nothing.
        fresh: `(B,)` rows with no prefill (one-token prompts): their seen tokens are cleared.
        temperature ... stop_at_eot: `(B,)` each row's settings (`tfx_gpt2.model.sampling`).
        uniforms: `(B, steps)`: a row's uniform number for its i-th token of this call.
        limit: scalar int32, steps to take at most; yield_on_finish: scalar bool.

    Returns:
        `(tokens (B, steps) with -1 where a row emitted nothing, count, done, steps taken)`.
    """
    w = dict(zip(names, weights))
    rows, scratch = tf.range(batch), layout.cache_size - 1

    def step(i, tokens, seen, done, count, lengths, out):
        fed = tf.logical_not(done)
        seen = tf.tensor_scatter_nd_max(seen, tf.stack([rows, tokens], 1), tf.cast(fed, seen.dtype))
        slots = tf.where(fed, lengths, scratch)[:, None]  # (B, 1); masked rows write to scratch
        x = _forward(w, config, tokens[:, None], slots, _cache_writer(state, rows, slots, length, config.n_head))
        logits = tf.matmul(x[:, 0], head)  # (B, V)
        nxt = tf.reshape(choose(logits, seen, temperature, top_k, top_p, penalty, uniforms[:, i]), [batch])
        out = tf.where(tf.equal(tf.range(layout.steps), i)[None, :], tf.where(fed, nxt, -1)[:, None], out)
        count += tf.cast(fed, tf.int32)
        done |= fed & ((stop_at_eot & tf.equal(nxt, eot_id)) | (count >= max_new))
        return i + 1, tf.where(fed, nxt, tokens), seen, done, count, lengths + tf.cast(fed, tf.int32), out

    def more(i, tokens, seen, done, count, lengths, out):
        finished = tf.reduce_any(done & active)
        return (i < limit) & tf.logical_not(tf.reduce_all(done)) & tf.logical_not(yield_on_finish & finished)

    seen = tf.where(fresh[:, None], 0.0, state["seen"][:batch])
    start = (tf.constant(0), tokens, seen, tf.logical_not(active), count, lengths,
             tf.fill([batch, layout.steps], -1))
    i, _, seen, done, count, _, out = tf.while_loop(more, step, start)
    state["seen"].scatter_nd_update(rows[:, None], seen)  # inactive rows' are unchanged
    return out, count, done, i


def _score(names, config: GPT2Config, length: int, weights, head, state, tokens):
    """Log-probabilities of `tokens` `(1, length)` (padded after the real ones): `(chosen (length - 1,)`:
    each token's given those before it, `top_ids, top_logprobs (length - 1, TOP_LOGPROBS))`."""
    w = dict(zip(names, weights))
    allowed = (tf.range(length)[None, :] <= tf.range(length)[:, None])[None, None]  # (1, 1, S, T): causal

    def attend(i, q, k, v):
        return tf.matmul(attention_weights(q, k, allowed, q.dtype), v)

    x = _forward(w, config, tokens, tf.range(length)[None, :], attend)[0]  # (length, C)
    logprobs = tf.nn.log_softmax(tf.matmul(x[:-1], head))  # (length - 1, V): position i predicts token i + 1
    chosen = tf.gather(logprobs, tokens[0, 1:], batch_dims=1)
    top_logprobs, top_ids = tf.math.top_k(logprobs, TOP_LOGPROBS)
    return chosen, top_ids, top_logprobs


class Programs:
    """The compiled programs of one model shape, vocabulary and layout; use `Programs.shared`."""

    _shared: "weakref.WeakValueDictionary[tuple, Programs]" = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, config: GPT2Config, layout: Layout, eot_id: int):
        self.config, self.layout, self.eot_id = config, layout, eot_id
        self.names = weight_names(config)
        self.compiled: set = set()
        self._functions: Dict[tuple, object] = {}

    @classmethod
    def shared(cls, config: GPT2Config, layout: Layout, eot_id: int) -> "Programs":
        """The programs of this shape, created once while any runner uses them."""
        key = (config, layout, eot_id)
        with cls._lock:
            programs = cls._shared.get(key)
            if programs is None:
                programs = cls._shared[key] = cls(config, layout, eot_id)
            return programs

    def function(self, key: tuple):
        """The `tf.function` of `key`: ("prefill", rows, chunk, length), ("decode", batch, length)
        or ("score", length)."""
        fn = self._functions.get(key)
        if fn is None:
            if key[0] == "prefill":
                body = functools.partial(_prefill, self.names, self.config, key[3])
            elif key[0] == "decode":
                body = functools.partial(_decode, self.names, self.config, self.layout, self.eot_id, key[1], key[2])
            else:
                body = functools.partial(_score, self.names, self.config, key[1])
            fn = self._functions[key] = tf.function(body, jit_compile=key[0] != "score", autograph=False)
        return fn

    def keys(self) -> List[tuple]:
        """Every program a request can use."""
        big, small = self.layout.chunks
        keys = []
        for length in self.layout.cache_buckets:
            for rows in self.layout.prefill_rows:
                keys += [("prefill", rows, c, length) for c in sorted({small, big}) if c <= length]
            keys += [("decode", b, length) for b in self.layout.batch_buckets]
            keys.append(("score", length))
        return keys


class Runner:
    """A model version's weights and state, run by the shared programs of its shape.

    Args:
        weights: the model's weights by OpenAI name (numpy arrays or tensors).
        config: the model's shape.
        layout: what the programs are compiled for.
        eot_id: the `<|endoftext|>` id.
    """

    def __init__(self, weights: Dict[str, object], config: GPT2Config, layout: Layout, eot_id: int):
        self.config, self.layout, self.eot_id = config, layout, eot_id
        self.programs = Programs.shared(config, layout, eot_id)
        self.weights = tuple(tf.convert_to_tensor(weights[n], tf.float32) for n in self.programs.names)
        # The output projection, transposed once: XLA on CPU multiplies by a (C, V) matrix several
        # times faster than by `wte` transposed on the fly.
        self.head = tf.transpose(self.weights[0])
        self._new_state()

    def sibling(self) -> "Runner":
        """Another runner of the same weights (not copied) with state of its own."""
        other = object.__new__(Runner)
        other.config, other.layout, other.eot_id = self.config, self.layout, self.eot_id
        other.programs, other.weights, other.head = self.programs, self.weights, self.head
        other._new_state()
        return other

    def _new_state(self) -> None:
        c, layout = self.config, self.layout
        rows = layout.slots + 1
        shape = (rows, c.n_head, layout.cache_size, c.head_size)
        self.state = {"k": [tf.Variable(tf.zeros(shape), trainable=False) for _ in range(c.n_layer)],
                      "v": [tf.Variable(tf.zeros(shape), trainable=False) for _ in range(c.n_layer)],
                      "seen": tf.Variable(tf.zeros((rows, c.n_vocab)), trainable=False)}
        self._calls: Dict[tuple, tuple] = {}

    @property
    def scratch(self) -> int:
        """The cache row padding rows write to."""
        return self.layout.slots

    def prefill(self, length: int, tokens: np.ndarray, rows: np.ndarray, starts: np.ndarray, lasts: np.ndarray):
        """Runs `prefill` on cache rows `rows` (see `_prefill`)."""
        self._call(("prefill", tokens.shape[0], tokens.shape[1], length), (tokens, rows, starts, lasts))

    def decode(self, length: int, tokens, lengths, count, active, fresh, settings: Sequence[np.ndarray], uniforms,
               limit: int, yield_on_finish: bool):
        """Runs `decode` for rows `0 .. len(lengths) - 1`; returns numpy `(tokens, count, done, steps)`."""
        out = self._call(("decode", len(lengths), length), (tokens, lengths, count, active, fresh, *settings,
                                                            uniforms, np.int32(limit), np.bool_(yield_on_finish)))
        return tuple(t.numpy() for t in out)

    def score(self, tokens: Sequence[int]):
        """Numpy `(chosen, top_ids, top_logprobs)` of `tokens` (see `_score`), for positions 1 .. n - 1."""
        n = len(tokens)
        length = next(b for b in self.layout.cache_buckets if b >= n)
        padded = np.zeros((1, length), np.int32)
        padded[0, :n] = tokens
        out = self._call(("score", length), (padded,))
        return tuple(t.numpy()[:n - 1] for t in out)

    def _call(self, key: tuple, args: tuple):
        """Calls program `key` with this runner's weights and state, then `args`.

        Through the concrete function's flat call: `tf.function`'s own dispatch (the type of each
        of a hundred-odd arguments, every call) costs more than a small model's decode step."""
        entry = self._calls.get(key)
        if entry is None:
            fixed = (self.weights, self.head, self.state)
            concrete = self.programs.function(key).get_concrete_function(*fixed, *args)
            flat = [t.handle if isinstance(t, tf.Variable) else t for t in tf.nest.flatten(fixed)]
            entry = self._calls[key] = (concrete, flat)
            self.programs.compiled.add(key)
        concrete, flat = entry
        return concrete._call_flat(flat + [tf.convert_to_tensor(a) for a in args], concrete.captured_inputs)

    def warm_up(self, workers: int = 2) -> None:
        """Runs every program once, compiling those this shape has not compiled yet (`workers` at
        a time: XLA compiles on one core)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for done in [pool.submit(self._run_idle, key) for key in self.programs.keys()]:
                done.result()

    def _run_idle(self, key: tuple) -> None:
        """Runs program `key` on padding rows only (nothing changes)."""
        from tfx_gpt2.model.sampling import RowSettings, SamplingConfig

        if key[0] == "score":
            self.score([0] * key[1])
        elif key[0] == "prefill":
            _, rows, chunk, length = key
            fill = np.full(rows, self.scratch, np.int32)
            self.prefill(length, np.zeros((rows, chunk), np.int32), fill, np.zeros(rows, np.int32),
                         np.zeros(rows, np.int32))
        else:
            _, batch, length = key
            zeros, no = np.zeros(batch, np.int32), np.zeros(batch, bool)
            settings = RowSettings.columns([SamplingConfig(temperature=0.0)] * batch)
            self.decode(length, zeros, zeros, zeros, no, no, settings, np.zeros((batch, self.layout.steps), np.float32),
                        1, False)
