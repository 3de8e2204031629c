"""Encoding documents and packing them into blocks on Apache Beam (no TFX).

    (doc_id, text[, control]) --EncodeAndPack (parallel, per bundle)--> full blocks + one tail per bundle
        tails --one small group--> more full blocks + the final remainder

Each worker encodes the documents of its bundle with tiktoken's engine on our vocabulary
(`tfx_gpt2.text.bpe.FastEncoder`) and packs them as they come (`BlockPacker`): memory is one
block plus one document, whatever the corpus size, and nothing but the tails (fewer than
`block_len` tokens per bundle) is ever grouped. Only the final remainder (fewer than `block_len`
tokens of the whole split) does not fill a block; its size is reported as `remainder_tokens`.

Which document shares a block with which follows the order in which the runner reads them, so it
may differ between runners; every token of every document is a training target exactly once,
except the first token of each bundle's stream (an input only).

A document can start with a control token (`control`, e.g. `<|dialogue|>`): a special token of
the vocabulary, put before its text. Empty documents are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.blocks import serialize_blocks
from tfx_gpt2.text.bpe import VocabularyError, document_encoder, load_tokenizer
from tfx_gpt2.text.packing import BlockPacker
from tfx_gpt2.uris import local_copy

logger = get_logger("tfx_gpt2.encode")


class EncoderInputError(ValueError):
    """The examples cannot be encoded (a missing text feature, a bad vocabulary)."""

_TAILS = "tails"
_STATS = "stats"
STAT_KEYS = ("documents", "empty_documents", "tokens", "bytes")


def _global(value) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class _EncodeAndPackBundle(beam.DoFn):
    """Encodes each document and packs the bundle's stream; logs progress with rates.

    Documents are encoded in batches by a thread pool (tiktoken releases the GIL), one batch
    ahead: while batch N is encoded on the other cores, this thread packs and emits batch N-1.
    Memory: two batches of at most `batch_bytes` of text.
    """

    def __init__(self, vocab: str, block_len: int, what: str, serialize: bool, threads: int = 0,
                 batch_bytes: int = 1 << 20):
        self.vocab, self.block_len, self.what, self.serialize = vocab, block_len, what, serialize
        self.threads = threads or max(1, (os.cpu_count() or 1) - 1)
        self.batch_bytes = batch_bytes
        self.docs = beam.metrics.Metrics.counter("bpe_encoder", f"{what}_documents")
        self.tokens = beam.metrics.Metrics.counter("bpe_encoder", f"{what}_tokens")

    def setup(self):
        from concurrent.futures import ThreadPoolExecutor

        tokenizer = load_tokenizer(local_copy(self.vocab))  # a worker reads a bucket's vocabulary once
        self.special_tokens = tokenizer.special_tokens
        self.eot_id = tokenizer.eot_id
        self.encoder = document_encoder(tokenizer)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bpe")

    def teardown(self):
        self.pool.shutdown(wait=False)

    def start_bundle(self):
        self._start = self._last = time.monotonic()
        self._stats = dict.fromkeys(STAT_KEYS, 0)
        self._packer = BlockPacker(self.block_len, self.eot_id)
        self._batch, self._batch_bytes, self._inflight = [], 0, None

    def process(self, element):
        doc_id, text = element[0], element[1]
        control = element[2] if len(element) > 2 else ""
        if not text:
            self._stats["empty_documents"] += 1
            return
        if control and control not in self.special_tokens:
            raise VocabularyError(
                f"document {doc_id} has control token {control!r}, which is not a special token of the "
                f"vocabulary ({sorted(self.special_tokens)}); add it to special_tokens."
            )
        self._batch.append((text, control))
        self._batch_bytes += len(text)
        if self._batch_bytes >= self.batch_bytes:
            yield from self._submit()

    def _submit(self):
        """Starts encoding the current batch and packs the previous one."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        previous = self._inflight
        self._inflight = (batch, [self.pool.submit(self.encoder.encode_document_array, t) for t, _ in batch]) if batch else None
        if previous is not None:
            yield from self._pack(*previous)

    def _pack(self, batch, futures):
        blocks = []
        stats = self._stats
        for (text, control), future in zip(batch, futures):
            ids = future.result()
            if control:
                ids = np.concatenate([np.asarray([self.special_tokens[control]], dtype=ids.dtype), ids])
            stats["documents"] += 1
            stats["tokens"] += len(ids)
            stats["bytes"] += len(text.encode("utf-8"))
            self.tokens.inc(len(ids))
            blocks.extend(self._packer.add_document(ids))
        self.docs.inc(len(batch))
        yield from serialize_blocks(blocks) if self.serialize else blocks
        now = time.monotonic()
        if now - self._last > 10:
            self._last = now
            self._log(now)

    def finish_bundle(self):
        for block in self._submit():  # the last batch starts, the one before is packed
            yield _global(block)
        for block in self._submit():  # the last batch is packed
            yield _global(block)
        yield beam.pvalue.TaggedOutput(_TAILS, _global(self._packer.tail()))
        yield beam.pvalue.TaggedOutput(_STATS, _global(dict(self._stats)))
        if self._stats["documents"]:
            self._log(time.monotonic())

    def _log(self, now):
        dt = max(now - self._start, 1e-9)
        s = self._stats
        logger.info(
            "encode %s: %s documents, %s tokens, %.2f MB/s, %s tokens/s", self.what, f"{s['documents']:,}",
            f"{s['tokens']:,}", s["bytes"] / dt / 1e6, f"{s['tokens'] / dt:,.0f}",
        )


class _PackTails(beam.DoFn):
    def __init__(self, block_len: int, vocab: str, serialize: bool):
        self.block_len, self.vocab, self.serialize = block_len, vocab, serialize

    def setup(self):
        self.eot_id = load_tokenizer(local_copy(self.vocab)).eot_id

    def process(self, element):
        _, tails = element
        packer = BlockPacker(self.block_len, self.eot_id)
        blocks = []
        # Longest first, then by content: the same tails give the same blocks.
        for tail in sorted((list(t) for t in tails if len(t)), key=lambda t: (-len(t), t)):
            blocks.extend(packer.add_document(tail))
        yield from serialize_blocks(blocks) if self.serialize else blocks
        yield beam.pvalue.TaggedOutput("remainder", len(packer.tail()))


def _sum_stats(dicts: Iterable[Dict[str, int]]) -> Dict[str, int]:
    total = dict.fromkeys(STAT_KEYS, 0)
    for d in dicts:
        for key in STAT_KEYS:
            total[key] += d[key]
    return total


class EncodeAndPack(beam.PTransform):
    """PCollection[(doc_id, text) or (doc_id, text, control)] ->
    {'blocks': PCollection[List[int]], 'tail_blocks': PCollection[List[int]], 'stats': PCollection[dict]}.

    `blocks` come from the bundles, `tail_blocks` from packing the bundles' tails (few): write
    both. Blocks are uint32 numpy arrays or, with `serialize`, the bytes of their tf.Examples
    (serialised in one numpy pass per batch: cheaper than one protobuf per block).

    Args:
        vocab: 'gpt2' or a vocabulary directory (see `tfx_gpt2.text.bpe.load_tokenizer`).
        block_len: tokens per block (`n_ctx + 1`).
        what: a name for logs and counters (the split).

    `stats` holds one dict: documents (non-empty), empty_documents, tokens (document tokens with
    control tokens, separators excluded), bytes (UTF-8), blocks, remainder_tokens.
    """

    def __init__(self, vocab: str, block_len: int, what: str = "split", serialize: bool = False):
        super().__init__()
        if block_len < 2:
            raise ValueError(f"block_len = {block_len} must be at least 2 (n_ctx >= 1).")
        self.vocab, self.block_len, self.what, self.serialize = vocab, block_len, what, serialize

    def expand(self, docs):
        packed = docs | "EncodeAndPack" >> beam.ParDo(
            _EncodeAndPackBundle(self.vocab, self.block_len, self.what, self.serialize)
        ).with_outputs(_TAILS, _STATS, main="blocks")
        tail_packed = (
            packed[_TAILS]
            | "OneKey" >> beam.Map(lambda t: (None, t))
            | "GroupTails" >> beam.GroupByKey()
            | "PackTails" >> beam.ParDo(_PackTails(self.block_len, self.vocab, self.serialize)).with_outputs(
                "remainder", main="blocks")
        )
        # The two kinds of blocks stay apart: a Flatten here would make the local runner buffer
        # every block of the split between stages (memory growing with the corpus).
        doc_stats = packed[_STATS] | "SumStats" >> beam.CombineGlobally(_sum_stats)
        n_blocks = packed.blocks | "CountBlocks" >> beam.combiners.Count.Globally()
        n_tail_blocks = tail_packed.blocks | "CountTailBlocks" >> beam.combiners.Count.Globally()
        remainder = tail_packed.remainder | "SumRemainder" >> beam.CombineGlobally(sum)
        stats = doc_stats | "Stats" >> beam.Map(
            lambda d, n, t, r: {**d, "blocks": n + t, "remainder_tokens": r},
            n=beam.pvalue.AsSingleton(n_blocks), t=beam.pvalue.AsSingleton(n_tail_blocks),
            r=beam.pvalue.AsSingleton(remainder),
        )
        return {"blocks": packed.blocks, "tail_blocks": tail_packed.blocks, "stats": stats}


def block_stats_summary(stats: Dict[str, int], block_len: int) -> str:
    empty = f" ({stats['empty_documents']:,} empty, skipped)" if stats.get("empty_documents") else ""
    return (
        f"{stats['documents']:,} documents{empty}, {stats['tokens']:,} tokens -> {stats['blocks']:,} blocks of "
        f"{block_len} tokens ({stats['remainder_tokens']:,} tokens left over, less than one block)"
    )


def string_feature(example, name: str):
    """The first value of bytes feature `name` of a tf.Example, decoded (None if absent)."""
    feature = example.features.feature.get(name)
    if feature is None or not feature.bytes_list.value:
        return None
    return feature.bytes_list.value[0].decode("utf-8")


def _document_of(example, text_feature: str, control_feature: str):
    text = string_feature(example, text_feature)
    if text is None:
        raise EncoderInputError(
            f"an example has no bytes feature {text_feature!r} (it has {sorted(example.features.feature)}); "
            "set BpeEncoder's text_feature to the feature that holds the text."
        )
    doc_id = string_feature(example, "doc_id")
    if doc_id is None:  # examples from another ExampleGen: a stable id from the content
        doc_id = hashlib.sha1(example.SerializeToString()).hexdigest()
    if not control_feature:
        return doc_id, text
    return doc_id, text, string_feature(example, control_feature) or ""


def encode_examples(pipeline, patterns, vocab: str, block_len: int, blocks_dir: str, stats_path: str,
                    what: str, text_feature: str = "text", control_feature: str = "",
                    compress: bool = False) -> None:
    """Adds to `pipeline`: read the tf.Examples of the GZIP TFRecord `patterns`, encode and pack
    their text, write the blocks to `blocks_dir/blocks*.tfrecord` (`.gz` with `compress`) and the
    stats to `stats_path` (JSON).
    BpeEncoder runs this for each split; `benchmarks/encode.py` times it."""
    import tensorflow as tf


    sources = [
        pipeline | f"Read[{what}][{i}]" >> beam.io.ReadFromTFRecord(
            pattern, coder=beam.coders.ProtoCoder(tf.train.Example))
        for i, pattern in enumerate(patterns)
    ]
    out = (
        sources
        | f"Spans[{what}]" >> beam.Flatten()
        | f"Text[{what}]" >> beam.Map(_document_of, text_feature, control_feature)
        | f"EncodeAndPack[{what}]" >> EncodeAndPack(vocab, block_len, what=what, serialize=True)
    )
    for kind, prefix in (("blocks", "blocks"), ("tail_blocks", "blocks-from-tails")):
        _ = (
            out[kind]
            | f"Write[{what}][{kind}]" >> beam.io.WriteToTFRecord(
                os.path.join(blocks_dir, prefix), file_name_suffix=".gz" if compress else ".tfrecord",
                compression_type=beam.io.filesystem.CompressionTypes.GZIP if compress
                else beam.io.filesystem.CompressionTypes.UNCOMPRESSED,
            )
        )
    root, ext = os.path.splitext(stats_path)
    _ = (
        out["stats"]
        | f"StatsJson[{what}]" >> beam.Map(json.dumps)
        | f"WriteStats[{what}]" >> beam.io.WriteToText(root, file_name_suffix=ext, shard_name_template="")
    )
