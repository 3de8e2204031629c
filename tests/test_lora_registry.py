"""LoRA adapters in the registry, against a real `mlflow server` on localhost: an adapter-only
version far smaller than its base, the base registered once as `<name>-base`, and the version
loaded back (the pyfunc, the server's loader, the champion's download) as base plus adapters."""

import json
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_helpers import tiny_model_dir
from test_lora import write_adapter_dir

from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG
from tfx_gpt2.config.model import LoraSpec
from tfx_gpt2.model.checkpoints import load_model
from tfx_gpt2.model.lora import merged_model
from tfx_gpt2.registry.champion import download_champion
from tfx_gpt2.registry.push import ADAPTER_TAG, BASE_MODEL_TAG, push_model

NAME = "lora-registry"
TOKENS = np.array([[464, 3290, 318, 257, 1332]], "int32")


def adapter_dir(base_dir: str, out: str, seed: int):
    """Random rank-2 adapters on the model in `base_dir`, saved as an adapter directory naming it;
    the merged model."""
    return merged_model(write_adapter_dir(base_dir, out, base_dir, LoraSpec(rank=2, alpha=4.0), seed, scale=0.2))


def push(server, model_dir, key, blessed):
    return push_model(tracking_uri=server.uri, experiment_name=NAME, registered_model_name=NAME, model_dir=model_dir,
                      model_key=key, params={"train.lora_rank": "2"}, history=[], eval_metrics={"eval_loss": 4.0},
                      blessed=blessed, input_example=["The"])


@pytest.fixture(scope="module")
def pushed(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = tiny_model_dir(str(root / "base"), n_embd=32, n_ctx=32)
    merged = [adapter_dir(base, str(root / f"adapter{i}"), seed=i) for i in range(2)]
    versions = [push(mlflow_server, str(root / f"adapter{i}"), f"lora-{i}", blessed=i == 0) for i in range(2)]
    return base, merged, versions


def logits(model):
    return np.asarray(model(TOKENS))


def test_adapter_version_is_tagged_with_its_base_registered_once(mlflow_server, pushed):
    base, _, versions = pushed
    client = MlflowClient(mlflow_server.uri)
    bases = client.search_model_versions(f"name = '{NAME}-base'")
    assert len(bases) == 1  # the second push found it by the base's path
    for result in versions:
        tags = client.get_model_version(NAME, str(result.version)).tags
        assert tags[ADAPTER_TAG] == "lora" and tags[BASE_MODEL_TAG] == f"models:/{NAME}-base/1"
    assert bases[0].tags["tfx_gpt2.model_key"] == os.path.abspath(base)


def _artifact_bytes(client, run_id, path="model"):
    total = 0
    for item in client.list_artifacts(run_id, path):
        total += _artifact_bytes(client, run_id, item.path) if item.is_dir else item.file_size
    return total


def test_adapter_version_is_far_smaller_than_its_base(mlflow_server, pushed):
    client = MlflowClient(mlflow_server.uri)
    _, _, versions = pushed
    base_run = client.get_model_version(f"{NAME}-base", "1").run_id
    adapter = _artifact_bytes(client, versions[0].run_id)
    files = {i.path.rsplit("/", 1)[-1] for i in client.list_artifacts(versions[0].run_id, "model/artifacts/model_dir")}
    assert "model.weights.npz" not in files and {"adapter_model.safetensors", PEFT_CONFIG} <= files
    # Both carry the 1.5 MB vocabulary; the base's weights are 50257 x 32 floats and more.
    assert _artifact_bytes(client, base_run) - adapter > 6_000_000


def test_pyfunc_serves_base_plus_adapters(mlflow_server, pushed, monkeypatch):
    import mlflow.pyfunc

    from tfx_gpt2.model.generate import generate_text
    from tfx_gpt2.text.bpe import BPETokenizer, official_vocab_dir

    _, merged, versions = pushed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{versions[1].version}")
    settings = {"max_new_tokens": 6, "temperature": 0.0}
    expected = generate_text(merged[1], BPETokenizer.from_dir(official_vocab_dir()), ["The"], max_new_tokens=6, temperature=0.0)
    assert loaded.predict(["The"], params=settings) == expected


def test_champion_download_and_the_servers_loader_merge_the_adapters(mlflow_server, pushed, tmp_path, monkeypatch):
    from tfx_gpt2.serving.deployment import load_version_model, model_dir_of

    _, merged, versions = pushed
    champion = download_champion(mlflow_server.uri, NAME, str(tmp_path / "c"))
    assert champion.version == versions[0].version
    with open(os.path.join(champion.model_dir, PEFT_CONFIG)) as f:
        assert json.load(f)["base_model_name_or_path"] == f"models:/{NAME}-base/1"
    np.testing.assert_allclose(logits(load_model(champion.model_dir)), logits(merged[0]), atol=2e-5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    path = model_dir_of(f"models:/{NAME}/{versions[1].version}")
    served = load_version_model(path)
    assert served.lora is None
    np.testing.assert_allclose(logits(served), logits(merged[1]), atol=2e-5)
