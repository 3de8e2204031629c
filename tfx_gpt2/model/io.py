"""Saving and loading a trained model directory (config, weights by GPT-2 name, vocabulary).

Layout of a model directory:
    gpt2_config.json     the `GPT2Config` as JSON
    model.weights.npz    every weight, keyed by its OpenAI name (`h0/attn/c_attn/w`, ...)
    encoder.json, vocab.bpe   the vocabulary the model was trained with
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from tfx_gpt2.config.checkpoint_shape import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from tfx_gpt2.config.model import GPT2Config, from_json, to_json
from tfx_gpt2.model.gpt2 import GPT2, weight_name
from tfx_gpt2.text.bpe import copy_vocab_files


def assign_weights(model: GPT2, weights: Dict[str, np.ndarray], source: str) -> None:
    """Sets every weight of `model` from `weights` (OpenAI names); any mismatch is an error.

    Raises:
        CheckpointError: a name is missing or extra, or a shape differs (naming both shapes).
    """
    names = {weight_name(v): v for v in model.weights}
    missing = sorted(set(names) - set(weights))
    extra = sorted(set(weights) - set(names))
    if missing or extra:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}."
        )
    for name, var in names.items():
        value = weights[name]
        if tuple(value.shape) != tuple(var.shape):
            raise CheckpointError(
                f"{source}: weight {name} has shape {tuple(value.shape)} but the model "
                f"({model.config}) needs {tuple(var.shape)}."
            )
        var.assign(value.astype(var.dtype))


def save_model_dir(model: GPT2, out_dir: str, vocab_dir: Optional[str] = None) -> str:
    """Writes `model` and its vocabulary (`vocab_dir`, default OpenAI's) to `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        f.write(to_json(model.config))
    np.savez(os.path.join(out_dir, WEIGHTS_FILE), **model.weights_by_name())
    copy_vocab_files(vocab_dir, out_dir)
    return out_dir


def load_model_dir(path: str) -> GPT2:
    """Loads a model written by `save_model_dir`.

    Raises:
        CheckpointError: a file is missing or the weights do not fit the config.
    """
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(
                f"{path!r} is not a tfx-gpt2 model directory: {name} is missing "
                f"(expected {CONFIG_FILE} + {WEIGHTS_FILE} + encoder.json + vocab.bpe)."
            )
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = from_json(GPT2Config, f.read())
    model = GPT2(config)
    with np.load(os.path.join(path, WEIGHTS_FILE)) as data:
        assign_weights(model, {k: data[k] for k in data.files}, os.path.join(path, WEIGHTS_FILE))
    return model


