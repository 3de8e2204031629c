"""LoRA on the tiny model: adapters that start at zero, merging, PEFT's files (checked against an
adapter PEFT itself wrote: tests/data/peft_tiny_gpt2, made by tools/make_peft_fixture.py), adapter
directories on a base, and the configs."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG, PEFT_WEIGHTS, CheckpointError, read_checkpoint_config
from tfx_gpt2.config.model import (
    LORA_TARGETS,
    ConfigError,
    GPT2Config,
    LoraSpec,
    TrainConfig,
    from_json,
    to_json,
    train_preset,
)
from tfx_gpt2.model.gpt2 import GPT2, is_adapter_name, weight_name
from tfx_gpt2.model.lora import (
    adapter_weights,
    apply_adapter,
    merged_model,
    read_peft_adapter,
    save_peft_adapter,
)

SMALL = GPT2Config(n_vocab=100, n_ctx=16, n_embd=32, n_layer=2, n_head=4)
FIXTURE = os.path.join(os.path.dirname(__file__), "data", "peft_tiny_gpt2")
TOKENS = np.array([[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 99, 0]], "int32")


def _model(spec=None, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = GPT2(SMALL)
    if spec is not None:
        model.enable_lora(spec)
    return model


def _randomize_adapters(model, seed=1, scale=0.1):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if is_adapter_name(weight_name(v)):
            v.assign(rng.standard_normal(v.shape).astype("float32") * scale)


def _logits(model, tokens=TOKENS):
    return np.asarray(model(tokens))


def test_zero_initialised_adapters_leave_the_outputs_unchanged():
    model = _model()
    before = _logits(model)
    model.enable_lora(LoraSpec(rank=4))
    assert any(np.abs(v).max() > 0 for k, v in adapter_weights(model).items() if k.endswith("lora_a"))
    np.testing.assert_array_equal(_logits(model), before)


def test_only_the_adapters_train():
    spec = LoraSpec(rank=4, targets=("attn.c_attn", "mlp.c_proj"))
    model = _model(spec)
    trainable = sorted(weight_name(v) for v in model.trainable_variables)
    assert trainable == sorted(f"h{i}/{t.replace('.', '/')}/lora_{ab}" for i in range(2)
                               for t in spec.targets for ab in "ab")
    c = SMALL.n_embd
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 2 * 4 * ((c + 3 * c) + (4 * c + c))


def test_merged_model_gives_the_adapted_logits():
    model = _model(LoraSpec(rank=4, alpha=8.0))
    _randomize_adapters(model)
    adapted = _logits(model)
    assert not np.allclose(adapted, _logits(_model()), atol=1e-3)  # the adapters matter
    merged = merged_model(model)
    assert merged.lora is None and not any("lora" in weight_name(v) for v in merged.weights)
    np.testing.assert_allclose(_logits(merged), adapted, atol=2e-5)


def test_dropout_on_the_adapters_only_while_training():
    model = _model(LoraSpec(rank=4, dropout=0.5))
    _randomize_adapters(model)
    np.testing.assert_array_equal(_logits(model), _logits(model))
    trained = [np.asarray(model(TOKENS, training=True)) for _ in range(2)]
    assert not np.allclose(trained[0], trained[1])


def test_peft_fixture_logits_match_what_peft_computed():
    from tfx_gpt2.model.checkpoints import load_hf_checkpoint

    with open(os.path.join(FIXTURE, "expected.json")) as f:
        expected = json.load(f)
    tokens = np.array(expected["tokens"], "int32")
    base = load_hf_checkpoint(os.path.join(FIXTURE, "base"))
    np.testing.assert_allclose(_logits(base, tokens), expected["base_logits"], atol=1e-4)
    for name in ("adapter", "adapter_rslora"):
        spec, weights, base_name = read_peft_adapter(os.path.join(FIXTURE, name))
        model = apply_adapter(load_hf_checkpoint(os.path.join(FIXTURE, "base")), spec, weights, name)
        assert not np.allclose(expected[f"{name}_logits"], expected["base_logits"], atol=1e-3)
        np.testing.assert_allclose(_logits(model, tokens), expected[f"{name}_logits"], atol=1e-4)
        np.testing.assert_allclose(_logits(merged_model(model), tokens), expected[f"{name}_logits"], atol=1e-4)
    spec, _, _ = read_peft_adapter(os.path.join(FIXTURE, "adapter"))
    assert (spec.rank, spec.alpha, spec.targets) == (4, 8.0, LORA_TARGETS)
    rs, _, _ = read_peft_adapter(os.path.join(FIXTURE, "adapter_rslora"))
    assert rs.targets == ("attn.c_attn",) and rs.scale == pytest.approx(4 / np.sqrt(2))  # rsLoRA: alpha/sqrt(r)


def test_written_adapter_has_peft_keys_shapes_and_config(tmp_path):
    """An adapter written here has the fixture's (PEFT's) names, shapes, dtype and config fields."""
    from safetensors.numpy import load_file

    from tfx_gpt2.model.checkpoints import load_hf_checkpoint

    spec, weights, _ = read_peft_adapter(os.path.join(FIXTURE, "adapter"))
    model = apply_adapter(load_hf_checkpoint(os.path.join(FIXTURE, "base")), spec, weights, "fixture")
    save_peft_adapter(model, str(tmp_path), base="gpt2")
    ours, peft = (load_file(os.path.join(d, PEFT_WEIGHTS)) for d in (str(tmp_path), os.path.join(FIXTURE, "adapter")))
    assert sorted(ours) == sorted(peft)
    for key in peft:
        assert ours[key].shape == peft[key].shape and ours[key].dtype == peft[key].dtype, key
        np.testing.assert_allclose(ours[key], peft[key], atol=1e-7)
    with open(os.path.join(tmp_path, PEFT_CONFIG)) as f, open(os.path.join(FIXTURE, "adapter", PEFT_CONFIG)) as g:
        ours_config, peft_config = json.load(f), json.load(g)
    for field in ("peft_type", "task_type", "r", "lora_alpha", "fan_in_fan_out", "bias", "use_rslora"):
        assert ours_config[field] == peft_config[field], field
    assert ours_config["base_model_name_or_path"] == "gpt2"


def test_save_and_read_round_trip(tmp_path):
    spec = LoraSpec(rank=3, alpha=6.0, dropout=0.1, targets=("attn.c_proj", "mlp.c_fc"))
    model = _model(spec)
    _randomize_adapters(model)
    save_peft_adapter(model, str(tmp_path), base="../base")
    read_spec, weights, base = read_peft_adapter(str(tmp_path))
    assert read_spec == spec and base == "../base"
    for name, value in adapter_weights(model).items():
        np.testing.assert_array_equal(weights[name], value)
    again = apply_adapter(_model(), read_spec, weights, "round trip")
    np.testing.assert_allclose(_logits(again), _logits(model), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tfx-gpt2 model directory of the tiny preset (the full vocabulary)."""
    import keras

    from tfx_gpt2.config.model import model_preset
    from tfx_gpt2.model.io import save_model_dir

    keras.utils.set_random_seed(3)
    path = str(tmp_path_factory.mktemp("base"))
    return save_model_dir(GPT2(model_preset("tiny")), path)


def write_adapter_dir(base_dir, out, base_ref, spec=LoraSpec(rank=2), seed=1, scale=0.1):
    """Random adapters (`spec`) on the tfx-gpt2 model in `base_dir`, saved to `out` as an adapter
    directory whose base is `base_ref`; the adapted model (adapters apart)."""
    from tfx_gpt2.model.io import load_model_dir
    from tfx_gpt2.text.bpe import copy_vocab_files

    model = load_model_dir(base_dir)
    model.enable_lora(spec)
    _randomize_adapters(model, seed, scale)
    save_peft_adapter(model, out, base=base_ref)
    copy_vocab_files(base_dir, out)
    return model


def test_adapter_directory_loads_onto_its_base(tiny_base, tmp_path):
    from tfx_gpt2.model.checkpoints import load_checkpoint

    out = str(tmp_path / "adapter")
    adapted = write_adapter_dir(tiny_base, out, os.path.relpath(tiny_base, out))
    merged, tokenizer = load_checkpoint(out)
    assert merged.lora is None and tokenizer.vocab_size == merged.config.n_vocab
    np.testing.assert_allclose(_logits(merged), _logits(adapted), atol=2e-5)
    apart, _ = load_checkpoint(out, merge_adapters=False)
    assert apart.lora == LoraSpec(rank=2)
    assert read_checkpoint_config(out) == merged.config
    # A registry stages the base as base/ beside the adapter: that wins over the recorded path.
    shutil.copytree(tiny_base, os.path.join(out, "base"))
    with open(os.path.join(out, PEFT_CONFIG)) as f:
        config = json.load(f)
    with open(os.path.join(out, PEFT_CONFIG), "w") as f:
        json.dump({**config, "base_model_name_or_path": "models:/gpt2-base/1"}, f)
    np.testing.assert_allclose(_logits(load_checkpoint(out)[0]), _logits(adapted), atol=2e-5)


@pytest.mark.parametrize("base_ref, hint", [
    ("models:/gpt2-base/1", "load_model_with_base, which fetches models:/gpt2-base/1 from the registry"),
    ("gpt2", "download OpenAI's 124M"),
    ("/nowhere/base", "copy or link the base model directory"),
])
def test_a_missing_base_says_how_to_get_it(tiny_base, tmp_path, base_ref, hint):
    from tfx_gpt2.model.checkpoints import load_checkpoint

    out = str(tmp_path / "adapter")
    write_adapter_dir(tiny_base, out, base_ref)
    with pytest.raises(CheckpointError, match=hint) as e:
        load_checkpoint(out)
    assert repr(base_ref) in str(e.value)


def test_peft_features_this_model_lacks_are_refused(tmp_path):
    shutil.copytree(os.path.join(FIXTURE, "adapter"), tmp_path / "a")
    with open(tmp_path / "a" / PEFT_CONFIG) as f:
        config = json.load(f)
    for field, value in (("bias", "lora_only"), ("use_dora", True), ("rank_pattern", {"c_fc": 2})):
        with open(tmp_path / "a" / PEFT_CONFIG, "w") as f:
            json.dump({**config, field: value}, f)
        with pytest.raises(CheckpointError, match=field):
            read_peft_adapter(str(tmp_path / "a"))


def test_adapter_that_does_not_fit_the_base_names_the_shapes():
    spec, weights, _ = read_peft_adapter(os.path.join(FIXTURE, "adapter"))
    with pytest.raises(CheckpointError, match=r"h0/attn/c_attn/lora_a has shape \(8, 4\).*\(32, 4\)"):
        apply_adapter(_model(), spec, weights, "the fixture")


def test_lora_settings_in_train_config():
    cfg = train_preset("lora")
    assert cfg.lora == LoraSpec(rank=8, alpha=16.0, dropout=0.05, targets=LORA_TARGETS)
    assert from_json(TrainConfig, to_json(cfg)) == cfg  # targets travel as a JSON list
    assert TrainConfig().lora is None
    with pytest.raises(ConfigError, match="lora_rank = -1"):
        TrainConfig(lora_rank=-1)
    with pytest.raises(ConfigError, match=r"attn\.c_q"):
        TrainConfig(lora_rank=4, lora_targets=("attn.c_q",))
    with pytest.raises(ConfigError, match="only_train_transformer_layers"):
        dataclasses.replace(cfg, only_train_transformer_layers=True)
    with pytest.raises(ConfigError, match="dropout"):
        LoraSpec(dropout=1.0)


def test_lora_without_a_base_is_refused_when_the_pipeline_is_built():
    from tfx_gpt2.config.pipeline import TrainingSetup

    with pytest.raises(ConfigError, match="init_checkpoint"):
        TrainingSetup(train="lora")
    assert TrainingSetup(train="lora", warm_start=True).train_config.lora_rank == 8


def test_lora_preset_trains_under_one_percent_of_124m():
    """The `lora` preset's adapters on one block of 124M's width, times its 12 blocks."""
    from tfx_gpt2.config.model import model_preset

    full = model_preset("124M")
    block = GPT2(dataclasses.replace(full, n_vocab=8, n_ctx=8, n_layer=1))
    block.enable_lora(train_preset("lora").lora)
    trainable = full.n_layer * sum(int(np.prod(v.shape)) for v in block.trainable_variables)
    assert 0.005 < trainable / full.num_params() < 0.01
