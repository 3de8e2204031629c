import numpy as np
import pytest

from tfx_gpt2.config.checkpoint_shape import CheckpointError
from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2, weight_name
from tfx_gpt2.model.io import assign_weights, load_model_dir, save_model_dir

SMALL = GPT2Config(n_vocab=100, n_ctx=16, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return GPT2(SMALL)


def test_openai_weight_names_and_shapes(model):
    shapes = {weight_name(v): tuple(v.shape) for v in model.weights}
    assert shapes["wte"] == (100, 32)
    assert shapes["wpe"] == (16, 32)
    assert shapes["h1/attn/c_attn/w"] == (32, 96)
    assert shapes["h1/attn/c_proj/b"] == (32,)
    assert shapes["h0/mlp/c_fc/w"] == (32, 128)
    assert shapes["h0/ln_2/g"] == (32,)
    assert shapes["ln_f/b"] == (32,)
    assert len(shapes) == 2 + 12 * 2 + 2
    assert sum(int(np.prod(s)) for s in shapes.values()) == SMALL.num_params()


def test_logits_shape_and_dtype(model):
    logits = model(np.zeros((3, 7), "int32"))
    assert tuple(logits.shape) == (3, 7, 100)
    assert np.asarray(logits).dtype == np.float32


def test_attention_is_causal(model):
    a = np.array([[5, 6, 7, 8, 9]], "int32")
    b = a.copy()
    b[0, 3:] = [1, 2]
    la, lb = np.asarray(model(a)), np.asarray(model(b))
    np.testing.assert_allclose(la[:, :3], lb[:, :3], atol=1e-5)
    assert not np.allclose(la[:, 3:], lb[:, 3:])


def test_padding_and_positions_match_unpadded(model):
    # A left-padded row with masked padding and positions from 0 gives the unpadded row's logits.
    ids = np.array([[5, 6, 7]], "int32")
    padded = np.array([[0, 0, 5, 6, 7]], "int32")
    mask = np.array([[False, False, True, True, True]])
    positions = np.array([[0, 0, 0, 1, 2]], "int32")
    expected = np.asarray(model(ids))
    got, _ = model.forward(padded, position_ids=positions, key_mask=mask)
    np.testing.assert_allclose(np.asarray(got)[:, 2:], expected, atol=1e-5)


def test_save_and_load_give_identical_logits(model, tmp_path):
    save_model_dir(model, str(tmp_path))
    loaded = load_model_dir(str(tmp_path))
    x = np.arange(10, dtype="int32")[None]
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    assert (tmp_path / "encoder.json").exists() and (tmp_path / "vocab.bpe").exists()


def test_shape_mismatch_names_both_shapes(model):
    weights = model.weights_by_name()
    weights["wte"] = np.zeros((50257, 32), "float32")
    with pytest.raises(CheckpointError, match=r"wte has shape \(50257, 32\).*needs \(100, 32\)"):
        assign_weights(model, weights, "test checkpoint")


def test_missing_weight_is_named(model):
    weights = model.weights_by_name()
    del weights["h1/mlp/c_fc/b"]
    with pytest.raises(CheckpointError, match="missing.*h1/mlp/c_fc/b"):
        assign_weights(model, weights, "test checkpoint")


def test_not_a_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="gpt2_config.json is missing"):
        load_model_dir(str(tmp_path))


def test_scored_loss_is_the_cross_entropy_of_the_target():
    """The scoring loss (log-sum-exp minus the target's logit) against numpy's log-softmax, with
    logits large enough that a naive exp would overflow."""
    import tensorflow as tf

    from tfx_gpt2.model.gpt2 import scored_token_loss, token_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=30.0, size=(2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(2, 5))
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    got = scored_token_loss(tf.constant(logits), tf.constant(targets))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(token_loss(tf.constant(logits), tf.constant(targets)).numpy(), expected, rtol=1e-5, atol=1e-4)
