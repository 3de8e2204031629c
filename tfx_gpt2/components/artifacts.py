"""Artifact types of tfx-gpt2 beyond TFX's standard ones."""

from tfx.types import artifact


class Vocabulary(artifact.Artifact):
    """A GPT-2 byte-level BPE vocabulary: a directory with `encoder.json`, `vocab.bpe` and, when
    there are user-defined special tokens, `special_tokens.json` (see `tfx_gpt2.text.bpe`).
    Custom property `vocab_size`."""

    TYPE_NAME = "tfx_gpt2.Vocabulary"

