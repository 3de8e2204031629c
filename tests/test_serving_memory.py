"""A server that follows its champion alias through many swaps keeps a flat memory: each swap
loads the new version beside the old, and once the old engine has drained its weights and caches
are released and no program is compiled again (the `tiny` shape, six versions)."""

import gc
import threading

from conftest import wait_until
from mlflow_helpers import register_tiny

from tfx_gpt2.config.model import model_preset
from tfx_gpt2.model.sampling import SamplingConfig
from tfx_gpt2.serving.deployment import Deployment
from tfx_gpt2.serving.engine import EngineConfig, Request, Row

NAME = "memory-test"
SWAPS = 5


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def generate(deployment, tokenizer, n=4):
    """`n` requests of 16 sampled tokens through the engine serving now."""
    done = threading.Semaphore(0)
    for i in range(n):
        row = Row(tokenizer.encode(f"Hello {i}"), SamplingConfig(max_new_tokens=16, top_k=40))
        deployment.current.engine.submit(Request([row], lambda ev: ev[0] != "text" and done.release()))
    for _ in range(n):
        assert done.acquire(timeout=60)


def old_released(engine):
    return lambda: engine.released


def test_rss_stays_flat_over_five_swaps(tmp_path, tokenizer):
    tracking_uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    shape = {k: getattr(model_preset("tiny"), k) for k in ("n_ctx", "n_embd", "n_layer", "n_head")}

    def register(version):
        register_tiny(tracking_uri, str(tmp_path / f"v{version}"), NAME, key=f"v{version}", seed=version, **shape)

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    register(1)
    deployment = Deployment(f"models:/{NAME}@champion", EngineConfig(max_batch_size=4), poll_seconds=0)
    deployment.start()
    wait_until(lambda: deployment.ready or deployment.error, "version 1 did not load")
    assert deployment.error is None
    programs = set(deployment.current.engine.programs)
    generate(deployment, tokenizer)
    rss = []
    try:
        for version in range(2, SWAPS + 3):
            register(version)
            old = deployment.current.engine
            assert deployment.check_alias() and deployment.current.version == str(version)
            generate(deployment, tokenizer)
            wait_until(old_released(old), f"the engine of version {version - 1} was not released")
            del old
            gc.collect()
            rss.append(rss_mb())
            assert deployment.current.engine.programs == programs  # the same shape compiles nothing new
    finally:
        deployment.stop()
    first, last = rss[0], rss[-1]
    print("RSS after each swap (MB):", [round(r) for r in rss])
    assert last <= first * 1.10, f"RSS grew from {first:.0f} MB after the first swap to {last:.0f} MB after {SWAPS + 1}"
