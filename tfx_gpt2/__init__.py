"""tfx-gpt2: raw text to a trained, evaluated and registered GPT-2, through one TFX pipeline."""

from tfx_gpt2 import quiet

__version__ = "0.1.0"

quiet.install()
