"""Generation speed: tfx-gpt2's cached generation against its own no-cache loop and Hugging Face.

    .venv/bin/python benchmarks/generate.py                 # 124M shape, batch 1 and 8, 64 new tokens
    .venv/bin/python benchmarks/generate.py --model tiny --batch-sizes 1 --new-tokens 8   # a smoke run

One random model with GPT-2 124M's shape is written as a Hugging Face checkpoint; tfx-gpt2 loads it,
and so does transformers' TFGPT2LMHeadModel (the peer, in this same environment). All runs are
greedy, from prompts of `--prompt-len` tokens, for exactly `--new-tokens` tokens (no early stop),
after one warm-up run (compilation) each; the best of `--repeats` runs counts.

Printed: new tokens per second for each implementation, and the ratios
    cached / Hugging Face generate        (> 1: we are faster), eager and XLA-compiled
    engine / Hugging Face XLA generate    the serving engine (`tfx-gpt2 serve`'s batches), called directly
    cached / our no-cache loop
The peer's greedy tokens are checked to equal ours (same checkpoint, same algorithm).
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def best_time(repeats, fn, *args, **kwargs):
    """The best wall time of `repeats` calls, after one warm-up call (tracing, XLA compilation)."""
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times), out


def hf_model(path):
    from safetensors.numpy import load_file
    from transformers import GPT2Config, TFGPT2LMHeadModel
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    model = TFGPT2LMHeadModel(GPT2Config.from_pretrained(path))
    model.build_in_name_scope()
    return load_pytorch_state_dict_in_tf2_model(model, load_file(os.path.join(path, "model.safetensors")),
                                                tf_inputs=False)


def serving_engine(model, tokenizer, args):
    """The `tfx-gpt2 serve` engine with buckets for these batch sizes, compiled (not timed)."""
    from tfx_gpt2.serving.engine import Engine, EngineConfig

    largest = max(int(b) for b in args.batch_sizes.split(","))
    engine = Engine(model, tokenizer, EngineConfig(max_batch_size=largest,
                                                   length_buckets=(args.prompt_len + args.new_tokens + 8,)))
    engine.warm_up()
    return engine.start()


def engine_generate(engine, prompts, new_tokens):
    """Greedy ids from the serving engine, called directly (no HTTP): the prompts submitted at once."""
    import threading

    from tfx_gpt2.model.generate import SamplingConfig
    from tfx_gpt2.serving.engine import Request, Row

    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, stop_at_eot=False)
    finished = threading.Semaphore(0)
    request = Request([Row(list(p), cfg) for p in prompts], lambda event: event[0] != "text" and finished.release())
    engine.submit(request)
    for _ in prompts:
        finished.acquire()
    return [row.ids for row in request.rows]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="124M", help="model preset for the shape (default 124M)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face peer")
    parser.add_argument("--no-engine", action="store_true", help="skip the serving engine")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tfx_gpt2.config.model import model_preset
    from tfx_gpt2.model.checkpoints import load_checkpoint, save_hf_checkpoint
    from tfx_gpt2.model.generate import Generator, SamplingConfig
    from tfx_gpt2.model.gpt2 import GPT2
    from tfx_gpt2.text.bpe import official_vocab_dir

    keras.utils.set_random_seed(0)
    tmp = tempfile.mkdtemp(prefix="bench-generate-")
    save_hf_checkpoint(GPT2(model_preset(args.model)), tmp, vocab_dir=official_vocab_dir())
    ours, tokenizer = load_checkpoint(tmp)
    gen = Generator(ours, tokenizer)
    engine = serving_engine(ours, tokenizer, args) if not args.no_engine else None
    peer = None if args.no_hf else hf_model(tmp)
    hf_xla_generate = None if peer is None else tf.function(peer.generate, jit_compile=True)
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0, stop_at_eot=False)
    print(f"model: {args.model} shape ({ours.config.num_params() / 1e6:.0f}M parameters), prompt {args.prompt_len} "
          f"tokens, {args.new_tokens} new tokens, greedy; TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPU cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}")
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = rng.integers(0, 50000, (batch, args.prompt_len)).tolist()
        n_new = batch * args.new_tokens
        t_cache, ids_cache = best_time(args.repeats, gen.generate_ids, prompts, cfg, use_cache=True)
        # The no-cache loop re-runs the whole sequence per token (minutes at 124M): warm it up on
        # 2 tokens (its function is traced for any length) and time one run.
        gen.generate_ids(prompts, SamplingConfig(max_new_tokens=2, temperature=0.0), use_cache=False)
        t0 = time.perf_counter()
        ids_nocache = gen.generate_ids(prompts, cfg, use_cache=False)
        t_nocache = time.perf_counter() - t0
        assert ids_cache == ids_nocache, "cached and uncached greedy outputs differ"
        row = {"batch": batch, "cached": n_new / t_cache, "no_cache": n_new / t_nocache}
        if engine is not None:
            t_engine, ids_engine = best_time(args.repeats, engine_generate, engine, prompts, args.new_tokens)
            assert ids_engine == ids_cache, "the serving engine's greedy tokens differ"
            row["engine"] = n_new / t_engine
        if peer is not None:
            x = tf.constant(prompts, tf.int32)
            t_hf, out = best_time(args.repeats, peer.generate, x, max_new_tokens=args.new_tokens, do_sample=False,
                                  use_cache=True, pad_token_id=50256, eos_token_id=None,
                                  attention_mask=tf.ones_like(x))
            assert out.numpy()[:, args.prompt_len:].tolist() == ids_cache, "Hugging Face's greedy tokens differ"
            row["hf"] = n_new / t_hf
            # Hugging Face's recommended fast path for TF: generate compiled with XLA.
            t_xla, out = best_time(args.repeats, hf_xla_generate, x, max_new_tokens=args.new_tokens,
                                   do_sample=False, use_cache=True, pad_token_id=50256, eos_token_id=None,
                                   attention_mask=tf.ones_like(x))
            assert out.numpy()[:, args.prompt_len:].tolist() == ids_cache, "Hugging Face's XLA tokens differ"
            row["hf_xla"] = n_new / t_xla
        rows.append(row)
    if engine is not None:
        engine.stop()

    nan = float("nan")
    print(f"{'batch':>5} {'cached tok/s':>13} {'engine tok/s':>13} {'no-cache tok/s':>15} {'HF tok/s':>10} "
          f"{'HF XLA tok/s':>13} {'cached/HF':>10} {'cached/HF XLA':>14} {'engine/HF XLA':>14} {'cached/no-cache':>16}")
    for r in rows:
        hf, xla, eng = r.get("hf", nan), r.get("hf_xla", nan), r.get("engine", nan)
        print(f"{r['batch']:>5} {r['cached']:>13.1f} {eng:>13.1f} {r['no_cache']:>15.1f} {hf:>10.1f} {xla:>13.1f} "
              f"{r['cached'] / hf:>10.2f} {r['cached'] / xla:>14.2f} {eng / xla:>14.2f} "
              f"{r['cached'] / r['no_cache']:>16.2f}")
    print("peers: transformers TFGPT2LMHeadModel.generate (use_cache=True), eager and compiled with XLA "
          "(tf.function(jit_compile=True)); same checkpoint, same environment")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
