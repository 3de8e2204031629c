"""MlflowPusher: an MLflow run and a registered model version for the trained model.

A Pusher in TFX's style (a ComponentSpec, an Executor and a component class), so that the
executor knows the pipeline run it belongs to.

Input artifacts:
    model (Model): the Trainer's output (`Format-Serving/` is the model directory, with
        `train_metrics.json`; its `samples.json`, the samples taken while training, is logged as
        `training_samples.json`).
    model_run (ModelRun): the Trainer's TensorBoard logs, logged under `tensorboard/`.
    evaluation (ModelEvaluation): PerplexityEvaluator's figures, logged as metrics.
    model_blessing (ModelBlessing): whether the version also takes the `champion` alias.
    examples (Examples, optional): BpeEncoder's blocks, to score a champion that moved after the
        evaluation (below).
Output artifact:
    pushed_model (PushedModel): custom properties `pushed` (1), `pushed_destination`
        (`models:/<name>/<version>`), `registered_model_name`, `model_version`, `mlflow_run_id`,
        `tracking_uri` (without credentials), `aliases`, `already_pushed`, `blessed` and
        `blessing_reason` (the decision the push acted on).
Parameters:
    tracking_uri: MLflow tracking URI; credentials come from MLflow's environment variables.
    experiment_name, registered_model_name: where the run and the version go.
    params_json: a JSON object of run params (the pipeline's configs, flattened).
    pipeline: the pipeline's name, tagged on the run and the version as `pipeline_name`.
    num_samples: sample generations to log (0 for none).

The version is tagged with the pipeline name, the pipeline run id, the data span(s) the model
was evaluated on, the checkpoint it started from (`scratch` or the checkpoint) and the model
artifact's URI, which makes a re-run of the same push (a retried task, a run resumed after a
failure) find its version instead of registering a duplicate.

Pushes to one registered model are serialised (`tfx_gpt2.registry.locks.registry_lock`). Under the lock
the pusher checks that the champion is still the one the evaluator compared with; when another run
moved it in between (two runs at once), the blessing is decided again against the new champion,
scored on the same eval blocks, so two runs never both take `champion` on a stale comparison.
"""

import json
import os
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import path_utils

from tfx_gpt2.components.evaluator import METRICS_FILE
from tfx_gpt2.components.trainer import SAMPLES_FILE, TRAIN_METRICS_FILE
from tfx_gpt2.feedback.lineage import FINE_TUNED_FROM_TAG, eval_tags, lineage_tags
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.blessing import decide_again
from tfx_gpt2.registry.champion import COMPARED_WITH_TAG, champion_key, load_model_with_base
from tfx_gpt2.registry.client import redact_uri
from tfx_gpt2.registry.locks import registry_lock
from tfx_gpt2.registry.push import SAMPLE_PROMPTS, push_model
from tfx_gpt2.training.quality import QualityData
from tfx_gpt2.uris import local_copy

logger = get_logger("tfx_gpt2.pusher")
# Settings of the blessing rule kept in the evaluation's figures (params of the run, not metrics).
DECISION_PARAMS = ("perplexity_threshold", "min_improvement", "beat_baseline", "gate")


class MlflowPusherSpec(types.ComponentSpec):
    PARAMETERS = {
        "tracking_uri": ExecutionParameter(type=str),
        "registered_model_name": ExecutionParameter(type=str),
        "experiment_name": ExecutionParameter(type=str),
        "params_json": ExecutionParameter(type=str, optional=True),
        # Not `pipeline_name`: TFX's Airflow launcher reserves that execution property.
        "pipeline": ExecutionParameter(type=str, optional=True),
        "num_samples": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


def sample_texts(model_dir: str, num_samples: int, tracking_uri: Optional[str] = None):
    """`num_samples` of `SAMPLE_PROMPTS`, each with its continuation by the model in `model_dir`
    (adapters on a registered base: the base from `tracking_uri`'s registry)."""
    if not num_samples:
        return []
    from tfx_gpt2.model.generate import generate_text
    from tfx_gpt2.model.sampling import DEFAULT_TOP_K
    from tfx_gpt2.text.bpe import BPETokenizer

    prompts = list(SAMPLE_PROMPTS[:num_samples])
    gpt2 = load_model_with_base(model_dir, tracking_uri)
    # 48 new tokens, or half the context of a model with a short one.
    texts = generate_text(gpt2, BPETokenizer.from_dir(model_dir), prompts,
                          max_new_tokens=min(48, gpt2.config.n_ctx // 2), temperature=0.8, top_k=DEFAULT_TOP_K,
                          seed=0)
    return [p + t for p, t in zip(prompts, texts)]


class Executor(base_executor.BaseExecutor):
    """Logs the model, its metrics and logs to MLflow and registers a new model version."""

    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        model_run = artifact_utils.get_single_instance(input_dict["model_run"])
        evaluation = artifact_utils.get_single_instance(input_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])
        pushed_model = artifact_utils.get_single_instance(output_dict["pushed_model"])
        tracking_uri = exec_properties["tracking_uri"]

        model_dir = local_copy(path_utils.serving_model_path(model.uri))
        with open(os.path.join(model_dir, TRAIN_METRICS_FILE)) as f:
            train_metrics = json.load(f)
        with fileio.open(os.path.join(evaluation.uri, METRICS_FILE)) as f:
            eval_metrics = {k: v for k, v in json.load(f).items()
                            if isinstance(v, (int, float)) and k not in DECISION_PARAMS}
        training_samples = []
        if os.path.exists(os.path.join(model_dir, SAMPLES_FILE)):
            with open(os.path.join(model_dir, SAMPLES_FILE)) as f:
                training_samples = json.load(f)
        num_samples = exec_properties.get("num_samples")
        samples = sample_texts(model_dir, 3 if num_samples is None else int(num_samples), tracking_uri)

        # The run id from TFX's portable launchers (Beam, Kubeflow V2), or Airflow's own.
        run_id = (self._context.pipeline_run_id if self._context else None) or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
        name = exec_properties["registered_model_name"]
        with registry_lock(tracking_uri, name):
            blessed, reason, compared = current_blessing(tracking_uri, name, model.uri, model_dir, evaluation,
                                                         blessing, input_dict.get("examples"))
            tags = {
                "pipeline_name": exec_properties.get("pipeline") or "",
                "pipeline_run_id": run_id or "",
                "data_span": evaluation.get_string_custom_property("data_span") or "",
                "init_checkpoint": str(train_metrics.get("init", "scratch")),
                **({FINE_TUNED_FROM_TAG: train_metrics["fine_tuned_from"]} if train_metrics.get("fine_tuned_from")
                   else {}),
                "blessed": str(blessed).lower(),
                "blessing_reason": reason,
                COMPARED_WITH_TAG: compared,
                **lineage_tags(examples_lineage(input_dict.get("examples"))),
                **eval_tags(eval_metrics, evaluation.get_string_custom_property("gate") or ""),
            }
            result = push_model(
                tracking_uri=tracking_uri, experiment_name=exec_properties["experiment_name"],
                registered_model_name=name, model_dir=model_dir,
                model_key=model.uri, params=json.loads(exec_properties.get("params_json") or "{}"),
                history=train_metrics["history"], eval_metrics=eval_metrics, blessed=blessed,
                tensorboard_dir=model_run.uri, tags=tags, samples=samples, input_example=list(SAMPLE_PROMPTS[:1]),
                training_samples=training_samples, evaluation_dir=local_copy(evaluation.uri),
            )
        _record(pushed_model, result, tracking_uri, blessed, reason)


def examples_lineage(examples) -> list:
    """The spans the encoded blocks come from (BpeEncoder's `lineage`), [] when not recorded."""
    if not examples or not examples[0].has_custom_property("lineage"):
        return []
    return json.loads(examples[0].get_string_custom_property("lineage"))


def current_blessing(tracking_uri: str, name: str, model_key: str, model_dir: str, evaluation, blessing,
                     examples) -> tuple:
    """(blessed, reason, champion key compared with): the evaluator's decision, or, when the
    champion moved since it was taken, a new one against the current champion, scored on the
    same eval blocks (without `examples`, the model is not promoted and the reason says why)."""
    blessed = bool(blessing.get_int_custom_property("blessed"))
    reason = blessing.get_string_custom_property("reason") or ""
    compared = evaluation.get_string_custom_property("champion_key") or ""
    if compared in ("", "not compared"):
        return blessed, reason, compared
    now = champion_key(tracking_uri, name, model_key)
    if now == compared:
        return blessed, reason, compared
    moved = f"the champion moved from {compared} to {now} after this model was evaluated"
    if not examples:
        return False, f"{moved}; not promoted: run the pipeline again to compare with it", now
    with fileio.open(os.path.join(evaluation.uri, METRICS_FILE)) as f:
        metrics = json.load(f)
    eval_files = [os.path.join(artifact_utils.get_split_uri(examples, "eval"), "*")]
    blessed, reason = decide_again(metrics, tracking_uri, name, model_dir, eval_files,
                                   quality=QualityData.load(evaluation.uri))
    logger.warning("%s: decided again: %s", moved, reason)
    return blessed, f"{moved}; decided again: {reason}", now


def _record(pushed_model, result, tracking_uri: str, blessed: bool, reason: str) -> None:
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", result.model_uri)
    pushed_model.set_string_custom_property("registered_model_name", result.registered_model_name)
    pushed_model.set_int_custom_property("model_version", result.version)
    pushed_model.set_string_custom_property("mlflow_run_id", result.run_id)
    pushed_model.set_string_custom_property("tracking_uri", redact_uri(tracking_uri))
    pushed_model.set_string_custom_property("aliases", ",".join(result.aliases))
    pushed_model.set_int_custom_property("already_pushed", int(result.already_pushed))
    pushed_model.set_int_custom_property("blessed", int(blessed))
    pushed_model.set_string_custom_property("blessing_reason", reason)


class MlflowPusher(base_component.BaseComponent):
    """Registers the Trainer's model in MLflow; see the module docstring.

    Args:
        model, model_run: the Trainer's `model` and `model_run` outputs.
        evaluation, model_blessing: PerplexityEvaluator's outputs.
        examples: the blocks it evaluated on (to score a champion that moved meanwhile).
        tracking_uri: MLflow tracking URI without credentials.
        registered_model_name, experiment_name: where the version and the run go.
        params_json: the run's params as a JSON object.
        pipeline: the pipeline's name, tagged on the run and the version.
        num_samples: sample generations to log.
    """

    SPEC_CLASS = MlflowPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_run: types.BaseChannel, evaluation: types.BaseChannel,
                 model_blessing: types.BaseChannel, tracking_uri: str, registered_model_name: str,
                 experiment_name: str, params_json: str = "{}", pipeline: str = "", num_samples: int = 3,
                 examples: Optional[types.BaseChannel] = None):
        pushed_model = types.Channel(type=standard_artifacts.PushedModel)
        super().__init__(spec=MlflowPusherSpec(
            model=model, model_run=model_run, evaluation=evaluation, model_blessing=model_blessing, examples=examples,
            pushed_model=pushed_model, tracking_uri=tracking_uri, registered_model_name=registered_model_name,
            experiment_name=experiment_name, params_json=params_json, pipeline=pipeline,
            num_samples=num_samples,
        ))
