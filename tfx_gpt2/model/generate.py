"""Text generation with a key/value cache, compiled with XLA.

A batch of prompts of different lengths is left-padded to one length P; padding slots are masked
out of attention and each row's positions start at 0 at its first real token. The prompt is run
once (prefill), filling a fixed-size cache of `P + max_new_tokens` slots; each new token then costs
one position's forward pass (decode step). The prefill and the loop over new tokens are one
`tf.function(jit_compile=True)` (`decode_loop`), with the sampling settings as tensors, so changing
them does not recompile and no step returns to Python; the exported SavedModel runs the same loop.

Next-token choice is `tfx_gpt2.model.sampling` (repetition penalty, temperature, top-k, top-p, then
a sample from uniform numbers drawn up front from `seed`, so a seed gives the same text with or
without XLA; temperature 0 is greedy). Generation stops at `<|endoftext|>`, at a stop string, or
after `max_new_tokens`.

`use_cache=False` runs the whole sequence through the model for each new token instead: slower,
the same result (a test checks greedy outputs are equal token for token).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.model.sampling import GenerationError, RowSettings, SamplingConfig, choose, draw_uniforms, without_xla_ops
from tfx_gpt2.text.bpe import BPETokenizer

__all__ = ["GenerationError", "Generator", "SamplingConfig", "cut_at_stop", "decode_loop", "generate_text",
           "left_pad"]


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
    shape = logits.shape

    def cond(i, logits, cache, seen, done, count, step, out):
        room = prompt_len + step < t
        return tf.logical_and(tf.logical_and(i < limit, room), tf.logical_not(tf.reduce_all(done)))

    def body(i, logits, cache, seen, done, count, step, out):
        u = tf.gather(uniforms, tf.minimum(count, t - 1), batch_dims=1)
        nxt = tf.ensure_shape(settings.choose(logits, seen, u), done.shape)
        out = tf.where(tf.equal(tf.range(steps), i)[None, :], tf.where(done, -1, nxt)[:, None], out)
        count = count + tf.cast(tf.logical_not(done), tf.int32)
        done = done | (settings.stop_at_eot & tf.equal(nxt, eot_id)) | (count >= settings.max_new)
        # Mark each row's new token: a scatter of B ones (a one-hot would rewrite all B x V).
        seen = tf.tensor_scatter_nd_max(seen, tf.stack([tf.range(b), nxt], axis=1), tf.ones([b], seen.dtype))
        index = prompt_len + step  # the slot of the token just chosen
        position = tf.gather(positions, tf.fill([b], index), batch_dims=1)
        logits, cache = model.forward(nxt[:, None], position[:, None], key_mask, cache, index, last_only=True,
                                      head=head, slice_update=slice_update)
        logits = tf.ensure_shape(tf.reshape(logits[:, -1], [b, n_vocab]), shape)  # (B, V): the loop's shape
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

        @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
        def loop(tokens, positions, key_mask, uniforms, temperature, top_k, top_p, penalty, stop_at_eot):
            return decode_loop(model_, tokens, positions, key_mask, uniforms, temperature, top_k, top_p, penalty,
                               self.eot_id, stop_at_eot, slice_update=jit_compile)

        # Without a cache: the whole sequence runs through the model for each new token.
        @tf.function(reduce_retracing=True, autograph=False)
        def full(tokens, positions, key_mask):
            return model_.forward(tokens, positions, key_mask, last_only=True)[0][:, -1]

        @tf.function(reduce_retracing=True, autograph=False)
        def choose_next(logits, seen, temperature, top_k, top_p, penalty, u):
            with without_xla_ops():  # traced for TensorFlow's own kernels
                nxt = choose(logits, seen, temperature, top_k, top_p, penalty, u)
            return nxt, tf.maximum(seen, tf.one_hot(nxt, model_.config.n_vocab))

        self._loop, self._full, self._choose = loop, full, choose_next

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
