"""The main job: the whole tfx-gpt2 pipeline on the bundled corpus, run locally with Beam.

    make run                                   # sets up .venv, then runs this file
    .venv/bin/python examples/beam-local-example.py [--output-dir DIR] [--data-root DIR]
        [--model tiny|124M|...] [--train tiny|finetune|lora] [--max-steps N] [--no-cache]
        [--vocab gpt2|DIR|train] [--vocab-size N] [--special-token TOK ...]
        [--mongo-collection DB.COLL ... --text-field F --mongo-filter JSON --mongo-uri-env VAR
         --incremental --control-field F]
        [--mlflow-tracking-uri URI]
        [--beam-arg=--direct_num_workers=2 --beam-arg=--direct_running_mode=multi_processing]

Raw text (data/pydoc_topics/*.txt) -> train/eval split -> GPT-2 BPE blocks -> GPT-2 trainer
(`tiny` preset, about a minute on a CPU) -> perplexity evaluation -> an MLflow run and a
registered model version. ML Metadata (and MLflow, unless --mlflow-tracking-uri or
MLFLOW_TRACKING_URI names a server) use sqlite files under the output directory; a second run with
unchanged inputs reuses every component from the cache.

Settings come from TFX_GPT2_* variables and TFX_GPT2_CONFIG like every runner's
(tfx_gpt2/config/settings.py); a flag wins over both. With --mongo-collection the documents come from
MongoDB (the connection string is read from the variable --mongo-uri-env, MONGO_URI by default,
and never stored).
"""

import argparse
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# flag -> PipelineSettings field, for the flags that map one to one
FLAGS = {
    "--pipeline-name": "pipeline_name", "--data-root": "data_root", "--output-dir": "output_dir",
    "--model": "model", "--train": "train", "--vocab": "vocab", "--text-field": "mongo_text_field",
    "--mongo-filter": "mongo_filter", "--mongo-uri-env": "mongo_uri_env", "--control-field": "control_field",
    "--mlflow-tracking-uri": "mlflow_tracking_uri",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, help_text in [
        ("--pipeline-name", "pipeline name (default tfx-gpt2-local)"),
        ("--data-root", "folder of .txt files (default: the bundled corpus)"),
        ("--output-dir", "where outputs go (default ./tfx_gpt2_output)"),
        ("--model", "model preset (tiny, 124M, 355M, 774M, 1558M)"),
        ("--train", "training preset (tiny, finetune, lora)"),
        ("--vocab", "gpt2 (OpenAI's), a vocabulary directory, or 'train'"),
        ("--text-field", "MongoDB field holding the text"),
        ("--mongo-filter", "MongoDB query as JSON"),
        ("--mongo-uri-env", "environment variable with the MongoDB connection string"),
        ("--control-field", "MongoDB field with a control token per document"),
        ("--mlflow-tracking-uri", "MLflow tracking server (default: $MLFLOW_TRACKING_URI, else sqlite in --output-dir)"),
    ]:
        parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument("--max-steps", type=int, default=None, help="override the training preset's steps")
    parser.add_argument("--no-cache", action="store_true", help="run every component even if cached")
    parser.add_argument("--vocab-size", type=int, default=None, help="size of a trained vocabulary (--vocab train)")
    parser.add_argument("--special-token", action="append", default=None, help="extra special token (repeatable)")
    parser.add_argument("--mongo-collection", action="append", default=None, help="database.collection (repeatable)")
    parser.add_argument("--incremental", action="store_true", help="export only new documents, as a new span")
    parser.add_argument("--beam-arg", action="append", default=None, help="a Beam pipeline argument (repeatable)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace):
    """The environment's settings (with this example's local defaults), then the flags."""
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR, from_env

    settings = from_env(pipeline_name="tfx-gpt2-local", output_dir=os.path.abspath(DEFAULT_OUTPUT_DIR))
    changes = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field in FLAGS.items()}
    changes = {k: v for k, v in changes.items() if v is not None}
    optional = {"max_steps": args.max_steps, "vocab_size": args.vocab_size,
                "special_tokens": tuple(args.special_token) if args.special_token else None,
                "mongo_collections": tuple(args.mongo_collection) if args.mongo_collection else None,
                "beam_args": tuple(args.beam_arg) if args.beam_arg else None}
    changes.update({k: v for k, v in optional.items() if v is not None})
    if args.no_cache:
        changes["enable_cache"] = False
    if args.incremental:
        changes["mongo_incremental"] = True
    return dataclasses.replace(settings, **changes)


def main(argv=None):
    from tfx_gpt2.orchestration.beam_local import run_and_report

    run_and_report(settings_from(parse_args(argv)))


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
