"""GPT-2 checkpoints in the formats users have: OpenAI's TF1 release and Hugging Face's directories.

Formats:
    OpenAI (as published for 124M, 355M, 774M, 1558M):
        checkpoint, model.ckpt.{index,data-00000-of-00001,meta}, hparams.json, encoder.json, vocab.bpe
        variables `model/wte`, `model/h0/attn/c_attn/w` (shape (1, n_in, n_out)), ...
    Hugging Face (`GPT2LMHeadModel.save_pretrained`):
        config.json, model.safetensors (PyTorch names: `transformer.h.0.attn.c_attn.weight`, ...),
        vocab.json + merges.txt (the same files as encoder.json + vocab.bpe, other names)
    tfx-gpt2 model directory: see `tfx_gpt2.model.io`.
    PEFT LoRA adapter on any of these (adapter_config.json, adapter_model.safetensors): see
        `tfx_gpt2.model.lora`; loaded as its base with the adapters merged in, or kept apart.

Every loader checks that names, shapes and the vocabulary agree with the model and fails loudly
(`CheckpointError`, naming both sizes) rather than leaving any weight at its random initial value.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from typing import Dict, Optional, Tuple

import numpy as np

from tfx_gpt2.config.checkpoint_shape import (
    HF_CONFIG,
    HF_WEIGHTS,
    CheckpointError,
    adapter_base,
    detect_format,
    read_hf_config,
    read_openai_config,
)
from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.model.io import assign_weights, load_model_dir
from tfx_gpt2.model.lora import apply_adapter, merged_model, read_peft_adapter
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.bpe import BPETokenizer, copy_vocab_files

logger = get_logger("tfx_gpt2.checkpoints")

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
OPENAI_FILES = (
    "checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe",
)


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------


def check_vocab(config: GPT2Config, tokenizer: BPETokenizer, source: str) -> None:
    """Raises CheckpointError when the tokenizer's size differs from the model's `n_vocab`."""
    if tokenizer.vocab_size != config.n_vocab:
        raise CheckpointError(
            f"{source}: the vocabulary has {tokenizer.vocab_size} tokens but the model's n_vocab is "
            f"{config.n_vocab}; use the vocabulary the checkpoint was trained with."
        )


# ---------------------------------------------------------------------------------------------
# OpenAI
# ---------------------------------------------------------------------------------------------

def download_openai_checkpoint(size: str, out_dir: str, base_url: str = OPENAI_BASE_URL,
                               timeout: float = 60.0) -> str:
    """Downloads one of OpenAI's GPT-2 releases (what the original `DownloadPretrainedModel` did).

    Files already present with a non-zero size are kept, so an interrupted download resumes.

    Raises:
        CheckpointError: an unknown size, or the server cannot be reached (offline machines:
            copy the directory in by hand and point `--model` at it).
    """
    if size not in OPENAI_SIZES:
        raise CheckpointError(f"OpenAI released GPT-2 sizes {OPENAI_SIZES}, not {size!r}.")
    os.makedirs(out_dir, exist_ok=True)
    for name in OPENAI_FILES:
        dst = os.path.join(out_dir, name)
        if os.path.exists(dst) and os.path.getsize(dst) > 0:
            continue
        url = f"{base_url}/{size}/{name}"
        logger.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(dst + ".part", "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 20)
        except (urllib.error.URLError, OSError) as e:
            raise CheckpointError(
                f"cannot download {url}: {e}. This machine may be offline: download the {size} files "
                f"{list(OPENAI_FILES)} elsewhere into one directory and pass that directory instead."
            ) from e
        os.replace(dst + ".part", dst)
    return out_dir


def load_openai_checkpoint(path: str) -> GPT2:
    """Loads an OpenAI GPT-2 directory (TF1 checkpoint + hparams.json + vocabulary)."""
    import tensorflow as tf

    config = read_openai_config(path)
    ckpt = tf.train.latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"{path}/checkpoint names no readable model.ckpt; is the download complete?")
    reader = tf.train.load_checkpoint(ckpt)
    weights = {}
    for name in reader.get_variable_to_shape_map():
        if not name.startswith("model/"):
            continue
        value = reader.get_tensor(name)
        short = name[len("model/"):]
        if short.endswith("/w") and value.ndim == 3:  # conv1d weights are stored as (1, n_in, n_out)
            value = value[0]
        weights[short] = value
    model = GPT2(config)
    assign_weights(model, weights, f"OpenAI checkpoint {ckpt}")
    return model


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------

def hf_to_openai_name(name: str) -> Optional[str]:
    """`transformer.h.0.attn.c_attn.weight` -> `h0/attn/c_attn/w`; None for buffers and the tied head."""
    if name.startswith("transformer."):
        name = name[len("transformer."):]
    if name == "lm_head.weight" or name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
        return None
    parts = name.split(".")
    if parts[0] == "h":
        parts = [f"h{parts[1]}"] + parts[2:]
    leaf = parts[-1]
    layer = parts[-2]
    if layer in ("wte", "wpe"):
        return layer
    if leaf == "weight":
        parts[-1] = "g" if layer.startswith("ln_") else "w"
    elif leaf == "bias":
        parts[-1] = "b"
    return "/".join(parts)


def openai_to_hf_name(name: str) -> str:
    """Inverse of `hf_to_openai_name` (without the `transformer.` prefix, as GPT2Model saves)."""
    if name in ("wte", "wpe"):
        return f"{name}.weight"
    parts = name.split("/")
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts = ["h", parts[0][1:]] + parts[1:]
    parts[-1] = {"w": "weight", "g": "weight", "b": "bias"}[parts[-1]]
    return ".".join(parts)


def load_hf_checkpoint(path: str) -> GPT2:
    """Loads a Hugging Face GPT-2 directory (config.json + model.safetensors)."""
    from safetensors.numpy import load_file

    config = read_hf_config(path)
    tensors = load_file(os.path.join(path, HF_WEIGHTS))
    weights: Dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        short = hf_to_openai_name(name)
        if short is not None:
            weights[short] = value.astype(np.float32)
    model = GPT2(config)
    assign_weights(model, weights, f"Hugging Face checkpoint {path}/{HF_WEIGHTS}")
    return model


def hf_config_dict(config: GPT2Config) -> Dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": config.n_vocab, "n_positions": config.n_ctx, "n_ctx": config.n_ctx,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
        "layer_norm_epsilon": config.layer_norm_epsilon, "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout, "attn_pdrop": config.dropout, "initializer_range": 0.02,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def save_hf_checkpoint(model: GPT2, out_dir: str, vocab_dir: Optional[str]) -> str:
    """Writes `model` as a Hugging Face GPT-2 directory: config.json, model.safetensors (PyTorch
    names and layout), vocab.json + merges.txt, tokenizer_config.json."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {openai_to_hf_name(k): np.ascontiguousarray(v) for k, v in model.weights_by_name().items()}
    save_file(tensors, os.path.join(out_dir, HF_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(out_dir, HF_CONFIG), "w") as f:
        json.dump(hf_config_dict(model.config), f, indent=2)
    if vocab_dir:
        copy_vocab_files(vocab_dir, out_dir, hf_names=True)
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": model.config.n_ctx,
                       "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>", "add_prefix_space": False}, f, indent=2)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Any format
# ---------------------------------------------------------------------------------------------


def load_model(path: str, merge_adapters: bool = True, base_dir: Optional[str] = None) -> GPT2:
    """The model in an OpenAI, Hugging Face or tfx-gpt2 directory, or in a LoRA adapter directory on
    one of them (see `load_adapter`; `base_dir` is its base's directory, if not the one it names)."""
    fmt = detect_format(path)
    if fmt == "openai":
        return load_openai_checkpoint(path)
    if fmt == "hf":
        return load_hf_checkpoint(path)
    if fmt == "tfx-gpt2":
        return load_model_dir(path)
    if fmt == "adapter":
        return load_adapter(path, merge=merge_adapters, base_dir=base_dir)
    raise CheckpointError(
        f"{path!r} is a SavedModel: it generates text itself (tfx-gpt2 generate --model {path}) "
        "but holds no weights by name to convert or fine-tune from."
    )


def load_checkpoint(path: str, merge_adapters: bool = True) -> Tuple[GPT2, BPETokenizer]:
    """`load_model` and the tokenizer beside it, refused when their vocabulary sizes differ."""
    model = load_model(path, merge_adapters)
    tokenizer = BPETokenizer.from_dir(path)
    check_vocab(model.config, tokenizer, path)
    return model, tokenizer


def load_adapter(path: str, merge: bool = True, base_dir: Optional[str] = None) -> GPT2:
    """The base of the adapter directory `path` (`adapter_base`) with its adapters: merged into
    the weights (a plain GPT-2, as fast as the base), or kept apart (`merge=False`, to train on).

    Raises:
        CheckpointError: the base is missing, is an adapter itself, or does not fit the adapters.
    """
    spec, weights, _ = read_peft_adapter(path)
    base = base_dir or adapter_base(path)
    if detect_format(base) == "adapter":
        raise CheckpointError(f"the base {base} of the adapter {path} is an adapter itself; merge it first "
                              "(tfx-gpt2 convert) and use the merged model as the base.")
    model = load_model(base)
    apply_adapter(model, spec, weights, f"the LoRA adapter {path}")
    logger.info("loaded the LoRA adapter %s (rank %d on %s) onto %s%s", path, spec.rank, list(spec.targets), base,
                ", merged" if merge else "")
    return merged_model(model) if merge else model
