"""Training a new byte-level BPE vocabulary on a corpus, written in GPT-2's own formats.

    tokenizer = train_vocab(documents, vocab_size=8000, special_tokens=["<|dialogue|>"])
    tokenizer.save("my_vocab/")     # encoder.json, vocab.bpe (+ special_tokens.json)

The merges are learnt by Hugging Face `tokenizers`' BPE trainer (Rust) with GPT-2's byte-level
pre-tokenizer (same regular expression, no prefix space), streaming over every document given --
the word counts it keeps grow with the number of distinct words, not with the corpus. The result
is laid out like OpenAI's files: the 256 byte symbols first (ids 0-255, in GPT-2's order), merge
`i` at id `256 + i`, then `<|endoftext|>`, then the user's special tokens. So it loads with
`BPETokenizer.from_dir`, encodes with tiktoken's engine (`FastEncoder`), and the model's vocabulary
size is exactly `vocab_size`.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

from tfx_gpt2.text.bpe import (
    ENDOFTEXT,
    BPETokenizer,
    VocabularyError,
    bytes_to_unicode,
    check_special_tokens,
)

MIN_VOCAB_SIZE = 256 + 1


def _pieces(documents: Iterable[str], special_tokens: Sequence[str]) -> Iterator[str]:
    """Documents with special tokens cut out (they are added whole, never learnt from)."""
    import regex

    specials = sorted(set(special_tokens) | {ENDOFTEXT}, key=len, reverse=True)
    pattern = regex.compile("|".join(regex.escape(t) for t in specials))
    for doc in documents:
        for piece in pattern.split(doc):
            if piece:
                yield piece


def train_vocab(
    documents: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (), min_frequency: int = 2,
) -> BPETokenizer:
    """Learns a byte-level BPE vocabulary of `vocab_size` tokens (bytes, merges, `<|endoftext|>` and
    `special_tokens` included) from `documents` (any iterable of strings, read once).

    Raises:
        VocabularyError: `vocab_size` too small, bad special tokens, or a corpus too small to
            learn any merge.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = check_special_tokens(special_tokens)
    fixed = 256 + 1 + len(specials)
    if vocab_size <= fixed:
        raise VocabularyError(
            f"vocab_size = {vocab_size} leaves no room for merges: 256 byte tokens + <|endoftext|> + "
            f"{len(specials)} special tokens already take {fixed}; use a larger size (GPT-2 has 50257)."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1 - len(specials),  # the trainer counts bytes + merges
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(_pieces(documents, specials), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if not merges:
        raise VocabularyError(
            f"the corpus is too small to learn any merge with min_frequency={min_frequency}; give more text."
        )
    encoder = {sym: i for i, sym in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        encoder.setdefault(a + b, len(encoder))
    if len(encoder) != 256 + len(merges):
        raise VocabularyError("the trainer produced two merges with the same result; retrain with other settings.")
    return BPETokenizer(encoder, merges, specials)
