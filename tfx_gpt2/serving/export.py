"""A SavedModel that takes text and sampling settings and returns text, the BPE in the graph.

Serving signature `serving_default` (all inputs required, every one a tensor):
    prompts             string  (B,)   the prompts
    max_new_tokens      int32   ()     tokens to generate at most (< n_ctx)
    temperature         float32 ()     0 means greedy
    top_k               int32   ()     0 means no top-k filtering
    top_p               float32 ()     in (0, 1]; 1 means no nucleus filtering
    repetition_penalty  float32 ()     1 means off
    seed                int32   ()     the same seed gives the same text
Output:
    generated_text      string  (B,)   each prompt's continuation, cut before `<|endoftext|>`

Loading needs TensorFlow and tensorflow-text's ops (`import tensorflow_text` before
`tf.saved_model.load`); no tokenizer and no tfx-gpt2 code. The settings follow
`tfx_gpt2.model.generate.SamplingConfig` and the same token choice, so greedy output equals
`Generator`'s, and a seed gives the same samples.
"""

from __future__ import annotations

import tensorflow as tf

from tfx_gpt2.model.generate import decode_loop, draw_uniforms
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.model.lora import merged_model
from tfx_gpt2.model.sampling import without_xla_ops
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.text.bpe_graph import GraphBPETokenizer

SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="prompts"),
    tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.float32, name="repetition_penalty"),
    tf.TensorSpec([], tf.int32, name="seed"),
]


class TextGenerationModule(tf.Module):
    """Wraps a model and its tokenizer for `tf.saved_model.save`."""

    def __init__(self, model: GPT2, tokenizer: BPETokenizer):
        super().__init__(name="gpt2_text_generation")
        self.model = merged_model(model)  # adapters merged: the base's speed
        self.bpe = GraphBPETokenizer(tokenizer)
        self.eot_id = tokenizer.eot_id
        self.n_ctx = model.config.n_ctx
        self.n_vocab = model.config.n_vocab

    @tf.function(input_signature=SIGNATURE, autograph=False)
    def generate(self, prompts, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
        checks = [
            tf.debugging.assert_greater(max_new_tokens, 0, message="max_new_tokens must be >= 1"),
            tf.debugging.assert_less(max_new_tokens, self.n_ctx,
                                     message=f"max_new_tokens must be below the model's context, {self.n_ctx}"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0 (0 means greedy)"),
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 means no top-k filtering)"),
            tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_greater(repetition_penalty, 0.0, message="repetition_penalty must be > 0"),
        ]
        with tf.control_dependencies(checks):
            ids = self.bpe.encode(prompts)  # ragged (B, n)
        b = tf.shape(prompts, out_type=tf.int32)[0]
        room = self.n_ctx - max_new_tokens
        # Keep each prompt's last `room` tokens; an empty prompt starts from <|endoftext|>.
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        keep = tf.minimum(lengths, room)
        starts = tf.cast(ids.row_splits[:-1], tf.int32) + lengths - keep
        kept = tf.gather(ids.flat_values, tf.ragged.range(starts, starts + keep).flat_values)
        kept = tf.RaggedTensor.from_row_lengths(kept, keep)
        n = tf.maximum(keep, 1)
        p_len = tf.reduce_max(n)
        right = kept.to_tensor(default_value=self.eot_id, shape=[None, None])
        right = tf.pad(right, [[0, 0], [0, p_len - tf.shape(right)[1]]], constant_values=self.eot_id)
        pads = p_len - n  # left padding per row
        total = p_len + max_new_tokens
        slots = tf.range(total)[None, :]
        key_mask = slots >= pads[:, None]  # (B, T)
        positions = tf.maximum(slots - pads[:, None], 0)  # (B, T)
        tokens = tf.gather(right, tf.maximum(slots[:, :p_len] - pads[:, None], 0), batch_dims=1)
        tokens = tf.where(key_mask[:, :p_len], tokens, self.eot_id)

        uniforms = draw_uniforms(seed, b, max_new_tokens)
        with without_xla_ops():  # a serving system may run this graph without XLA
            generated = decode_loop(self.model, tokens, positions, key_mask, uniforms, temperature, top_k, top_p,
                                    repetition_penalty, self.eot_id, tf.constant(True))
        before_eot = tf.equal(tf.cumsum(tf.cast(tf.equal(generated, self.eot_id), tf.int32), axis=1), 0)
        new_ids = tf.ragged.boolean_mask(generated, before_eot)
        return {"generated_text": self.bpe.decode(new_ids)}


def export_savedmodel(model: GPT2, tokenizer: BPETokenizer, path: str) -> str:
    """Writes the text-in/text-out SavedModel of `model` to `path`."""
    module = TextGenerationModule(model, tokenizer)
    tf.saved_model.save(module, path, signatures={"serving_default": module.generate})
    return path


def load_savedmodel(path: str):
    """Loads an exported SavedModel (registers tensorflow-text's ops first)."""
    import tensorflow_text  # noqa: F401  (registers RegexSplitWithOffsets)

    return tf.saved_model.load(path)
