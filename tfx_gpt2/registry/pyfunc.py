"""The MLflow `pyfunc` flavour of a trained model: prompts in, generated text out.

`predict` takes a DataFrame with a `prompt` column, a list of strings, or one string, and the
sampling settings as MLflow params (`max_new_tokens`, `temperature`, `top_k`, `top_p`,
`repetition_penalty`, `seed`; see `tfx_gpt2.model.generate.SamplingConfig`); it returns a list with
the generated continuation of each prompt.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from tfx_gpt2.config.model import SAMPLING_PARAM_DEFAULTS
from tfx_gpt2.registry.champion import MODEL_DIR_ARTIFACT, load_model_with_base

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema([
        ParamSpec("max_new_tokens", "long", SAMPLING_PARAM_DEFAULTS["max_new_tokens"]),
        ParamSpec("temperature", "double", SAMPLING_PARAM_DEFAULTS["temperature"]),
        ParamSpec("top_k", "long", SAMPLING_PARAM_DEFAULTS["top_k"]),
        ParamSpec("top_p", "double", SAMPLING_PARAM_DEFAULTS["top_p"]),
        ParamSpec("repetition_penalty", "double", SAMPLING_PARAM_DEFAULTS["repetition_penalty"]),
        ParamSpec("seed", "long", SAMPLING_PARAM_DEFAULTS["seed"]),
    ]),
)


def prompts_of(model_input: Any) -> List[str]:
    """The prompts in a DataFrame (`prompt` column, or its only column), a list, or a string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and "prompt" in model_input:
        return prompts_of(list(model_input["prompt"]))
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else (
            model_input.columns[0] if len(model_input.columns) == 1 else None)
        if column is None:
            raise ValueError(
                f"the input has columns {list(model_input.columns)}; send a 'prompt' column of strings."
            )
        return [str(p) for p in model_input[column].tolist()]
    if isinstance(model_input, (list, tuple)):
        return [str(p) for p in model_input]
    raise ValueError(f"cannot read prompts from a {type(model_input).__name__}; send a list of strings.")


class GPT2PyFunc(mlflow.pyfunc.PythonModel):
    """Loads the tfx-gpt2 model directory logged as the `model_dir` artifact; a LoRA adapter
    directory's base comes from the registry (`load_model_with_base`, into a temporary folder of its
    own, so that the artifacts stay as logged) and the adapters are merged."""

    def load_context(self, context):
        from tfx_gpt2.model.generate import Generator
        from tfx_gpt2.text.bpe import BPETokenizer

        path = context.artifacts[MODEL_DIR_ARTIFACT]
        model = load_model_with_base(path)
        self.generator = Generator(model, BPETokenizer.from_dir(path))

    def predict(self, context, model_input: pd.DataFrame, params: Optional[Dict[str, Any]] = None) -> List[str]:
        """Continues each prompt; bad settings raise MLflow's INVALID_PARAMETER_VALUE (HTTP 400).

        `model_input` is a DataFrame of prompts (MLflow's schema enforcement makes one of a list;
        a list passed directly works too). The type hint tells MLflow that no signature is to be
        inferred from it: the signature is `SIGNATURE`.
        """
        from mlflow.exceptions import MlflowException

        from tfx_gpt2.model.generate import GenerationError

        try:
            return self.generator.generate(prompts_of(model_input), sampling_config(params))
        except (GenerationError, ValueError) as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None


def check_setting_names(params: Optional[Dict[str, Any]]) -> None:
    """Raises ValueError for a request param that is not a sampling setting (`SAMPLING_PARAM_DEFAULTS`)."""
    unknown = sorted(set(params or {}) - set(SAMPLING_PARAM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {unknown}; the settings are {sorted(SAMPLING_PARAM_DEFAULTS)}.")


def sampling_config(params: Optional[Dict[str, Any]]):
    """The `SamplingConfig` of request params (defaults: `SAMPLING_PARAM_DEFAULTS`); unknown names are errors."""
    from tfx_gpt2.model.generate import SamplingConfig

    check_setting_names(params)
    settings = {**SAMPLING_PARAM_DEFAULTS, **(params or {})}
    values = {}
    for name, default in SAMPLING_PARAM_DEFAULTS.items():
        try:
            values[name] = type(default)(settings[name])
        except (TypeError, ValueError):
            raise ValueError(f"{name} = {settings[name]!r} is not a {type(default).__name__}.") from None
    seed = values.pop("seed")
    return SamplingConfig(**values, seed=None if seed < 0 else seed)
