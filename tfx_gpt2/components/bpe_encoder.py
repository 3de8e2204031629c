"""BpeEncoder: text Examples -> packed GPT-2 token blocks, per split, on Beam.

Input artifact:
    examples (Examples): tf.Examples with a UTF-8 `text` feature (TextExampleGen's output).
Output artifact:
    encoded (Examples): for each split, `Split-<name>/blocks-*.gz`, GZIP TFRecords of
        tf.Examples with one int64 feature `tokens` of `block_len` ids; `vocab/` holds the
        vocabulary used (`encoder.json`, `vocab.bpe`), so that the trainer and the exported model
        carry the tokenizer the data was encoded with. Custom properties per split:
        `<split>_documents`, `<split>_tokens`, `<split>_blocks`, `<split>_remainder_tokens`;
        and `block_len`.
Parameters:
    block_len: tokens per block, the model's `n_ctx + 1`.
    vocab: 'gpt2' (OpenAI's vocabulary) or a directory holding `encoder.json` + `vocab.bpe`.
    num_shards: documents are packed in this many groups (parallelism; see encode_beam.py).
    text_feature: the name of the text feature in `examples`.
"""


import hashlib
import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

from tfx_gpt2.progress import get_logger
from tfx_gpt2.text import bpe
from tfx_gpt2.text.blocks import block_to_example
from tfx_gpt2.text.encode_beam import EncodeAndPack, block_stats_summary

logger = get_logger("tfx_gpt2.bpe_encoder")

VOCAB_DIR = "vocab"


class EncoderInputError(ValueError):
    """The examples cannot be encoded (a missing text feature, a bad vocabulary)."""


def _text_of(example: tf.train.Example, text_feature: str):
    feature = example.features.feature.get(text_feature)
    if feature is None or not feature.bytes_list.value:
        raise EncoderInputError(
            f"an example has no bytes feature {text_feature!r} (it has {sorted(example.features.feature)}); "
            "set BpeEncoder's text_feature to the feature that holds the text."
        )
    if "doc_id" in example.features.feature:
        doc_id = example.features.feature["doc_id"].bytes_list.value[0].decode("utf-8")
    else:  # examples from another ExampleGen: a stable id from the content
        doc_id = hashlib.sha1(example.SerializeToString()).hexdigest()
    return doc_id, feature.bytes_list.value[0].decode("utf-8")


@tfx.dsl.components.component(use_beam=True)
def BpeEncoder(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    encoded: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Examples],
    block_len: tfx.dsl.components.Parameter[int],
    vocab: tfx.dsl.components.Parameter[str] = "gpt2",
    num_shards: tfx.dsl.components.Parameter[int] = 16,
    text_feature: tfx.dsl.components.Parameter[str] = "text",
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
):
    """Encodes every split of `examples` with GPT-2's byte-level BPE and packs it into blocks."""
    if block_len < 2:
        raise EncoderInputError(f"BpeEncoder block_len = {block_len}; it must be n_ctx + 1 >= 2.")
    vocab_out = os.path.join(encoded.uri, VOCAB_DIR)
    bpe.copy_vocab_files(None if vocab == "gpt2" else vocab, vocab_out)
    vocab_size = bpe.load_tokenizer(vocab_out).vocab_size
    splits = artifact_utils.decode_split_names(examples.split_names)
    logger.info("encoding splits %s with vocabulary %s (%d tokens) into blocks of %d", splits, vocab,
                vocab_size, block_len)

    with beam_pipeline as p:
        for split in splits:
            src = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
            dst = os.path.join(encoded.uri, f"Split-{split}")
            out = (
                p
                | f"Read[{split}]" >> beam.io.ReadFromTFRecord(src, coder=beam.coders.ProtoCoder(tf.train.Example))
                | f"Text[{split}]" >> beam.Map(_text_of, text_feature)
                | f"EncodeAndPack[{split}]" >> EncodeAndPack(vocab_out, block_len, num_shards, what=split)
            )
            _ = (
                out["blocks"]
                | f"Serialize[{split}]" >> beam.Map(lambda b: block_to_example(b).SerializeToString())
                | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                    os.path.join(dst, "blocks"), file_name_suffix=".gz",
                    compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                )
            )
            _ = (
                out["stats"]
                | f"StatsJson[{split}]" >> beam.Map(json.dumps)
                | f"WriteStats[{split}]" >> beam.io.WriteToText(
                    os.path.join(encoded.uri, f"stats-{split}"), file_name_suffix=".json",
                    shard_name_template="",
                )
            )

    encoded.split_names = artifact_utils.encode_split_names(splits)
    encoded.set_int_custom_property("block_len", block_len)
    for split in splits:
        with tf.io.gfile.GFile(os.path.join(encoded.uri, f"stats-{split}.json")) as f:
            stats = json.loads(f.read())
        for key, value in stats.items():
            encoded.set_int_custom_property(f"{split}_{key}", int(value))
        logger.info("%s: %s", split, block_stats_summary(stats, block_len))
        if stats["blocks"] == 0:
            raise EncoderInputError(
                f"split {split!r} has {stats['tokens']} tokens, fewer than one block of {block_len}; "
                "add text, change the split ratios, or use a model with a smaller n_ctx."
            )
