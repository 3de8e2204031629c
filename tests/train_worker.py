"""A training run in its own process, for the distribution and kill-and-resume tests.

    python tests/train_worker.py OUT_DIR [--logical-cpus 2] [--distribution mirrored]
        [--checkpoint-every N] [--max-steps N] [--step-delay S] [--checkpoint-dir DIR]

With `--distribution multi_worker`, start one process per worker, each with its own TF_CONFIG
and OUT_DIR and the same `--checkpoint-dir`. `start(ARGS)` runs it in a process forked from one
that imported TensorFlow once, instead of a new interpreter (10 s of imports each).

Writes deterministic counting blocks, trains a small GPT-2, and writes OUT_DIR/result.json
(per-step losses) and OUT_DIR/weights.npz; each step's loss is also appended to
OUT_DIR/losses.jsonl as it is taken. `--step-delay` sleeps after each step so that a test can
kill the process mid-run.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--logical-cpus", type=int, default=0)
    p.add_argument("--distribution", default="one_device")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--xla", type=int, default=1)
    p.add_argument("--checkpoint-dir", default="", help="default: OUT/ckpt (workers of one run share one)")
    args = p.parse_args(argv)

    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tfx_gpt2.config.model import GPT2Config, TrainConfig
    from tfx_gpt2.text.blocks import block_to_example
    from tfx_gpt2.training import loop as training

    data = os.path.join(args.out, "data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("eval", 16)):
        os.makedirs(os.path.join(data, split), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(data, split, "b.gz"), "GZIP") as w:
            for s in rng.integers(0, 64, n):
                w.write(block_to_example([(s + i) % 64 for i in range(9)]).SerializeToString())

    # Every step's loss goes to OUT_DIR/losses.jsonl as it is taken (a killed run keeps its
    # curve), then `--step-delay` pauses, so that a test can kill the run mid-way.
    import time

    step = training.TrainStep.__call__
    os.makedirs(args.out, exist_ok=True)
    losses_log = open(os.path.join(args.out, "losses.jsonl"), "a")

    def logged_step(self, *a, **kw):
        loss, grad_norm = step(self, *a, **kw)
        losses_log.write(json.dumps(float(loss)) + "\n")
        losses_log.flush()
        time.sleep(args.step_delay)
        return loss, grad_norm

    training.TrainStep.__call__ = logged_step
    model_cfg = GPT2Config(n_vocab=64, n_ctx=8, n_embd=32, n_layer=2, n_head=2)
    cfg = TrainConfig(batch_size=8, max_steps=args.max_steps, learning_rate=1e-2, min_learning_rate=1e-3,
                      warmup_steps=2, eval_every=1000, eval_batches=1, log_every=1, shuffle_buffer=32,
                      distribution=args.distribution, checkpoint_every=args.checkpoint_every, xla=bool(args.xla))
    model, result = training.train(model_cfg, cfg, [os.path.join(data, "train", "*")], [os.path.join(data, "eval", "*")],
                                   checkpoint_dir=args.checkpoint_dir or os.path.join(args.out, "ckpt"))
    np.savez(os.path.join(args.out, "weights.npz"), **{k.replace("/", "."): v for k, v in model.weights_by_name().items()})
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"losses": [h["loss"] for h in result.history], "steps": result.steps,
                   "resumed_from_step": result.resumed_from_step}, f)


PRELOAD = ("tensorflow", "tfx_gpt2.training.loop", "train_worker")


def start(argv, env=None):
    """`python train_worker.py ARGV` with the environment `env` (default: this one), forked from a
    server process that imported PRELOAD once (TensorFlow's runtime is not started there, so the
    logical CPUs and TF_CONFIG still apply). A `multiprocessing.Process`: `.exitcode` is None
    while it runs, -9 after SIGKILL."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    process = context.Process(target=_forked_main, args=(list(argv), dict(env or os.environ)))
    process.start()
    return process


def _forked_main(argv, env):
    os.environ.clear()
    os.environ.update(env)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    main(argv)


if __name__ == "__main__":
    main()
