"""Encoding a text file of any size in bounded memory, on every core (no TFX, no TensorFlow).

The file is read in chunks and cut where GPT-2's pre-tokenizer cannot join the two sides: just
before a space or a newline that follows a non-whitespace character. There the pre-tokenizer
always ends a piece (no piece runs from a non-whitespace character into whitespace), and the
piece that starts there looks only forward, so encoding the parts one by one gives exactly the
ids of the whole file (user special tokens hold no whitespace, so no cut splits one). The parts
are encoded by a pool of threads (tiktoken releases the GIL while it encodes) and come back in
order; at most `2 x workers` parts are held at once, so memory does not grow with the file.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import os
import re
from typing import TYPE_CHECKING, BinaryIO, Iterator, Optional

from tfx_gpt2.text.bpe import VocabularyError

if TYPE_CHECKING:
    import numpy as np

CHUNK_BYTES = 1 << 20
# A cut: the position of a space or newline right after a non-whitespace character. Python's
# \s holds every Unicode White_Space character (and \x1c-\x1f), so \S here is non-whitespace
# for the pre-tokenizer too.
_CUT = re.compile(r"\S(?=[ \n])")
_TAIL = 1 << 16


def last_cut(text: str) -> int:
    """The last position where `text` can be cut without changing its encoding (0: none)."""
    for start in (max(0, len(text) - _TAIL), 0):
        cut = 0
        for match in _CUT.finditer(text, start):
            cut = match.end()
        if cut or start == 0:
            return cut
    return 0


def text_parts(stream: BinaryIO, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The UTF-8 text of `stream` in parts of about `chunk_bytes` that encode independently.

    Raises:
        VocabularyError: the bytes are not UTF-8 (the message gives the byte offset).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", 0
    while True:
        data = stream.read(chunk_bytes)
        pending = len(decoder.getstate()[0])
        try:
            text = carry + decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise VocabularyError(f"{name} is not valid UTF-8 (byte {offset - pending + e.start}); "
                                  "convert it to UTF-8 first.") from None
        offset += len(data)
        if not data:
            if text:
                yield text
            return
        cut = last_cut(text)
        carry = text[cut:]
        if cut:
            yield text[:cut]


def encode_parts(parts: Iterator[str], encoder, workers: Optional[int] = None) -> Iterator["np.ndarray"]:
    """`encoder.encode_document_array` of each part (uint32 ids), in order, computed by `workers`
    threads (default: one per core) with at most `2 x workers` parts in flight."""
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = []
        for part in parts:
            pending.append(pool.submit(encoder.encode_document_array, part))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
