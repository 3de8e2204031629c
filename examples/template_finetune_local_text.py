"""Template: fine-tune a GPT-2 checkpoint on your own text files.

    .venv/bin/python examples/template_finetune_local_text.py --data-root DIR_OF_TXT \\
        --init-checkpoint openai:124M              # downloads OpenAI's checkpoint in the pipeline
    .venv/bin/python examples/template_finetune_local_text.py --init-checkpoint /path/to/checkpoint \\
        --train tiny                               # any OpenAI / Hugging Face / tfx-gpt2 directory

The model's shape (and so the block length the data is encoded to) is the checkpoint's: read from
its directory, or OpenAI's SIZE for openai:SIZE. The data is encoded with the checkpoint's
vocabulary (OpenAI's for OpenAI checkpoints), and the `finetune` training preset (low learning
rate) applies unless --train says otherwise. Other settings: TFX_GPT2_* (tfx_gpt2/config/settings.py).
"""

import argparse
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings_from(argv=None):
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-name", default="tfx-gpt2-finetune")
    parser.add_argument("--data-root", default=os.path.join(REPO, "data", "pydoc_topics"))
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--init-checkpoint", default="openai:124M", help="a checkpoint directory or openai:SIZE")
    parser.add_argument("--train", default="finetune", help="training preset (finetune; lora: adapters only)")
    parser.add_argument("--max-steps", type=int, default=0, help="override the preset's steps")
    args = parser.parse_args(argv)

    from tfx_gpt2.config.settings import from_env

    vocab = "gpt2" if args.init_checkpoint.startswith("openai:") else args.init_checkpoint
    return dataclasses.replace(
        from_env(), pipeline_name=args.pipeline_name, data_root=args.data_root, output_dir=args.output_dir,
        init_checkpoint=args.init_checkpoint, vocab=vocab, train=args.train, max_steps=args.max_steps)


def main(argv=None):
    from tfx_gpt2.orchestration.beam_local import run_and_report

    return run_and_report(settings_from(argv))


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
