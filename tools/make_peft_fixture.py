"""Writes `tests/data/peft_tiny_gpt2/`: a tiny GPT-2 and LoRA adapters saved by Hugging Face PEFT
itself, with the logits PEFT computes, so that the tests check `tfx_gpt2.model.lora` against PEFT.

Run it once in a Python that has torch, transformers and peft (not tfx-gpt2's environment):

    python3.11 -m venv /tmp/peft-env
    /tmp/peft-env/bin/pip install torch==2.13.0 transformers peft    # a CPU build of torch will do
    /tmp/peft-env/bin/python tools/make_peft_fixture.py tests/data/peft_tiny_gpt2

It writes:
    base/                   GPT2LMHeadModel.save_pretrained (vocabulary 64, n_embd 8, 2 layers)
    adapter/                PeftModel.save_pretrained: r 4, alpha 8, on c_attn, c_proj (both) and c_fc
    adapter_rslora/         r 2, alpha 4, use_rslora, on c_attn only
    expected.json           the token ids, each adapter's logits, and the versions that wrote them

`--check DIR BASE` goes the other way: it loads an adapter that tfx-gpt2 wrote (DIR) onto BASE (a
Hugging Face directory) with PEFT and prints its logits for the fixture's tokens as JSON.
"""

import argparse
import json
import os
import sys

TOKENS = [[1, 5, 9, 33, 2, 60, 17, 8], [40, 41, 3, 3, 12, 0, 63, 7]]
ADAPTERS = {
    "adapter": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "use_rslora": False},
    "adapter_rslora": {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn"], "use_rslora": True},
}


def _logits(model, torch):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy().round(6).tolist()


def write_fixture(out: str) -> None:
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    base = transformers.GPT2LMHeadModel(config).eval()
    base.save_pretrained(os.path.join(out, "base"))
    expected = {"tokens": TOKENS, "base_logits": _logits(base, torch),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__}}
    for name, settings in ADAPTERS.items():
        fresh = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(out, "base")).eval()
        # init_lora_weights=False: lora_B random, not zero, so the adapter changes the logits.
        lora = peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, fan_in_fan_out=True,
                               init_lora_weights=False, **settings)
        model = peft.get_peft_model(fresh, lora).eval()
        model.save_pretrained(os.path.join(out, name))
        os.remove(os.path.join(out, name, "README.md"))  # PEFT's model card template
        expected[f"{name}_logits"] = _logits(model, torch)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)


def check(adapter_dir: str, base_dir: str) -> None:
    import peft
    import torch
    import transformers

    base = transformers.GPT2LMHeadModel.from_pretrained(base_dir).eval()
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    json.dump({"tokens": TOKENS, "logits": _logits(model, torch)}, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="tests/data/peft_tiny_gpt2")
    parser.add_argument("--check", nargs=2, metavar=("ADAPTER_DIR", "BASE_DIR"))
    args = parser.parse_args()
    if args.check:
        check(*args.check)
    else:
        write_fixture(args.out)


if __name__ == "__main__":
    main()
