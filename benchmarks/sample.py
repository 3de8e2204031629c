"""The sampler's cost at each setting against greedy's argmax, on the same logits.

    .venv/bin/python benchmarks/sample.py                  # GPT-2's vocabulary, batches of 1 and 8
    .venv/bin/python benchmarks/sample.py --batch-sizes 16 --repeats 5

`tfx_gpt2.model.sampling.choose` runs in a compiled loop of `--steps` calls (as the serving
engine's decode loop runs it, so call overheads are left out) on logits of GPT-2's shape, drawn
like a trained model's (a few large, many small); each call's logits depend on the last choice,
as a decode step's do (one pass over them, the same for every setting). Printed per batch size and setting: ms per
call (the best of `--repeats`) and the ratio to greedy. The serving defaults are temperature 1 and
top-k 40 (`/invocations`), or no top-k (`/v1/completions`); a top-p nucleus larger than the 64
candidates takes the exact bisection path (the last setting).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SETTINGS = [  # (name, temperature, top_k, top_p)
    ("greedy", 0.0, 0, 1.0),
    ("top-k 40 (MLflow's default)", 1.0, 40, 1.0),
    ("top-k 40, top-p 0.9", 0.8, 40, 0.9),
    ("no top-k (OpenAI's default)", 1.0, 0, 1.0),
    ("top-p 0.9 alone, small nucleus", 0.7, 0, 0.9),
    ("top-p 0.9 alone, large nucleus", 3.0, 0, 0.9),
]


def timed(batch, vocab, steps, repeats, temperature, top_k, top_p):
    import tensorflow as tf

    from tfx_gpt2.model.sampling import choose

    rng = np.random.default_rng(0)
    logits = tf.constant((rng.standard_normal((batch, vocab)) * 2 + 8 * (rng.random((batch, vocab)) < 1e-3))
                         .astype(np.float32))
    settings = [tf.fill([batch], v) for v in (temperature, top_k, top_p, 1.0)]
    u = tf.constant(rng.random((steps, batch)).astype(np.float32))

    @tf.function(jit_compile=True)
    def loop(x):
        def body(i, x, acc):
            nxt = choose(x, None, *settings, u[i])
            # The next logits depend on this choice (as a decode step's do), so nothing is hoisted.
            return i + 1, x + 1e-30 * tf.cast(tf.reduce_sum(nxt), tf.float32), acc + nxt

        return tf.while_loop(lambda i, x, acc: i < steps, body, (0, x, tf.zeros([batch], tf.int32)))[2]

    loop(logits).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        loop(logits).numpy()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for name, temperature, top_k, top_p in SETTINGS:
            ms = timed(batch, args.vocab, args.steps, args.repeats, temperature, top_k, top_p)
            rows.append({"batch": batch, "setting": name, "ms": ms})
    print(f"\nvocabulary {args.vocab}, {os.cpu_count()} CPU cores, best of {args.repeats} runs of {args.steps} calls")
    print(f"{'batch':>5} {'setting':<32} {'ms/call':>8} {'/ greedy':>9}")
    for r in rows:
        greedy = next(g["ms"] for g in rows if g["batch"] == r["batch"] and g["setting"] == "greedy")
        r["ratio"] = r["ms"] / greedy
        print(f"{r['batch']:>5} {r['setting']:<32} {r['ms']:>8.3f} {r['ratio']:>8.2f}x")
    print("peer: greedy decoding (argmax) on the same logits")
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
