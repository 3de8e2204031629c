"""VocabTrainer: learns a new byte-level BPE vocabulary from the train split of the examples.

Input artifact:
    examples (Examples, one or more spans): tf.Examples with a UTF-8 text feature.
Output artifact:
    vocabulary (Vocabulary): `encoder.json` + `vocab.bpe` (+ `special_tokens.json`) in GPT-2's
        format, `vocab_size` exactly as asked (see `tfx_gpt2.text.vocab`).
Parameters:
    vocab_size: tokens in the vocabulary, bytes, merges and special tokens included.
    special_tokens: a JSON list of extra special tokens, e.g. '["<|dialogue|>", "<|action|>"]'.
    min_frequency: a pair must occur this often to be merged.
    text_feature: the feature that holds the text.

Only the `train` split is read (every file of every span, streamed record by record), so eval
and test text never shapes the vocabulary.
"""

import json
import os
from typing import Iterator, List

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from tfx_gpt2.components.artifacts import Vocabulary
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.encode_beam import string_feature
from tfx_gpt2.text.vocab import train_vocab

logger = get_logger("tfx_gpt2.vocab_trainer")


def iter_texts(files: List[str], text_feature: str) -> Iterator[str]:
    """The text of every example in the GZIP TFRecord `files`, one at a time."""
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            text = string_feature(example, text_feature)
            if text is not None:
                yield text


def split_files(examples: list, split: str) -> List[str]:
    """Every file of `split` in every artifact of `examples` (spans), sorted."""
    files = []
    for artifact in examples:
        if split not in artifact_utils.decode_split_names(artifact.split_names):
            raise ValueError(
                f"examples artifact {artifact.uri} has no {split!r} split (it has "
                f"{artifact_utils.decode_split_names(artifact.split_names)})."
            )
        files.extend(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([artifact], split), "*")))
    return sorted(files)


@tfx.dsl.components.component
def VocabTrainer(
    examples: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.Examples]],
    vocabulary: tfx.dsl.components.OutputArtifact[Vocabulary],
    vocab_size: tfx.dsl.components.Parameter[int],
    special_tokens: tfx.dsl.components.Parameter[str] = "[]",
    min_frequency: tfx.dsl.components.Parameter[int] = 2,
    text_feature: tfx.dsl.components.Parameter[str] = "text",
):
    """Trains a byte-level BPE vocabulary of `vocab_size` tokens on the train split."""
    files = split_files(examples, "train")
    logger.info("training a %d-token vocabulary on %d train file(s)", vocab_size, len(files))
    tokenizer = train_vocab(iter_texts(files, text_feature), vocab_size, json.loads(special_tokens), min_frequency)
    tokenizer.save(vocabulary.uri)
    vocabulary.set_int_custom_property("vocab_size", tokenizer.vocab_size)
    logger.info("vocabulary of %d tokens (special: %s) written to %s", tokenizer.vocab_size,
                sorted(tokenizer.special_tokens), vocabulary.uri)
