import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tfx_gpt2.text import bpe
from tfx_gpt2.text.blocks import read_blocks
from tfx_gpt2.text.encode_beam import EncodeAndPack, encode_examples
from tfx_gpt2.text.packing import pack_documents

DOCS = [(f"doc{i:02d}", f"Document number {i} says: " + "spam and eggs " * (i % 7 + 1)) for i in range(30)]


def _all_blocks(out):
    return (out["blocks"], out["tail_blocks"]) | beam.Flatten() | beam.Map(lambda b: list(map(int, b)))


def test_one_bundle_equals_sequential_packing(tokenizer):
    encoded = [tokenizer.encode(t) for _, t in DOCS]
    blocks, tail = pack_documents(encoded, 17, tokenizer.eot_id)
    total = sum(map(len, encoded))
    stats = {"documents": 30, "empty_documents": 0, "tokens": total, "bytes": sum(len(t) for _, t in DOCS),
             "blocks": len(blocks), "remainder_tokens": len(tail)}
    with TestPipeline() as p:
        out = p | beam.Create(DOCS, reshuffle=False) | EncodeAndPack("gpt2", 17)
        assert_that(_all_blocks(out), equal_to(blocks), label="blocks")
        assert_that(out["stats"], equal_to([stats]), label="stats")


def test_bundles_keep_every_token_and_empty_documents_are_counted(tokenizer):
    docs = DOCS + [("empty", "")]
    total = sum(len(tokenizer.encode(t)) for _, t in DOCS)
    eot = tokenizer.eot_id
    with TestPipeline() as p:
        out = p | beam.Create(docs) | beam.Reshuffle() | EncodeAndPack("gpt2", 17)

        def check(items):
            (stats,) = items
            assert stats["tokens"] == total and stats["documents"] == 30 and stats["empty_documents"] == 1
            assert stats["remainder_tokens"] < 17

        assert_that(out["stats"], check, label="stats")
        targets = _all_blocks(out) | beam.FlatMap(lambda b: [t for t in b[1:] if t != eot]) | beam.combiners.Count.Globally()
        # Every document token is a target once, except the first token of each bundle's stream.
        def check_targets(counts):
            _between(counts[0], total - 31, total)

        assert_that(targets, check_targets, label="targets")


def test_control_tokens_start_their_documents(tmp_path):
    vocab = str(tmp_path / "vocab")
    bpe.copy_vocab_files(None, vocab, special_tokens=["<|dialogue|>"])
    docs = [("a", "Hello there", "<|dialogue|>"), ("b", "plain text", "")]
    with TestPipeline() as p:
        out = p | beam.Create(docs, reshuffle=False) | EncodeAndPack(vocab, 4)
        # <|dialogue|> (50257) starts document a; document b is the 2-token remainder.
        assert_that(_all_blocks(out), equal_to([[50257, 15496, 612, 50256]]), label="control")
        def check_remainder(items):
            _equal(items[0]["remainder_tokens"], 2)

        assert_that(out["stats"], check_remainder, label="remainder")


def test_unknown_control_token_is_named(tmp_path):
    with pytest.raises(Exception, match=r"control token '<\|nope\|>', which is not a special token"):
        with TestPipeline() as p:
            _ = p | beam.Create([("a", "text", "<|nope|>")]) | EncodeAndPack("gpt2", 4)


def _write_examples(path, texts):
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for i, text in enumerate(texts):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
                "doc_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"d{i}".encode()])),
            })).SerializeToString())


@pytest.mark.parametrize("compress", [False, True])
def test_encode_examples_writes_blocks_and_stats(tmp_path, tokenizer, corpus_text, compress):
    texts = [t for t in corpus_text.split(bpe.ENDOFTEXT)[:12] if t.strip()]
    _write_examples(str(tmp_path / "in.gz"), texts)
    with beam.Pipeline() as p:
        encode_examples(p, [str(tmp_path / "in.gz")], "gpt2", 65, str(tmp_path / "out"), str(tmp_path / "stats.json"),
                        "train", compress=compress)
    with open(tmp_path / "stats.json") as f:
        stats = json.load(f)
    files = os.listdir(tmp_path / "out")
    assert all(f.endswith(".gz" if compress else ".tfrecord") for f in files)
    blocks = list(read_blocks([str(tmp_path / "out" / "*")]))
    assert len(blocks) == stats["blocks"] and {len(b) for b in blocks} == {65}
    assert stats["tokens"] == sum(len(tokenizer.encode_ordinary(t)) for t in texts)
    # Every token of the stream is a target exactly once (one bundle here): targets + remainder.
    n_eot = len(texts) - 1
    assert stats["blocks"] * 64 + stats["remainder_tokens"] in (stats["tokens"] + n_eot, stats["tokens"] + n_eot - 1)
    assert np.max(blocks) < 50257


def _equal(value, expected):
    # assert_that ignores a matcher's return value: a matcher must raise to fail.
    assert value == expected, (value, expected)


def _between(value, low, high):
    assert low <= value <= high, (low, value, high)
