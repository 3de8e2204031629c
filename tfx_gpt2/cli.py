"""The `tfx-gpt2` command line.

    tfx-gpt2 generate --model PATH --prompt TEXT [--prompt TEXT ...] [sampling options]
    tfx-gpt2 convert --from PATH --to PATH --format hf|savedmodel
    tfx-gpt2 encode --vocab gpt2|DIR FILE          token ids of the whole file, space-separated
    tfx-gpt2 decode --vocab gpt2|DIR [FILE]        ids (FILE or stdin) back to text
    tfx-gpt2 train-vocab --size N --out DIR FILES...   a new byte-level BPE vocabulary
    tfx-gpt2 serve models:/NAME@ALIAS [--api-keys-file FILE] ...   the HTTP server (docs/serving.md)
    tfx-gpt2 retrain [--min-new-documents N] ...   feedback -> a new span -> the pipeline (docs/continuous-training.md)
    tfx-gpt2 lineage models:/NAME/VERSION | cmpl-ID   the data behind a version, or a completion's path

`encode` and `train-vocab` run the pipeline's code (`FastEncoder`, `train_vocab`); special
tokens recorded in a vocabulary directory are kept whole.

PATH is an OpenAI GPT-2 directory, a Hugging Face directory, a tfx-gpt2 model directory
(see `tfx_gpt2.model.checkpoints`) or, for `generate`, an exported SavedModel
(see `tfx_gpt2.serving.export`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0: all; default 40)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (default 1.0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0)")
    p.add_argument("--num-return-sequences", type=int, default=1, help="continuations per prompt (default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], help="a string that ends a continuation (repeatable)")


def _sampling_config(args):
    from tfx_gpt2.model.generate import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        num_return_sequences=args.num_return_sequences, seed=args.seed, stop=tuple(args.stop),
    )


def _generate_with_savedmodel(path: str, prompts: List[str], config) -> List[str]:
    import tensorflow as tf

    from tfx_gpt2.model.generate import cut_at_stop
    from tfx_gpt2.serving.export import load_savedmodel

    serve = load_savedmodel(path).signatures["serving_default"]
    texts = []
    for k in range(config.num_return_sequences):
        # Several sequences per prompt: one call per sequence, each with its own seed.
        seed = (config.seed if config.seed is not None else int(tf.random.uniform([], 0, 2**31 - 1, tf.int32))) + k
        out = serve(prompts=tf.constant(prompts), max_new_tokens=tf.constant(config.max_new_tokens),
                    temperature=tf.constant(config.temperature), top_k=tf.constant(config.top_k),
                    top_p=tf.constant(config.top_p), repetition_penalty=tf.constant(config.repetition_penalty),
                    seed=tf.constant(seed))
        texts.append([t.decode("utf-8") for t in out["generated_text"].numpy()])
    ordered = [texts[k][i] for i in range(len(prompts)) for k in range(config.num_return_sequences)]
    return [cut_at_stop(t, config.stop) for t in ordered]


def cmd_generate(args) -> int:
    from tfx_gpt2.config.checkpoint_shape import detect_format, read_checkpoint_config
    from tfx_gpt2.model.checkpoints import load_checkpoint
    from tfx_gpt2.model.generate import Generator

    config = _sampling_config(args)
    fmt = detect_format(args.model)
    if fmt != "savedmodel":  # checked before the (slow) load
        n_ctx = read_checkpoint_config(args.model).n_ctx
        if config.max_new_tokens >= n_ctx:
            print(f"error: --max-new-tokens = {config.max_new_tokens} leaves no room for the prompt in the model's "
                  f"context of {n_ctx} tokens; ask for at most {n_ctx - 1}.", file=sys.stderr)
            return 2
    if fmt == "savedmodel":
        texts = _generate_with_savedmodel(args.model, args.prompt, config)
    else:
        model, tokenizer = load_checkpoint(args.model)
        texts = Generator(model, tokenizer).generate(args.prompt, config)
    n = config.num_return_sequences
    for i, text in enumerate(texts):
        prompt = args.prompt[i // n]
        if len(texts) > 1:
            print(f"=== prompt {i // n + 1}, sequence {i % n + 1} ===")
        print(prompt + text)
    return 0


def cmd_convert(args) -> int:
    from tfx_gpt2.model.checkpoints import load_checkpoint, save_hf_checkpoint

    model, tokenizer = load_checkpoint(args.src)
    if args.format == "hf":
        save_hf_checkpoint(model, args.dst, vocab_dir=args.src)
    else:
        from tfx_gpt2.serving.export import export_savedmodel

        export_savedmodel(model, tokenizer, args.dst)
    print(f"wrote {args.format} model to {args.dst}")
    return 0


def _read_text(path: str) -> str:
    data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        from tfx_gpt2.text.bpe import VocabularyError

        raise VocabularyError(f"{path} is not valid UTF-8 (byte {e.start}); convert it to UTF-8 first.") from None


def cmd_encode(args) -> int:
    from tfx_gpt2.progress import Progress, get_logger
    from tfx_gpt2.text.bpe import document_encoder, load_tokenizer
    from tfx_gpt2.text.stream import encode_parts, text_parts

    encoder = document_encoder(load_tokenizer(args.vocab, args.special_token))
    progress = Progress(get_logger("tfx_gpt2.encode"), "encode", "parts", every_s=10.0)
    out = sys.stdout.buffer
    with (open(args.file, "rb") if args.file != "-" else sys.stdin.buffer) as stream:
        separator = b""
        for ids in encode_parts(text_parts(stream, args.file), encoder, args.workers or None):
            if len(ids):
                out.write(separator + " ".join(map(str, ids.tolist())).encode("ascii"))
                separator = b" "
            progress.update(1, tokens=len(ids))
    out.write(b"\n")
    out.flush()
    return 0


def cmd_decode(args) -> int:
    from tfx_gpt2.text.bpe import VocabularyError, load_tokenizer

    tokenizer = load_tokenizer(args.vocab, args.special_token)
    raw = _read_text(args.file).split()
    try:
        ids = [int(t) for t in raw]
    except ValueError as e:
        raise VocabularyError(f"decode reads whitespace-separated integer ids; {e}.") from None
    sys.stdout.write(tokenizer.decode(ids))
    return 0


def cmd_train_vocab(args) -> int:
    from tfx_gpt2.sources.documents import Document
    from tfx_gpt2.sources.text_files import read_documents
    from tfx_gpt2.text.vocab import train_vocab

    def documents():
        for path in args.files:
            with open(path, "rb") as f:
                for doc in read_documents(f, path, None if args.separator == "none" else args.separator):
                    if isinstance(doc, Document):
                        yield doc.text
                    else:
                        print(f"skipped {doc.doc_id}: {doc.reason} ({doc.detail})", file=sys.stderr)

    tokenizer = train_vocab(documents(), args.size, args.special_token, args.min_frequency)
    tokenizer.save(args.out)
    print(f"wrote a vocabulary of {tokenizer.vocab_size} tokens learnt from {len(args.files)} file(s) to {args.out}")
    return 0


def cmd_serve(args) -> int:
    from tfx_gpt2.config.model import ConfigError
    from tfx_gpt2.config.pipeline import check_tracking_uri
    from tfx_gpt2.serving.engine import EngineConfig
    from tfx_gpt2.serving.server import ServeConfig, serve

    uri = args.model_uri or args.model_uri_flag
    if not uri:
        print("error: give the model to serve, e.g. tfx-gpt2 serve models:/tfx-gpt2-local@champion", file=sys.stderr)
        return 2
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    try:  # credentials would show in the process list and in any error that quotes the URI
        check_tracking_uri(tracking_uri, "the tracking URI")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    buckets = tuple(int(b) for b in args.length_buckets.split(",") if b) if args.length_buckets else ()
    try:
        engine = EngineConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                              max_queue=args.max_queue, chunk_tokens=args.chunk_tokens, call_ms=args.call_ms,
                              length_buckets=buckets, scheduling=args.scheduling, workers=args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        config = ServeConfig(request_timeout=args.request_timeout, poll_seconds=args.poll_seconds,
                             log_prompts=args.log_prompts, body_timeout=args.body_timeout,
                             feedback_per_minute=args.feedback_per_minute, feedback_burst=args.feedback_burst)
        keys = _api_keys(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        recorder = None if args.no_feedback else _recorder(args)
    except Exception as e:  # noqa: BLE001 -- a store that cannot be opened is a start-up error
        print(f"error: the feedback store cannot be opened: {e}", file=sys.stderr)
        return 2
    serve(uri, host=args.host, port=args.port, engine=engine, config=config, recorder=recorder, keys=keys)
    return 0


def _api_keys(args):
    """The server's API keys; refuses a non-loopback address without keys unless --allow-anonymous."""
    from tfx_gpt2.serving.access import ApiKeys, is_loopback

    keys = ApiKeys.load(args.api_keys_file, args.api_keys_env)
    if keys.required:
        print(f"POST routes take {len(keys.entries)} API key(s) (Authorization: Bearer)", file=sys.stderr)
    elif not is_loopback(args.host):
        if not args.allow_anonymous:
            raise ValueError(f"--host {args.host} is reachable from other machines and no API key is set: anyone who "
                             "reaches the port could write training data. Give keys (--api-keys-file FILE or "
                             "--api-keys-env VAR), or pass --allow-anonymous to serve without them")
        print(f"WARNING: serving on {args.host} without API keys (--allow-anonymous)", file=sys.stderr)
    return keys


def _recorder(args):
    """The server's feedback recorder: MongoDB with --mongo-uri-env, else the embedded store."""
    from tfx_gpt2.feedback.recorder import Recorder

    store = _store(args)
    print(f"recording completions and feedback in {store.describe()}", file=sys.stderr)
    return Recorder(store, os.path.join(_feedback_dir(args), "spool"), scale=args.rating_scale)


def default_feedback_dir(output_dir: str = "") -> str:
    """`<output dir>/feedback`: TFX_GPT2_OUTPUT_DIR, else ./tfx_gpt2_output (`make run`'s)."""
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR, from_env

    return os.path.join(output_dir or from_env(output_dir=os.path.abspath(DEFAULT_OUTPUT_DIR)).output_dir, "feedback")


def _store(args):
    from tfx_gpt2.feedback.store import open_store

    return open_store(_feedback_dir(args), mongo_uri_env=args.mongo_uri_env, database=args.mongo_database)


def _feedback_dir(args) -> str:
    return args.feedback_dir or default_feedback_dir(getattr(args, "output_dir", ""))


# `make run`'s output directory (below the directory it runs in) and pipeline
LOCAL_PIPELINE = "tfx-gpt2-local"


def _loop_settings(args):
    """The pipeline settings (TFX_GPT2_*), defaulting to `make run`'s output directory and pipeline
    (./tfx_gpt2_output, tfx-gpt2-local); the flags win."""
    import dataclasses

    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR, from_env

    flags = {k: v for k, v in (("output_dir", getattr(args, "output_dir", "")),
                               ("data_root", getattr(args, "data_root", "")),
                               ("pipeline_name", getattr(args, "pipeline_name", ""))) if v}
    return dataclasses.replace(from_env(output_dir=os.path.abspath(DEFAULT_OUTPUT_DIR), pipeline_name=LOCAL_PIPELINE), **flags)


def cmd_retrain(args) -> int:
    import dataclasses

    from tfx_gpt2.feedback.records import FeedbackRule
    from tfx_gpt2.feedback.retrain import RetrainPolicy
    from tfx_gpt2.orchestration.continuous import retrain, with_loop_defaults

    try:
        settings = with_loop_defaults(_loop_settings(args))
        if args.no_warm_start:
            settings = dataclasses.replace(settings, warm_start=False)
        policy = RetrainPolicy(min_new_documents=args.min_new_documents, min_mean_score=args.min_mean_score,
                               score_window=args.score_window, min_scores=args.min_scores,
                               every_hours=args.every_hours)
        rule = FeedbackRule(min_score=args.min_score, use_corrections=not args.no_corrections,
                            max_key_share=args.max_key_share)
        store = _store(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = retrain(settings, store, policy, rule, force=args.force)
    except Exception as e:  # noqa: BLE001 -- a failed retrain leaves the champion as it was: say so, exit 1
        print(f"retrain FAILED: {type(e).__name__}: {e}\nthe champion and the servers following it are unchanged",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0 if summary is None or summary.get("version") else 1


def cmd_lineage(args) -> int:
    from tfx_gpt2.feedback.lineage_report import completion_lineage, version_lineage

    tracking_uri = args.tracking_uri or _loop_settings(args).tracking_uri
    try:
        if args.target.startswith("models:/"):
            print(version_lineage(tracking_uri, args.target))
        else:
            store = _store(args)
            try:
                print(completion_lineage(tracking_uri, store, args.target))
            finally:
                store.close()
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _add_store_args(p) -> None:
    p.add_argument("--feedback-dir", default="",
                   help="the embedded feedback store and the spool (default: <output dir>/feedback)")
    p.add_argument("--mongo-uri-env", default="", metavar="VAR",
                   help="the store is MongoDB, whose connection string is in $VAR (the name only is ever logged)")
    p.add_argument("--mongo-database", default="tfx_gpt2", help="the MongoDB database (tfx_gpt2)")


def _add_loop_parsers(sub) -> None:
    r = sub.add_parser("retrain", help="retrain on the corpus plus users' feedback when a condition holds "
                                       "(cron-friendly: exits 0 with 'nothing to do' below them)")
    r.add_argument("--output-dir", default="", help="the pipeline's output directory (default: TFX_GPT2_OUTPUT_DIR, else "
                        "./tfx_gpt2_output)")
    r.add_argument("--data-root", default="", help="the corpus folder (default: TFX_GPT2_DATA_ROOT, or the bundled)")
    r.add_argument("--pipeline-name", default="", help="the pipeline and registered model (default: TFX_GPT2_PIPELINE_NAME, else "
                        "tfx-gpt2-local, make run's)")
    r.add_argument("--min-new-documents", type=int, default=100,
                   help="retrain when the feedback since the last trained watermark makes this many training "
                        "documents (100; 0: off)")
    r.add_argument("--min-mean-score", type=float, default=None,
                   help="retrain when the champion's mean rating score (0 to 1) falls below this")
    r.add_argument("--score-window", type=int, default=100, help="the champion's latest ratings averaged (100)")
    r.add_argument("--min-scores", type=int, default=20, help="ratings needed before the mean counts (20)")
    r.add_argument("--every-hours", type=float, default=0.0,
                   help="retrain when the newest version is this old and there is new feedback (0: off)")
    r.add_argument("--min-score", type=float, default=0.75,
                   help="the rule: completions scored at least this become training documents (0.75)")
    r.add_argument("--no-corrections", action="store_true", help="the rule: leave corrected texts out")
    r.add_argument("--max-key-share", type=float, default=0.2,
                   help="the rule: no API key gives more than this share of a span's documents (0.2; 1: no cap)")
    r.add_argument("--no-warm-start", action="store_true",
                   help="train from the start (or --init-checkpoint's) instead of fine-tuning the champion")
    r.add_argument("--force", action="store_true", help="retrain whatever the conditions")
    _add_store_args(r)
    r.set_defaults(func=cmd_retrain)

    g = sub.add_parser("lineage", help="the data that trained a version, or the version behind a completion "
                                       "and where its feedback went")
    g.add_argument("target", help="models:/NAME/VERSION (or @ALIAS), or a completion id (cmpl-...)")
    g.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: the settings')")
    g.add_argument("--output-dir", default="", help="the pipeline's output directory (default: TFX_GPT2_OUTPUT_DIR, else "
                        "./tfx_gpt2_output)")
    _add_store_args(g)
    g.set_defaults(func=cmd_lineage)


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve a model over HTTP: OpenAI completions, MLflow's and Seldon's formats, "
                                     "a playground at /, Prometheus metrics")
    s.add_argument("model_uri", nargs="?", help="models:/NAME@ALIAS (followed when the alias moves), "
                                               "models:/NAME/VERSION, runs:/RUN_ID/model, or a model directory")
    s.add_argument("--model-uri", "-m", dest="model_uri_flag", help="the same, as a flag")
    s.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--max-batch-size", type=int, default=16, help="prompts generated together at most (16)")
    s.add_argument("--max-wait-ms", type=float, default=20.0,
                   help="when a prompt reaches an idle server, how long to wait for as many as were last generated "
                        "together (20 ms)")
    s.add_argument("--max-queue", type=int, default=256,
                   help="prompts waiting for a slot at most; beyond it requests get 503 with Retry-After (256)")
    s.add_argument("--chunk-tokens", type=int, default=16, help="decode steps per compiled call at most (16)")
    s.add_argument("--call-ms", type=float, default=30.0,
                   help="aim of a decode call's duration: a request arriving meanwhile waits about this long to join "
                        "the batch (30 ms)")
    s.add_argument("--workers", type=int, default=0,
                   help="engine threads, each batching up to --max-batch-size prompts (default 0: one per core for a "
                        "model narrower than 512, else one)")
    s.add_argument("--scheduling", choices=["continuous", "static"], default="continuous",
                   help="continuous: requests join and leave the batch at every decode call (default); static: a "
                        "batch runs until its last prompt ends")
    s.add_argument("--length-buckets", default="",
                   help="cache sizes to compile, e.g. 128,512 (default: 64, 256 and the model's context + 32)")
    s.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds before a request is cancelled; also the longest drain after SIGTERM")
    s.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request body may take to arrive in full (then 408)")
    s.add_argument("--poll-seconds", type=float, default=30.0,
                   help="how often to check a models:/NAME@ALIAS alias for a new version (0: never)")
    s.add_argument("--log-prompts", action="store_true", help="put prompts and completions in the request log")
    _add_store_args(s)
    s.add_argument("--rating-scale", choices=["thumbs", "stars"], default="thumbs",
                   help="ratings of POST /v1/feedback: thumbs (+1/-1, the default) or stars (1 to 5)")
    s.add_argument("--no-feedback", action="store_true", help="record no completions; /v1/feedback answers 404")
    s.add_argument("--api-keys-file", default="", metavar="FILE",
                   help="POST routes require `Authorization: Bearer KEY` with a key of FILE (one per line, ID:KEY or KEY)")
    s.add_argument("--api-keys-env", default="", metavar="VAR",
                   help="the same, keys from the environment variable VAR (ID:KEY,ID:KEY)")
    s.add_argument("--allow-anonymous", action="store_true",
                   help="serve on a non-loopback --host without API keys (refused otherwise)")
    s.add_argument("--feedback-per-minute", type=float, default=30.0,
                   help="feedbacks a key (or an address, when anonymous) may post a minute (30); 429 beyond")
    s.add_argument("--feedback-burst", type=int, default=10, help="feedbacks a key may post at once (10)")
    s.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfx-gpt2", description="GPT-2 models made with tfx-gpt2.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue prompts with a model")
    g.add_argument("--model", required=True,
                   help="an OpenAI, Hugging Face or tfx-gpt2 model directory, or an exported SavedModel")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert a model directory to another format")
    c.add_argument("--from", dest="src", required=True,
                   help="an OpenAI, Hugging Face or tfx-gpt2 model directory, or a LoRA adapter directory "
                   "(written merged into its base)")
    c.add_argument("--to", dest="dst", required=True, help="the directory to write")
    c.add_argument("--format", required=True, choices=["hf", "savedmodel"],
                   help="hf: a Hugging Face GPT-2 directory; savedmodel: a SavedModel that takes and returns text")
    c.set_defaults(func=cmd_convert)

    def vocab_args(p):
        p.add_argument("--vocab", default="gpt2", help="'gpt2' (OpenAI's vocabulary) or a vocabulary directory")
        p.add_argument("--special-token", action="append", default=[],
                       help="an extra special token kept whole, e.g. '<|dialogue|>' (repeatable)")

    e = sub.add_parser("encode", help="print the token ids of a text file")
    vocab_args(e)
    e.add_argument("file", help="a UTF-8 text file ('-' for stdin); read in parts, so any size fits in memory")
    e.add_argument("--workers", type=int, default=0, help="encoding threads (default: one per core)")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="turn token ids back into text")
    vocab_args(d)
    d.add_argument("file", nargs="?", default="-", help="whitespace-separated ids (default: stdin)")
    d.set_defaults(func=cmd_decode)

    t = sub.add_parser("train-vocab", help="learn a new byte-level BPE vocabulary from text files")
    t.add_argument("--size", type=int, required=True, help="tokens in the vocabulary, special tokens included")
    t.add_argument("--out", required=True, help="directory for encoder.json and vocab.bpe")
    t.add_argument("--special-token", action="append", default=[], help="an extra special token (repeatable)")
    t.add_argument("--separator", default="<|endoftext|>",
                   help="the string between documents in a file ('none': one document per file)")
    t.add_argument("--min-frequency", type=int, default=2, help="a pair must occur this often to be merged")
    t.add_argument("files", nargs="+", help="UTF-8 text files; all of them are read")
    t.set_defaults(func=cmd_train_vocab)

    _add_serve_parser(sub)
    _add_loop_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tfx_gpt2.text.bpe import VocabularyError

    errors = (VocabularyError, OSError)
    if args.command in ("generate", "convert"):  # these import TensorFlow; the text commands do not
        from tfx_gpt2.config.checkpoint_shape import CheckpointError
        from tfx_gpt2.model.generate import GenerationError

        errors += (CheckpointError, GenerationError)
    try:
        return args.func(args)
    except errors as e:
        print(f"tfx-gpt2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
