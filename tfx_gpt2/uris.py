"""Artifact folders that may be in a bucket (`gs://...` under Kubeflow or Vertex AI).

The model code (Keras weights, the vocabulary, MLflow's `log_artifacts`) reads and writes local
folders. A component whose artifact URI is remote reads a local copy (`local_copy`) and writes a
local folder that is uploaded when it is complete (`staged_output`); a local URI is used as it is.
Copies go through `tf.io.gfile`, so any filesystem TensorFlow knows works (gs://, s3:// with
tensorflow-io, ram:// in tests).
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator


def is_remote(uri: str) -> bool:
    return "://" in uri


def copy_tree(src: str, dst: str) -> None:
    """Copies the folder `src` into `dst` (created), file by file, across filesystems."""
    import tensorflow as tf

    src = src.rstrip("/")
    for folder, _, files in tf.io.gfile.walk(src):
        target = os.path.join(dst, folder[len(src):].lstrip("/"))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name), overwrite=True)


def local_copy(uri: str) -> str:
    """`uri` itself when local; else a new temporary local folder holding a copy of it."""
    if not is_remote(uri):
        return uri
    local = tempfile.mkdtemp(prefix="tfx_gpt2-input-")
    copy_tree(uri, local)
    return local


@contextlib.contextmanager
def staged_output(uri: str) -> Iterator[str]:
    """A local folder to write the contents of `uri` into: `uri` itself when local, else a
    temporary folder uploaded to `uri` once the block ends without an error."""
    if not is_remote(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    local = tempfile.mkdtemp(prefix="tfx_gpt2-output-")
    try:
        yield local
        copy_tree(local, uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
