"""BpeEncoder: text Examples -> packed GPT-2 token blocks, per split, on Beam.

Input artifacts:
    examples (Examples, one or more spans): tf.Examples with a UTF-8 `text` feature (an
        ExampleGen's output); with several spans (incremental MongoDB exports), each split is
        the union of the spans.
    vocabulary (Vocabulary, optional): a vocabulary trained by VocabTrainer; it replaces `vocab`.
Output artifact:
    encoded (Examples): for each split, `Split-<name>/blocks*.tfrecord`, TFRecords of
        tf.Examples with one int64 feature `tokens` of `block_len` ids (`.gz`, GZIP, with
        `compress_blocks`); `vocab/` holds the
        vocabulary used (`encoder.json`, `vocab.bpe`, `special_tokens.json`), so that the trainer
        and the exported model carry the tokenizer the data was encoded with. Custom properties
        per split: `<split>_documents`, `<split>_empty_documents`, `<split>_tokens`,
        `<split>_bytes`, `<split>_blocks`, `<split>_remainder_tokens`; and `block_len`,
        `vocab_size`.
Parameters:
    block_len: tokens per block, the model's `n_ctx + 1`.
    vocab: 'gpt2' (OpenAI's vocabulary) or a directory holding `encoder.json` + `vocab.bpe`
        (e.g. the one shipped with a checkpoint).
    special_tokens: a JSON list of special tokens to add to the vocabulary, e.g.
        '["<|dialogue|>", "<|action|>"]': each becomes one token, in the text and as a control token.
    text_feature: the name of the text feature in `examples`.
    control_feature: optional feature whose value (a special token) starts each document.
    compress_blocks: 1 to GZIP the block files (about half the disk, encoding about a quarter
        slower: see benchmarks/encode.py); 0 (default) writes them uncompressed.
"""


import json
import os
from typing import List

import apache_beam as beam
import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from tfx_gpt2.components.artifacts import Vocabulary
from tfx_gpt2.components.span_strategy import span_of
from tfx_gpt2.feedback.spans import FEEDBACK_MANIFEST, describe_spans
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text import bpe
from tfx_gpt2.text.encode_beam import EncoderInputError, block_stats_summary, encode_examples
from tfx_gpt2.uris import local_copy, staged_output

logger = get_logger("tfx_gpt2.bpe_encoder")

VOCAB_DIR = "vocab"


def _common_splits(examples: list) -> List[str]:
    splits = artifact_utils.decode_split_names(examples[0].split_names)
    for artifact in examples[1:]:
        other = artifact_utils.decode_split_names(artifact.split_names)
        if other != splits:
            raise EncoderInputError(
                f"the examples' spans have different splits ({splits} in {examples[0].uri}, {other} in "
                f"{artifact.uri}); export every span with the same split_ratios."
            )
    return splits


def span_lineage(examples: list) -> List[dict]:
    """Per span read: its number, documents and (for feedback spans) what made it."""
    lineage = []
    for a in examples:
        manifest = a.get_string_custom_property(FEEDBACK_MANIFEST) if a.has_custom_property(
            FEEDBACK_MANIFEST) else ""
        documents = a.get_int_custom_property("documents") if a.has_custom_property("documents") else None
        lineage.append({"span": span_of(a), "documents": documents, "uri": a.uri,
                        "feedback": json.loads(manifest) if manifest else None})
    return sorted(lineage, key=lambda x: x["span"])


@tfx.dsl.components.component(use_beam=True)
def BpeEncoder(
    examples: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.Examples]],
    encoded: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Examples],
    block_len: tfx.dsl.components.Parameter[int],
    vocabulary: tfx.dsl.components.InputArtifact[Vocabulary] = None,
    vocab: tfx.dsl.components.Parameter[str] = "gpt2",
    special_tokens: tfx.dsl.components.Parameter[str] = "[]",
    text_feature: tfx.dsl.components.Parameter[str] = "text",
    control_feature: tfx.dsl.components.Parameter[str] = "",
    compress_blocks: tfx.dsl.components.Parameter[int] = 0,
    beam_pipeline: tfx.dsl.components.BeamComponentParameter[beam.Pipeline] = None,
):
    """Encodes every split of `examples` with GPT-2's byte-level BPE and packs it into blocks."""
    if block_len < 2:
        raise EncoderInputError(f"BpeEncoder block_len = {block_len}; it must be n_ctx + 1 >= 2.")
    vocab_out = os.path.join(encoded.uri, VOCAB_DIR)
    source = vocabulary.uri if vocabulary is not None else (None if vocab == "gpt2" else vocab)
    with staged_output(vocab_out) as local_vocab:  # a bucket's folder is written locally, then uploaded
        bpe.copy_vocab_files(local_copy(source) if source else None, local_vocab,
                             special_tokens=json.loads(special_tokens))
        tokenizer = bpe.load_tokenizer(local_vocab)
    splits = _common_splits(examples)
    logger.info("encoding splits %s of %d span(s) with vocabulary %s (%d tokens%s) into blocks of %d", splits,
                len(examples), source or "gpt2", tokenizer.vocab_size,
                f", special {tokenizer.user_special_tokens}" if tokenizer.user_special_tokens else "", block_len)

    with beam_pipeline as p:
        for split in splits:
            patterns = [os.path.join(artifact_utils.get_split_uri([a], split), "*") for a in examples]
            encode_examples(p, patterns, vocab_out, block_len, os.path.join(encoded.uri, f"Split-{split}"),
                            os.path.join(encoded.uri, f"stats-{split}.json"), split, text_feature, control_feature,
                            compress=bool(compress_blocks))

    encoded.split_names = artifact_utils.encode_split_names(splits)
    # tf.Examples of token blocks: said, so that readers (the Trainer's) need not guess.
    examples_utils.set_payload_format(encoded, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    encoded.set_int_custom_property("block_len", block_len)
    encoded.set_int_custom_property("vocab_size", tokenizer.vocab_size)
    # The spans the blocks come from (tagged on registered model versions).
    encoded.set_string_custom_property("spans", describe_spans(span_of(a) for a in examples))
    encoded.set_string_custom_property("lineage", json.dumps(span_lineage(examples), sort_keys=True))
    stats = {}
    for split in splits:
        with tf.io.gfile.GFile(os.path.join(encoded.uri, f"stats-{split}.json")) as f:
            stats[split] = json.loads(f.read())
        for key, value in stats[split].items():
            encoded.set_int_custom_property(f"{split}_{key}", int(value))
        logger.info("%s: %s", split, block_stats_summary(stats[split], block_len))
    for split in splits:
        if stats[split]["blocks"] == 0:
            raise EncoderInputError(empty_split_message(split, stats, block_len))


def empty_split_message(split: str, stats, block_len: int) -> str:
    """Why split `split` has no block, and what to do."""
    total = sum(s.get("documents", 0) for s in stats.values())
    if stats[split].get("documents", 0) == 0 and total <= 3:
        return (f"split {split!r} got no document: the data holds only {total} document(s), and ExampleGen "
                "assigns whole documents to splits (by a hash of each), so a few long documents cannot be split. "
                "Separate the documents inside each file with the separator (TextExampleGen's `separator` "
                "option, '<|endoftext|>' by default), or put one document per file.")
    return (f"split {split!r} has {stats[split]['tokens']} tokens, fewer than one block of {block_len}; "
            "add text, change the split ratios, or use a model with a smaller n_ctx.")
