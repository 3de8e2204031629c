"""Artifact folders in a bucket: the components read a local copy and write a local folder that is
uploaded whole (`tfx_gpt2.uris`). TensorFlow's in-memory filesystem (`ram://`) stands in for gs://:
builtin `open` cannot reach it, `tf.io.gfile` can."""

import os

import numpy as np
import pytest
import tensorflow as tf
from mlflow_helpers import tiny_model_dir

from tfx_gpt2.model.io import load_model_dir, save_model_dir
from tfx_gpt2.uris import is_remote, local_copy, staged_output


def test_a_model_folder_goes_to_a_bucket_and_back(tmp_path):
    source = tiny_model_dir(str(tmp_path / "model"))
    model = load_model_dir(source)
    uri = "ram://bucket/run-1/Trainer/model/Format-Serving"
    with staged_output(uri) as local:
        assert not is_remote(local)
        save_model_dir(model, local, source)
        with open(os.path.join(local, "train_metrics.json"), "w") as f:
            f.write("{}")
    assert tf.io.gfile.exists(uri + "/train_metrics.json")
    with pytest.raises(OSError):
        open(uri + "/train_metrics.json")  # what the components did before
    back = local_copy(uri)
    assert not is_remote(back) and os.path.exists(os.path.join(back, "train_metrics.json"))
    again = load_model_dir(back)
    for name, value in model.weights_by_name().items():
        np.testing.assert_array_equal(again.weights_by_name()[name], value)


def test_local_folders_are_used_as_they_are(tmp_path):
    assert local_copy(str(tmp_path)) == str(tmp_path)
    with staged_output(str(tmp_path / "out")) as local:
        assert local == str(tmp_path / "out") and os.path.isdir(local)


def test_nothing_is_uploaded_when_writing_fails():
    uri = "ram://bucket/failed"
    with pytest.raises(RuntimeError):
        with staged_output(uri) as local:
            with open(os.path.join(local, "half"), "w") as f:
                f.write("x")
            raise RuntimeError("the trainer failed")
    assert not tf.io.gfile.exists(uri)
