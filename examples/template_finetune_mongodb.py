"""Template: fine-tune (or train) on documents from MongoDB, exported incrementally as TFX spans.

    export MONGO_URI='mongodb://user:password@host:27017/?authSource=admin'   # read at run time, never stored
    .venv/bin/python examples/template_finetune_mongodb.py --collection corpus.docs --text-field body \\
        --filter '{"lang": "en"}' --init-checkpoint openai:124M
    .venv/bin/python examples/template_finetune_mongodb.py --collection corpus.docs --load-bundled \\
        --init-checkpoint none --train tiny     # first copy the bundled corpus into the collection

Each run exports only documents newer than the last export (by --watermark-field, default `_id`)
as a new span; the encoder trains on the latest spans. --load-bundled inserts the bundled
corpus (one MongoDB document per text document) before the run, for a first try.
"""

import argparse
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bundled(collection: str, uri_env: str) -> int:
    """Inserts the bundled corpus into `collection` (skipped if it already holds documents)."""
    from tfx_gpt2.sources import mongo
    from tfx_gpt2.sources.documents import Document
    from tfx_gpt2.sources.text_files import read_documents

    database, name = collection.split(".", 1)
    client = mongo.client_factory(os.environ[uri_env])
    target = client[database][name]
    if target.estimated_document_count():
        return 0
    corpus = os.path.join(REPO, "data", "pydoc_topics")
    docs = []
    for file_name in sorted(os.listdir(corpus)):
        with open(os.path.join(corpus, file_name), "rb") as f:
            docs += [{"text": d.text, "source": d.doc_id} for d in read_documents(f, file_name, "<|endoftext|>")
                     if isinstance(d, Document)]
    target.insert_many(docs)
    return len(docs)


def settings_from(argv=None):
    """The settings of this template's run (TFX_GPT2_* variables, then the flags), and the flags."""
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-name", default="tfx-gpt2-mongodb")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--collection", action="append", required=True, help="database.collection (repeatable)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--filter", default="{}", help="MongoDB query as JSON")
    parser.add_argument("--uri-env", default="MONGO_URI", help="the variable holding the connection string")
    parser.add_argument("--watermark-field", default="_id", help="what orders documents for incremental exports")
    parser.add_argument("--init-checkpoint", default="openai:124M", help="a checkpoint directory, openai:SIZE, or none")
    parser.add_argument("--model", default="", help="model preset when training from scratch (--init-checkpoint "
                        "none; default tiny); a checkpoint brings its own shape")
    parser.add_argument("--train", default="finetune")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--load-bundled", action="store_true", help="first insert the bundled corpus")
    args = parser.parse_args(argv)
    if args.uri_env not in os.environ:
        parser.error(f"set {args.uri_env} to the MongoDB connection string (it is read at run time, never stored)")

    from tfx_gpt2.config.settings import from_env

    init = "" if args.init_checkpoint == "none" else args.init_checkpoint
    vocab = "gpt2" if not init or init.startswith("openai:") else init
    settings = dataclasses.replace(
        from_env(), pipeline_name=args.pipeline_name, output_dir=args.output_dir,
        mongo_collections=tuple(args.collection), mongo_text_field=args.text_field, mongo_filter=args.filter,
        mongo_uri_env=args.uri_env, mongo_incremental=True, mongo_watermark_field=args.watermark_field,
        model=args.model, init_checkpoint=init, vocab=vocab, train=args.train,
        max_steps=args.max_steps)
    return settings, args


def main(argv=None):
    from tfx_gpt2.orchestration.beam_local import run_and_report

    settings, args = settings_from(argv)
    if args.load_bundled:
        print(f"inserted {load_bundled(args.collection[0], args.uri_env)} documents into {args.collection[0]}")
    return run_and_report(settings)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
