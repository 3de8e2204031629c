"""Encoding documents and packing them into blocks on Apache Beam (no TFX).

    (doc_id, text) --Encode (parallel)--> (shard, (doc_id, ids))
        --GroupByKey, sort by doc_id--> full blocks + one tail per shard
        tails --one group, sorted by shard--> more full blocks + the final remainder

Documents go to `num_shards` shards by a CRC32 of their id and are packed in id order within a
shard, so the output is the same on every run and runner. Only the final remainder (fewer than
`block_len` tokens of the whole split) does not fill a block; its size is reported as
`remainder_tokens`.
"""

from __future__ import annotations

import time
import zlib
from typing import Dict, Iterable, Tuple

import apache_beam as beam

from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.bpe import load_tokenizer
from tfx_gpt2.text.packing import BlockPacker

logger = get_logger("tfx_gpt2.encode")

_TAILS = "tails"


class _Encode(beam.DoFn):
    """Encodes each document with the BPE vocabulary; logs progress with rates."""

    def __init__(self, vocab: str, num_shards: int, what: str):
        self.vocab, self.num_shards, self.what = vocab, num_shards, what
        self.docs = beam.metrics.Metrics.counter("bpe_encoder", f"{what}_documents")
        self.tokens = beam.metrics.Metrics.counter("bpe_encoder", f"{what}_tokens")

    def setup(self):
        self.tokenizer = load_tokenizer(self.vocab)

    def start_bundle(self):
        self._start = self._last = time.monotonic()
        self._n_docs = self._n_tokens = self._n_bytes = 0

    def process(self, element: Tuple[str, str]):
        doc_id, text = element
        ids = self.tokenizer.encode_ordinary(text)
        self._n_docs += 1
        self._n_tokens += len(ids)
        self._n_bytes += len(text)
        self.docs.inc()
        self.tokens.inc(len(ids))
        now = time.monotonic()
        if now - self._last > 10:
            self._last = now
            self._log(now)
        shard = zlib.crc32(doc_id.encode("utf-8")) % self.num_shards
        yield shard, (doc_id, ids)

    def finish_bundle(self):
        if self._n_docs:
            self._log(time.monotonic())

    def _log(self, now):
        dt = max(now - self._start, 1e-9)
        logger.info(
            "encode %s: %s documents, %s tokens, %.2f MB/s, %s tokens/s",
            self.what, f"{self._n_docs:,}", f"{self._n_tokens:,}", self._n_bytes / dt / 1e6,
            f"{self._n_tokens / dt:,.0f}",
        )


class _PackShard(beam.DoFn):
    def __init__(self, block_len: int, eot_id: int):
        self.block_len, self.eot_id = block_len, eot_id

    def process(self, element):
        shard, docs = element
        packer = BlockPacker(self.block_len, self.eot_id)
        for _, ids in sorted(docs, key=lambda d: d[0]):
            yield from packer.add_document(ids)
        yield beam.pvalue.TaggedOutput(_TAILS, (shard, packer.tail()))


class _PackTails(beam.DoFn):
    def __init__(self, block_len: int, eot_id: int):
        self.block_len, self.eot_id = block_len, eot_id

    def process(self, element):
        _, tails = element
        packer = BlockPacker(self.block_len, self.eot_id)
        for _, tail in sorted(tails, key=lambda t: t[0]):
            if tail:
                yield from packer.add_document(tail)
        yield beam.pvalue.TaggedOutput("remainder", len(packer.tail()))


class EncodeAndPack(beam.PTransform):
    """PCollection[(doc_id, text)] -> {'blocks': PCollection[List[int]], 'stats': PCollection[dict]}.

    Args:
        vocab: 'gpt2' or a vocabulary directory (see `tfx_gpt2.text.bpe.load_tokenizer`).
        block_len: tokens per block (`n_ctx + 1`).
        num_shards: documents are packed in this many independent groups.
        what: a name for logs and counters (the split).

    `stats` holds one dict: documents, tokens (document tokens, separators excluded), blocks,
    remainder_tokens.
    """

    def __init__(self, vocab: str, block_len: int, num_shards: int = 16, what: str = "split"):
        super().__init__()
        self.vocab, self.block_len, self.num_shards, self.what = vocab, block_len, num_shards, what

    def expand(self, docs):
        eot_id = load_tokenizer(self.vocab).eot_id
        encoded = docs | "Encode" >> beam.ParDo(_Encode(self.vocab, self.num_shards, self.what))
        packed = (
            encoded
            | "GroupShards" >> beam.GroupByKey()
            | "PackShards" >> beam.ParDo(_PackShard(self.block_len, eot_id)).with_outputs(_TAILS, main="blocks")
        )
        tail_packed = (
            packed[_TAILS]
            | "OneKey" >> beam.Map(lambda t: (None, t))
            | "GroupTails" >> beam.GroupByKey()
            | "PackTails" >> beam.ParDo(_PackTails(self.block_len, eot_id)).with_outputs("remainder", main="blocks")
        )
        blocks = (packed.blocks, tail_packed.blocks) | "AllBlocks" >> beam.Flatten()

        doc_stats = (
            encoded
            | "DocStats" >> beam.Map(lambda e: (1, len(e[1][1])))
            | "SumDocs" >> beam.CombineGlobally(_sum_pairs)
        )
        n_blocks = blocks | "CountBlocks" >> beam.combiners.Count.Globally()
        remainder = tail_packed.remainder | "SumRemainder" >> beam.CombineGlobally(sum)
        stats = (
            doc_stats
            | "Stats" >> beam.Map(
                lambda d, n, r: {"documents": d[0], "tokens": d[1], "blocks": n, "remainder_tokens": r},
                n=beam.pvalue.AsSingleton(n_blocks), r=beam.pvalue.AsSingleton(remainder),
            )
        )
        return {"blocks": blocks, "stats": stats}


def _sum_pairs(pairs: Iterable[Tuple[int, int]]) -> Tuple[int, int]:
    a = b = 0
    for x, y in pairs:
        a += x
        b += y
    return a, b


def block_stats_summary(stats: Dict[str, int], block_len: int) -> str:
    return (
        f"{stats['documents']:,} documents, {stats['tokens']:,} tokens -> {stats['blocks']:,} blocks of "
        f"{block_len} tokens ({stats['remainder_tokens']:,} tokens left over, less than one block)"
    )
