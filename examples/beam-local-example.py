"""The main job: the whole tfx-gpt2 pipeline on the bundled corpus, run locally with Beam.

    make run                                   # sets up .venv, then runs this file
    .venv/bin/python examples/beam-local-example.py [--output-dir DIR] [--data-root DIR]
        [--model tiny|124M|...] [--train tiny|finetune] [--no-cache]
        [--vocab gpt2|DIR|train] [--vocab-size N] [--special-token TOK ...]
        [--mongo-collection DB.COLL ... --text-field F --mongo-filter JSON --mongo-uri-env VAR
         --incremental --control-field F]
        [--beam-arg=--direct_num_workers=2 --beam-arg=--direct_running_mode=multi_processing]

With --mongo-collection the documents come from MongoDB (the connection string is read from the
environment variable --mongo-uri-env, MONGO_URI by default, and never stored).

Raw text (data/pydoc_topics/*.txt) -> train/eval split -> GPT-2 BPE blocks -> GPT-2 trainer
(`tiny` preset, about a minute on a CPU) -> perplexity evaluation -> an MLflow run and a
registered model version. ML Metadata and MLflow use sqlite files under the output directory;
a second run with unchanged inputs reuses every component from the cache.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-name", default="tfx-gpt2-local")
    parser.add_argument("--data-root", default=os.path.join(REPO, "data", "pydoc_topics"))
    parser.add_argument("--output-dir", default=os.environ.get("TFX_GPT2_OUTPUT", os.path.join(REPO, "tfx_gpt2_output")))
    parser.add_argument("--model", default="tiny", help="model preset (tiny, 124M, 355M, 774M, 1558M)")
    parser.add_argument("--train", default="tiny", help="training preset (tiny, finetune)")
    parser.add_argument("--no-cache", action="store_true", help="run every component even if cached")
    parser.add_argument("--vocab", default="gpt2", help="gpt2 (OpenAI's), a vocabulary directory, or 'train'")
    parser.add_argument("--vocab-size", type=int, default=None, help="size of a trained vocabulary (--vocab train)")
    parser.add_argument("--special-token", action="append", default=[], help="extra special token (repeatable)")
    parser.add_argument("--mongo-collection", action="append", default=[], help="database.collection (repeatable)")
    parser.add_argument("--text-field", default="text", help="MongoDB field holding the text")
    parser.add_argument("--mongo-filter", default="{}", help="MongoDB query as JSON")
    parser.add_argument("--mongo-uri-env", default="MONGO_URI", help="environment variable with the connection string")
    parser.add_argument("--incremental", action="store_true", help="export only new documents, as a new span")
    parser.add_argument("--control-field", default="", help="MongoDB field with a control token per document")
    parser.add_argument("--beam-arg", action="append", default=None, help="a Beam pipeline argument (repeatable)")
    args = parser.parse_args(argv)

    from tfx_gpt2.local import run_and_report

    source = args.data_root
    if args.mongo_collection:
        from tfx_gpt2.sources.mongo import MongoSource

        source = MongoSource(
            collections=tuple(args.mongo_collection), text_field=args.text_field, filter=args.mongo_filter,
            uri_env=args.mongo_uri_env, incremental=args.incremental,
            metadata_fields=(args.control_field,) if args.control_field else (),
        )
    run_and_report(
        args.pipeline_name, source, args.output_dir, beam_args=args.beam_arg,
        model=args.model, train=args.train, enable_cache=not args.no_cache,
        vocab=args.vocab, vocab_size=args.vocab_size, special_tokens=args.special_token,
        control_feature=args.control_field,
    )


if __name__ == "__main__":
    sys.exit(main())
