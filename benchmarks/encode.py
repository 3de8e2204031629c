"""Encoding throughput and memory: tfx-gpt2's Beam encoding step against tiktoken and Hugging Face tokenizers.

    .venv/bin/python benchmarks/encode.py                  # 8 x pydoc topics (~3.7 MB) and 10x that (~37 MB)
    .venv/bin/python benchmarks/encode.py --copies 1 --scale 2    # a smoke run

The corpus is the bundled demo text (`pydoc_data.topics`, English prose with code, Unicode,
whitespace runs and numbers) repeated `--copies` times, each copy a separate set of documents,
written as the GZIP TFRecords of tf.Examples that an ExampleGen produces. Every measurement runs
in a fresh process; peak memory is that process's maximum resident set size (with its children).

    ours             the BpeEncoder's Beam graph (`tfx_gpt2.text.encode_beam.encode_examples`):
                     read the examples, encode (tiktoken's engine on our vocabulary, a thread per
                     core), pack into blocks of 1025 tokens, write TFRecords -- uncompressed (the
                     default) and GZIP (`compress_blocks`). DirectRunner with one process (the
                     local default) and with 2 worker processes (`--direct_num_workers=2
                     --direct_running_mode=multi_processing`, for large corpora on 2 cores).
                     Wall time of the whole Beam pipeline.
    tiktoken         tiktoken's own `gpt2` encoding, `encode_ordinary` per document, one process,
                     one thread, documents already in memory (no reading, no writing).
    HF tokenizers    `tokenizers` (Rust) with the same vocabulary files and GPT-2's byte-level
                     pre-tokenizer, `encode` per document, one thread, documents in memory.

The command line, `tfx-gpt2 encode --vocab gpt2 FILE > IDS` (streaming: parts of the file
encoded by a thread per core, in bounded memory), against tiktoken's `gpt2` encoding of the same
file in one process (read it, `encode_ordinary`, write the ids the same way): whole-process wall
time (start-up included) on a `--cli-mb` MB text file, with the outputs compared byte for byte,
and our peak RSS on that file and on one `--cli-scale` times larger (target: at most 300 MB on
1 GB, speed >= 1.0x tiktoken).

Our pipeline pays a fixed start-up (building and tearing down the Beam pipeline: ~2 s in one
process, ~15 s with worker processes, which import TensorFlow); its
throughput is given both as wall MB/s on each corpus and as the marginal MB/s between the two
corpora ((bytes_10x - bytes_1x) / (time_10x - time_1x)), the rate at which it encodes a large
corpus. Printed ratios: ours / tiktoken and ours / HF (target: >= 0.8x tiktoken), and peak memory
at `--scale` x the corpus over 1x (target: flat). All encoders must produce the same token count.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # reference_tokenizers: tiktoken's gpt2, offline


def corpus_documents(copies: int):
    import pydoc_data.topics

    topics = sorted(pydoc_data.topics.topics.items())
    for c in range(copies):
        for name, text in topics:
            yield f"copy{c}/{name}", text


def write_corpus(out_dir: str, copies: int) -> str:
    """The corpus as GZIP TFRecords of tf.Examples (text, doc_id), 4 files; returns the glob."""
    import tensorflow as tf

    os.makedirs(out_dir, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(out_dir, f"data-{i}.gz"), options="GZIP") for i in range(4)]
    for i, (doc_id, text) in enumerate(corpus_documents(copies)):
        example = tf.train.Example(features=tf.train.Features(feature={
            "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")])),
            "doc_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc_id.encode("utf-8")])),
        }))
        writers[i % 4].write(example.SerializeToString())
    for w in writers:
        w.close()
    return os.path.join(out_dir, "*.gz")


# --- workers: each runs in its own process and prints one JSON line --------------------------------

def work_beam(pattern: str, workers: int, out_dir: str, compress: bool = False):
    import apache_beam as beam
    import tensorflow  # noqa: F401 -- imported before the clock starts, like in a TFX executor
    from apache_beam.options.pipeline_options import PipelineOptions

    from tfx_gpt2.text import bpe
    from tfx_gpt2.text.encode_beam import encode_examples

    vocab = os.path.join(out_dir, "vocab")
    bpe.copy_vocab_files(None, vocab)
    mode = "in_memory" if workers == 1 else "multi_processing"
    options = PipelineOptions([f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"])
    t0 = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        encode_examples(p, [pattern], vocab, 1025, os.path.join(out_dir, "blocks"),
                        os.path.join(out_dir, "stats.json"), "bench", compress=compress)
    seconds = time.perf_counter() - t0
    with open(os.path.join(out_dir, "stats.json")) as f:
        stats = json.load(f)
    return {"seconds": seconds, "bytes": stats["bytes"], "tokens": stats["tokens"]}


def _texts(copies: int):
    return [text for _, text in corpus_documents(copies)]


def work_tiktoken(copies: int):
    from reference_tokenizers import tiktoken_gpt2

    enc = tiktoken_gpt2()
    texts = _texts(copies)
    enc.encode_ordinary(texts[0])  # warm-up
    t0 = time.perf_counter()
    tokens = sum(len(enc.encode_ordinary(t)) for t in texts)
    return {"seconds": time.perf_counter() - t0, "bytes": sum(len(t.encode()) for t in texts), "tokens": tokens}


def work_hf(copies: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tfx_gpt2.text import bpe

    tok = Tokenizer(models.BPE.from_file(*bpe.vocab_files(bpe.official_vocab_dir())))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = _texts(copies)
    tok.encode(texts[0])
    t0 = time.perf_counter()
    tokens = sum(len(tok.encode(t).ids) for t in texts)
    return {"seconds": time.perf_counter() - t0, "bytes": sum(len(t.encode()) for t in texts), "tokens": tokens}


def write_text_file(path: str, megabytes: float) -> int:
    """The pydoc corpus repeated to at least `megabytes` MB of UTF-8 text; returns its size."""
    import pydoc_data.topics

    unit = "\n\n".join(text for _, text in sorted(pydoc_data.topics.topics.items())).encode("utf-8") + b"\n\n"
    size = 0
    with open(path, "wb") as f:
        while size < megabytes * 1e6:
            f.write(unit)
            size += len(unit)
    return size


def work_tiktoken_file(path: str, out: str):
    """tiktoken's gpt2 on a whole file, ids written like the CLI's (the peer of `tfx-gpt2 encode`)."""
    from reference_tokenizers import tiktoken_gpt2

    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = tiktoken_gpt2().encode_ordinary(text)
    with open(out, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")
    return {"tokens": len(ids)}


def _peak_rss_mb(pid: int, last: float) -> float:
    # VmHWM of the running program: the rusage of a child started from this (large) process
    # would also count the pages it shared with this one before its exec.
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return max(last, int(line.split()[1]) / 1024)
    except OSError:
        pass
    return last


def timed_process(argv, stdout_path: str):
    """Wall seconds from start to exit and peak RSS (MB) of a process writing to `stdout_path`."""
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        peak = 0.0
        while proc.poll() is None:
            peak = _peak_rss_mb(proc.pid, peak)
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed with exit code {proc.returncode}")
    return {"seconds": seconds, "peak_rss_mb": peak}


def cli_runs(tmp: str, megabytes: float, scale: int):
    """Ours (the CLI) and tiktoken on a `megabytes` file, ours on `scale` x that."""
    cli = os.path.join(os.path.dirname(sys.executable), "tfx-gpt2")
    small, large = os.path.join(tmp, "small.txt"), os.path.join(tmp, "large.txt")
    sizes = {1: write_text_file(small, megabytes), scale: write_text_file(large, megabytes * scale)}
    ours = {1: timed_process([cli, "encode", "--vocab", "gpt2", small], os.path.join(tmp, "ours.ids")),
            scale: timed_process([cli, "encode", "--vocab", "gpt2", large], os.devnull)}
    peer = timed_process([sys.executable, os.path.abspath(__file__), "--worker", "tiktoken-file", small,
                          os.path.join(tmp, "tiktoken.ids")], os.devnull)
    with open(os.path.join(tmp, "ours.ids"), "rb") as a, open(os.path.join(tmp, "tiktoken.ids"), "rb") as b:
        same = a.read() == b.read()
    if not same:
        raise SystemExit("tfx-gpt2 encode and tiktoken wrote different ids")
    return {"sizes": sizes, "ours": ours, "tiktoken": peer, "same_ids": same}


def print_cli(cli, scale: int):
    sizes, ours, peer = cli["sizes"], cli["ours"], cli["tiktoken"]
    print(f"\nCommand line (whole process, start-up included), {sizes[1] / 1e6:,.0f} MB and "
          f"{sizes[scale] / 1e6:,.0f} MB text files; ids identical to tiktoken's: {cli['same_ids']}")
    print(f"| {'encoder':<24} | {'file MB':>7} | {'seconds':>7} | {'MB/s':>6} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 13}|")
    rows = [("tfx-gpt2 encode", 1, ours[1]), ("tfx-gpt2 encode", scale, ours[scale]), ("tiktoken, one process", 1, peer)]
    for name, k, r in rows:
        print(f"| {name:<24} | {sizes[k] / 1e6:>7,.0f} | {r['seconds']:>7.2f} | {sizes[k] / 1e6 / r['seconds']:>6.2f} | "
              f"{r['peak_rss_mb']:>11,.0f} |")
    ratios = {"cli speed / tiktoken (same file)": peer["seconds"] / ours[1]["seconds"],
              f"cli peak memory {scale}x / 1x": ours[scale]["peak_rss_mb"] / ours[1]["peak_rss_mb"]}
    for name, value in ratios.items():
        print(f"{name:<46} {value:6.2f}")
    print(f"target: speed >= 1.0x tiktoken: {'met' if ratios['cli speed / tiktoken (same file)'] >= 1.0 else 'MISSED'}; "
          f"peak memory on the {sizes[scale] / 1e6:,.0f} MB file {ours[scale]['peak_rss_mb']:,.0f} MB "
          f"(<= 300 MB on 1 GB: {'met' if ours[scale]['peak_rss_mb'] <= 300 else 'MISSED'})")
    return ratios


def run_worker(args_list):
    """Runs this script as a worker in a fresh process; returns its result and peak RSS (MB)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *args_list],
                            stdout=subprocess.PIPE, env=env, text=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args_list} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return result


def worker_main(argv):
    kind = argv[0]
    if kind == "beam":
        result = work_beam(argv[1], int(argv[2]), argv[3], argv[4] == "1")
    elif kind == "tiktoken-file":
        result = work_tiktoken_file(argv[1], argv[2])
    elif kind == "tiktoken":
        result = work_tiktoken(int(argv[1]))
    else:
        result = work_hf(int(argv[1]))
    # Peak RSS of this process and of any children it started (Beam's worker processes).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = (own + children) / 1024
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="copies of pydoc topics in the 1x corpus")
    parser.add_argument("--scale", type=int, default=10, help="the large corpus is this many times the 1x one")
    parser.add_argument("--quick", action="store_true", help="only the uncompressed one-process run of ours (smoke test)")
    parser.add_argument("--cli-mb", type=float, default=100, help="size of the command line's text file (MB)")
    parser.add_argument("--cli-scale", type=int, default=10, help="the large text file is this many times larger")
    args = parser.parse_args(argv)
    big_copies = args.copies * args.scale

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = {1: write_corpus(os.path.join(tmp, "small"), args.copies),
                  args.scale: write_corpus(os.path.join(tmp, "large"), big_copies)}
        variants = [("ours", 1, False)] + ([] if args.quick else [("ours, 2 processes", 2, False), ("ours (GZIP)", 1, True)])
        for name, workers, gz in variants:
            for scale, pattern in corpus.items():
                out = os.path.join(tmp, f"out-{scale}-{workers}-{gz}")
                runs[(name, scale)] = run_worker(["beam", pattern, str(workers), out, "1" if gz else "0"])
        for scale, copies in ((1, args.copies), (args.scale, big_copies)):
            runs[("tiktoken", scale)] = run_worker(["tiktoken", str(copies)])
            runs[("HF tokenizers", scale)] = run_worker(["hf", str(copies)])
        cli = cli_runs(tmp, args.cli_mb, args.cli_scale)

    for r in runs.values():
        r["mb_s"] = r["bytes"] / 1e6 / r["seconds"]
        r["tok_s"] = r["tokens"] / r["seconds"]
    small, large = runs[("tiktoken", 1)], runs[("tiktoken", args.scale)]
    print(f"\nCorpus 1x: {small['bytes'] / 1e6:.1f} MB ({args.copies} x pydoc topics), {small['tokens']:,} GPT-2 "
          f"tokens; {args.scale}x: {large['bytes'] / 1e6:.1f} MB, {large['tokens']:,} tokens\n")
    print(f"| {'encoder':<16} | corpus | {'seconds':>7} | {'MB/s':>6} | {'tokens/s':>10} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 18}|--------|{'-' * 9}|{'-' * 8}|{'-' * 12}|{'-' * 13}|")
    for (name, scale), r in runs.items():
        print(f"| {name:<16} | {scale:>5}x | {r['seconds']:>7.2f} | {r['mb_s']:>6.2f} | {r['tok_s']:>10,.0f} | "
              f"{r['peak_rss_mb']:>11,.0f} |")
    for scale in (1, args.scale):
        counts = {name: r["tokens"] for (name, s), r in runs.items() if s == scale}
        if len(set(counts.values())) != 1:
            raise SystemExit(f"token counts differ at {scale}x: {counts}")

    def marginal(name):
        a, b = runs[(name, 1)], runs[(name, args.scale)]
        return (b["bytes"] - a["bytes"]) / 1e6 / max(b["seconds"] - a["seconds"], 1e-9)

    tiktoken_mb_s = large["mb_s"]
    hf_mb_s = runs[("HF tokenizers", args.scale)]["mb_s"]
    names = [v[0] for v in variants]
    ratios = {
        "ours, 1 process, marginal / tiktoken": marginal("ours") / tiktoken_mb_s,
        f"ours, 1 process, wall ({args.scale}x) / tiktoken": runs[("ours", args.scale)]["mb_s"] / tiktoken_mb_s,
        "ours, 1 process, marginal / HF": marginal("ours") / hf_mb_s,
    }
    if not args.quick:
        ratios = {
            "ours, 2 processes, marginal / tiktoken": marginal("ours, 2 processes") / tiktoken_mb_s, **ratios,
            "ours (GZIP), 1 process, marginal / tiktoken": marginal("ours (GZIP)") / tiktoken_mb_s,
            "ours, 2 processes, marginal / HF": marginal("ours, 2 processes") / hf_mb_s,
        }
    for name in [n for n in names if n != "ours (GZIP)"]:
        ratios[f"{name}: peak memory {args.scale}x / 1x"] = (
            runs[(name, args.scale)]["peak_rss_mb"] / runs[(name, 1)]["peak_rss_mb"])
    print("\nmarginal MB/s: " + ", ".join(f"{n} {marginal(n):.2f}" for n in names)
          + f"; tiktoken {tiktoken_mb_s:.2f}, HF tokenizers {hf_mb_s:.2f}\n")
    for name, value in ratios.items():
        print(f"{name:<46} {value:6.2f}")
    throughput_ok = ratios[next(iter(ratios))] >= 0.8
    memory_ok = all(v < 1.5 for k, v in ratios.items() if "memory" in k)
    print(f"\ntarget >= 0.8x tiktoken ({next(iter(ratios))}): {'met' if throughput_ok else 'MISSED'}; "
          f"memory flat in corpus size (< 1.5x for {args.scale}x the text): {'met' if memory_ok else 'MISSED'}")
    ratios.update(print_cli(cli, args.cli_scale))
    return {"runs": runs, "ratios": ratios, "throughput_ok": throughput_ok, "memory_ok": memory_ok, "cli": cli}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
    else:
        main()
