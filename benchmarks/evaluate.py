"""Scoring speed: multiple-choice items scored by `tfx_gpt2.training.tasks` against one forward
pass over the same tokens.

    .venv/bin/python benchmarks/evaluate.py                     # 124M shape, 1,000 items of 4 choices
    .venv/bin/python benchmarks/evaluate.py --shape tiny --items 50   # a smoke run

The items are the bundled task files' (data/tasks), cycled up to `--items`, each with 4 choices
(the first 4 of an item's). Both sides run the same random model (seeded; no weights are
reachable from every machine):

    ours   `score_requests`: every choice as context + continuation, sorted by length, padded to
           a multiple of 32 positions, batched up to `--token-budget` tokens; the continuation's
           log-probability and greedy match read from each row.
    peer   the same tokens, every request's context + continuation one after the other, cut into
           rows of n_ctx and run through the model in batches of the same token budget: the
           least work a model can do to see those tokens once (logits only, nothing read back).

Each side runs once untimed on a few requests (tracing), then is timed over all the items.
Target: ours at most 2x the peer's time.
"""

import argparse
import dataclasses
import itertools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def items(count: int):
    from tfx_gpt2.training.tasks import TaskItem, read_task_file, task_files

    pool = [i for p in task_files(os.path.join(REPO, "data", "tasks")).values() for i in read_task_file(p)]
    pool = [TaskItem(i.context, i.choices[:4], min(i.gold, 3)) for i in pool if len(i.choices) >= 4]
    return list(itertools.islice(itertools.cycle(pool), count))


def peer(model, requests, token_budget: int) -> float:
    """Seconds of one forward pass over the requests' tokens, packed into rows of n_ctx."""
    import tensorflow as tf

    n_ctx = model.config.n_ctx
    stream = np.asarray([t for r in requests for t in r.context + r.continuation], np.int32)
    rows = -(-len(stream) // n_ctx)
    packed = np.zeros(rows * n_ctx, np.int32)
    packed[:len(stream)] = stream
    packed = packed.reshape(rows, n_ctx)
    per_batch = max(1, token_budget // n_ctx)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
    forward(tf.constant(packed[:per_batch])).numpy()  # trace
    start = time.perf_counter()
    for i in range(0, rows, per_batch):
        forward(tf.constant(packed[i:i + per_batch])).numpy()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="124M", help="model preset (tiny, 124M, ...)")
    parser.add_argument("--n-ctx", type=int, default=1024, help="the model's context (the peer's row length)")
    parser.add_argument("--items", type=int, default=1000, help="multiple-choice items of 4 choices")
    parser.add_argument("--token-budget", type=int, default=8192, help="padded tokens per forward pass")
    args = parser.parse_args(argv)

    import keras

    from tfx_gpt2.config.model import model_preset
    from tfx_gpt2.model.gpt2 import GPT2
    from tfx_gpt2.text.bpe import load_tokenizer
    from tfx_gpt2.training.tasks import choice_metrics, choice_requests, score_requests

    keras.utils.set_random_seed(0)
    cfg = dataclasses.replace(model_preset(args.shape), n_ctx=args.n_ctx)
    model = GPT2(cfg)
    tokenizer = load_tokenizer("gpt2")
    chosen = items(args.items)
    requests = choice_requests(tokenizer, chosen)
    tokens = sum(len(r.context) + len(r.continuation) for r in requests)

    score_requests(model, requests[:8], args.token_budget)  # trace
    start = time.perf_counter()
    scores = score_requests(model, requests, args.token_budget)
    ours = time.perf_counter() - start
    metrics = choice_metrics(chosen, [s.logprob for s in scores])
    theirs = peer(model, requests, args.token_budget)

    print(f"\n{args.shape} shape (n_ctx {cfg.n_ctx}), {len(chosen):,} items x 4 choices = {len(requests):,} requests, "
          f"{tokens:,} tokens; token budget {args.token_budget:,} per pass\n")
    print("| | seconds | tokens/s |")
    print("|---|---|---|")
    print(f"| ours: score_requests (acc {metrics['acc']:.3f}, acc_norm {metrics['acc_norm']:.3f}) | {ours:.2f} | "
          f"{tokens / ours:,.0f} |")
    print(f"| peer: one forward pass over the same tokens in rows of {cfg.n_ctx} | {theirs:.2f} | {tokens / theirs:,.0f} |")
    print(f"\nours / peer: {ours / theirs:.2f}x the time (target <= 2)")
    return {"ours": ours, "peer": theirs, "ratio": ours / theirs, "tokens": tokens, "requests": len(requests),
            "metrics": metrics}


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
