"""Packing encoded documents into fixed-length training blocks.

Documents are joined with `<|endoftext|>` between them and cut into blocks of `block_len =
n_ctx + 1` tokens. Consecutive blocks share one token (the last target of a block is the first
input of the next), so every token of the stream is a prediction target exactly once:

    stream:  t0 t1 t2 t3 t4 t5 t6 ...            (block_len = 4)
    blocks: [t0 t1 t2 t3] [t3 t4 t5 t6] ...
    inputs = block[:-1], targets = block[1:]
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Sequence, Tuple

import numpy as np


class BlockPacker:
    """Accumulates token ids and emits full blocks; memory is one block plus one document.

    Args:
        block_len: tokens per block (the model's `n_ctx + 1`).
        eot_id: the id put between documents.

    Blocks are numpy arrays (uint32); documents may be lists or arrays.
    """

    def __init__(self, block_len: int, eot_id: int):
        if block_len < 2:
            raise ValueError(f"block_len = {block_len} must be at least 2 (n_ctx >= 1).")
        self.block_len = block_len
        self._eot = np.asarray([eot_id], dtype=np.uint32)
        self._buffer = np.zeros(0, dtype=np.uint32)
        self._started = False
        self._emitted = False

    def add_document(self, ids: Sequence[int]) -> Iterator[np.ndarray]:
        """Appends a document (preceded by `<|endoftext|>` unless it is the first) and yields the
        blocks that became full."""
        ids = np.asarray(ids, dtype=np.uint32)
        parts = [self._buffer, self._eot, ids] if self._started else [self._buffer, ids]
        self._started = True
        self._buffer = np.concatenate(parts)
        yield from self._drain()

    def _drain(self) -> Iterator[np.ndarray]:
        n = self.block_len
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= n:
            yield buffer[start:start + n]  # a view: the buffer is replaced, never written in place
            start += n - 1  # the last token of a block opens the next one
        if start:
            self._emitted = True
            self._buffer = buffer[start:]

    def tail(self) -> List[int]:
        """The tokens that are not yet a target of any block (fewer than `block_len`).

        After the first block, the buffer opens with the last token of the previous block, which
        was already a target; it is left out so that joining tails counts no token twice.
        """
        return (self._buffer[1:] if self._emitted else self._buffer).tolist()


def pack_documents(
    documents: Iterable[Sequence[int]], block_len: int, eot_id: int
) -> Tuple[List[List[int]], List[int]]:
    """Packs encoded documents into blocks; returns (blocks, tail) as lists."""
    packer = BlockPacker(block_len, eot_id)
    blocks: List[List[int]] = []
    for doc in documents:
        blocks.extend(b.tolist() for b in packer.add_document(doc))
    return blocks, packer.tail()
