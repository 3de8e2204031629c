"""What a model directory holds and the shape of its model, read from its JSON files without loading
weights or TensorFlow (the pipeline reads it when it is built). The formats: see
`tfx_gpt2.model.checkpoints`."""

from __future__ import annotations

import json
import os

from tfx_gpt2.config.model import GPT2Config, from_json

# A tfx-gpt2 model directory (`tfx_gpt2.model.io`): the shape, and the weights by name.
CONFIG_FILE = "gpt2_config.json"
WEIGHTS_FILE = "model.weights.npz"
# A Hugging Face directory (`GPT2LMHeadModel.save_pretrained`).
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# A LoRA adapter in Hugging Face PEFT's format (`tfx_gpt2.model.lora`), on a base it names.
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
# An adapter directory may hold its base model directory here (a registry stages it there).
ADAPTER_BASE_DIR = "base"
# Hugging Face's names of OpenAI's four releases (the same weights), as a PEFT adapter names its base.
HF_HUB_NAMES = {"gpt2": "124M", "openai-community/gpt2": "124M", "gpt2-medium": "355M",
                "openai-community/gpt2-medium": "355M", "gpt2-large": "774M",
                "openai-community/gpt2-large": "774M", "gpt2-xl": "1558M", "openai-community/gpt2-xl": "1558M"}


class CheckpointError(ValueError):
    """A model directory or checkpoint is missing files or does not fit the model."""


def detect_format(path: str) -> str:
    """'openai', 'hf', 'tfx-gpt2', 'adapter' (PEFT LoRA) or 'savedmodel' for a model directory.

    Raises:
        CheckpointError: `path` is none of them (the message lists what each format holds).
    """
    def has(*names):
        return all(os.path.exists(os.path.join(path, n)) for n in names)

    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a directory; a model is a directory of files.")
    if has("saved_model.pb"):
        return "savedmodel"
    if has(PEFT_CONFIG, PEFT_WEIGHTS):
        return "adapter"
    if has(CONFIG_FILE, WEIGHTS_FILE):
        return "tfx-gpt2"
    if has(HF_CONFIG, HF_WEIGHTS):
        return "hf"
    if has("hparams.json", "checkpoint"):
        return "openai"
    raise CheckpointError(
        f"{path!r} holds no model this tool reads: expected an OpenAI GPT-2 directory (checkpoint, "
        "model.ckpt.*, hparams.json, encoder.json, vocab.bpe), a Hugging Face directory (config.json + "
        "model.safetensors), a tfx-gpt2 model directory (gpt2_config.json + model.weights.npz), a PEFT "
        "LoRA adapter (adapter_config.json + adapter_model.safetensors) or a SavedModel (saved_model.pb)."
    )


def read_openai_config(path: str) -> GPT2Config:
    with open(os.path.join(path, "hparams.json")) as f:
        h = json.load(f)
    try:
        return GPT2Config(n_vocab=h["n_vocab"], n_ctx=h["n_ctx"], n_embd=h["n_embd"], n_layer=h["n_layer"],
                          n_head=h["n_head"])
    except KeyError as e:
        raise CheckpointError(f"{path}/hparams.json has no {e.args[0]!r}.") from None


def read_hf_config(path: str) -> GPT2Config:
    with open(os.path.join(path, HF_CONFIG)) as f:
        h = json.load(f)
    if h.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(f"{path}/config.json is a {h.get('model_type')!r} model, not 'gpt2'.")
    act = h.get("activation_function", "gelu_new")
    if act != "gelu_new":
        raise CheckpointError(
            f"{path}/config.json uses activation_function {act!r}; tfx-gpt2 implements GPT-2's 'gelu_new'."
        )
    return GPT2Config(
        n_vocab=h["vocab_size"], n_ctx=h.get("n_positions", h.get("n_ctx", 1024)), n_embd=h["n_embd"],
        n_layer=h["n_layer"], n_head=h["n_head"], layer_norm_epsilon=float(h.get("layer_norm_epsilon", 1e-5)),
    )


def read_adapter_config(path: str) -> dict:
    """The `adapter_config.json` of a PEFT adapter directory."""
    with open(os.path.join(path, PEFT_CONFIG)) as f:
        return json.load(f)


def adapter_base(path: str) -> str:
    """The local directory of the base of the adapter directory `path`: its `base/` folder if it has
    one, else its `adapter_config.json`'s `base_model_name_or_path` as a path (relative to the
    adapter directory, or absolute).

    Raises:
        CheckpointError: the base is not a directory here; the message says how to get it.
    """
    staged = os.path.join(path, ADAPTER_BASE_DIR)
    if os.path.isdir(staged):
        return staged
    base = read_adapter_config(path).get("base_model_name_or_path") or ""
    candidate = os.path.join(path, base)  # an absolute `base` stays itself
    if base and os.path.isdir(candidate):
        return candidate
    if not base:
        hint = "its adapter_config.json names no base_model_name_or_path; copy the base model directory to base/"
    elif base.startswith("models:/"):
        hint = (f"load it with tfx_gpt2.registry.champion.load_model_with_base, which fetches {base} from the "
                f"registry, or put the base's model directory in {staged} (`mlflow artifacts download -u {base}`, "
                "then its artifacts/model_dir)")
    elif base in HF_HUB_NAMES or base in HF_HUB_NAMES.values():
        size = HF_HUB_NAMES.get(base, base)
        hint = (f"download OpenAI's {size} there (tfx_gpt2.model.checkpoints.download_openai_checkpoint"
                f"({size!r}, {staged!r}))")
    else:
        hint = f"copy or link the base model directory to {staged}"
    raise CheckpointError(f"the base {base!r} of the LoRA adapter {path} is not a directory here; {hint}.")


def read_checkpoint_config(path: str) -> GPT2Config:
    """The shape of the model in an OpenAI, Hugging Face or tfx-gpt2 directory, without loading
    its weights (e.g. to encode the data for its context before the pipeline runs).

    Raises:
        CheckpointError: `path` holds no checkpoint this tool reads.
    """
    fmt = detect_format(path)
    if fmt == "openai":
        return read_openai_config(path)
    if fmt == "hf":
        return read_hf_config(path)
    if fmt == "tfx-gpt2":
        with open(os.path.join(path, CONFIG_FILE)) as f:
            return from_json(GPT2Config, f.read())
    if fmt == "adapter":
        return read_checkpoint_config(adapter_base(path))
    raise CheckpointError(f"{path!r} is a SavedModel: it holds no weights by name to fine-tune from.")
