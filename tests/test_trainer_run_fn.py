"""The Trainer's run_fn outside TFX: fine-tuning a checkpoint (and refusing one whose vocabulary
differs), training from scratch, and every output the pusher and serving need."""

import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf
from reference_models import write_hf_checkpoint

from tfx_gpt2.components import trainer
from tfx_gpt2.config.model import GPT2Config, TrainConfig, to_json
from tfx_gpt2.text import bpe
from tfx_gpt2.text.blocks import block_to_example
from tfx_gpt2.training.loop import TrainingError


def encoded(root, n_ctx, special_tokens=()):
    """A BpeEncoder-like output: vocab/ and blocks of n_ctx + 1 tokens per split."""
    bpe.copy_vocab_files(None, os.path.join(root, "vocab"), special_tokens=special_tokens)
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("eval", 8)):
        os.makedirs(os.path.join(root, f"Split-{split}"))
        with tf.io.TFRecordWriter(os.path.join(root, f"Split-{split}", "blocks.gz"), "GZIP") as w:
            for _ in range(n):
                start = int(rng.integers(0, 1000))
                w.write(block_to_example([(start + i) % 1000 for i in range(n_ctx + 1)]).SerializeToString())
    return [os.path.join(root, "Split-train", "*")], [os.path.join(root, "Split-eval", "*")]


def fn_args(tmp_path, data, base_model=None):
    train_files, eval_files = data
    cfg = TrainConfig(batch_size=4, max_steps=2, warmup_steps=0, eval_every=2, eval_batches=1, log_every=1,
                      shuffle_buffer=8, samples_every=2, sample_tokens=3, sample_prompts=("Hello",), checkpoint_every=1)
    model_cfg = GPT2Config(n_ctx=16, n_embd=32, n_layer=1, n_head=2)
    run_dir = tmp_path / "pipeline" / "Trainer" / "model_run" / "7"
    return types.SimpleNamespace(
        custom_config={"model_config": to_json(model_cfg), "train_config": to_json(cfg)},
        train_files=train_files, eval_files=eval_files, model_run_dir=str(run_dir),
        serving_model_dir=str(tmp_path / "pipeline" / "Trainer" / "model" / "7" / "Format-Serving"),
        base_model=base_model,
    )


def test_fine_tunes_a_checkpoint_and_writes_every_output(tmp_path):
    ckpt = str(tmp_path / "hf-ckpt")
    write_hf_checkpoint(ckpt, n_ctx=16, n_embd=32, n_layer=2, n_head=4)
    args = fn_args(tmp_path, encoded(str(tmp_path / "enc"), 16), base_model=os.path.join(ckpt, "Format-Serving"))
    trainer.run_fn(args)
    out = args.serving_model_dir
    with open(os.path.join(out, trainer.TRAIN_METRICS_FILE)) as f:
        metrics = json.load(f)
    assert metrics["init"] == ckpt and metrics["steps"] == 2
    with open(os.path.join(out, "gpt2_config.json")) as f:
        assert json.load(f)["n_layer"] == 2  # the checkpoint's shape, not model_config's
    assert os.path.isfile(os.path.join(out, trainer.HF_DIR, "model.safetensors"))
    assert os.path.isfile(os.path.join(out, trainer.SAVEDMODEL_DIR, "saved_model.pb"))
    with open(os.path.join(out, trainer.SAMPLES_FILE)) as f:
        assert [s["step"] for s in json.load(f)] == [2]
    # Checkpoints outlive the execution, keyed by configs and data.
    assert os.listdir(tmp_path / "pipeline" / "Trainer" / "checkpoints")


def test_refuses_a_checkpoint_with_another_vocabulary(tmp_path):
    ckpt = str(tmp_path / "hf-ckpt")
    write_hf_checkpoint(ckpt, n_ctx=16, n_embd=32, n_layer=1, n_head=4)
    data = encoded(str(tmp_path / "enc"), 16, special_tokens=["<|dialogue|>"])
    with pytest.raises(TrainingError, match="vocabulary of 50257 tokens but the data was encoded with 50258 tokens"):
        trainer.run_fn(fn_args(tmp_path, data, base_model=ckpt))


def test_from_scratch_sizes_the_embedding_to_the_data(tmp_path):
    args = fn_args(tmp_path, encoded(str(tmp_path / "enc"), 16, special_tokens=["<|dialogue|>"]))
    trainer.run_fn(args)
    with open(os.path.join(args.serving_model_dir, "gpt2_config.json")) as f:
        config = json.load(f)
    assert config["n_vocab"] == 50258 and config["n_layer"] == 1
    with open(os.path.join(args.serving_model_dir, trainer.TRAIN_METRICS_FILE)) as f:
        assert json.load(f)["init"] == "scratch"
