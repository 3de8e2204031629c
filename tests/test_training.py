import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfx_gpt2.config.model import GPT2Config, TrainConfig
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.text.blocks import block_dataset, block_to_example, read_blocks, target_counts
from tfx_gpt2.training.evaluation import _EVAL_FUNCTIONS, evaluate
from tfx_gpt2.training.loop import TrainingError, WarmupCosine, train

CFG = GPT2Config(n_vocab=64, n_ctx=8, n_embd=32, n_layer=1, n_head=2)


def write_blocks(path, blocks):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, "GZIP") as w:
        for b in blocks:
            w.write(block_to_example(b).SerializeToString())


@pytest.fixture
def counting_data(tmp_path):
    # A deterministic language: each token is the previous one plus 1 (mod 64).
    rng = np.random.default_rng(0)
    def blocks(n):
        return [[(s + i) % 64 for i in range(9)] for s in rng.integers(0, 64, n)]
    write_blocks(str(tmp_path / "train" / "b.gz"), blocks(256))
    write_blocks(str(tmp_path / "eval" / "b.gz"), blocks(32))
    return [str(tmp_path / "train" / "*")], [str(tmp_path / "eval" / "*")]


def test_blocks_round_trip(tmp_path):
    write_blocks(str(tmp_path / "x.gz"), [[1, 2, 3], [4, 5, 6]])
    assert list(read_blocks([str(tmp_path / "*.gz")])) == [[1, 2, 3], [4, 5, 6]]
    x, y = next(iter(block_dataset([str(tmp_path / "*.gz")], 3, 2)))
    np.testing.assert_array_equal(x.numpy(), [[1, 2], [4, 5]])
    np.testing.assert_array_equal(y.numpy(), [[2, 3], [5, 6]])
    np.testing.assert_array_equal(target_counts([str(tmp_path / "*.gz")], 8), [0, 0, 1, 1, 0, 1, 1, 0])


def test_schedule_warms_up_then_decays_to_floor():
    s = WarmupCosine(peak=1.0, floor=0.1, warmup=10, total=110)
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(9)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.55, abs=1e-3)
    assert float(s(110)) == pytest.approx(0.1)


def test_training_learns_and_writes_tensorboard(counting_data, tmp_path):
    train_files, eval_files = counting_data
    cfg = TrainConfig(batch_size=16, max_steps=60, learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=5,
                      eval_every=30, eval_batches=2, log_every=10, shuffle_buffer=64)
    model, result = train(CFG, cfg, train_files, eval_files, log_dir=str(tmp_path / "tb"))
    assert result.steps == 60 and result.tokens == 60 * 16 * 8
    # Uniform guessing is ln(64) = 4.16 nats; the counting rule is learnable from one token.
    assert result.eval_subset_loss < 1.0 < math.log(64)
    assert (result.eval_subset_blocks, result.eval_blocks) == (32, 32)
    full_loss, n = evaluate(model, block_dataset(eval_files, 9, 16, drop_remainder=False))
    assert n == 32 * 8 and full_loss < 1.0
    # The evaluations at steps 30 and 60 and this one share one traced function.
    assert _EVAL_FUNCTIONS[model].experimental_get_tracing_count() == 1

    acc = EventAccumulator(str(tmp_path / "tb" / "train"))
    acc.Reload()
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_sec"} <= set(acc.Tags()["tensors"])
    losses = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    eval_acc = EventAccumulator(str(tmp_path / "tb" / "eval"))
    eval_acc.Reload()
    assert [e.step for e in eval_acc.Tensors("subset_perplexity")] == [30, 60]
    assert "32 of 32 eval blocks" in eval_acc.SummaryMetadata("subset_perplexity").summary_description


def test_block_length_mismatch_names_both(counting_data):
    train_files, eval_files = counting_data
    with pytest.raises(TrainingError, match=r"hold 9 tokens but the model takes n_ctx \+ 1 = 17"):
        train(GPT2Config(n_vocab=64, n_ctx=16, n_embd=32, n_layer=1, n_head=2), TrainConfig(max_steps=1, warmup_steps=0),
              train_files, eval_files)


def test_non_finite_loss_stops_with_the_step(counting_data):
    train_files, eval_files = counting_data
    model = GPT2(CFG)
    model.wte.assign(np.full(model.wte.shape, np.nan, "float32"))
    with pytest.raises(TrainingError, match="became nan at step 1"):
        train(CFG, TrainConfig(max_steps=3, warmup_steps=0), train_files, eval_files, model=model)


def test_the_starting_model_is_released_once_its_weights_are_copied(counting_data, monkeypatch):
    # Fine-tuning holds one copy of the weights while it trains, not two (6 GB a copy at 1558M).
    import weakref

    from tfx_gpt2.training import loop

    train_files, eval_files = counting_data
    wte = np.random.default_rng(1).normal(size=(CFG.n_vocab, CFG.n_embd)).astype("float32")
    loaded = []

    def load():
        model = GPT2(CFG)
        model.wte.assign(wte)
        loaded.append(weakref.ref(model))
        return model

    original = loop.run_loop

    def when_the_loop_starts(parts, *args):
        assert loaded[0]() is None, "train() still holds the starting model while it trains"
        np.testing.assert_array_equal(parts.state.model.wte.numpy(), wte)
        return original(parts, *args)

    monkeypatch.setattr(loop, "run_loop", when_the_loop_starts)
    _, result = train(CFG, TrainConfig(max_steps=1, warmup_steps=0), train_files, eval_files, load_model=load)
    assert result.steps == 1 and len(loaded) == 1
    with pytest.raises(ValueError, match="not both"):
        train(CFG, TrainConfig(max_steps=1, warmup_steps=0), train_files, eval_files, model=GPT2(CFG),
              load_model=load)


def test_serialize_blocks_is_protobufs_encoding():
    from tfx_gpt2.text.blocks import block_to_example, serialize_block, serialize_blocks

    rng = np.random.default_rng(0)
    for high in (100, 20_000, 50_257, 1 << 21, 1 << 30):
        blocks = [rng.integers(0, high, 65).tolist() for _ in range(5)]
        assert serialize_blocks(blocks) == [block_to_example(b).SerializeToString() for b in blocks]
        assert serialize_block(np.asarray(blocks[0], np.uint32)) == block_to_example(blocks[0]).SerializeToString()
    assert serialize_blocks([]) == []


def test_uncompressed_and_gzip_block_files_read_alike(tmp_path):
    import tensorflow as tf

    from tfx_gpt2.text.blocks import serialize_block

    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as w:
        w.write(serialize_block([1, 2, 3]))
    write_blocks(str(tmp_path / "b.gz"), [[4, 5, 6]])
    assert list(read_blocks([str(tmp_path / "a.tfrecord"), str(tmp_path / "b.gz")])) == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError, match="mix GZIP"):
        block_dataset([str(tmp_path / "*")], 3, 1)


@pytest.mark.parametrize("log_every", [2, 4, 5])
def test_evaluates_every_eval_every_steps_whatever_log_every(counting_data, log_every):
    # Evaluation used to sit inside the logging branch: with eval_every=3 it ran only at steps
    # where both divide (and at the last one).
    train_files, eval_files = counting_data
    cfg = TrainConfig(batch_size=8, max_steps=10, warmup_steps=1, eval_every=3, eval_batches=1,
                      log_every=log_every, shuffle_buffer=32)
    _, result = train(CFG, cfg, train_files, eval_files)
    assert [h["step"] for h in result.history if "eval_subset_loss" in h] == [3, 6, 9, 10]
    assert [h["step"] for h in result.history if "loss" in h] == list(range(log_every, 10, log_every)) + [10]
    assert result.eval_subset_blocks == 8 and result.eval_blocks == 32


def test_early_stopping_counts_evaluations_between_log_steps(counting_data):
    train_files, eval_files = counting_data
    cfg = TrainConfig(batch_size=8, max_steps=30, warmup_steps=1, eval_every=2, eval_batches=1, log_every=7,
                      shuffle_buffer=32, early_stopping_patience=2, early_stopping_min_delta=100.0)
    _, result = train(CFG, cfg, train_files, eval_files)
    assert result.stopped_early and result.steps == 6  # evals at 2 (best), 4 and 6 (no improvement)
