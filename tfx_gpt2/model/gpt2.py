"""GPT-2 as a Keras 3 model, with OpenAI's parameter names.

The architecture of "Language Models are Unsupervised Multitask Learners" (Radford et al., 2019):
token embeddings `wte` plus learned position embeddings `wpe`, `n_layer` pre-norm transformer blocks

    x = x + attn(ln_1(x))      # causal multi-head self-attention
    x = x + mlp(ln_2(x))       # GELU (tanh approximation), 4x wider hidden layer

then a final layer norm `ln_f`, and logits from the transposed token embeddings (tied weights).

Every weight keeps the name it has in OpenAI's TensorFlow checkpoint, relative to `model/`:
`wte`, `wpe`, `h{i}/ln_1/{g,b}`, `h{i}/attn/c_attn/{w,b}`, `h{i}/attn/c_proj/{w,b}`,
`h{i}/ln_2/{g,b}`, `h{i}/mlp/c_fc/{w,b}`, `h{i}/mlp/c_proj/{w,b}`, `ln_f/{g,b}`.
Shapes follow Hugging Face's `Conv1D` convention, `w: (n_in, n_out)` (OpenAI stores a leading 1).

Shape letters in comments: B batch, T time (sequence), C channels (`n_embd`), H heads,
D head size (`C / H`), V vocabulary.
"""

from __future__ import annotations

import math
from typing import Dict

import keras
import numpy as np
from keras import ops

from tfx_gpt2.config.model import GPT2Config, LoraSpec, from_json, to_json


def gelu(x):
    """GPT-2's GELU: the tanh approximation (Hendrycks & Gimpel), as in OpenAI's code."""
    return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * ops.power(x, 3))))


# -- the math of the layers, on weights given as tensors (the Keras layers below and the serving
# engine's model runner both use these) ------------------------------------------------------------

def affine(x, w, b):
    """`x @ w + b` over the last axis of `x` `(..., n_in)`, `w: (n_in, n_out)`.

    As a 2-D product over all positions: a 3-D `x` times a 2-D `w` would be a broadcast batch
    matmul, whose gradient for `w` is one product per batch row summed afterwards (about 10%
    slower training steps on CPU)."""
    n_in, n_out = ops.shape(x)[-1], ops.shape(w)[-1]
    y = ops.matmul(ops.reshape(x, (-1, n_in)), ops.cast(w, x.dtype)) + ops.cast(b, x.dtype)
    return ops.reshape(y, tuple(ops.shape(x)[:-1]) + (n_out,))


def layer_norm(x, g, b, epsilon: float):
    """Layer normalisation over the last axis, statistics in float32 even for half precision."""
    dtype = x.dtype
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    x = (x - mean) * ops.rsqrt(var + epsilon)
    return ops.cast(x * g + b, dtype)


def split_heads(x, n_head: int):
    """`(B, S, C)` to `(B, H, S, D)`."""
    b, s, c = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    return ops.transpose(ops.reshape(x, (b, s, n_head, c // n_head)), (0, 2, 1, 3))


def merge_heads(y):
    """`(B, H, S, D)` to `(B, S, C)`."""
    b, h, s, d = ops.shape(y)[0], ops.shape(y)[1], ops.shape(y)[2], ops.shape(y)[3]
    return ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (b, s, h * d))


def attention_weights(q, keys, allowed, dtype):
    """Softmax attention weights `(B, H, S, T)` of queries `(B, H, S, D)` over keys `(B, H, T, D)`;
    `allowed` (broadcast to `(B, H, S, T)`) is False for keys a query must not see."""
    scores = ops.einsum("bhsd,bhtd->bhst", q, keys)  # (B, H, S, T)
    scores = ops.cast(scores, "float32") / math.sqrt(ops.shape(q)[-1])
    return ops.cast(ops.softmax(ops.where(allowed, scores, -1e9), axis=-1), dtype)


def lora_delta(x, a, b, scale: float):
    """A low-rank adapter's output `x @ a @ b * scale` for `x` `(..., n_in)`, `a: (n_in, r)`,
    `b: (r, n_out)`: two thin products, never the `(n_in, n_out)` matrix `a @ b`."""
    n_in, n_out = ops.shape(x)[-1], ops.shape(b)[-1]
    h = ops.matmul(ops.reshape(x, (-1, n_in)), ops.cast(a, x.dtype))
    y = ops.matmul(h, ops.cast(b, x.dtype)) * ops.cast(scale, x.dtype)
    return ops.reshape(y, tuple(ops.shape(x)[:-1]) + (n_out,))


class Conv1D(keras.layers.Layer):
    """OpenAI's `conv1d` with width 1, i.e. an affine map: `x @ w + b`, `w: (n_in, n_out)`.

    With `enable_lora`, it adds a low-rank adapter and freezes `w` and `b` (see `LoraSpec`)."""

    def __init__(self, n_out: int, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.n_out = n_out
        self.init_std = init_std
        self.lora = None

    def build(self, input_shape):
        n_in = input_shape[-1]
        self.w = self.add_weight(
            name="w", shape=(n_in, self.n_out),
            initializer=keras.initializers.RandomNormal(stddev=self.init_std),
        )
        self.b = self.add_weight(name="b", shape=(self.n_out,), initializer="zeros")

    def enable_lora(self, spec: LoraSpec) -> None:
        """Adds the adapter `lora_a: (n_in, rank)`, `lora_b: (rank, n_out)` and freezes `w` and `b`.

        `lora_a` starts uniform in `+-1/sqrt(n_in)` (PEFT's Kaiming init) and `lora_b` at zero, so
        the layer computes what it did until the adapter trains."""
        if self.lora is not None:
            raise ValueError(f"{self.path} already has a LoRA adapter ({self.lora}).")
        n_in = self.w.shape[0]
        bound = 1.0 / math.sqrt(n_in)
        self._tracker.unlock()  # Keras locks a built layer's state; adapters are added later
        self.lora_a = self.add_weight(name="lora_a", shape=(n_in, spec.rank),
                                      initializer=keras.initializers.RandomUniform(-bound, bound))
        self.lora_b = self.add_weight(name="lora_b", shape=(spec.rank, self.n_out), initializer="zeros")
        self.lora_dropout = keras.layers.Dropout(spec.dropout)
        self._tracker.lock()
        self.w.trainable = False
        self.b.trainable = False
        self.lora = spec

    def call(self, x, training=False):
        y = affine(x, self.w, self.b)
        if self.lora is None:
            return y
        return y + lora_delta(self.lora_dropout(x, training=training), self.lora_a, self.lora_b, self.lora.scale)


class LayerNorm(keras.layers.Layer):
    """Layer normalisation over the last axis with gain `g` and bias `b` (OpenAI's names).

    Statistics are computed in float32 even when activations are half precision.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.g = self.add_weight(name="g", shape=(input_shape[-1],), initializer="ones")
        self.b = self.add_weight(name="b", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return layer_norm(x, self.g, self.b, self.epsilon)


class Attention(keras.layers.Layer):
    """Causal multi-head self-attention: one projection to q, k, v (`c_attn`), one out (`c_proj`)."""

    def __init__(self, config: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        # GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer).
        self.c_attn = Conv1D(3 * config.n_embd, name="c_attn")
        self.c_proj = Conv1D(config.n_embd, init_std=0.02 / math.sqrt(2 * config.n_layer), name="c_proj")
        self.attn_dropout = keras.layers.Dropout(config.dropout)
        self.resid_dropout = keras.layers.Dropout(config.dropout)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def call(self, x, training=False, key_mask=None, cache=None, write_index=0, slice_update=False):
        """Attends each position of `x` `(B, S, C)` to itself and the positions before it.

        Args:
            key_mask: optional `(B, T)` bool, False for key slots to ignore (left padding).
            cache: optional `(k, v)`, each `(B, H, T, D)`: keys and values of earlier slots. The new
                keys and values are written at slots `write_index ... write_index + S - 1`, and the
                queries attend over all T slots (causally). Without a cache, T = S.
            write_index: the slot of the first position of `x` (an int or scalar tensor).
            slice_update: write the cache with XLA's in-place dynamic-update-slice (only inside
                `tf.function(jit_compile=True)`); otherwise a one-hot product that runs anywhere
                but rewrites the whole cache (slow for long caches).

        Returns:
            `(y, new_cache)`: `y` is `(B, S, C)`; `new_cache` is None without a cache.
        """
        s = ops.shape(x)[1]
        qkv = self.c_attn(x, training=training)  # (B, S, 3C)
        q, k, v = (split_heads(t, self.config.n_head) for t in ops.split(qkv, 3, axis=-1))  # (B, H, S, D)
        q_slots = write_index + ops.arange(s)  # (S,)
        if cache is None:
            keys, values, new_cache = k, v, None
            k_slots = q_slots
        else:
            k_cache, v_cache = cache
            t = ops.shape(k_cache)[2]
            k_cache, v_cache = (_write_slots(k_cache, k, write_index, slice_update),
                                _write_slots(v_cache, v, write_index, slice_update))
            keys, values, new_cache = k_cache, v_cache, (k_cache, v_cache)
            k_slots = ops.arange(t)
        # A query attends to keys at its own slot or before (causal), and never to padding.
        allowed = (k_slots[None, :] <= q_slots[:, None])[None, None]  # (1, 1, S, T)
        if key_mask is not None:
            allowed = ops.logical_and(allowed, key_mask[:, None, None, :])
        weights = self.attn_dropout(attention_weights(q, keys, allowed, x.dtype), training=training)
        y = merge_heads(ops.matmul(weights, values))  # (B, S, C)
        return self.resid_dropout(self.c_proj(y, training=training), training=training), new_cache


def _write_slots(cache, new, index, slice_update: bool):
    """`cache` `(B, H, T, D)` with `new` `(B, H, S, D)` written at slots `index ... index + S - 1`.

    The cache never changes shape while generating. Under XLA a dynamic-update-slice writes only
    the S slots, in place; elsewhere a one-hot product (which adds `new` into the empty slots)."""
    if slice_update:
        import tensorflow as tf
        from tensorflow.compiler.tf2xla.python import xla

        zero = tf.constant(0, tf.int32)
        return xla.dynamic_update_slice(cache, new, [zero, zero, tf.cast(index, tf.int32), zero])
    slots = index + ops.arange(ops.shape(new)[2])
    scatter = ops.cast(ops.one_hot(slots, ops.shape(cache)[2]), new.dtype)  # (S, T)
    return cache + ops.einsum("st,bhsd->bhtd", scatter, new)


class MLP(keras.layers.Layer):
    """The position-wise feed-forward layer: `c_proj(gelu(c_fc(x)))`, hidden width 4C."""

    def __init__(self, config: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        self.c_fc = Conv1D(4 * config.n_embd, name="c_fc")
        self.c_proj = Conv1D(config.n_embd, init_std=0.02 / math.sqrt(2 * config.n_layer), name="c_proj")
        self.dropout = keras.layers.Dropout(config.dropout)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build(tuple(input_shape[:-1]) + (4 * input_shape[-1],))

    def call(self, x, training=False):
        h = gelu(self.c_fc(x, training=training))
        return self.dropout(self.c_proj(h, training=training), training=training)


class Block(keras.layers.Layer):
    """One pre-norm transformer block."""

    def __init__(self, config: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        self.ln_1 = LayerNorm(config.layer_norm_epsilon, name="ln_1")
        self.attn = Attention(config, name="attn")
        self.ln_2 = LayerNorm(config.layer_norm_epsilon, name="ln_2")
        self.mlp = MLP(config, name="mlp")

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, training=False, key_mask=None, cache=None, write_index=0, slice_update=False):
        """Returns `(x, new_cache)`; see `Attention.call` for the arguments."""
        a, new_cache = self.attn(self.ln_1(x), training=training, key_mask=key_mask, cache=cache,
                                 write_index=write_index, slice_update=slice_update)
        x = x + a
        x = x + self.mlp(self.ln_2(x), training=training)
        return x, new_cache


class GPT2(keras.Model):
    """GPT-2: token ids `(B, T)` in, next-token logits `(B, T, V)` out (float32).

    Args:
        config: the model's shape; see `tfx_gpt2.config.model.GPT2Config` and its presets.

    Example:
        >>> model = GPT2(model_preset("tiny"))
        >>> logits = model(np.zeros((2, 8), "int32"))   # (2, 8, 50257)
    """

    def __init__(self, config: GPT2Config, **kwargs):
        super().__init__(name=kwargs.pop("name", "model"), **kwargs)
        self.config = config
        self.h = [Block(config, name=f"h{i}") for i in range(config.n_layer)]
        self.ln_f = LayerNorm(config.layer_norm_epsilon, name="ln_f")
        self.drop = keras.layers.Dropout(config.dropout)
        self.wte = self.add_weight(
            name="wte", shape=(config.n_vocab, config.n_embd),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self.wpe = self.add_weight(
            name="wpe", shape=(config.n_ctx, config.n_embd),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        for block in self.h:
            block.build((None, None, config.n_embd))
        self.ln_f.build((None, None, config.n_embd))
        self.built = True
        # Gradient checkpointing: when training, recompute each block's activations in the backward
        # pass instead of keeping them (set by the trainer; TensorFlow backend).
        self.recompute = False
        self.lora = None  # the LoraSpec of the adapters, once `enable_lora` added them

    def forward(self, tokens, position_ids=None, key_mask=None, cache=None, write_index=0,
                training=False, last_only=False, head=None, slice_update=False, positions=None):
        """The general forward pass: padding masks, explicit positions and a key/value cache.

        Args:
            tokens: `(B, S)` ids.
            position_ids: `(B, S)` positions (default `write_index + 0 ... S-1`); with left padding,
                a row's positions start at 0 at its first real token.
            key_mask: `(B, T)` bool, False for padding slots.
            cache: None, or per layer a `(keys, values)` pair, each `(B, H, T, D)` (see
                `empty_cache`); the new positions are written at `write_index ...`.
            last_only: return the logits of the last position only, `(B, 1, V)`.
            positions: `(B, K)` int32 indices: return the logits of those positions only, `(B, K, V)`
                (scoring reads a few positions of each row; the output projection is most of a
                small model's work).
            head: optional `(C, V)` copy of `wte` transposed for the output projection. XLA on CPU
                multiplies by a `(C, V)` matrix several times faster than by `wte` transposed on
                the fly, so generation loops transpose it once, before their first step.
            slice_update: see `Attention.call` (True only under XLA).

        Returns:
            `(logits, new_cache)`: float32 logits `(B, S, V)` and the updated cache (or None).
        """
        s = ops.shape(tokens)[1]
        dtype = self.compute_dtype
        if position_ids is None:
            position_ids = (write_index + ops.arange(s))[None, :]
        x = ops.take(ops.cast(self.wte, dtype), tokens, axis=0) + ops.take(ops.cast(self.wpe, dtype),
                                                                          position_ids, axis=0)
        x = self.drop(x, training=training)
        new_layers = []
        for i, block in enumerate(self.h):
            if self.recompute and training and cache is None and key_mask is None:
                import tensorflow as tf

                x, layer_new = tf.recompute_grad(lambda h, block=block: block(h, training=True)[0])(x), None
                continue
            layer_cache = None if cache is None else cache[i]
            x, layer_new = block(x, training=training, key_mask=key_mask, cache=layer_cache,
                                 write_index=write_index, slice_update=slice_update)
            new_layers.append(layer_new)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        if positions is not None:
            x = ops.take_along_axis(x, ops.expand_dims(positions, -1), axis=1)
        if head is None:
            # Tied embeddings: (B, S, V). A matmul with transpose_b, which XLA fuses into the
            # product (about 5% faster training steps on CPU than the equivalent einsum).
            import tensorflow as tf

            # Positions flattened to a 2-D product, as in Conv1D.
            logits = tf.matmul(tf.reshape(x, (-1, self.config.n_embd)), tf.cast(self.wte, x.dtype),
                               transpose_b=True)
        else:
            logits = ops.matmul(ops.reshape(x, (-1, self.config.n_embd)), ops.cast(head, x.dtype))
        logits = ops.reshape(logits, (ops.shape(x)[0], ops.shape(x)[1], self.config.n_vocab))
        return ops.cast(logits, "float32"), (new_layers if cache is not None else None)

    def enable_lora(self, spec: LoraSpec) -> None:
        """Adds low-rank adapters to `spec.targets` of every block and freezes every other weight
        (see `Conv1D.enable_lora`); `lora_layers` lists them."""
        for block in self.h:
            for target in spec.targets:
                _projection(block, target).enable_lora(spec)
        for variable in self.weights:
            if not is_adapter_name(weight_name(variable)):
                variable.trainable = False
        self.lora = spec

    def lora_layers(self) -> Dict[str, "Conv1D"]:
        """The projections that carry an adapter, by OpenAI path (`h0/attn/c_attn`, ...)."""
        return {f"h{i}/{target.replace('.', '/')}": _projection(block, target)
                for i, block in enumerate(self.h) for target in (self.lora.targets if self.lora else ())}

    def empty_cache(self, batch_size: int, length: int):
        """A zero key/value cache for `length` slots: per layer `(keys, values)`, each `(B, H, T, D)`.

        One pair per layer (not one stacked tensor), so a generation loop under XLA updates each
        in place instead of copying the whole cache every step."""
        c = self.config
        shape = (batch_size, c.n_head, length, c.head_size)
        return [(ops.zeros(shape, dtype=self.compute_dtype), ops.zeros(shape, dtype=self.compute_dtype))
                for _ in range(c.n_layer)]

    def call(self, tokens, training=False):
        return self.forward(tokens, training=training)[0]

    def get_config(self):
        return {"config": to_json(self.config)}

    @classmethod
    def from_config(cls, config):
        return cls(from_json(GPT2Config, config["config"]))

    def weights_by_name(self) -> Dict[str, np.ndarray]:
        """All weights as numpy arrays keyed by their OpenAI name (`h0/attn/c_attn/w`, ...)."""
        return {weight_name(v): np.asarray(v.numpy()) for v in self.weights}


def is_adapter_name(name: str) -> bool:
    """Whether `name` (a weight's OpenAI name) is a LoRA adapter's (`.../lora_a`, `.../lora_b`)."""
    return name.endswith(("/lora_a", "/lora_b"))


def _projection(block: Block, target: str) -> Conv1D:
    """A block's projection named as in `LORA_TARGETS` (`attn.c_attn`, ...)."""
    module, name = target.split(".")
    return getattr(getattr(block, module), name)


def weight_name(variable) -> str:
    """The OpenAI name of a model variable: its Keras path without the model's own prefix."""
    path = variable.path
    return path.split("/", 1)[1] if path.startswith("model/") else path


def token_loss(logits, targets):
    """Per-token cross-entropy `(B, T)` in nats, from float32 logits `(B, T, V)`."""
    import tensorflow as tf

    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(targets, tf.int32), logits=logits)


def scored_token_loss(logits, targets):
    """`token_loss`'s values for scoring (no gradient): log-sum-exp of the logits minus the target's.

    About twice as fast on a CPU as the fused kernel, which also writes the softmax that only its
    gradient needs; XLA (the training step) compiles the fused kernel faster, so training keeps it."""
    import tensorflow as tf

    picked = tf.gather(logits, tf.cast(targets, tf.int32), batch_dims=len(logits.shape) - 1)
    return tf.reduce_logsumexp(logits, axis=-1) - picked
