"""OpenAI's legacy `logprobs` object of a completion choice, built from a scored row
(`tfx_gpt2.serving.engine.Row.scores`, the model's own log-softmax).

    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
     "text_offset": [...]}

Tokens are their text; a token that ends inside a UTF-8 character is written as OpenAI writes it,
`bytes:\\xe2\\x80`. Offsets are characters into the prompt followed by the completion (so without
`echo` they start at the prompt's length). With `echo` the prompt's tokens come first, the first
one with a null log-probability and null alternatives (nothing predicts it). Tokens past the
returned text (cut by a stop string) are left out.
"""

from __future__ import annotations

import codecs
from typing import Any, Dict, List, Optional


def token_text(tokenizer, token_id: int) -> str:
    data = tokenizer.decode_bytes([token_id])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def choice_logprobs(tokenizer, row, alternatives: int, echo: bool, prompt: str) -> Dict[str, List[Any]]:
    """The `logprobs` object of `row` (scored), with `alternatives` top tokens per position."""
    tokens = row.prompt_ids + row.ids
    chosen, top_ids, top_logprobs = row.scores
    end = len(prompt) + len(row.text)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out: Dict[str, List[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = 0
    for i, token in enumerate(tokens):
        start = offset
        offset += len(decoder.decode(tokenizer.decode_bytes([token])))
        if i < len(row.prompt_ids) and not echo:
            continue
        if i >= len(row.prompt_ids) and start >= end:
            break
        out["tokens"].append(token_text(tokenizer, token))
        out["text_offset"].append(start)
        out["token_logprobs"].append(None if i == 0 else float(chosen[i - 1]))
        out["top_logprobs"].append(None if i == 0 else _top(tokenizer, top_ids[i - 1], top_logprobs[i - 1],
                                                            alternatives))
    return out


def _top(tokenizer, ids, logprobs, alternatives: int) -> Optional[Dict[str, float]]:
    top: Dict[str, float] = {}
    for token, logprob in zip(ids[:alternatives], logprobs[:alternatives]):
        top.setdefault(token_text(tokenizer, int(token)), float(logprob))
    return top
