"""MlflowPusher: an MLflow run and a registered model version for the trained model.

Input artifacts:
    model (Model): the Trainer's output (`Format-Serving/` is the model directory, with
        `train_metrics.json`).
    model_run (ModelRun): the Trainer's TensorBoard logs, logged under `tensorboard/`.
    evaluation (ModelEvaluation): PerplexityEvaluator's figures, logged as metrics.
    blessing (ModelBlessing): whether the version also takes the `champion` alias.
Output artifact:
    pushed_model (PushedModel): custom properties `pushed` (1), `pushed_destination`
        (`models:/<name>/<version>`), `registered_model_name`, `model_version`, `mlflow_run_id`,
        `tracking_uri` (without credentials), `aliases`.
Parameters:
    tracking_uri: MLflow tracking URI; credentials come from MLflow's environment variables.
    experiment_name, registered_model_name: where the run and the version go.
    params_json: a JSON object of run params (the pipeline's configs, flattened).
    pipeline_name: tagged on the run and the version.
    num_samples: sample generations to log (0 for none).
"""


import json
import os

from tfx import v1 as tfx
from tfx.utils import path_utils

from tfx_gpt2.components.evaluator import METRICS_FILE
from tfx_gpt2.components.trainer import TRAIN_METRICS_FILE
from tfx_gpt2.registry import SAMPLE_PROMPTS, push_model, redact_uri


@tfx.dsl.components.component
def MlflowPusher(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_run: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelRun],
    evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    pushed_model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.PushedModel],
    tracking_uri: tfx.dsl.components.Parameter[str],
    registered_model_name: tfx.dsl.components.Parameter[str],
    experiment_name: tfx.dsl.components.Parameter[str],
    params_json: tfx.dsl.components.Parameter[str] = "{}",
    pipeline_name: tfx.dsl.components.Parameter[str] = "",
    num_samples: tfx.dsl.components.Parameter[int] = 3,
):
    """Logs the model, its metrics and logs to MLflow and registers a new model version."""
    model_dir = path_utils.serving_model_path(model.uri)
    with open(os.path.join(model_dir, TRAIN_METRICS_FILE)) as f:
        train_metrics = json.load(f)
    with open(os.path.join(evaluation.uri, METRICS_FILE)) as f:
        eval_metrics = json.load(f)
    blessed = bool(blessing.get_int_custom_property("blessed"))

    samples = []
    if num_samples:
        from tfx_gpt2.model.generate import generate_text
        from tfx_gpt2.model.io import load_model_dir
        from tfx_gpt2.text.bpe import BPETokenizer

        prompts = list(SAMPLE_PROMPTS[:num_samples])
        texts = generate_text(load_model_dir(model_dir), BPETokenizer.from_dir(model_dir), prompts,
                              max_new_tokens=48, temperature=0.8, top_k=40, seed=0)
        samples = [p + t for p, t in zip(prompts, texts)]

    tags = {"pipeline_name": pipeline_name, "blessed": str(blessed).lower()}
    result = push_model(
        tracking_uri=tracking_uri, experiment_name=experiment_name,
        registered_model_name=registered_model_name, model_dir=model_dir,
        params=json.loads(params_json), history=train_metrics["history"], eval_metrics=eval_metrics,
        blessed=blessed, tensorboard_dir=model_run.uri, tags=tags, samples=samples,
    )
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", result.model_uri)
    pushed_model.set_string_custom_property("registered_model_name", result.registered_model_name)
    pushed_model.set_int_custom_property("model_version", result.version)
    pushed_model.set_string_custom_property("mlflow_run_id", result.run_id)
    pushed_model.set_string_custom_property("tracking_uri", redact_uri(tracking_uri))
    pushed_model.set_string_custom_property("aliases", ",".join(result.aliases))
