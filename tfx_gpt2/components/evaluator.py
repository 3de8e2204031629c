"""PerplexityEvaluator: held-out perplexity, a unigram baseline, and the blessing decision.

Input artifacts:
    model (Model): the Trainer's output (`Format-Serving/` holds the model directory).
    examples (Examples): BpeEncoder's encoded blocks; `eval` (and `test`, when present) are scored,
        `train` fits the unigram baseline.
Output artifacts:
    evaluation (ModelEvaluation): `metrics.json`, and the same figures as custom properties:
        `<split>_loss`, `<split>_perplexity`, `<split>_tokens`, `<split>_unigram_perplexity`.
    blessing (ModelBlessing): a `BLESSED` or `NOT_BLESSED` file (TFX's convention), custom
        properties `blessed` (1/0) and `reason`.
Parameters:
    perplexity_threshold: the model is blessed only if its eval perplexity is below this.
    batch_size: blocks per evaluation batch.
"""


import json
import os

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import path_utils

from tfx_gpt2.metrics import perplexity, unigram_perplexity
from tfx_gpt2.model.io import load_model_dir
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.blocks import block_dataset, target_counts
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

    with open(os.path.join(evaluation.uri, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)
    for key, value in metrics.items():
        if isinstance(value, int):
            evaluation.set_int_custom_property(key, value)
        else:
            evaluation.set_float_custom_property(key, value)

    ppl = metrics["eval_perplexity"]
    blessed = ppl < perplexity_threshold
    reason = (f"eval perplexity {ppl:.3f} {'<' if blessed else '>='} threshold {perplexity_threshold:g}")
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(reason + "\n")
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    logger.info("%s: %s", "BLESSED" if blessed else "NOT BLESSED", reason)
