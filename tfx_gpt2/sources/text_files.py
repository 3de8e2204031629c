"""Documents from local text files (plain Python, no TFX).

A file holds one document (`separator=None`) or several, separated by `separator` (by default
`<|endoftext|>`, the token GPT-2 puts between documents). Each document gets a stable id,
`<file name>:<index in file>`, used to assign it to a split by hash.

Files are read in chunks: memory is one chunk plus the longest document, whatever the file size.
A document that is not valid UTF-8 is a `Rejected` (reason `invalid_utf8`, with the byte offset
inside the file), the other documents of the file are kept.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterator, Optional, Union

from tfx_gpt2.sources.documents import INVALID_UTF8, Document, Rejected, decode_utf8
from tfx_gpt2.text.bpe import ENDOFTEXT

DEFAULT_SEPARATOR = ENDOFTEXT
CHUNK_BYTES = 1 << 20


class TextSourceError(ValueError):
    """Text files cannot be read as documents (no files, a bad option)."""


def _pieces(f: BinaryIO, sep: Optional[bytes], chunk_bytes: int) -> Iterator[tuple]:
    """(byte offset, bytes) of each separator-delimited piece of the stream."""
    if sep is None:
        yield 0, f.read()
        return
    buffer = b""
    offset = 0  # file offset of buffer[0]
    while True:
        chunk = f.read(chunk_bytes)
        if not chunk:
            break
        buffer += chunk
        start = 0
        while True:
            i = buffer.find(sep, start)
            if i < 0:
                break
            yield offset + start, buffer[start:i]
            start = i + len(sep)
        buffer = buffer[start:]
        offset += start
    yield offset, buffer


def read_documents(
    f: Union[BinaryIO, bytes], path: str, separator: Optional[str] = DEFAULT_SEPARATOR,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Union[Document, Rejected]]:
    """Yields the documents of the file `path` (open in binary mode, or its bytes): a `Document`
    per piece (`text == ''` for an empty one, so that the caller can count it), or a `Rejected`
    for a piece that is not UTF-8."""
    if separator == "":
        raise TextSourceError("separator = '' would split between every character; use None for one "
                              "document per file or a string such as '<|endoftext|>'.")
    if isinstance(f, bytes):
        import io

        f = io.BytesIO(f)
    name = os.path.basename(path)
    sep = None if separator is None else separator.encode("utf-8")
    for i, (offset, data) in enumerate(_pieces(f, sep, chunk_bytes)):
        doc_id = f"{name}:{i}"
        text, detail = decode_utf8(data)
        if text is None:
            where = int(detail.split(":")[0].split()[1]) + offset
            yield Rejected(doc_id, path, INVALID_UTF8, f"byte {where} of the file{detail[detail.index(':'):]}")
        else:
            yield Document(doc_id=doc_id, text=text.strip(), source=path)
