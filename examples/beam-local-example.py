"""The main job: the whole tfx-gpt2 pipeline on the bundled corpus, run locally with Beam.

    make run                                   # sets up .venv, then runs this file
    .venv/bin/python examples/beam-local-example.py [--output-dir DIR] [--data-root DIR]
        [--model tiny|124M|...] [--train tiny|finetune] [--no-cache]

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
    args = parser.parse_args(argv)

    from tfx_gpt2.local import run_and_report

    run_and_report(
        args.pipeline_name, args.data_root, args.output_dir,
        model=args.model, train=args.train, enable_cache=not args.no_cache,
    )


if __name__ == "__main__":
    sys.exit(main())
