"""The data components on Beam's DirectRunner in multi-process mode: both cores do work, and the
output is the same as with one process (the same documents in each split, the same token counts).
The same holds through Beam's portable runner and a real job service (`job_endpoint=embed`, the
SDK in this process): the path Flink and Spark take (`tfx_gpt2.orchestration.beam_args`)."""

import collections
import os
import shutil
import threading
import time

import psutil
import pytest
import tensorflow as tf
from conftest import CORPUS_DIR

from tfx_gpt2.orchestration.beam_args import portable_args
from tfx_gpt2.orchestration.beam_local import run_local
from tfx_gpt2.orchestration.mlmd_runs import metadata_config
from tfx_gpt2.pipeline import DataConfig, TextFolder, create_data_pipeline

MULTI = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
ONE = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


class ChildCpu:
    """Samples the CPU time of every descendant process while a run lasts."""

    def __init__(self):
        self.cpu = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    times = child.cpu_times()
                    self.cpu[child.pid] = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(tmp, name, corpus, beam_args):
    root = os.path.join(tmp, name)
    # Without the validation components: the outputs compared are the examples and the blocks.
    pipeline = create_data_pipeline(name, os.path.join(root, "pipeline"), DataConfig(TextFolder(corpus), validate=False),
                                    block_len=65,
                                    metadata_connection_config=metadata_config(os.path.join(root, "md.db")),
                                    beam_pipeline_args=beam_args)
    with ChildCpu() as cpu:
        run_local(pipeline)
    return root, cpu.cpu


def documents(root):
    out = collections.defaultdict(collections.Counter)
    for split in ("train", "eval"):
        for path in tf.io.gfile.glob(os.path.join(root, "pipeline", "TextExampleGen", "examples", "*",
                                                  f"Split-{split}", "*")):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                example = tf.train.Example.FromString(record.numpy())
                out[split][example.features.feature["text"].bytes_list.value[0]] += 1
    return out


def encoder_stats(root):
    import json

    stats = {}
    for split in ("train", "eval"):
        (path,) = tf.io.gfile.glob(os.path.join(root, "pipeline", "BpeEncoder", "encoded", "*", f"stats-{split}.json"))
        with open(path) as f:
            s = json.load(f)
        stats[split] = {k: s[k] for k in ("documents", "tokens", "bytes")}
    return stats


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("beam"))
    corpus = os.path.join(tmp, "corpus")
    os.makedirs(corpus)
    for copy in range(3):  # 12 files, ~1.4 MB: work for two workers
        for name in os.listdir(CORPUS_DIR):
            shutil.copy(os.path.join(CORPUS_DIR, name), os.path.join(corpus, f"{copy}_{name}"))
    one = run(tmp, "one", corpus, ONE)
    multi = run(tmp, "multi", corpus, MULTI)
    portable = run(tmp, "portable", corpus, list(portable_args("embed", environment_type="LOOPBACK")))
    return one, multi, portable


def test_multi_process_gives_the_same_output(both):
    (one, _), (multi, _), _ = both
    assert documents(one) == documents(multi)
    assert sum(documents(one)["train"].values()) > 150
    assert encoder_stats(one) == encoder_stats(multi)


def test_multi_process_uses_both_cores(both):
    (_, cpu_one), (_, cpu_multi), _ = both
    busy = sorted(v for v in cpu_multi.values() if v > 1.0)
    print(f"worker CPU seconds, multi-process: {sorted(cpu_multi.values())}; one process: {sorted(cpu_one.values())}")
    assert len(busy) >= 2  # two worker processes each did real work


def test_the_portable_runner_gives_the_same_output(both):
    (one, _), _, (portable, _) = both
    assert documents(one) == documents(portable)
    assert encoder_stats(one) == encoder_stats(portable)
