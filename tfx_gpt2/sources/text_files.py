"""Documents from local text files (plain Python, no TFX).

A file holds one document (`separator=None`) or several, separated by `separator` (by default
`<|endoftext|>`, the token GPT-2 puts between documents). Each document gets a stable id,
`<file name>:<index in file>`, used to assign it to a split by hash.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

from tfx_gpt2.text.bpe import ENDOFTEXT

DEFAULT_SEPARATOR = ENDOFTEXT


class TextSourceError(ValueError):
    """A text file cannot be read as documents."""


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    source: str


def split_documents(
    data: bytes, path: str, separator: Optional[str] = DEFAULT_SEPARATOR
) -> Iterator[Document]:
    """Splits the bytes of the file at `path` into documents; empty documents are yielded too
    (with `text == ''`) so that the caller can count them.

    Raises:
        TextSourceError: the file is not valid UTF-8 (the error names the byte offset).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextSourceError(
            f"{path} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 8]!r}); convert it "
            "to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove it from the input folder."
        ) from None
    pieces = [text] if separator is None else text.split(separator)
    name = os.path.basename(path)
    for i, piece in enumerate(pieces):
        yield Document(doc_id=f"{name}:{i}", text=piece.strip(), source=path)
