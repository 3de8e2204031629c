"""What the server serves, and the registry watch that switches it to a new champion.

`tfx-gpt2 serve MODEL_URI` takes a registry URI (`models:/NAME@ALIAS` or `models:/NAME/VERSION`),
a run's model (`runs:/RUN_ID/model`), an MLflow model directory (with an `MLmodel` file) or a
tfx-gpt2 model directory. For `models:/NAME@ALIAS`, `Deployment.watch` checks the alias every
`poll_seconds`; when it points at another version, that version is loaded and compiled beside
the one serving, then new requests go to it while the old engine finishes what it holds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import tempfile
import threading
import time
from typing import Callable, Optional, Tuple

from tfx_gpt2.registry.client import ALIAS_URI, VERSION_URI
from tfx_gpt2.serving.engine import Engine, EngineConfig, programs_expected

log = logging.getLogger("tfx_gpt2.serving")



class ModelLoadError(RuntimeError):
    """The model URI cannot be resolved or loaded; the message says which and why."""


@dataclasses.dataclass
class Served:
    """A loaded model and the engine generating with it."""

    name: str
    version: str
    source: str
    engine: Engine
    tokenizer: object
    n_ctx: int
    n_vocab: int
    compile_seconds: float = 0.0
    loaded_at: float = dataclasses.field(default_factory=time.time)


def resolve(uri: str) -> Tuple[str, str, str]:
    """(name, version, pinned URI) of a model URI; an alias is resolved to its current version."""
    if os.path.isdir(uri):
        return os.path.basename(os.path.abspath(uri)), "local", os.path.abspath(uri)
    m = ALIAS_URI.match(uri)
    if m:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            version = MlflowClient().get_model_version_by_alias(m["name"], m["alias"]).version
        except MlflowException as e:
            raise ModelLoadError(f"cannot resolve {uri}: {e.message}") from None
        return m["name"], str(version), f"models:/{m['name']}/{version}"
    m = VERSION_URI.match(uri)
    if m:
        return m["name"], m["version"], uri
    if uri.startswith("runs:/"):
        run_id = uri.split("/")[1]
        return run_id, run_id[:8], uri
    raise ModelLoadError(f"model URI {uri!r} is not a directory, models:/NAME@ALIAS, models:/NAME/VERSION or "
                         "runs:/RUN_ID/PATH")


def model_dir_of(pinned: str) -> str:
    """A local tfx-gpt2 model directory (or LoRA adapter directory) for a pinned URI, downloading
    registry artifacts."""
    from tfx_gpt2.config.checkpoint_shape import CONFIG_FILE, PEFT_CONFIG
    from tfx_gpt2.registry.champion import pyfunc_model_dir

    local = pinned
    if not os.path.isdir(pinned):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=pinned,
                                                        dst_path=tempfile.mkdtemp(prefix="tfx-gpt2-serve-"))
        except (MlflowException, OSError) as e:
            raise ModelLoadError(f"cannot download {pinned}: {e}") from None
    path = local if os.path.exists(os.path.join(local, CONFIG_FILE)) or os.path.exists(
        os.path.join(local, PEFT_CONFIG)) else pyfunc_model_dir(local)
    if path is None:
        raise ModelLoadError(f"{pinned} holds neither a tfx-gpt2 model directory ({CONFIG_FILE}), a LoRA adapter "
                             f"({PEFT_CONFIG}) nor a tfx-gpt2 MLflow model (MLmodel with a model_dir artifact)")
    return path


def load_version_model(path: str):
    """The model of a downloaded version's folder; LoRA adapters are merged onto their registered
    base, fetched from the registry into a temporary folder that is removed once loaded (a hot swap
    leaves no copy behind)."""
    from mlflow.exceptions import MlflowException

    from tfx_gpt2.registry.champion import load_model_with_base

    try:
        return load_model_with_base(path)
    except (MlflowException, OSError) as e:
        raise ModelLoadError(f"cannot load the model in {path} (adapters: with their registered base): {e}") from None


def load(uri: str, engine_config: EngineConfig, on_batch: Optional[Callable[[int], None]] = None,
         resolved: Optional[Tuple[str, str, str]] = None, note: Callable[[str], None] = lambda phase: None) -> Served:
    """Resolves (unless `resolved` is given), loads and compiles `uri`; the engine is started.
    `note` is told each phase as it begins."""
    from tfx_gpt2.text.bpe import BPETokenizer

    if resolved is None:
        note(f"resolving {uri} in the registry")
    name, version, pinned = resolved or resolve(uri)
    note(f"downloading {pinned}")
    path = model_dir_of(pinned)
    note(f"loading version {version} from {path}")
    model = load_version_model(path)  # LoRA adapters merged at load
    tokenizer = BPETokenizer.from_dir(path)
    engine = Engine(model, tokenizer, engine_config, on_batch=on_batch)
    note(f"compiling version {version}: {sum(programs_expected(engine_config, model.config.n_ctx).values())} "
         "programs")
    seconds = engine.warm_up()
    log.info("serving %s version %s (%s): %d programs compiled in %.1f s", name, version, pinned,
             len(engine.programs), seconds)
    return Served(name, version, pinned, engine.start(), tokenizer, model.config.n_ctx, model.config.n_vocab,
                  compile_seconds=seconds)


def _retire(served: Served) -> None:
    """Lets `served`'s engine finish what it holds, then gives its memory back: the engine drops
    its weights and caches when it stops, and the C heap returns freed pages to the system (glibc
    keeps them otherwise, and the process's resident size would stay at its peak)."""
    served.engine.stop(drain=True)
    del served
    gc.collect()
    release_freed_memory()


def release_freed_memory() -> None:
    """Returns the C heap's free pages to the system, where the C library can (glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class Deployment:
    """The model being served, loaded in the background, and switched when its alias moves.

    Args:
        uri: the model URI given to `tfx-gpt2 serve`.
        engine_config: batching settings for every engine.
        poll_seconds: how often to check a `models:/NAME@ALIAS` alias (0: never).
        on_change: called with each `Served` once it serves (for metrics).
        on_batch: passed to each engine.
    """

    def __init__(self, uri: str, engine_config: EngineConfig = EngineConfig(), poll_seconds: float = 30.0,
                 on_change: Optional[Callable[[Served], None]] = None,
                 on_batch: Optional[Callable[[int], None]] = None):
        self.uri, self.engine_config, self.poll_seconds = uri, engine_config, poll_seconds
        self.on_change, self.on_batch = on_change, on_batch
        self.current: Optional[Served] = None
        self.error: Optional[str] = None  # why the first load failed (it is retried)
        self.phase = "starting"  # what the first load is doing
        self._stop = threading.Event()
        self._threads = []

    @property
    def ready(self) -> bool:
        return self.current is not None

    def start(self) -> None:
        """Loads in the background (the server answers `/health` with 503 meanwhile), then watches."""
        t = threading.Thread(target=self._load_and_watch, name="tfx-gpt2-deployment", daemon=True)
        t.start()
        self._threads.append(t)

    def _load_and_watch(self, first_retry: float = 2.0, last_retry: float = 60.0):
        """Loads the model, retrying with a doubling delay while it fails (a registry that is
        down at start is not fatal), then watches the alias."""
        delay = first_retry
        while True:
            try:
                self._switch(load(self.uri, self.engine_config, self.on_batch, note=self._note))
                self.error = None
                break
            except Exception as e:  # noqa: BLE001 -- reported by /health, and retried
                self.error = f"{e} (retrying in {delay:.0f} s)"
                log.error("cannot serve %s: %s", self.uri, self.error)
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, last_retry)
        if self.poll_seconds > 0 and ALIAS_URI.match(self.uri):
            while not self._stop.wait(self.poll_seconds):
                self.check_alias()

    def _note(self, phase: str) -> None:
        self.phase = phase
        log.info("%s", phase)

    def check_alias(self) -> bool:
        """Switches to the alias's version if it moved; True if it did."""
        try:
            resolved = resolve(self.uri)
            version = resolved[1]
            if self.current is not None and version == self.current.version:
                return False
            log.info("%s now points at version %s; loading it beside version %s", self.uri, version,
                     self.current.version if self.current else None)
            self._switch(load(self.uri, self.engine_config, self.on_batch, resolved=resolved))
            return True
        except Exception as e:  # a registry outage must not stop the model being served
            log.warning("checking %s failed (still serving version %s): %s", self.uri,
                        self.current.version if self.current else None, e)
            return False

    def _switch(self, served: Served) -> None:
        old, self.current = self.current, served
        if self.on_change:
            self.on_change(served)
        if old is not None:
            log.info("switched from version %s to %s; draining the old engine", old.version, served.version)
            threading.Thread(target=_retire, args=(old,), name="tfx-gpt2-retire", daemon=True).start()

    def stop(self, drain: bool = True) -> None:
        self._stop.set()
        if self.current is not None:
            self.current.engine.stop(drain=drain)
