"""Template: a GPT-2 from scratch for a new language, with a vocabulary learnt from the corpus.

    .venv/bin/python examples/template_new_language.py --data-root DIR_OF_TXT --vocab-size 32000 \\
        --model 124M --train tiny --max-steps 20000

VocabTrainer learns a byte-level BPE of --vocab-size tokens on the train split (GPT-2's file
format), BpeEncoder encodes with it, and the Trainer trains --model from scratch with an
embedding of that size. On the bundled (English) corpus with the defaults it runs in minutes.
Other settings: TFX_GPT2_* (tfx_gpt2/config/settings.py).
"""

import argparse
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings_from(argv=None):
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-name", default="tfx-gpt2-new-language")
    parser.add_argument("--data-root", default=os.path.join(REPO, "data", "pydoc_topics"))
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--special-token", action="append", default=[], help="an extra special token (repeatable)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--train", default="tiny")
    parser.add_argument("--max-steps", type=int, default=0, help="override the preset's steps")
    args = parser.parse_args(argv)

    from tfx_gpt2.config.settings import from_env

    return dataclasses.replace(
        from_env(), pipeline_name=args.pipeline_name, data_root=args.data_root, output_dir=args.output_dir,
        vocab="train", vocab_size=args.vocab_size, special_tokens=tuple(args.special_token), model=args.model,
        train=args.train, max_steps=args.max_steps)


def main(argv=None):
    from tfx_gpt2.orchestration.beam_local import run_and_report

    return run_and_report(settings_from(argv))


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
