import pytest

from tfx_gpt2.config.model import (
    MODEL_PRESETS,
    ConfigError,
    GPT2Config,
    TrainConfig,
    from_json,
    model_preset,
    to_json,
    train_preset,
)


def test_openai_presets_have_published_sizes():
    # Parameter counts of OpenAI's releases (tied embeddings counted once).
    expected = {"124M": 124_439_808, "355M": 354_823_168, "774M": 774_030_080, "1558M": 1_557_611_200}
    for name, count in expected.items():
        assert MODEL_PRESETS[name].num_params() == count


def test_json_round_trip():
    for cfg in (model_preset("tiny"), model_preset("1558M")):
        assert from_json(GPT2Config, to_json(cfg)) == cfg
    assert from_json(TrainConfig, to_json(train_preset("tiny"))) == train_preset("tiny")


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="n_layers"):
        from_json(GPT2Config, '{"n_layers": 3}')


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"n_embd = '64'.*must be a int"):
        GPT2Config(n_embd="64")


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="not divisible by n_head = 5"):
        GPT2Config(n_embd=64, n_head=5)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match=r"'13B'.*124M"):
        model_preset("13B")
    with pytest.raises(ConfigError, match="finetune"):
        train_preset("fast")


def test_train_config_ranges():
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=0.0)
