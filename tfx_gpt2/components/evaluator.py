"""PerplexityEvaluator: held-out perplexity, a unigram baseline, and the blessing decision.

Input artifacts:
    model (Model): the Trainer's output (`Format-Serving/` holds the model directory).
    examples (Examples): BpeEncoder's encoded blocks; `eval` (and `test`, when present) are scored,
        `train` fits the unigram baseline.
Output artifacts:
    evaluation (ModelEvaluation): `metrics.json`, and the same figures as custom properties:
        `<split>_loss`, `<split>_perplexity`, `<split>_tokens`, `<split>_unigram_perplexity`;
        with a champion also `champion_version`, `champion_eval_perplexity`; `data_span`.
    blessing (ModelBlessing): a `BLESSED` or `NOT_BLESSED` file (TFX's convention), custom
        properties `blessed` (1/0) and `reason`.
Parameters:
    perplexity_threshold: the model is blessed only if its eval perplexity is below this.
    batch_size: blocks per evaluation batch.
    tracking_uri, registered_model_name: where the champion (the version holding the
        `champion` alias) is; empty: no champion comparison.
    min_improvement: with a champion, the model is blessed only if its eval perplexity is below
        the champion's times (1 - min_improvement); 0 means any improvement.
    compare_with_champion: 0 blesses on the threshold alone (e.g. to replace a champion that
        has another vocabulary, whose perplexity is over other tokens).

The champion is downloaded from MLflow and scored on the same eval blocks as the candidate, so
the two perplexities are over the same tokens even when the data changed since the champion was
trained. A champion with another vocabulary, or a context shorter than the blocks, cannot be
scored on them: the model is then not blessed, and the reason says so.
"""


import json
import os
import tempfile

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tfx_gpt2.metrics import blessing_decision, perplexity, unigram_perplexity
from tfx_gpt2.model.io import load_model_dir
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.blocks import block_dataset, target_counts
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training import check_block_length, evaluate

logger = get_logger("tfx_gpt2.evaluator")

METRICS_FILE = "metrics.json"


@tfx.dsl.components.component
def PerplexityEvaluator(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    evaluation: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    perplexity_threshold: tfx.dsl.components.Parameter[float] = 1e9,
    batch_size: tfx.dsl.components.Parameter[int] = 8,
    tracking_uri: tfx.dsl.components.Parameter[str] = "",
    registered_model_name: tfx.dsl.components.Parameter[str] = "",
    min_improvement: tfx.dsl.components.Parameter[float] = 0.0,
    compare_with_champion: tfx.dsl.components.Parameter[int] = 1,
):
    """Scores the model on the held-out splits and decides whether to bless it."""
    gpt2 = load_model_dir(path_utils.serving_model_path(model.uri))
    splits = artifact_utils.decode_split_names(examples.split_names)
    files = {s: [os.path.join(artifact_utils.get_split_uri([examples], s), "*")] for s in splits}
    if "eval" not in files or "train" not in files:
        raise ValueError(f"PerplexityEvaluator needs 'train' and 'eval' splits; the examples have {splits}.")
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
            train_counts, target_counts(files[split], gpt2.config.n_vocab)
        )
        logger.info(
            "%s: perplexity %.2f over %s tokens (unigram baseline %.2f)", split, metrics[f"{split}_perplexity"],
            f"{n:,}", metrics[f"{split}_unigram_perplexity"],
        )

    champion_ppl = None
    if compare_with_champion and tracking_uri and registered_model_name:
        encoder = BPETokenizer.from_dir(path_utils.serving_model_path(model.uri)).encoder
        champion = score_champion(tracking_uri, registered_model_name, gpt2, encoder, files["eval"], batch_size)
        if isinstance(champion, str):  # not comparable: the reason
            _write(evaluation, blessing, metrics, examples, False, champion)
            return
        if champion is not None:
            metrics["champion_version"], champion_ppl = champion
            metrics["champion_eval_perplexity"] = champion_ppl
    blessed, reason = blessing_decision(metrics["eval_perplexity"], perplexity_threshold, champion_ppl,
                                        min_improvement)
    if champion_ppl is not None:
        reason += f" (champion: version {metrics['champion_version']})"
    _write(evaluation, blessing, metrics, examples, blessed, reason)


def score_champion(tracking_uri: str, name: str, candidate, candidate_encoder, eval_files, batch_size: int):
    """`(version, eval perplexity)` of the champion on `eval_files`, None without a champion, or
    the reason (a str) why it cannot be scored on them."""
    from tfx_gpt2.registry import download_champion

    with tempfile.TemporaryDirectory() as tmp:
        champion = download_champion(tracking_uri, name, tmp)
        if champion is None:
            logger.info("no version of %s holds the champion alias: the threshold alone decides", name)
            return None
        model = load_model_dir(champion.model_dir)
        same_vocab = BPETokenizer.from_dir(champion.model_dir).encoder == candidate_encoder
        n_ctx = candidate.config.n_ctx
        if model.config.n_vocab != candidate.config.n_vocab or not same_vocab:
            return (f"the champion (version {champion.version}) has another vocabulary ({model.config.n_vocab} "
                    f"tokens, this model {candidate.config.n_vocab}): its perplexity is over other tokens and "
                    "cannot be compared; to replace it anyway, run with compare_with_champion=False")
        if model.config.n_ctx < n_ctx:
            return (f"the champion (version {champion.version}) has a context of {model.config.n_ctx} tokens, "
                    f"shorter than the blocks of {n_ctx}; to replace it anyway, run with "
                    "compare_with_champion=False")
        loss, _ = evaluate(model, block_dataset(eval_files, n_ctx + 1, batch_size, drop_remainder=False))
    ppl = perplexity(loss)
    logger.info("champion: version %d, eval perplexity %.3f on the same blocks", champion.version, ppl)
    return champion.version, ppl


def _write(evaluation, blessing, metrics, examples, blessed: bool, reason: str) -> None:
    metrics = {**metrics, "blessed": int(blessed), "reason": reason}
    with open(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)
    for key, value in metrics.items():
        if isinstance(value, str):
            evaluation.set_string_custom_property(key, value)
        elif isinstance(value, int):
            evaluation.set_int_custom_property(key, value)
        else:
            evaluation.set_float_custom_property(key, value)
    evaluation.set_string_custom_property("data_span", examples.get_string_custom_property("spans") or "0")
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(reason + "\n")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    logger.info("%s: %s", "BLESSED" if blessed else "NOT BLESSED", reason)
