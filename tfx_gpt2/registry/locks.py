"""One push at a time per registered model: a file lock beside a local store, a lease tag on
the registered model against a tracking server (plain MLflow, no TFX)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid

from tfx_gpt2.file_lock import file_lock
from tfx_gpt2.registry.client import RegistryError, connect, lock_path

# On a registered model: the push holding it (`registry_lock` against a tracking server).
LOCK_TAG = "tfx_gpt2.push_lock"
LEASE_SECONDS = 900.0  # a lock left by a killed push expires after this


@contextlib.contextmanager
def registry_lock(tracking_uri: str, name: str, timeout: float = 1800.0):
    """Serialises pushes to the registered model `name` across processes and runs: the champion
    check, the registration and the alias moves of one push happen while no other push to `name`
    runs. With a local store (sqlite or a folder) an exclusive file lock beside it (released by
    the system when the process dies); with a tracking server, a lease held as a tag of the
    registered model (expiring after `LEASE_SECONDS`, so a killed push does not block forever).

    Raises:
        RegistryError: another push held the lock for `timeout` seconds.
    """
    path = lock_path(tracking_uri, name)
    lock = (file_lock(path, timeout, holder="another push", error=RegistryError) if path
            else _lease(tracking_uri, name, timeout))
    with lock:
        yield


@contextlib.contextmanager
def _lease(tracking_uri: str, name: str, timeout: float, settle: float = 2.0):
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout

    def holder():
        tag = client.get_registered_model(name).tags.get(LOCK_TAG, "")
        who, _, until = tag.rpartition("|")
        return who if who and float(until or 0) > time.time() else ""

    while True:
        current = holder()
        if not current:
            client.set_registered_model_tag(name, LOCK_TAG, f"{owner}|{time.time() + LEASE_SECONDS}")
            time.sleep(settle)  # two pushes that both saw it free: the last write wins, the other waits
            if holder() == owner:
                break
        elif time.monotonic() > deadline:
            raise RegistryError(f"another push to {name} ({current}) held the lock for {timeout:.0f} s")
        else:
            time.sleep(1.0)
    try:
        yield
    finally:
        if holder() == owner:
            client.delete_registered_model_tag(name, LOCK_TAG)
