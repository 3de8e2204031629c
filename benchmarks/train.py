"""Training speed: tfx-gpt2's trainer against Hugging Face's GPT-2 on the same shapes, with MFU;
and LoRA against a full fine-tune.

    .venv/bin/python benchmarks/train.py                       # tiny preset, and 124M shape at seq 256
    .venv/bin/python benchmarks/train.py --shapes tiny --steps 3   # a smoke run
    .venv/bin/python benchmarks/train.py --lora                # LoRA rank 8 vs full fine-tune, 124M shape

For each shape, random token blocks are written to disk and both implementations take optimizer
steps of the same batch (AdamW, gradient clipping, XLA):

    ours   `tfx_gpt2.training.loop.train()` itself (the TFX Trainer's loop: data pipeline, step,
           logging), tokens/s of its logging windows after the first `--warmup` steps
           (compilation excluded).
    HF     transformers' `TFGPT2LMHeadModel` (the Hugging Face implementation that runs in this
           environment; PyTorch is not installed) in a `tf.function(jit_compile=True)` step with
           tf-keras' AdamW, timed after `--warmup` steps.

The two alternate for `--rounds` rounds (ours, HF, ours, HF, ...) so that a slow minute of a
shared machine hits both; each round gives a ratio, and the table shows the medians over rounds
and the range of the per-round ratios.

Model FLOPs utilisation, with the formula printed: FLOPs per token = 6 N + 12 L T C (N the
parameters without the position embedding, L layers, T sequence length, C width: the forward
and backward matmuls plus attention scores), MFU = tokens/s x FLOPs per token / peak. The peak is
`--peak-tflops` if given, else the datasheet value for a recognised GPU (H100, H200, A100: bf16
dense), else a float32 matmul measured on this device (labelled as such). It runs on a GPU as is.

`--lora` compares, at the 124M shape (`--seq-len`, `--batch`), the `lora` preset's adapters (rank 8
on every projection) with a full fine-tune: the same base (`--base`, a checkpoint directory; by
default a seeded random 124M, since no published weights are reachable from every machine), the
same `--steps` (default 20) on the bundled corpus (OpenAI's vocabulary), the same learning rate
schedule shape (each its preset's peak). Each runs in a process of its own, which reports the
trainable parameters, the peak memory (the GPU's allocator peak on a GPU; on a CPU the process's
peak resident memory above what it held before building the model), the tokens/s of the steps
after `--warmup`, and the eval perplexity after the last step. Targets: under 1% trainable, peak
memory at most 60% of the full fine-tune's, tokens/s at least 1.2x.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import numpy as np  # noqa: E402

DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}


def flops_per_token(cfg) -> float:
    n = cfg.num_params() - cfg.n_ctx * cfg.n_embd
    return 6 * n + 12 * cfg.n_layer * cfg.n_ctx * cfg.n_embd


def peak_tflops(given: float):
    import tensorflow as tf

    if given:
        return given, "given"
    for gpu in tf.config.list_physical_devices("GPU"):
        name = tf.config.experimental.get_device_details(gpu).get("device_name", "")
        for key, value in DATASHEET_TFLOPS.items():
            if key in name:
                return value, f"{name} datasheet, bf16 dense"
    a = tf.random.normal((2048, 2048))
    f = tf.function(lambda a: tf.matmul(a, a), jit_compile=True)
    f(a).numpy()
    t0 = time.perf_counter()
    for _ in range(10):
        f(a).numpy()
    seconds = (time.perf_counter() - t0) / 10
    return 2 * 2048 ** 3 / seconds / 1e12, "measured float32 2048x2048 matmul on this device"


def write_blocks(path, n, block_len, vocab, seed=0):
    import tensorflow as tf

    from tfx_gpt2.text.blocks import block_to_example

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(n):
            w.write(block_to_example(rng.integers(0, vocab, block_len).tolist()).SerializeToString())


def ours(cfg, batch, steps, warmup, tmp):
    from tfx_gpt2.config.model import TrainConfig
    from tfx_gpt2.training.loop import train

    if not os.path.exists(os.path.join(tmp, "train")):
        write_blocks(os.path.join(tmp, "train", "b.tfrecord"), batch * 4, cfg.n_ctx + 1, cfg.n_vocab)
        write_blocks(os.path.join(tmp, "eval", "b.tfrecord"), batch, cfg.n_ctx + 1, cfg.n_vocab)
    tc = TrainConfig(batch_size=batch, max_steps=steps + warmup, warmup_steps=1, eval_every=10_000, eval_batches=1,
                     log_every=1, shuffle_buffer=batch, checkpoint_every=0)
    _, result = train(cfg, tc, [os.path.join(tmp, "train", "*")], [os.path.join(tmp, "eval", "*")])
    return float(np.median([h["tokens_per_sec"] for h in result.history[warmup:]]))


class HuggingFace:
    """Hugging Face's GPT-2 and its training step, built and compiled once, timed per round."""

    def __init__(self, cfg, batch):
        import tensorflow as tf
        import tf_keras
        from transformers import GPT2Config, TFGPT2LMHeadModel

        self.tokens = batch * cfg.n_ctx
        model = TFGPT2LMHeadModel(GPT2Config(vocab_size=cfg.n_vocab, n_positions=cfg.n_ctx, n_embd=cfg.n_embd,
                                             n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0,
                                             embd_pdrop=0.0, attn_pdrop=0.0))
        optimizer = tf_keras.optimizers.AdamW(learning_rate=3e-4, weight_decay=0.1, global_clipnorm=1.0)
        self.x = tf.constant(np.random.default_rng(0).integers(0, cfg.n_vocab, (batch, cfg.n_ctx + 1)), tf.int32)

        @tf.function(jit_compile=True)
        def step(x):
            with tf.GradientTape() as tape:
                logits = model(x[:, :-1], training=True).logits
                loss = tf.reduce_mean(
                    tf.keras.losses.sparse_categorical_crossentropy(x[:, 1:], logits, from_logits=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self.step = step
        step(self.x).numpy()  # build + compile

    def __call__(self, steps, warmup):
        times = []
        for i in range(steps + warmup):
            t0 = time.perf_counter()
            self.step(self.x).numpy()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return self.tokens / float(np.median(times))


CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "pydoc_topics")


def corpus_blocks(out: str, block_len: int) -> None:
    """The bundled corpus in OpenAI's vocabulary, packed into blocks: every tenth document to eval."""
    import tensorflow as tf

    from tfx_gpt2.text.blocks import serialize_blocks
    from tfx_gpt2.text.bpe import BPETokenizer, official_vocab_dir

    tokenizer = BPETokenizer.from_dir(official_vocab_dir())
    streams = {"train": [], "eval": []}
    documents = []
    for name in sorted(os.listdir(CORPUS)):
        with open(os.path.join(CORPUS, name), encoding="utf-8") as f:
            documents += [d for d in f.read().split("<|endoftext|>") if d.strip()]
    for i, document in enumerate(documents):
        streams["eval" if i % 10 == 9 else "train"] += tokenizer.encode_document(document)
    for split, tokens in streams.items():
        blocks = [tokens[i:i + block_len] for i in range(0, len(tokens) - block_len + 1, block_len)]
        os.makedirs(os.path.join(out, split), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(out, split, "blocks.tfrecord")) as w:
            for record in serialize_blocks(blocks):
                w.write(record)


def memory_now() -> int:
    """This process's resident memory (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def benchmark_base(args):
    """The model both sides of `--lora` start from: `--base`, or a seeded random 124M at `--seq-len`."""
    import dataclasses

    import keras

    from tfx_gpt2.config.model import model_preset
    from tfx_gpt2.model.checkpoints import load_model
    from tfx_gpt2.model.gpt2 import GPT2

    if args.base:
        return load_model(args.base)
    keras.utils.set_random_seed(0)
    return GPT2(dataclasses.replace(model_preset("124M"), n_ctx=args.seq_len))


def lora_variant(kind: str, args) -> dict:
    """One side of `--lora` (`kind` 'lora' or 'full'), in this process; its figures."""
    import dataclasses
    import resource

    import tensorflow as tf

    from tfx_gpt2.config.model import train_preset, with_max_steps
    from tfx_gpt2.text.blocks import block_dataset
    from tfx_gpt2.training.evaluation import evaluate
    from tfx_gpt2.training.loop import precision_policy, train
    from tfx_gpt2.training.perplexity import perplexity

    gpus = tf.config.list_physical_devices("GPU")
    start = memory_now()
    steps = args.steps or 20
    preset = train_preset("lora" if kind == "lora" else "finetune")
    tc = dataclasses.replace(with_max_steps(preset, steps + args.warmup), batch_size=args.batch, eval_every=10_000,
                             eval_batches=1, log_every=1, checkpoint_every=0, checkpoint_every_seconds=0.0,
                             lora_dropout=0.0, shuffle_buffer=64, samples_every=0,
                             mixed_precision=args.mixed_precision, recompute=args.recompute)
    files = [os.path.join(args.data, s, "*") for s in ("train", "eval")]
    # Loaded by train(), which keeps one copy of the weights: the model it trains.
    model, result = train(None, tc, [files[0]], [files[1]], load_model=lambda: benchmark_base(args))
    cfg = model.config
    eval_loss, _ = evaluate(model, block_dataset([files[1]], cfg.n_ctx + 1, args.batch))
    peak = tf.config.experimental.get_memory_info("GPU:0" if gpus else "CPU:0")["peak"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    return {"kind": kind, "trainable": result.trainable_params, "params": cfg.num_params(),
            "tokens_per_sec": float(np.median([h["tokens_per_sec"] for h in result.history[args.warmup:]])),
            "peak_bytes": int(peak), "rss_bytes": int(rss),
            "memory": "TensorFlow allocator peak, " + ("GPU:0" if gpus else "CPU:0"),
            "eval_perplexity": perplexity(eval_loss), "steps": result.steps,
            "policy": precision_policy(args.mixed_precision)}


def compare_lora(args) -> dict:
    """`--lora`: each side in its own process (peak memory is per process); the table and ratios."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        corpus_blocks(tmp, args.seq_len + 1)
        sides = {}
        for kind in ("full", "lora"):
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", kind, "--data", tmp, "--seq-len",
                   str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps or 20), "--warmup",
                   str(args.warmup), "--mixed-precision", args.mixed_precision]
            cmd += ["--recompute"] if args.recompute else []
            cmd += ["--base", args.base] if args.base else []
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            sides[kind] = json.loads(out.strip().splitlines()[-1])
    full, lora = sides["full"], sides["lora"]
    ratios = {"trainable_share": lora["trainable"] / lora["params"],
              "memory_ratio": lora["peak_bytes"] / full["peak_bytes"],
              "rss_ratio": lora["rss_bytes"] / full["rss_bytes"],
              "speed_ratio": lora["tokens_per_sec"] / full["tokens_per_sec"]}
    print(f"\n124M shape, seq {args.seq_len}, batch {args.batch}, {full['steps']} steps each, mixed precision "
          f"{args.mixed_precision} ({full['policy']}){', recompute' if args.recompute else ''}; peak memory: {full['memory']}\n")
    print("| | trainable params | peak memory | peak RSS above start | tokens/s | eval perplexity |")
    print("|---|---|---|---|---|---|")
    for side in (full, lora):
        print(f"| {side['kind']} | {side['trainable']:,} ({side['trainable'] / side['params']:.2%}) | "
              f"{side['peak_bytes'] / 2**30:.2f} GiB | {side['rss_bytes'] / 2**30:.2f} GiB | "
              f"{side['tokens_per_sec']:,.0f} | {side['eval_perplexity']:.1f} |")
    print(f"\nLoRA/full: trainable {ratios['trainable_share']:.2%} of the parameters (target < 1%), peak memory "
          f"{ratios['memory_ratio']:.2f}x (target <= 0.60; peak RSS {ratios['rss_ratio']:.2f}x), tokens/s "
          f"{ratios['speed_ratio']:.2f}x (target >= 1.2)")
    return {**sides, **ratios}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,124M", help="comma-separated: tiny, 124M (at --seq-len)")
    parser.add_argument("--seq-len", type=int, default=256, help="sequence length of the 124M shape")
    parser.add_argument("--batch", type=int, default=4, help="batch of the 124M shape")
    parser.add_argument("--tiny-batch", type=int, default=0, help="batch of the tiny shape (default: its preset's, 16)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per implementation and round (default: 30 for tiny, 5 for 124M)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and HF")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: see above)")
    parser.add_argument("--lora", action="store_true", help="LoRA rank 8 against a full fine-tune (see above)")
    parser.add_argument("--base", default="", help="--lora: the checkpoint to fine-tune (default: a random 124M)")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="--lora: TrainConfig.mixed_precision of both sides (auto: bf16 on recent GPUs, off on a CPU)")
    parser.add_argument("--recompute", action="store_true",
                        help="--lora: both sides recompute each block's activations in the backward pass")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # one side of --lora
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        import json

        print(json.dumps(lora_variant(args.variant, args)))
        return None
    if args.lora:
        return compare_lora(args)

    import dataclasses

    from tfx_gpt2.config.model import model_preset, train_preset

    peak, peak_source = peak_tflops(args.peak_tflops)
    rows = []
    for shape in args.shapes.split(","):
        cfg = model_preset(shape)
        if shape != "tiny":
            cfg = dataclasses.replace(cfg, n_ctx=args.seq_len)
        # The tiny shape trains with its preset's batch (16); the 124M shape with --batch.
        if shape == "tiny":
            batch = args.tiny_batch or train_preset("tiny").batch_size
        else:
            batch = args.batch
        steps = args.steps or (30 if shape == "tiny" else 5)
        ours_tps, hf_tps = [], []
        with tempfile.TemporaryDirectory() as tmp:
            hf = None
            for r in range(args.rounds):
                ours_tps.append(ours(cfg, batch, steps, args.warmup, tmp))
                hf = hf or HuggingFace(cfg, batch)
                hf_tps.append(hf(steps, args.warmup))
                print(f"{shape} round {r + 1}: ours {ours_tps[-1]:,.0f} tokens/s, HF {hf_tps[-1]:,.0f} "
                      f"({ours_tps[-1] / hf_tps[-1]:.2f}x)", flush=True)
        ratios = [o / h for o, h in zip(ours_tps, hf_tps)]
        o, h = float(np.median(ours_tps)), float(np.median(hf_tps))
        fpt = flops_per_token(cfg)
        rows.append({"shape": shape, "seq": cfg.n_ctx, "batch": batch, "params": cfg.num_params(), "ours": o,
                     "hf": h, "ratio": float(np.median(ratios)), "ratio_range": (min(ratios), max(ratios)),
                     "flops_per_token": fpt, "mfu_ours": o * fpt / (peak * 1e12), "mfu_hf": h * fpt / (peak * 1e12)})

    print("\nFLOPs per token = 6 N + 12 L T C (N: parameters without position embeddings, L layers, "
          "T sequence length, C width)")
    print(f"peak: {peak:.2f} TFLOP/s ({peak_source})\n")
    print(f"medians over {args.rounds} round(s); ours/HF is the median of the per-round ratios [their range]\n")
    print("| shape | seq | batch | params | ours tokens/s | HF tokens/s | ours/HF | MFU ours | MFU HF |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['seq']} | {r['batch']} | {r['params'] / 1e6:.1f}M | {r['ours']:,.0f} | {r['hf']:,.0f} | "
              f"{r['ratio']:.2f} [{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}] | {r['mfu_ours']:.1%} | "
              f"{r['mfu_hf']:.1%} |")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
