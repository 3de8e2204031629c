"""Reading and writing packed token blocks as TFRecords of `tf.train.Example`.

Each record holds one block under the feature `tokens`: `block_len` int64 ids (`n_ctx + 1`).
Files are TFRecords, GZIP-compressed when their name ends in `.gz` (BpeEncoder's
`compress_blocks`); the encoder writes them uncompressed by default, which makes encoding about a
quarter faster for about twice the disk.
"""

from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import tensorflow as tf

TOKENS_FEATURE = "tokens"


def compression_of(files: Sequence[str]) -> str:
    """'GZIP' when every file ends in `.gz`, '' when none does (mixed is an error)."""
    gz = {f.endswith(".gz") for f in files}
    if len(gz) > 1:
        raise ValueError(f"block files mix GZIP (.gz) and uncompressed files: {list(files)[:4]}...")
    return "GZIP" if gz == {True} else ""


def block_to_example(block: Sequence[int]) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(
            feature={TOKENS_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=block))}
        )
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_FEATURE_KEY = _field(1, TOKENS_FEATURE.encode())


def serialize_blocks(blocks: Sequence) -> List[bytes]:
    """`[block_to_example(b).SerializeToString() for b in blocks]`, written directly with numpy in
    one pass over all the blocks (the encoder writes every block through it: several times faster
    than protobuf). Ids must be in [0, 2**21), as GPT-2 vocabularies are; others go through
    protobuf."""
    if not len(blocks):
        return []
    ids = np.asarray(blocks)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.min() < 0 or ids.max() >= 1 << 21:
        return [block_to_example(list(map(int, b))).SerializeToString() for b in blocks]
    ids = ids.astype(np.uint32, copy=False)
    groups = np.empty(ids.shape + (3,), np.uint8)  # 7 bits per byte, at most 3 bytes
    groups[..., 0] = ids & 0x7F
    groups[..., 1] = (ids >> 7) & 0x7F
    groups[..., 2] = ids >> 14
    length = 1 + (ids >= 1 << 7).astype(np.uint8) + (ids >= 1 << 14)
    groups[..., 0] |= (length > 1).astype(np.uint8) << 7  # continuation bits
    groups[..., 1] |= (length > 2).astype(np.uint8) << 7
    packed = groups[np.arange(3) < length[..., None]].tobytes()
    out, start = [], 0
    for size in length.sum(axis=1, dtype=np.int64).tolist():
        feature = _field(3, _field(1, packed[start:start + size]))  # Feature.int64_list.value (packed)
        out.append(_field(1, _field(1, _FEATURE_KEY + _field(2, feature))))  # Example.features.feature
        start += size
    return out


def serialize_block(block) -> bytes:
    """The bytes of `block_to_example(block)` (see `serialize_blocks`)."""
    return serialize_blocks([block])[0]


def block_dataset(
    file_patterns: Sequence[str],
    block_len: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """A dataset of `(inputs, targets)` int32 batches `(B, block_len - 1)` from block TFRecords.

    Args:
        file_patterns: globs of TFRecord files (GZIP if named `.gz`).
        block_len: tokens per block; a record of another length is an error naming both.
        batch_size: blocks per batch.
        shuffle_buffer: if > 0, files and blocks are shuffled with this buffer and `seed`.
        repeat: loop over the data forever (training).
        drop_remainder: drop a last, smaller batch.

    Raises:
        FileNotFoundError: no file matches `file_patterns`.
    """
    files = sorted(f for p in file_patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no block files match {list(file_patterns)}.")
    compression = compression_of(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )
    if repeat:
        ds = ds.repeat()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    spec = {TOKENS_FEATURE: tf.io.FixedLenFeature([block_len], tf.int64)}

    def parse(serialized):
        tokens = tf.cast(tf.io.parse_example(serialized, spec)[TOKENS_FEATURE], tf.int32)
        return tokens[:, :-1], tokens[:, 1:]

    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def read_blocks(file_patterns: Sequence[str]) -> Iterator[List[int]]:
    """Yields each block (a list of ids) of the matching files, in file order."""
    files = sorted(f for p in file_patterns for f in tf.io.gfile.glob(p))
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type=compression_of([path])).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            yield list(example.features.feature[TOKENS_FEATURE].int64_list.value)


def block_length_of(file_patterns: Sequence[str]) -> int:
    """The length of the first block in the files (all blocks of a split have one length)."""
    for block in read_blocks(file_patterns):
        return len(block)
    raise ValueError(f"the block files {list(file_patterns)} hold no block.")


def target_counts(file_patterns: Sequence[str], vocab_size: int) -> np.ndarray:
    """Counts of each id among the prediction targets (`block[1:]`) of the files."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for block in read_blocks(file_patterns):
        counts += np.bincount(np.asarray(block[1:]), minlength=vocab_size)[:vocab_size]
    return counts
