"""The benchmark scripts run (on tiny shapes) and their built-in agreement checks hold.

No timing is asserted here; the ratios are read from the scripts' output (see benchmarks/).
"""

import os
import sys

import pytest

from tfx_gpt2.config.model import GPT2Config, model_preset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def test_generate_benchmark_smoke(capsys):
    import generate

    rows = generate.main(["--model", "tiny", "--batch-sizes", "2", "--new-tokens", "4", "--repeats", "1"])
    assert [r["batch"] for r in rows] == [2]
    assert all(r["cached"] > 0 and r["no_cache"] > 0 and r["hf"] > 0 and r["engine"] > 0 for r in rows)
    assert "engine/HF XLA" in capsys.readouterr().out


def test_encode_benchmark_smoke(capsys):
    import encode

    result = encode.main(["--copies", "1", "--scale", "2", "--quick", "--cli-mb", "1", "--cli-scale", "2"])
    runs = result["runs"]
    # Same token count from our Beam step, tiktoken and HF tokenizers (checked inside), at both sizes.
    assert runs[("ours", 2)]["tokens"] == runs[("tiktoken", 2)]["tokens"] == 2 * runs[("tiktoken", 1)]["tokens"]
    assert all(r["peak_rss_mb"] > 0 for r in runs.values())
    out = capsys.readouterr().out
    assert "ours, 1 process, marginal / tiktoken" in out and "peak memory" in out
    # The command line wrote the same ids as tiktoken (compared byte for byte inside), and both ratios print.
    assert result["cli"]["same_ids"] and result["cli"]["sizes"][2] > 1.9e6
    assert "cli speed / tiktoken (same file)" in out and "cli peak memory 2x / 1x" in out


def test_train_benchmark_smoke(capsys):
    import train

    (row,) = train.main(["--shapes", "tiny", "--steps", "2", "--tiny-batch", "2", "--rounds", "1", "--warmup", "1"])
    assert row["ours"] > 0 and row["hf"] > 0 and 0 < row["mfu_ours"] < 1
    assert row["flops_per_token"] == train.flops_per_token(model_preset("tiny"))
    assert "6 N + 12 L T C" in capsys.readouterr().out


def test_the_flops_formula_matches_the_graphs_own_count():
    """`6 N + 12 L T C` (training FLOPs per token) against TensorFlow's profiler counting the
    floating-point operations of the model's forward graph, times 3 (forward and backward). A
    small vocabulary and a long context make the attention term half the total, so that a
    formula without it (or with it wrong) is off by far more than the tolerance."""
    import tensorflow as tf
    import train
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tfx_gpt2.model.gpt2 import GPT2

    cfg = GPT2Config(n_vocab=256, n_ctx=256, n_embd=32, n_layer=2, n_head=2)
    model = GPT2(cfg)
    forward = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([1, cfg.n_ctx], tf.int32))
    # the matrix products only: the formula leaves out element-wise work (softmax, norms, GELU)
    options = {**tf.compat.v1.profiler.ProfileOptionBuilder.float_operation(), "output": "none",
               "account_type_regexes": ["MatMul", "BatchMatMul.*"]}
    counted = tf.compat.v1.profiler.profile(graph=convert_variables_to_constants_v2(forward).graph,
                                            options=options).total_float_ops
    per_token = 3 * counted / cfg.n_ctx
    # 1.4% apart here: the formula also counts 6 FLOPs for each bias and norm parameter
    assert per_token == pytest.approx(train.flops_per_token(cfg), rel=0.02)
    attention = 12 * cfg.n_layer * cfg.n_ctx * cfg.n_embd
    assert per_token / (train.flops_per_token(cfg) - attention) > 1.9  # the attention term is half


@pytest.mark.slow
def test_serve_benchmark_smoke(capsys):
    import serve

    rows, mixed = serve.main(["--clients", "2", "--duration", "2", "--mixed-duration", "2"])
    assert [(r["server"], r["clients"]) for r in rows] == [("ours", 2), ("ours SSE", 2), ("mlflow", 2)]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["tok_s"] > 0 for r in rows)
    assert all(mixed[k]["requests"] > 0 and mixed[k]["errors"] == 0 for k in ("continuous", "static"))
    out = capsys.readouterr().out
    assert "ours / MLflow" in out and "continuous / static" in out


def test_sample_benchmark_smoke(capsys):
    import sample

    rows = sample.main(["--batch-sizes", "2", "--vocab", "300", "--steps", "2", "--repeats", "1"])
    assert [r["setting"] for r in rows] == [s[0] for s in sample.SETTINGS]
    assert all(r["ms"] > 0 for r in rows) and rows[0]["ratio"] == 1.0
    assert "peer: greedy decoding" in capsys.readouterr().out


def test_evaluate_benchmark_smoke(capsys):
    import evaluate

    result = evaluate.main(["--shape", "tiny", "--n-ctx", "64", "--items", "20", "--token-budget", "512"])
    assert result["requests"] == 80 and result["ours"] > 0 and result["peer"] > 0
    assert result["metrics"]["items"] == 20 and 0 <= result["metrics"]["acc"] <= 1
    assert "ours / peer" in capsys.readouterr().out
