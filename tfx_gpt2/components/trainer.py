"""The TFX Trainer's `run_fn` for GPT-2: `Trainer(run_fn="tfx_gpt2.components.trainer.run_fn", ...)`.

`custom_config` (JSON-compatible dict):
    model_config  a `GPT2Config` as a JSON string
    train_config  a `TrainConfig` as a JSON string

Fine-tuning or from scratch is explicit: with a `base_model` input (an OpenAI, Hugging Face or
tfx-gpt2 checkpoint directory, from an Importer or `OpenAICheckpointDownloader`) the run
fine-tunes it and says so; its vocabulary and shapes must match the data's (the error names
both); without one it trains `model_config` from scratch, its embedding sized to the data's
vocabulary. A base from `ChampionModel` (a warm start) is the registered champion, fine-tuned
with `warm_train_config` (its own schedule) and recorded as "fine-tuned from version N"; without
a champion it names the pipeline's initial checkpoint, or none (from scratch).

Reads the encoded blocks (BpeEncoder's `encoded` artifact) and writes:
    serving_model_dir (Model artifact, `Format-Serving/`): the model directory of
        `tfx_gpt2.model.io.save_model_dir` (config, weights, the data's vocabulary), plus
        `hf/` (a Hugging Face GPT-2 directory), `savedmodel/` (text in, text out: see
        `tfx_gpt2.serving.export`), `train_metrics.json` (the `TrainResult`, history included)
        and `samples.json` (text samples taken while training).
        With LoRA (`TrainConfig.lora_rank`), the adapters only, apart from the base: a PEFT adapter
        directory (`tfx_gpt2.model.lora`) whose `base_model_name_or_path` records the base (the
        base model's directory, or `models:/<name>/<version>` for a registered one), with the
        vocabulary, `savedmodel/` (adapters merged) and the same metrics and samples; no `hf/`
        (PEFT reads the adapter directory itself).
    model_run_dir (ModelRun artifact): TensorBoard logs, `train/` and `eval/` runs.
Resumable checkpoints go to `<pipeline root>/Trainer/checkpoints/<key>/`, `key` a hash of the
configs and the data, so that a Trainer re-run after a crash resumes where it stopped.
"""

import dataclasses
import functools
import hashlib
import json
import os

import tensorflow as tf

from tfx_gpt2.components.champion_model import read_registered
from tfx_gpt2.config.model import GPT2Config, TrainConfig, from_json, to_json
from tfx_gpt2.model.io import save_model_dir
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training.loop import TrainingError, make_strategy, train, worker_dir
from tfx_gpt2.uris import local_copy, staged_output

TRAIN_METRICS_FILE = "train_metrics.json"
SAMPLES_FILE = "samples.json"
HF_DIR = "hf"
SAVEDMODEL_DIR = "savedmodel"
logger = get_logger("tfx_gpt2.trainer")


def _examples_uri(file_pattern: str) -> str:
    # Trainer gives `<examples uri>/Split-train/*`.
    return os.path.dirname(os.path.dirname(file_pattern))


def checkpoint_dir_for(model_run_dir: str, *parts: str) -> str:
    """A checkpoint directory that outlives one Trainer execution: `.../Trainer/checkpoints/<key>`."""
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    trainer_dir = os.path.dirname(os.path.dirname(model_run_dir.rstrip("/")))
    return os.path.join(trainer_dir, "checkpoints", key)


def load_base_model(path: str, tokenizer: BPETokenizer, keep_adapters: bool = False):
    """The checkpoint to fine-tune, refused when its vocabulary differs from the data's. A LoRA
    adapter's are merged in, unless `keep_adapters` (LoRA training goes on with them)."""
    from tfx_gpt2.model.checkpoints import load_checkpoint

    model, base_tokenizer = load_checkpoint(path, merge_adapters=not keep_adapters)
    logger.info("FINE-TUNING the checkpoint %s (%s parameters, n_ctx %d)%s", path, f"{model.config.num_params():,}",
                model.config.n_ctx, " with LoRA adapters" if keep_adapters else "")
    if model.config.n_vocab != tokenizer.vocab_size or base_tokenizer.encoder != tokenizer.encoder:
        raise TrainingError(
            f"the checkpoint {path} has a vocabulary of {model.config.n_vocab} tokens but the data was encoded "
            f"with {tokenizer.vocab_size} tokens ({'same size, different tokens' if model.config.n_vocab == tokenizer.vocab_size else 'different sizes'}); "
            "encode the data with the checkpoint's vocabulary (BpeEncoder vocab=<the checkpoint directory>, "
            "no extra special tokens) or train from scratch."
        )
    return model


def _base_dir(base):
    if base and not tf.io.gfile.isdir(base) and os.path.basename(base.rstrip("/")) == "Format-Serving":
        # TFX points at `<uri>/Format-Serving`, where Trainers write; an imported or downloaded
        # checkpoint is the artifact's directory itself.
        return os.path.dirname(base.rstrip("/"))
    return base


def warm_start(registered: dict, base: str, train_config: TrainConfig, custom: dict):
    """(the base to load or None, the TrainConfig, what to record) of a `ChampionModel` base."""
    if registered.get("version"):
        if "warm_train_config" not in custom:
            raise ValueError("the base model is a ChampionModel's but custom_config has no 'warm_train_config'; "
                             "build the Trainer with create_pipeline(warm_start=True)")
        logger.info("WARM START: fine-tuning models:/%s/%s (@%s) with the warm-start schedule", registered["name"],
                    registered["version"], registered["alias"])
        return base, from_json(TrainConfig, custom["warm_train_config"]), {
            "init": f"models:/{registered['name']}/{registered['version']}",
            "fine_tuned_from": str(registered["version"])}
    logger.info("warm start: no version of %r holds @%s yet; starting from %s", registered["name"],
                registered["alias"], registered.get("fallback") or "scratch")
    return _base_dir(registered.get("fallback")), train_config, {}


def run_fn(fn_args) -> None:
    """Trains GPT-2 as `fn_args.custom_config` says; see the module docstring."""
    custom = fn_args.custom_config or {}
    for key in ("model_config", "train_config"):
        if key not in custom:
            raise ValueError(
                f"Trainer custom_config has no {key!r}; build the Trainer with create_pipeline() or pass "
                f"custom_config={{'model_config': ..., 'train_config': ...}} (JSON strings)."
            )
    model_config = from_json(GPT2Config, custom["model_config"])
    train_config = from_json(TrainConfig, custom["train_config"])
    if train_config.distribution == "multi_worker":
        make_strategy("multi_worker")  # before any TensorFlow op, e.g. loading the base model
    vocab_dir = local_copy(os.path.join(_examples_uri(fn_args.train_files[0]), "vocab"))
    tokenizer = BPETokenizer.from_dir(vocab_dir)
    load, init = None, {}
    base = _base_dir(getattr(fn_args, "base_model", None))
    registered = read_registered(base) if base else None
    if registered is not None:
        base, train_config, init = warm_start(registered, base, train_config, custom)
    if base:
        # train() loads it, and releases it once its weights are copied into the model it trains.
        load = functools.partial(load_base_model, local_copy(base), tokenizer, train_config.lora is not None)
    elif train_config.lora is not None:
        raise TrainingError("TrainConfig.lora_rank > 0 trains adapters on a base model, and this run has none; give "
                            "the pipeline a checkpoint to fine-tune (init_checkpoint), or train from scratch "
                            "without LoRA (lora_rank 0).")
    else:
        if model_config.n_vocab != tokenizer.vocab_size:
            # The embedding follows the data's vocabulary (trained, or with added special tokens).
            model_config = dataclasses.replace(model_config, n_vocab=tokenizer.vocab_size)
        logger.info("training FROM SCRATCH: %s (%s parameters, vocabulary %d from %s)", model_config,
                       f"{model_config.num_params():,}", model_config.n_vocab, vocab_dir)
    checkpoints = checkpoint_dir_for(fn_args.model_run_dir, to_json(model_config), to_json(train_config),
                                     *fn_args.train_files, base or "scratch")
    model, result = train(
        model_config, train_config, fn_args.train_files, fn_args.eval_files, log_dir=fn_args.model_run_dir,
        load_model=load, checkpoint_dir=checkpoints, tokenizer=tokenizer,
    )
    out = fn_args.serving_model_dir
    if train_config.distribution == "multi_worker":
        out = worker_dir(out)  # the chief writes the model; the other workers, a folder of their own
    lora_base = adapter_base_reference(base, init) if train_config.lora else None
    with staged_output(out) as local:
        save_outputs(model, tokenizer, vocab_dir, local, {**dataclasses.asdict(result), "init": base or "scratch",
                                                          **init}, result.samples, lora_base=lora_base)


def adapter_base_reference(base: str, init: dict) -> str:
    """What an adapter trained on `base` records as its base: a registered version as
    `models:/<name>/<version>` (a registered adapter's own base, when it is one), else the base
    model's directory."""
    from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG

    config = os.path.join(base, PEFT_CONFIG)
    if tf.io.gfile.exists(config):  # continuing a registered adapter: the same base
        with tf.io.gfile.GFile(config) as f:
            return json.load(f)["base_model_name_or_path"]
    if init.get("init"):  # a registered version: models:/<name>/<version>
        return init["init"]
    return base if "://" in base else os.path.abspath(base)


def save_outputs(model, tokenizer, vocab_dir: str, out: str, metrics: dict, samples: list,
                 lora_base: str = None) -> None:
    """The Trainer's model folder: the model (or, with `lora_base`, its adapters in PEFT's format
    on that base) and its vocabulary, the Hugging Face checkpoint (full models), the SavedModel,
    the training metrics and samples."""
    from tfx_gpt2.model.checkpoints import save_hf_checkpoint
    from tfx_gpt2.model.lora import save_peft_adapter
    from tfx_gpt2.serving.export import export_savedmodel
    from tfx_gpt2.text.bpe import copy_vocab_files

    if lora_base is not None:
        save_peft_adapter(model, out, base=lora_base)
        copy_vocab_files(vocab_dir, out)
    else:
        save_model_dir(model, out, vocab_dir)
        save_hf_checkpoint(model, os.path.join(out, HF_DIR), vocab_dir=vocab_dir)
    export_savedmodel(model, tokenizer, os.path.join(out, SAVEDMODEL_DIR))
    with open(os.path.join(out, TRAIN_METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)
    with open(os.path.join(out, SAMPLES_FILE), "w") as f:
        json.dump(samples, f, indent=1, ensure_ascii=False)
