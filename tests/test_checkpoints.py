import functools
import http.server
import json
import os
import threading

import numpy as np
import pytest
from reference_models import hf_reference_logits, write_hf_checkpoint, write_openai_checkpoint

from tfx_gpt2.config.checkpoint_shape import CheckpointError, detect_format
from tfx_gpt2.model.checkpoints import OPENAI_FILES, download_openai_checkpoint, load_checkpoint, save_hf_checkpoint

TOKENS = np.array([[15496, 995, 11, 428, 318, 257, 1332, 13], [464, 2068, 7586, 21831, 18045, 625, 262, 16931]])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf"))
    weights = write_hf_checkpoint(path, n_ctx=32, n_embd=32, n_layer=2, n_head=4)
    return path, weights


def test_hf_checkpoint_matches_hugging_face_logits(hf_dir):
    path, _ = hf_dir
    assert detect_format(path) == "hf"
    model, tokenizer = load_checkpoint(path)
    ours = np.asarray(model(TOKENS.astype("int32")))
    theirs = hf_reference_logits(path, TOKENS)
    diff = np.max(np.abs(ours - theirs))
    print(f"max |ours - Hugging Face| = {diff:.2e} over logits of scale {np.abs(theirs).max():.1f}")
    assert diff <= 1e-4
    assert tokenizer.vocab_size == 50257


def test_openai_checkpoint_loads_the_same_model(hf_dir, tmp_path):
    path, weights = hf_dir
    write_openai_checkpoint(str(tmp_path), weights, n_head=4)
    assert detect_format(str(tmp_path)) == "openai"
    openai_model, _ = load_checkpoint(str(tmp_path))
    hf_model, _ = load_checkpoint(path)
    np.testing.assert_array_equal(np.asarray(openai_model(TOKENS)), np.asarray(hf_model(TOKENS)))


def test_hf_export_round_trips_through_hugging_face(hf_dir, tmp_path):
    path, _ = hf_dir
    model, _ = load_checkpoint(path)
    save_hf_checkpoint(model, str(tmp_path), vocab_dir=path)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(os.listdir(tmp_path))
    ours = np.asarray(model(TOKENS))
    np.testing.assert_allclose(hf_reference_logits(str(tmp_path), TOKENS), ours, atol=1e-4)
    reloaded, _ = load_checkpoint(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(reloaded(TOKENS)), ours)


def test_vocabulary_size_mismatch_names_both(tmp_path):
    write_hf_checkpoint(str(tmp_path), n_vocab=1000, n_ctx=8, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(CheckpointError, match="vocabulary has 50257 tokens but the model's n_vocab is 1000"):
        load_checkpoint(str(tmp_path))


def test_shape_mismatch_is_loud(hf_dir, tmp_path):
    _, weights = hf_dir
    write_openai_checkpoint(str(tmp_path), weights, n_head=4)
    with open(tmp_path / "hparams.json") as f:
        hparams = json.load(f)
    hparams["n_embd"] = 64
    with open(tmp_path / "hparams.json", "w") as f:
        json.dump(hparams, f)
    with pytest.raises(CheckpointError, match=r"shape \(50257, 32\) but the model .* needs \(50257, 64\)"):
        load_checkpoint(str(tmp_path))


def test_unknown_directory_lists_formats(tmp_path):
    with pytest.raises(CheckpointError, match="OpenAI GPT-2 directory.*Hugging Face directory"):
        detect_format(str(tmp_path))


def test_download_from_a_server(hf_dir, tmp_path):
    # The real download code against a local HTTP server laid out like OpenAI's bucket.
    _, weights = hf_dir
    bucket = tmp_path / "bucket" / "124M"
    write_openai_checkpoint(str(bucket), weights, n_head=4)
    assert set(OPENAI_FILES) <= set(os.listdir(bucket))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "bucket"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = download_openai_checkpoint("124M", str(tmp_path / "dl"), base_url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    model, _ = load_checkpoint(out)
    assert model.config.n_embd == 32


def test_download_offline_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="may be offline"):
        download_openai_checkpoint("124M", str(tmp_path), base_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(CheckpointError, match="not '7B'"):
        download_openai_checkpoint("7B", str(tmp_path))
