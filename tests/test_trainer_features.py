"""Trainer features on a tiny model: gradient accumulation, frozen embeddings, LoRA adapters,
gradient checkpointing, early stopping, epochs, mixed precision, text samples, several replicas on
two logical CPUs, and a run killed mid-way that resumes to the same result."""

import dataclasses
import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
import train_worker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training import CFG, counting_data  # noqa: F401 -- the fixture

from tfx_gpt2.config.model import ConfigError, TrainConfig
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.training.loop import count_blocks, train

BASE = TrainConfig(batch_size=8, max_steps=6, learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=1,
                   eval_every=3, eval_batches=1, log_every=1, shuffle_buffer=32)


def run(files, model=None, **changes):
    train_files, eval_files = files
    return train(CFG, dataclasses.replace(BASE, **changes), train_files, eval_files, model=model)


def weights(model):
    return model.weights_by_name()


def test_gradient_accumulation_gives_the_same_steps(counting_data):
    m1, r1 = run(counting_data)
    m2, r2 = run(counting_data, grad_accum_steps=4)
    np.testing.assert_allclose([h["loss"] for h in r1.history], [h["loss"] for h in r2.history], rtol=1e-4)
    for k, v in weights(m1).items():
        np.testing.assert_allclose(v, weights(m2)[k], atol=1e-4)


def test_recompute_gives_the_same_gradients(counting_data):
    m1, r1 = run(counting_data, xla=False)
    m2, r2 = run(counting_data, xla=False, recompute=True)
    np.testing.assert_allclose([h["loss"] for h in r1.history], [h["loss"] for h in r2.history], rtol=1e-5)


def test_only_transformer_layers_train(counting_data):
    import keras

    keras.utils.set_random_seed(BASE.seed)
    start = weights(GPT2(CFG))  # same seed as the run's initialisation
    model, _ = run(counting_data, only_train_transformer_layers=True)
    after = weights(model)
    for name in ("wte", "wpe", "ln_f/g", "ln_f/b"):
        np.testing.assert_array_equal(after[name], start[name])
    assert not np.allclose(after["h0/attn/c_attn/w"], start["h0/attn/c_attn/w"])


def _base_model():
    import keras

    keras.utils.set_random_seed(7)
    return GPT2(CFG)


LORA = dict(lora_rank=4, lora_alpha=8.0)


def test_lora_trains_the_adapters_only(counting_data):
    from tfx_gpt2.model.gpt2 import is_adapter_name
    from tfx_gpt2.model.lora import adapter_weights

    base = _base_model()
    start = weights(base)
    model, result = run(counting_data, model=base, **LORA)
    after = weights(model)
    assert {k for k in after if not is_adapter_name(k)} == set(start)
    for name, value in start.items():
        np.testing.assert_array_equal(after[name], value)
    assert all(np.abs(v).max() > 0 for k, v in adapter_weights(model).items() if k.endswith("lora_b"))
    assert result.trainable_params == sum(v.size for v in adapter_weights(model).values())
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_lora_with_accumulation_and_mixed_precision(counting_data):
    _, one = run(counting_data, model=_base_model(), **LORA)
    _, accumulated = run(counting_data, model=_base_model(), grad_accum_steps=4, **LORA)
    np.testing.assert_allclose([h["loss"] for h in one.history], [h["loss"] for h in accumulated.history], rtol=1e-4)
    model, half = run(counting_data, model=_base_model(), mixed_precision="bf16", **LORA)
    assert all(v.dtype == "float32" for v in model.weights)
    assert abs(half.history[0]["loss"] - one.history[0]["loss"]) < 0.05


def test_lora_resumes_exactly_from_a_checkpoint(counting_data, tmp_path):
    """The checkpoint of step 4 of a 6-step LoRA run, resumed, ends where the run ended."""
    train_files, eval_files = counting_data
    cfg = dataclasses.replace(BASE, checkpoint_every=2, checkpoint_every_seconds=0.0, **LORA)
    whole, _ = train(CFG, cfg, train_files, eval_files, model=_base_model(), checkpoint_dir=str(tmp_path / "a"))
    states = tf.train.get_checkpoint_state(str(tmp_path / "a")).all_model_checkpoint_paths
    step4 = next(p for p in states if p.endswith("-4"))  # checkpoints are numbered by step
    os.makedirs(tmp_path / "b")
    for file in tf.io.gfile.glob(step4 + ".*"):
        tf.io.gfile.copy(file, str(tmp_path / "b" / os.path.basename(file)))
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path / "b"), str(tmp_path / "b" / os.path.basename(step4)))
    resumed, result = train(CFG, cfg, train_files, eval_files, model=_base_model(), checkpoint_dir=str(tmp_path / "b"))
    assert result.resumed_from_step == 4 and result.steps == 6
    for name, value in weights(whole).items():
        np.testing.assert_allclose(weights(resumed)[name], value, atol=1e-6)


def test_a_different_lora_on_an_adapted_model_is_refused(counting_data):
    from tfx_gpt2.config.model import LoraSpec
    from tfx_gpt2.training.loop import TrainingError

    adapted = _base_model()
    adapted.enable_lora(LoraSpec(rank=2))
    with pytest.raises(TrainingError, match="differ from the ones to train"):
        run(counting_data, model=adapted, **LORA)


def test_early_stopping_keeps_the_best_weights(counting_data):
    model, result = run(counting_data, max_steps=30, eval_every=2, early_stopping_patience=2,
                        early_stopping_min_delta=100.0)
    assert result.stopped_early and result.steps == 6  # evals at 2 (best), 4 and 6 (no improvement)
    first_eval = next(h["eval_subset_loss"] for h in result.history if "eval_subset_loss" in h)
    assert result.eval_subset_loss == first_eval


def test_epochs_set_the_number_of_steps(counting_data):
    assert count_blocks(counting_data[0]) == 256
    _, result = run(counting_data, epochs=0.1, eval_every=100)
    assert result.steps == 4  # ceil(0.1 * 256 / 8)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_in_float32_variables(counting_data, precision):
    _, ref = run(counting_data, mixed_precision="off")
    model, result = run(counting_data, mixed_precision=precision)
    assert all(v.dtype == "float32" for v in model.weights)
    assert abs(result.history[0]["loss"] - ref.history[0]["loss"]) < 0.05
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored


def test_samples_in_results_and_tensorboard(counting_data, tmp_path, tokenizer):
    train_files, eval_files = counting_data
    cfg = dataclasses.replace(BASE, samples_every=3, sample_tokens=4, sample_prompts=("!", "?"))
    from tfx_gpt2.text.bpe import BPETokenizer

    small = BPETokenizer({s: i for s, i in tokenizer.encoder.items() if i < 63}, [])
    _, result = train(CFG, cfg, train_files, eval_files, log_dir=str(tmp_path / "tb"), tokenizer=small)
    assert [(s["step"], s["prompt"]) for s in result.samples] == [(3, "!"), (3, "?"), (6, "!"), (6, "?")]
    assert all(isinstance(s["text"], str) for s in result.samples)
    acc = EventAccumulator(str(tmp_path / "tb" / "train"))
    acc.Reload()
    assert "samples/text_summary" in acc.Tags()["tensors"] or "samples" in acc.Tags()["tensors"]
    assert "perplexity" in acc.Tags()["tensors"]


def test_samples_by_default_at_each_evaluation_with_one_compiled_generator(counting_data, tmp_path, tokenizer,
                                                                          monkeypatch):
    from tfx_gpt2.model import generate
    from tfx_gpt2.text.bpe import BPETokenizer

    built = []

    class CountingGenerator(generate.Generator):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

    monkeypatch.setattr(generate, "Generator", CountingGenerator)
    small = BPETokenizer({s: i for s, i in tokenizer.encoder.items() if i < 63}, [])
    assert BASE.samples_every == -1 and len(BASE.sample_prompts) == 3  # the defaults
    # eval_every=3: evaluations at 3, 6 and 7; prompts the 63-token vocabulary can spell
    cfg = dataclasses.replace(BASE, max_steps=7, sample_tokens=4, sample_prompts=("A", "BC", "D"))
    _, result = train(CFG, cfg, *counting_data, log_dir=str(tmp_path / "tb"), tokenizer=small)
    assert sorted({s["step"] for s in result.samples}) == [3, 6, 7] and len(result.samples) == 9
    assert len(built) == 1 and built[0]._loop.experimental_get_tracing_count() == 1
    acc = EventAccumulator(str(tmp_path / "tb" / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors("samples")]
    assert [e.step for e in acc.Tensors("samples")] == [3, 6, 7] and all("'BC'" in t for t in texts)


def test_config_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        TrainConfig(distribution="tpu-pod")
    with pytest.raises(ConfigError, match="does not divide batch_size"):
        TrainConfig(batch_size=6, grad_accum_steps=4)


def _worker(out, *args, timeout=300):
    process = train_worker.start([str(out), *args])
    process.join(timeout)
    assert process.exitcode == 0, f"train_worker.py {' '.join(args)} ended with {process.exitcode}"
    with open(os.path.join(out, "result.json")) as f:
        return json.load(f), dict(np.load(os.path.join(out, "weights.npz")))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The reference run: one process, one device, no XLA, 8 steps of a global batch of 8."""
    return _worker(tmp_path_factory.mktemp("one-device"), "--distribution", "one_device", "--xla", "0")


def test_two_replicas_on_two_logical_cpus_match_one_device(tmp_path, one_device):
    one, w1 = one_device
    two, w2 = _worker(tmp_path / "two", "--logical-cpus", "2", "--distribution", "mirrored", "--xla", "0")
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=2e-3)
    for k in w1:
        np.testing.assert_allclose(w1[k], w2[k], atol=5e-3)


def test_killed_run_resumes_to_the_same_result(tmp_path, one_device):
    """SIGKILL once the checkpoint of step 4 is recorded; the next run resumes from it and ends
    where the uninterrupted reference run (`one_device`, the same settings) ended."""
    clean, w_clean = one_device
    out = tmp_path / "killed"
    same = ["--distribution", "one_device", "--xla", "0", "--checkpoint-every", "2"]
    proc = train_worker.start([str(out), *same, "--step-delay", "0.3"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.is_alive():
        if saved_step(out / "ckpt") >= 4:
            break
        time.sleep(0.1)
    assert proc.is_alive(), "the run ended before it could be killed"
    proc.kill()
    proc.join()
    assert not (out / "result.json").exists()
    resumed, w_resumed = _worker(out, *same)
    assert resumed["resumed_from_step"] in (4, 6) and resumed["steps"] == clean["steps"] == 8
    np.testing.assert_allclose(resumed["losses"], clean["losses"][-len(resumed["losses"]):], rtol=1e-5)
    for k in w_clean:
        np.testing.assert_allclose(w_resumed[k], w_clean[k], atol=1e-5)


def saved_step(folder) -> int:
    """The step of the latest checkpoint that the manager recorded as complete in `folder` (0: none)."""
    latest = tf.train.latest_checkpoint(str(folder)) if os.path.isdir(folder) else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _two_workers(tmp_path, name, *args, kill_at_checkpoint=0, timeout=300):
    """Two `train_worker.py` processes as one MultiWorkerMirroredStrategy cluster on localhost
    (TF_CONFIG), sharing a checkpoint folder; their results (None for killed workers)."""
    from mlflow_helpers import free_port

    cluster = {"worker": [f"localhost:{free_port()}" for _ in range(2)]}
    ckpt = tmp_path / f"{name}-ckpt"
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(train_worker.start([str(tmp_path / f"{name}-{i}"), "--distribution", "multi_worker", "--xla",
                                         "0", "--checkpoint-dir", str(ckpt), *args], env))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        if kill_at_checkpoint and saved_step(ckpt) >= kill_at_checkpoint:
            for p in procs:
                p.kill()
        time.sleep(0.1)
    for p in procs:
        p.join(max(1, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    if kill_at_checkpoint:
        assert codes == [-signal.SIGKILL] * 2, f"the workers ended ({codes}) before checkpoint {kill_at_checkpoint}"
        return None
    assert codes == [0, 0], codes
    results = []
    for i in range(2):
        with open(tmp_path / f"{name}-{i}" / "result.json") as f:
            results.append((json.load(f), dict(np.load(tmp_path / f"{name}-{i}" / "weights.npz"))))
    return results


def test_two_worker_processes_match_one_worker_and_resume(tmp_path, one_device):
    """MultiWorkerMirroredStrategy over two processes with the same global batch of 8 as one
    process: both workers are SIGKILLed once the chief's checkpoint of step 4 is recorded, then
    started again; the losses before the kill and after the resume make one process's curve, and
    the weights end the same (within float reduction order: rtol 2e-3, atol 5e-3)."""
    one, w_one = one_device
    _two_workers(tmp_path, "two", "--checkpoint-every", "2", "--step-delay", "0.3", kill_at_checkpoint=4)
    with open(tmp_path / "two-0" / "losses.jsonl") as f:
        before = [json.loads(line) for line in f]
    (chief, w_chief), (other, w_other) = _two_workers(tmp_path, "two", "--checkpoint-every", "2")
    start = chief["resumed_from_step"]
    assert start in (4, 6) and len(before) >= start and chief["steps"] == other["steps"] == 8
    assert chief["losses"] == other["losses"]
    curve = before[:start] + chief["losses"]
    print(f"one worker: {one['losses']}\ntwo workers (killed at step {start}, resumed): {curve}")
    np.testing.assert_allclose(curve, one["losses"], rtol=2e-3)
    for k in w_one:
        np.testing.assert_allclose(w_chief[k], w_one[k], atol=5e-3)
        np.testing.assert_array_equal(w_chief[k], w_other[k])
