"""Reading and writing packed token blocks as TFRecords of `tf.train.Example`.

Each record holds one block under the feature `tokens`: `block_len` int64 ids (`n_ctx + 1`).
Files are GZIP-compressed TFRecords, the format TFX's Examples artifacts use.
"""

from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import tensorflow as tf

TOKENS_FEATURE = "tokens"
COMPRESSION = "GZIP"


def block_to_example(block: Sequence[int]) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(
            feature={TOKENS_FEATURE: tf.train.Feature(int64_list=tf.train.Int64List(value=block))}
        )
    )


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
        file_patterns: globs of GZIP TFRecord files.
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
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=COMPRESSION),
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
        for record in tf.data.TFRecordDataset(path, compression_type=COMPRESSION).as_numpy_iterator():
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
