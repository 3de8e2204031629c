"""PerplexityEvaluator: held-out perplexity, a unigram baseline, next-word accuracy, task files,
sample quality, and the blessing decision.

Input artifacts:
    model (Model): the Trainer's output (`Format-Serving/` holds the model directory).
    examples (Examples): BpeEncoder's encoded blocks; `eval` (and `test`, when present) are scored,
        `train` fits the unigram baseline, and the openings of `eval`'s documents are the sample
        prompts.
    documents (Examples, optional): the documents as text (ExampleGen's), for next-word accuracy
        on the last words of the `eval` split's documents.
    tasks (Dataset, optional): a folder of multiple-choice task files (`training.tasks`).
Output artifacts:
    evaluation (ModelEvaluation): `metrics.json`, and the same figures as custom properties:
        `<split>_loss`, `<split>_perplexity`, `<split>_tokens`, `<split>_unigram_perplexity`,
        the figures of `training.quality` (next_word_*, task_<name>_*, sample_*); with a
        champion also `champion_version`, `champion_eval_perplexity` and `champion_<metric>` of
        every gate metric; `data_span`, and `champion_key` (below). Also `samples.json` (the
        samples the sample figures are of) and `quality_data.json` (what was scored).
    blessing (ModelBlessing): a `BLESSED` or `NOT_BLESSED` file (TFX's convention), custom
        properties `blessed` (1/0) and `reason`.
Parameters:
    perplexity_threshold: the model is blessed only if its eval perplexity is below this.
    batch_size: blocks per evaluation batch (and `batch_size x n_ctx` tokens per scoring batch).
    tracking_uri, registered_model_name: where the champion (the version holding the
        `champion` alias) is; empty: no champion comparison.
    min_improvement: with a champion, the model is blessed only if its eval perplexity is below
        the champion's times (1 - min_improvement); 0 means any improvement. (Without `gate`.)
    gate: JSON list of `GateMetric`s (`config.pipeline`): the metrics the model must win on
        against the champion, scored on the same data; default: eval perplexity.
    next_word_documents: how many eval documents' last words to predict (0: none).
    samples: how many eval documents' openings to continue for the sample figures (0: none).
    compare_with_champion: 0 blesses without comparing with the champion (e.g. to replace one
        that has another vocabulary, whose perplexity is over other tokens).
    beat_baseline: 1 (the default) blesses a model only if its eval perplexity is also below the
        unigram baseline's on the same blocks (a model that does not beat token frequencies
        learned nothing from context); 0 leaves it to the threshold and the champion.
    champion_key: set by the driver, not by hand (see below).

The champion is downloaded from MLflow and scored on the same eval blocks as the candidate, so
the two perplexities are over the same tokens even when the data changed since the champion was
trained. A champion with another vocabulary, or a context shorter than the blocks, cannot be
scored on them: the model is then not blessed, and the reason says so.

The champion is an input that TFX cannot see, so the driver (`ChampionDriver`, run by the
orchestrator before its cache lookup, as ExampleGen's driver is) resolves which version holds
the alias into the `champion_key` parameter: when the champion moves, the cache key changes and
the evaluation runs again instead of reusing a blessing decided against an older champion.
Kubeflow V2 runs no TFX driver; there `pipelines/kubeflow_runner.py` turns KFP's cache off for
this step and the pusher.
"""

import json
import os
from typing import Dict

from tfx import types
from tfx.dsl.components.base import base_component, base_driver, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto.orchestration import driver_output_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.types.experimental.simple_artifacts import Dataset
from tfx.utils import path_utils

from tfx_gpt2.components.trainer import TRAIN_METRICS_FILE
from tfx_gpt2.components.vocab_trainer import iter_texts, split_files
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.blessing import (ChampionScore, decide, decision_params, gate_of, needs_quality,
                                        score_champion)
from tfx_gpt2.registry.champion import load_model_with_base
from tfx_gpt2.text.blocks import block_dataset, read_blocks, target_counts
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training.evaluation import check_block_length, evaluate
from tfx_gpt2.training.perplexity import perplexity, unigram_perplexity
from tfx_gpt2.training.quality import QualityData, measure
from tfx_gpt2.training.samples import document_openings
from tfx_gpt2.training.tasks import next_word_requests, read_task_file, task_files
from tfx_gpt2.uris import local_copy

logger = get_logger("tfx_gpt2.evaluator")

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.json"
CHAMPION_KEY = "champion_key"


def score_splits(gpt2, files: Dict[str, list], batch_size: int) -> Dict[str, float]:
    """Loss, perplexity, token count and unigram baseline of the `eval` (and `test`) blocks."""
    train_counts = target_counts(files["train"], gpt2.config.n_vocab)
    metrics = {}
    for split in [s for s in ("eval", "test") if s in files]:
        check_block_length(files[split], gpt2.config, split)
        ds = block_dataset(files[split], gpt2.config.n_ctx + 1, batch_size, drop_remainder=False)
        loss, n = evaluate(gpt2, ds)
        metrics[f"{split}_loss"] = loss
        metrics[f"{split}_perplexity"] = perplexity(loss)
        metrics[f"{split}_tokens"] = n
        metrics[f"{split}_unigram_perplexity"] = unigram_perplexity(
            train_counts, target_counts(files[split], gpt2.config.n_vocab))
        logger.info("%s: perplexity %.2f over %s tokens (unigram baseline %.2f)", split,
                    metrics[f"{split}_perplexity"], f"{n:,}", metrics[f"{split}_unigram_perplexity"])
    return metrics


def quality_data(tokenizer, input_dict, exec_properties, eval_files) -> QualityData:
    """What `training.quality.measure` scores, from the evaluator's inputs and settings."""
    next_word, tasks, prompts = (), {}, ()
    documents, limit = input_dict.get("documents"), int(exec_properties.get("next_word_documents") or 0)
    if documents and limit:
        next_word = tuple(next_word_requests(tokenizer, iter_texts(split_files(documents, "eval"), "text"), limit))
        if not next_word:
            logger.warning("next-word accuracy: no eval document has a last word after a space; it is not measured")
    if input_dict.get("tasks"):
        folder = local_copy(artifact_utils.get_single_uri(input_dict["tasks"]))
        tasks = {name: tuple(read_task_file(path)) for name, path in task_files(folder).items()}
    count = int(exec_properties.get("samples") or 0)
    if count:
        prompts = tuple(tuple(p) for p in document_openings(read_blocks(eval_files), tokenizer.eot_id, count))
    return QualityData(next_word, tasks, prompts)


class Executor(base_executor.BaseExecutor):
    """Scores the model on the held-out splits and decides whether to bless it."""

    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        model_dir = local_copy(path_utils.serving_model_path(model.uri))
        # an adapter trained on from a registered adapter champion names its base models:/...
        gpt2 = load_model_with_base(model_dir, exec_properties.get("tracking_uri") or None)
        splits = artifact_utils.decode_split_names(examples.split_names)
        files = {s: [os.path.join(artifact_utils.get_split_uri([examples], s), "*")] for s in splits}
        if "eval" not in files or "train" not in files:
            raise ValueError(f"PerplexityEvaluator needs 'train' and 'eval' splits; the examples have {splits}.")
        batch_size = int(exec_properties.get("batch_size") or 8)
        metrics = score_splits(gpt2, files, batch_size)
        tokenizer = BPETokenizer.from_dir(model_dir)
        quality = quality_data(tokenizer, input_dict, exec_properties, files["eval"])
        fileio.makedirs(evaluation.uri)
        quality.save(evaluation.uri)
        measured, samples = measure(gpt2, tokenizer, quality, token_budget=batch_size * gpt2.config.n_ctx)
        metrics.update(measured)
        with fileio.open(os.path.join(evaluation.uri, SAMPLES_FILE), "w") as f:
            json.dump(samples, f, indent=1)
        metrics[CHAMPION_KEY] = exec_properties.get(CHAMPION_KEY) or ""
        metrics.update(decision_params(exec_properties))
        champion = ChampionScore()
        tracking_uri, name = exec_properties.get("tracking_uri"), exec_properties.get("registered_model_name")
        if int(exec_properties.get("compare_with_champion", 1)) and tracking_uri and name:
            champion = score_champion(tracking_uri, name, gpt2, tokenizer.encoder, files["eval"], batch_size,
                                      quality if needs_quality(gate_of(metrics)) else None)
        blessed, reason = False, champion.not_comparable
        if not champion.not_comparable:
            metrics.update(champion_figures(champion, metrics))
            blessed, reason = decide(metrics, champion)
        write_tensorboard(os.path.join(evaluation.uri, "tensorboard"), metrics, trained_steps(model_dir))
        _write(evaluation, blessing, metrics, examples, blessed, reason)


def trained_steps(model_dir: str) -> int:
    """The Trainer's step count (the TensorBoard step of the evaluation's scalars); 0 if not recorded."""
    path = os.path.join(model_dir, TRAIN_METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("steps", 0))


def write_tensorboard(folder: str, metrics, step: int) -> None:
    """Every number in `metrics` as a TensorBoard scalar at `step` (run `evaluation` beside the
    Trainer's `train` and `eval` once the pusher logs it)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        for name, value in sorted(metrics.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tf.summary.scalar(name, float(value), step=step)
    writer.close()


def champion_figures(champion: ChampionScore, metrics) -> dict:
    """`champion_version` and `champion_<metric>` of each gate metric, when there is a champion."""
    if champion.eval_perplexity is None:
        return {}
    figures = {"champion_version": champion.version, "champion_eval_perplexity": champion.eval_perplexity}
    for gate in gate_of(metrics):
        if champion.value(gate.metric) is not None:
            figures[f"champion_{gate.metric}"] = champion.value(gate.metric)
    return figures


def _write(evaluation, blessing, metrics, examples, blessed: bool, reason: str) -> None:
    metrics = {**metrics, "blessed": int(blessed), "reason": reason}
    # Output folders exist under TFX's launchers but not under Kubeflow's (nor in a bucket).
    for uri in (evaluation.uri, blessing.uri):
        fileio.makedirs(uri)
    with fileio.open(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)
    for key, value in metrics.items():
        if isinstance(value, str):
            evaluation.set_string_custom_property(key, value)
        elif isinstance(value, int):
            evaluation.set_int_custom_property(key, value)
        else:
            evaluation.set_float_custom_property(key, value)
    evaluation.set_string_custom_property("data_span", examples.get_string_custom_property("spans") or "0")
    with fileio.open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(reason + "\n")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    logger.info("%s: %s", "BLESSED" if blessed else "NOT BLESSED", reason)


def resolve_champion_key(exec_properties, model_uri: str) -> str:
    """The `champion_key` of an evaluation of the model at `model_uri` (see the module docstring)."""
    tracking_uri, name = exec_properties.get("tracking_uri"), exec_properties.get("registered_model_name")
    if not (int(exec_properties.get("compare_with_champion", 1)) and tracking_uri and name):
        return "not compared"
    from tfx_gpt2.registry.champion import champion_key

    key = champion_key(tracking_uri, name, model_uri)
    logger.info("champion of %s for the cache key: %s", name, key)
    return key


class ChampionDriver(base_driver.BaseDriver):
    """Puts the registry's current champion into `champion_key` before the cache lookup, under
    both of TFX's launchers: the IR one (Beam, `run`) and the legacy one (Airflow)."""

    def run(self, execution_info) -> driver_output_pb2.DriverOutput:
        model_uri = execution_info.input_dict["model"][0].uri
        output = driver_output_pb2.DriverOutput()
        output.exec_properties[CHAMPION_KEY].string_value = resolve_champion_key(
            execution_info.exec_properties, model_uri)
        return output

    def resolve_input_artifacts(self, input_dict, exec_properties, driver_args, pipeline_info):
        artifacts = super().resolve_input_artifacts(input_dict, exec_properties, driver_args, pipeline_info)
        # The legacy launcher looks up its cache with this same dict, after this call.
        exec_properties[CHAMPION_KEY] = resolve_champion_key(exec_properties, artifacts["model"][0].uri)
        return artifacts


class PerplexityEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "perplexity_threshold": ExecutionParameter(type=float),
        "batch_size": ExecutionParameter(type=int),
        "tracking_uri": ExecutionParameter(type=str, optional=True),
        "registered_model_name": ExecutionParameter(type=str, optional=True),
        "min_improvement": ExecutionParameter(type=float, optional=True),
        "compare_with_champion": ExecutionParameter(type=int, optional=True),
        "beat_baseline": ExecutionParameter(type=int, optional=True),
        "gate": ExecutionParameter(type=str, optional=True),
        "next_word_documents": ExecutionParameter(type=int, optional=True),
        "samples": ExecutionParameter(type=int, optional=True),
        CHAMPION_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "documents": ChannelParameter(type=standard_artifacts.Examples, optional=True),
        # A Dataset (a type Kubeflow's compiler knows): the folder of task files.
        "tasks": ChannelParameter(type=Dataset, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class PerplexityEvaluator(base_component.BaseComponent):
    """Scores the Trainer's model and blesses it or not; see the module docstring for the args."""

    SPEC_CLASS = PerplexityEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
    DRIVER_CLASS = ChampionDriver

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel, perplexity_threshold: float = 1e9,
                 batch_size: int = 8, tracking_uri: str = "", registered_model_name: str = "",
                 min_improvement: float = 0.0, compare_with_champion: int = 1, beat_baseline: int = 1,
                 documents: types.BaseChannel = None, tasks: types.BaseChannel = None, gate: str = "",
                 next_word_documents: int = 0, samples: int = 0):
        super().__init__(spec=PerplexityEvaluatorSpec(
            model=model, examples=examples, perplexity_threshold=perplexity_threshold, batch_size=batch_size,
            tracking_uri=tracking_uri, registered_model_name=registered_model_name,
            min_improvement=min_improvement, compare_with_champion=compare_with_champion,
            beat_baseline=beat_baseline, documents=documents, tasks=tasks, gate=gate,
            next_word_documents=next_word_documents, samples=samples,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        ))
