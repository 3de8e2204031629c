"""LoRA adapters of a `GPT2`: their weights, merging them into the base, and PEFT's file format.

A model with adapters (`GPT2.enable_lora`) holds, for each adapted projection `h{i}/{attn|mlp}/{proj}`,
`lora_a: (n_in, r)` and `lora_b: (r, n_out)` beside the frozen `w: (n_in, n_out)`; merging adds
`lora_a @ lora_b * alpha / r` to `w` and gives a plain GPT-2 of the same shape.

An adapter directory is what Hugging Face PEFT writes for `GPT2LMHeadModel` (`save_pretrained` of a
`LoraConfig` model), plus the vocabulary:

    adapter_config.json        peft_type "LORA", r, lora_alpha, lora_dropout, target_modules,
                               fan_in_fan_out true (GPT-2's Conv1D stores `w` as (n_in, n_out)),
                               base_model_name_or_path: the base (see `resolve_base`)
    adapter_model.safetensors  `base_model.model.transformer.h.{i}.{attn|mlp}.{proj}.lora_A.weight`
                               `(r, n_in)` and `...lora_B.weight` `(n_out, r)`: torch `Linear`
                               layouts, the transposes of `lora_a` and `lora_b`
    encoder.json, vocab.bpe    the vocabulary
    base/                      optional: the base model directory itself (a registry stages it here)

PEFT computes a Conv1D's update as `x @ (lora_B @ lora_A)^T * scale`, which is `x @ lora_a @ lora_b *
scale` here. PEFT's `use_rslora` (scale `alpha / sqrt(r)`) is read as the equal `alpha * sqrt(r) / r`.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Dict, Tuple

import numpy as np

from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG, PEFT_WEIGHTS, CheckpointError, read_adapter_config
from tfx_gpt2.config.model import LORA_TARGETS, LoraSpec
from tfx_gpt2.model.gpt2 import GPT2, is_adapter_name, weight_name

PEFT_PREFIX = "base_model.model.transformer."
# A PEFT key of a GPT-2 adapter weight: layer, module, projection, A or B.
_PEFT_KEY = re.compile(r"(?:base_model\.model\.)?(?:transformer\.)?h\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)"
                       r"\.lora_([AB])\.weight")


def adapter_weights(model: GPT2) -> Dict[str, np.ndarray]:
    """The adapters' weights by name (`h0/attn/c_attn/lora_a`, ...)."""
    return {weight_name(v): np.asarray(v.numpy()) for v in model.weights if is_adapter_name(weight_name(v))}


def merged_weights(model: GPT2) -> Dict[str, np.ndarray]:
    """The weights of the plain GPT-2 that computes what `model` computes: each adapted `w` plus
    `lora_a @ lora_b * scale`, the adapters left out."""
    weights = {k: v for k, v in model.weights_by_name().items() if not is_adapter_name(k)}
    for path, layer in model.lora_layers().items():
        delta = np.asarray(layer.lora_a.numpy()) @ np.asarray(layer.lora_b.numpy()) * layer.lora.scale
        weights[f"{path}/w"] = (weights[f"{path}/w"] + delta).astype(weights[f"{path}/w"].dtype)
    return weights


def merged_model(model: GPT2) -> GPT2:
    """A plain `GPT2` with the adapters merged in (`model` itself when it has none)."""
    if model.lora is None:
        return model
    plain, weights = GPT2(model.config), merged_weights(model)
    for variable in plain.weights:
        variable.assign(weights[weight_name(variable)])
    return plain


# -- PEFT's format ----------------------------------------------------------------------------------

def peft_config(spec: LoraSpec, base: str) -> Dict:
    """`adapter_config.json` as PEFT writes it for a LoRA on GPT-2's Conv1D projections."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "revision": None,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets), "fan_in_fan_out": True, "bias": "none",
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True,
        "inference_mode": True,
    }


def save_peft_adapter(model: GPT2, out_dir: str, base: str) -> str:
    """Writes `model`'s adapters to `out_dir` in PEFT's format, `base` naming the base model."""
    from safetensors.numpy import save_file

    if model.lora is None:
        raise ValueError("the model has no LoRA adapters to save; train with lora_rank > 0.")
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for path, layer in model.lora_layers().items():
        key = PEFT_PREFIX + _hf_module(path)
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(np.asarray(layer.lora_a.numpy()).T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(np.asarray(layer.lora_b.numpy()).T)
    save_file(tensors, os.path.join(out_dir, PEFT_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(out_dir, PEFT_CONFIG), "w") as f:
        json.dump(peft_config(model.lora, base), f, indent=2)
    return out_dir


def read_peft_adapter(path: str) -> Tuple[LoraSpec, Dict[str, np.ndarray], str]:
    """(the adapters' `LoraSpec`, their weights by name, the base's name) of a PEFT adapter directory.

    Raises:
        CheckpointError: not a LoRA adapter of GPT-2, or one using a PEFT feature this model lacks
            (biases, DoRA, per-layer ranks, extra trained modules); the message names it.
    """
    config = _read_peft_config(path)
    weights, targets = _read_peft_weights(path)
    rank = int(config["r"])
    alpha = float(config["lora_alpha"]) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
    spec = LoraSpec(rank=rank, alpha=alpha, dropout=float(config.get("lora_dropout", 0.0)),
                    targets=tuple(t for t in LORA_TARGETS if t in targets))
    for name, value in weights.items():
        rank_axis = 0 if name.endswith("/lora_b") else 1  # lora_a (n_in, r), lora_b (r, n_out)
        if value.shape[rank_axis] != rank:
            raise CheckpointError(f"{path}/{PEFT_WEIGHTS}: {name} has shape {value.shape}, which does not have rank "
                                  f"r = {rank} of {PEFT_CONFIG}.")
    return spec, weights, str(config.get("base_model_name_or_path") or "")


def apply_adapter(model: GPT2, spec: LoraSpec, weights: Dict[str, np.ndarray], source: str) -> GPT2:
    """Adds `spec`'s adapters to `model` (in place) and sets them to `weights`; returns `model`.

    Raises:
        CheckpointError: a layer is missing from `weights` or a shape does not fit the model.
    """
    model.enable_lora(spec)
    variables = {weight_name(v): v for v in model.weights if is_adapter_name(weight_name(v))}
    missing, extra = sorted(set(variables) - set(weights)), sorted(set(weights) - set(variables))
    if missing or extra:
        raise CheckpointError(f"{source} does not fit the model ({model.config.n_layer} layers, targets "
                              f"{list(spec.targets)}): missing {missing[:4]}, unexpected {extra[:4]}.")
    for name, variable in variables.items():
        if tuple(weights[name].shape) != tuple(variable.shape):
            raise CheckpointError(f"{source}: {name} has shape {tuple(weights[name].shape)} but the base model "
                                  f"({model.config}) needs {tuple(variable.shape)}: is it the adapter's base?")
        variable.assign(weights[name].astype(np.float32))
    return model


def _hf_module(path: str) -> str:
    """`h0/attn/c_attn` -> `h.0.attn.c_attn`."""
    layer, module, projection = path.split("/")
    return f"h.{layer[1:]}.{module}.{projection}"


def _read_peft_config(path: str) -> Dict:
    file = os.path.join(path, PEFT_CONFIG)
    try:
        config = read_adapter_config(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path!r} is not a PEFT adapter: {PEFT_CONFIG} is missing.") from None
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{file}: peft_type {config.get('peft_type')!r}; only 'LORA' adapters are read.")
    unsupported = {"bias": config.get("bias", "none") != "none",
                   **{name: bool(config.get(name)) for name in (
                       "use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "modules_to_save",
                       "layers_to_transform", "layer_replication", "trainable_token_indices", "target_parameters")}}
    used = [name for name, on in unsupported.items() if on]
    if used:
        raise CheckpointError(f"{file} uses {used}, which tfx-gpt2's LoRA does not have; train the adapter with "
                              "bias='none', use_dora=False, one rank and alpha, and no modules_to_save.")
    return config


def _read_peft_weights(path: str) -> Tuple[Dict[str, np.ndarray], set]:
    from safetensors.numpy import load_file

    file = os.path.join(path, PEFT_WEIGHTS)
    if not os.path.isfile(file):
        raise CheckpointError(f"{path!r} is not a PEFT adapter: {PEFT_WEIGHTS} is missing "
                              "(adapter_model.bin, PyTorch's pickle, is not read: save with safe_serialization).")
    weights, targets = {}, set()
    for key, value in load_file(file).items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise CheckpointError(f"{file}: {key!r} is not a LoRA weight of a GPT-2 projection "
                                  "(expected base_model.model.transformer.h.<i>.<attn|mlp>.<proj>.lora_<A|B>.weight).")
        layer, module, projection, which = match.groups()
        targets.add(f"{module}.{projection}")
        name = f"h{layer}/{module}/{projection}/lora_{which.lower()}"
        weights[name] = np.ascontiguousarray(value.T).astype(np.float32)
    bad = sorted(targets - set(LORA_TARGETS))
    if bad:
        raise CheckpointError(f"{file}: adapters on {bad}; GPT-2's projections are {list(LORA_TARGETS)}.")
    return weights, targets
