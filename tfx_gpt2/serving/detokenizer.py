"""Token ids to the text a client may be sent: whole UTF-8 characters only, and nothing that could
still become a stop string.

Byte-level BPE can end a token inside a UTF-8 character: each row decodes its bytes incrementally
and holds back an incomplete character until the next token completes it (an incomplete character
at the very end is dropped), so no replacement character appears that the model did not generate.
Text that could be the start of a stop string is held back too.
"""

from __future__ import annotations

import codecs
from typing import List, Optional, Sequence, Tuple

from tfx_gpt2.model.sampling import SamplingConfig


class TextStream:
    """Turns a row's token bytes into text that is safe to send."""

    def __init__(self, stops: Sequence[str]):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, data: bytes) -> Tuple[str, bool]:
        """(text to send now, whether a stop string was reached)."""
        self.held += self.decoder.decode(data)
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i != -1), default=-1)
        if cut != -1:
            out, self.held = self.held[:cut], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(out):]
        return out, False

    def flush(self) -> str:
        """The text held back, at the end of the row (an incomplete character is dropped)."""
        out = self.held + self.decoder.decode(b"", final=True)
        self.held = ""
        return out


class Detokenizer:
    """One row's ids in, its text out, and why it ends: `"stop"` (end of text, or a stop string:
    the text stops before it), `"length"` (its token limit).

    Args:
        tokenizer: the model's tokenizer (`decode_bytes`, `eot_id`).
        config: the row's settings (stop strings, `stop_at_eot`).
        max_tokens: the tokens the row may generate.
    """

    def __init__(self, tokenizer, config: SamplingConfig, max_tokens: int):
        self.tokenizer, self.config, self.max_tokens = tokenizer, config, max_tokens
        self.stream = TextStream(config.stop)
        self.ids: List[int] = []

    def push(self, tokens: Sequence[int]) -> Tuple[str, Optional[str]]:
        """(text to send, finish reason or None) after `tokens`; ids past the end are ignored."""
        text = ""
        for t in tokens:
            if self.config.stop_at_eot and t == self.tokenizer.eot_id:
                return text + self.stream.flush(), "stop"
            self.ids.append(t)
            piece, stopped = self.stream.push(self.tokenizer.decode_bytes([t]))
            text += piece
            if stopped:
                return text, "stop"
            if len(self.ids) >= self.max_tokens:
                return text + self.stream.flush(), "length"
        return text, None

    def flush(self) -> str:
        return self.stream.flush()
