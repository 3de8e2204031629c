import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tfx_gpt2.text.encode_beam import EncodeAndPack
from tfx_gpt2.text.packing import pack_documents

DOCS = [(f"doc{i:02d}", f"Document number {i} says: " + "spam and eggs " * (i % 7 + 1)) for i in range(30)]


def test_one_shard_equals_sequential_packing(tokenizer):
    encoded = [tokenizer.encode(t) for _, t in sorted(DOCS)]
    blocks, tail = pack_documents(encoded, 17, tokenizer.eot_id)
    stats = {"documents": 30, "tokens": sum(map(len, encoded)), "blocks": len(blocks), "remainder_tokens": len(tail)}
    with TestPipeline() as p:
        out = p | beam.Create(DOCS[::-1]) | EncodeAndPack("gpt2", 17, num_shards=1)
        assert_that(out["blocks"], equal_to(blocks), label="blocks")
        assert_that(out["stats"], equal_to([stats]), label="stats")


def test_sharded_packing_keeps_every_token(tokenizer):
    # With several shards, shards' tails are joined: every document token is still a target once,
    # except the first token of each shard's stream, which only ever is an input.
    total = sum(len(tokenizer.encode(t)) for _, t in DOCS)
    eot = tokenizer.eot_id
    with TestPipeline() as p:
        out = p | beam.Create(DOCS) | EncodeAndPack("gpt2", 17, num_shards=4)

        def check(items):
            (stats,) = items
            assert stats["tokens"] == total and stats["documents"] == 30
            assert stats["remainder_tokens"] < 17

        assert_that(out["stats"], check, label="stats")
        non_eot = (
            out["blocks"]
            | beam.FlatMap(lambda b: [t for t in b[1:] if t != eot])
            | beam.combiners.Count.Globally()
        )
        assert_that(non_eot, lambda n: _between(n[0], total - 4 - 16, total), label="targets")


def _between(value, low, high):
    assert low <= value <= high, (low, value, high)
