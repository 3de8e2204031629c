"""Template: fine-tune a GPT-2 checkpoint on your own text files.

    .venv/bin/python examples/template_finetune_local_text.py --data-root DIR_OF_TXT \\
        --init-checkpoint openai:124M              # downloads OpenAI's checkpoint in the pipeline
    .venv/bin/python examples/template_finetune_local_text.py --init-checkpoint /path/to/checkpoint \\
        --train tiny                               # any OpenAI / Hugging Face / tfx-gpt2 directory

The data is encoded with the checkpoint's vocabulary (OpenAI's for OpenAI checkpoints), the
model shape is the checkpoint's, and the `finetune` training preset (low learning rate) applies
unless --train says otherwise. Everything else is `create_pipeline()`'s default.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-name", default="tfx-gpt2-finetune")
    parser.add_argument("--data-root", default=os.path.join(REPO, "data", "pydoc_topics"))
    parser.add_argument("--output-dir", default=os.path.join(REPO, "tfx_gpt2_output"))
    parser.add_argument("--init-checkpoint", default="openai:124M", help="a checkpoint directory or openai:SIZE")
    parser.add_argument("--model", default="", help="the checkpoint's shape, for the block length (default: "
                        "SIZE of openai:SIZE, else tiny)")
    parser.add_argument("--train", default="finetune", help="training preset")
    parser.add_argument("--max-steps", type=int, default=0, help="override the preset's steps")
    args = parser.parse_args(argv)

    from tfx_gpt2.config import train_preset
    from tfx_gpt2.local import run_and_report

    train = train_preset(args.train, args.max_steps)
    vocab = "gpt2" if args.init_checkpoint.startswith("openai:") else args.init_checkpoint
    model = args.model or (args.init_checkpoint.split(":", 1)[1] if args.init_checkpoint.startswith("openai:") else "tiny")
    return run_and_report(args.pipeline_name, args.data_root, args.output_dir, init_checkpoint=args.init_checkpoint,
                          vocab=vocab, train=train, model=model)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
