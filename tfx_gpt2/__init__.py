"""tfx-gpt2: raw text to a trained, evaluated and registered GPT-2, through one TFX pipeline."""

import warnings

__version__ = "0.1.0"

# google-api-core warns once per module, dozens of times, that Python 3.10 is old; TFX 1.16 needs it.
warnings.filterwarnings("ignore", message=".*non-supported Python version.*", category=FutureWarning)
