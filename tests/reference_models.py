"""Tiny GPT-2 checkpoints written in the real formats, and Hugging Face's own GPT-2 to compare with.

`write_hf_checkpoint` writes what `GPT2LMHeadModel.save_pretrained` writes (PyTorch names with the
`transformer.` prefix, the causal-mask buffers of older releases, the tied `lm_head.weight`);
`write_openai_checkpoint` writes a TF1 checkpoint with OpenAI's variable names and shapes.
`hf_reference_logits` runs transformers' TFGPT2LMHeadModel, whose loader maps the PyTorch names.
"""

import json
import os
import shutil

import numpy as np

from tfx_gpt2.text import bpe


def random_hf_weights(n_vocab, n_ctx, n_embd, n_layer, seed=0):
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype("float32")

    c = n_embd
    w = {"transformer.wte.weight": r(n_vocab, c), "transformer.wpe.weight": r(n_ctx, c)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        w.update({
            p + "ln_1.weight": 1 + r(c), p + "ln_1.bias": r(c),
            p + "attn.c_attn.weight": r(c, 3 * c), p + "attn.c_attn.bias": r(3 * c),
            p + "attn.c_proj.weight": r(c, c), p + "attn.c_proj.bias": r(c),
            p + "ln_2.weight": 1 + r(c), p + "ln_2.bias": r(c),
            p + "mlp.c_fc.weight": r(c, 4 * c), p + "mlp.c_fc.bias": r(4 * c),
            p + "mlp.c_proj.weight": r(4 * c, c), p + "mlp.c_proj.bias": r(c),
            p + "attn.bias": np.tril(np.ones((n_ctx, n_ctx), "float32"))[None, None],
        })
    w["transformer.ln_f.weight"] = 1 + r(c)
    w["transformer.ln_f.bias"] = r(c)
    w["lm_head.weight"] = w["transformer.wte.weight"]
    return w


def write_hf_checkpoint(path, n_vocab=50257, n_ctx=32, n_embd=32, n_layer=2, n_head=4, seed=0):
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    weights = random_hf_weights(n_vocab, n_ctx, n_embd, n_layer, seed)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": n_vocab,
              "n_positions": n_ctx, "n_ctx": n_ctx, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    src = bpe.official_vocab_dir()
    shutil.copyfile(os.path.join(src, "encoder.json"), os.path.join(path, "vocab.json"))
    shutil.copyfile(os.path.join(src, "vocab.bpe"), os.path.join(path, "merges.txt"))
    return weights


def write_openai_checkpoint(path, hf_weights, n_head):
    """A TF1 checkpoint as OpenAI released them, holding `hf_weights` under OpenAI's names."""
    import tensorflow as tf

    from tfx_gpt2.model.checkpoints import hf_to_openai_name

    os.makedirs(path, exist_ok=True)
    values = {}
    for name, value in hf_weights.items():
        short = hf_to_openai_name(name)
        if short is not None:
            values["model/" + short] = value[None] if short.endswith("/w") else value
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(n, initializer=v) for n, v in values.items()]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.variables_initializer(variables))
            tf.compat.v1.train.Saver(variables).save(sess, os.path.join(path, "model.ckpt"))
    n_vocab, n_embd = hf_weights["transformer.wte.weight"].shape
    n_ctx = hf_weights["transformer.wpe.weight"].shape[0]
    n_layer = sum(1 for k in hf_weights if k.endswith("ln_1.weight"))
    with open(os.path.join(path, "hparams.json"), "w") as f:
        json.dump({"n_vocab": int(n_vocab), "n_ctx": int(n_ctx), "n_embd": int(n_embd), "n_head": n_head,
                   "n_layer": n_layer}, f)
    bpe.copy_vocab_files(None, path)


def hf_reference_model(path):
    """transformers' TFGPT2LMHeadModel holding the checkpoint at `path` (Hugging Face format)."""
    from safetensors.numpy import load_file
    from transformers import GPT2Config, TFGPT2LMHeadModel
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    model = TFGPT2LMHeadModel(GPT2Config.from_pretrained(path))
    model.build_in_name_scope()
    model, info = load_pytorch_state_dict_in_tf2_model(
        model, load_file(os.path.join(path, "model.safetensors")), tf_inputs=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    return model


def hf_reference_logits(path, tokens):
    return hf_reference_model(path)(np.asarray(tokens)).logits.numpy()
