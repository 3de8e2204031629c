"""OpenAICheckpointDownloader: one of OpenAI's GPT-2 releases as a `Model` artifact to fine-tune.

    download = OpenAICheckpointDownloader(size="124M")
    Trainer(..., base_model=download.outputs["model"])

Runs `tfx_gpt2.model.checkpoints.download_openai_checkpoint` (the files OpenAI published:
`checkpoint`, `hparams.json`, `model.ckpt.*`, `encoder.json`, `vocab.bpe`) into the artifact's
directory; cached by TFX like any component, so the download happens once per pipeline root. For
a checkpoint already on disk (OpenAI or Hugging Face layout), `create_pipeline(init_checkpoint=DIR)`
imports it with a TFX Importer instead.
"""

from tfx import v1 as tfx

from tfx_gpt2.model.checkpoints import OPENAI_BASE_URL, download_openai_checkpoint
from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.checkpoint_downloader")


@tfx.dsl.components.component
def OpenAICheckpointDownloader(
    model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    size: tfx.dsl.components.Parameter[str] = "124M",
    base_url: tfx.dsl.components.Parameter[str] = OPENAI_BASE_URL,
):
    """Downloads OpenAI's GPT-2 `size` (124M, 355M, 774M, 1558M) into `model`."""
    download_openai_checkpoint(size, model.uri, base_url=base_url)
    model.set_string_custom_property("source", f"openai:{size}")
    logger.info("OpenAI GPT-2 %s downloaded to %s", size, model.uri)
