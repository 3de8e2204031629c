"""GPT-2's byte-level BPE as TensorFlow graph ops, for SavedModels that take and return text.

It gives the same ids as `tfx_gpt2.text.bpe.BPETokenizer` (and tiktoken), using TensorFlow and
tensorflow-text's `regex_split` (RE2). RE2 has no look-ahead, so GPT-2's pre-tokenizer
`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+` runs in steps:

1. special tokens (`<|endoftext|>`, ...) are cut out first and map to their id;
2. the text is cut into maximal whitespace runs and non-whitespace runs;
3. a whitespace run followed by a non-whitespace run gives up its last character: a space joins
   the next run (GPT-2's ` ?word`), any other whitespace character stands alone; a run at the end
   of the text stays whole (this is what `\\s+(?!\\S)|\\s+` does);
4. each non-whitespace run (with its leading space) is split by the rest of the pattern.

`\\s` is Unicode's White_Space set, as in the `regex` module and tiktoken (RE2's `\\s` is ASCII).

BPE merges run on all words of a batch at once: each round merges, in every word, the leftmost
occurrence of its best-ranked pair. That equals GPT-2's merge-all-occurrences rounds, because a
pair formed by a merge always ranks after the merge that formed it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfx_gpt2.text.bpe import BPETokenizer, bytes_to_unicode

_WS = r"\t\n\x0b\x0c\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
RUNS_PATTERN = f"[{_WS}]+|[^{_WS}]+"
WORD_PATTERN = rf"'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?[^{_WS}\p{{L}}\p{{N}}]+"
_NO_RANK = np.iinfo(np.int32).max


def _regex_split(strings, pattern):
    import tensorflow_text as tft

    return tft.regex_split(strings, pattern, keep_delim_regex_pattern=pattern)


class GraphBPETokenizer(tf.Module):
    """Encodes a batch of strings to ragged ids and decodes ids to strings, in the graph.

    Args:
        tokenizer: the Python tokenizer whose vocabulary, merges and special tokens to use.
    """

    def __init__(self, tokenizer: BPETokenizer, name: str = "bpe"):
        super().__init__(name=name)
        symbols = list(tokenizer.encoder)
        ids = [tokenizer.encoder[s] for s in symbols]
        self.encoder = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(symbols), tf.constant(ids, tf.int32)), -1)
        self.decoder = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.int32), tf.constant(symbols)), "")
        pairs = sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])
        self.ranks = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([a + " " + b for (a, b), _ in pairs]), tf.constant([r for _, r in pairs], tf.int32)),
            _NO_RANK)
        byte_map = bytes_to_unicode()
        self.byte_encoder = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([bytes([b]) for b in range(256)]), tf.constant([byte_map[b] for b in range(256)])), "")
        self.byte_decoder = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([byte_map[b] for b in range(256)]), tf.constant([bytes([b]) for b in range(256)])), "")
        specials = sorted(tokenizer.special_tokens, key=len, reverse=True)
        self.special_pattern = "|".join(_re2_escape(s) for s in specials)

    def _words(self, texts):
        """texts (N,) -> ragged (N, words) strings, GPT-2's pre-tokenization, specials kept whole."""
        pieces = _regex_split(texts, self.special_pattern)  # (N, pieces)
        flat = pieces.flat_values
        is_special = tf.strings.regex_full_match(flat, self.special_pattern)
        runs = _regex_split(flat, RUNS_PATTERN)  # (pieces, runs)
        vals = runs.flat_values
        row_len = runs.row_lengths()
        index_in_row = tf.ragged.range(row_len).flat_values
        has_next = index_in_row < tf.repeat(row_len, row_len) - 1
        is_ws = tf.strings.regex_full_match(vals, f"[{_WS}]+")
        split_ws = tf.logical_and(is_ws, has_next)
        head = tf.strings.regex_replace(vals, "(?s)^(.*).$", r"\1")
        last = tf.strings.regex_replace(vals, "(?s)^.*(.)$", r"\1")
        gives_space = tf.logical_and(split_ws, tf.equal(last, " "))
        first_part = tf.where(split_ws, head, vals)
        second_part = tf.where(tf.logical_and(split_ws, tf.logical_not(gives_space)), last, "")
        # A run after a run that gave up its space starts with that space.
        prev_gives = tf.concat([[False], gives_space[:-1]], axis=0)
        prev_gives = tf.logical_and(prev_gives, index_in_row > 0)
        first_part = tf.where(prev_gives, tf.strings.join([" ", first_part]), first_part)
        both = tf.reshape(tf.stack([first_part, second_part], axis=1), [-1])
        both = tf.RaggedTensor.from_row_lengths(both, row_len * 2)
        both = tf.ragged.boolean_mask(both, tf.strings.length(both) > 0)  # (pieces, tokens)
        words = _regex_split(both.flat_values, WORD_PATTERN)  # (tokens, words)
        words = both.with_flat_values(words).merge_dims(1, 2)  # (pieces, words)
        # Special pieces stay whole.
        whole = tf.RaggedTensor.from_row_lengths(flat, tf.ones_like(words.row_lengths()))
        words = _choose_rows(is_special, whole, words)
        return pieces.with_flat_values(words).merge_dims(1, 2)  # (N, words)

    def _merge(self, words):
        """words (W,) -> ragged (W, symbols) after all BPE merges."""
        chars = tf.strings.bytes_split(words)  # (W, bytes)
        symbols = chars.with_flat_values(self.byte_encoder.lookup(chars.flat_values))

        def cond(values, splits):
            return tf.reduce_any(self._best(values, splits)[0] < _NO_RANK)

        def body(values, splits):
            best_rank, best_pos = self._best(values, splits)
            n = splits[1:] - splits[:-1]
            starts = splits[:-1]
            merge_word = best_rank < _NO_RANK
            target = tf.where(merge_word, starts + best_pos, -1)  # flat index of the left symbol
            targets = tf.boolean_mask(target, merge_word)
            is_left = tf.scatter_nd(tf.reshape(targets, [-1, 1]), tf.ones_like(targets, tf.bool),
                                    tf.shape(values, out_type=tf.int64))
            nxt = tf.concat([values[1:], [""]], axis=0)
            merged = tf.where(is_left, tf.strings.join([values, nxt]), values)
            is_right = tf.concat([[False], is_left[:-1]], axis=0)
            keep = tf.logical_not(is_right)
            new_n = n - tf.cast(merge_word, tf.int64)
            new_splits = tf.concat([[0], tf.cumsum(new_n)], axis=0)
            return tf.boolean_mask(merged, keep), new_splits

        values, splits = tf.while_loop(
            cond, body, (symbols.flat_values, symbols.row_splits),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None])))
        return tf.RaggedTensor.from_row_splits(values, splits)

    def _best(self, values, splits):
        """Per word: the best pair's rank (or _NO_RANK) and the position of its leftmost occurrence."""
        ragged = tf.RaggedTensor.from_row_splits(values, splits)
        left, right = ragged[:, :-1], ragged[:, 1:]
        pairs = tf.strings.join([left.flat_values, right.flat_values], separator=" ")
        ranks = left.with_flat_values(self.ranks.lookup(pairs))
        best = tf.reduce_min(ranks, axis=1)  # empty rows give the int32 max
        best = tf.where(tf.equal(tf.size(ranks.flat_values), 0), tf.fill(tf.shape(best), _NO_RANK), best)
        is_best = tf.equal(ranks, tf.expand_dims(best, 1))
        pos = tf.argmax(tf.cast(is_best.to_tensor(False), tf.int32), axis=1)  # first True
        return best, pos

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def encode(self, texts):
        """(N,) strings -> ragged (N, ids) int32."""
        words = self._words(texts)  # (N, words)
        specials = self.encoder.lookup(words.flat_values)
        is_special = tf.strings.regex_full_match(words.flat_values, self.special_pattern)
        symbols = self._merge(words.flat_values)  # (words, symbols)
        ids = symbols.with_flat_values(self.encoder.lookup(symbols.flat_values))
        one = tf.RaggedTensor.from_row_lengths(specials, tf.ones_like(specials, tf.int64))
        ids = _choose_rows(is_special, one, ids)
        return words.with_flat_values(ids).merge_dims(1, 2)

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)], autograph=False)
    def decode(self, ids):
        """ragged (N, ids) int32 -> (N,) strings (invalid UTF-8 replaced by U+FFFD)."""
        symbols = ids.with_flat_values(self.decoder.lookup(ids.flat_values))
        spelled = tf.strings.reduce_join(symbols, axis=1)
        chars = tf.strings.unicode_split(spelled, "UTF-8")
        raw = self.byte_decoder.lookup(chars.flat_values)
        raw = tf.where(tf.equal(raw, ""), chars.flat_values, raw)
        text = tf.strings.reduce_join(chars.with_flat_values(raw), axis=1)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def _choose_rows(condition, when_true, when_false):
    """Row-wise select between two ragged (W, k) tensors."""
    lengths = tf.where(condition, when_true.row_lengths(), when_false.row_lengths())
    piece_of_true = tf.repeat(condition, when_true.row_lengths())
    piece_of_false = tf.repeat(tf.logical_not(condition), when_false.row_lengths())
    a = tf.boolean_mask(when_true.flat_values, piece_of_true)
    b = tf.boolean_mask(when_false.flat_values, piece_of_false)
    # Interleave rows in order.
    rows = tf.size(lengths, out_type=tf.int64)
    row_of = tf.repeat(tf.range(rows), lengths)
    from_true = tf.gather(condition, row_of)
    pos_true = tf.cumsum(tf.cast(from_true, tf.int64), exclusive=True)
    pos_false = tf.cumsum(tf.cast(tf.logical_not(from_true), tf.int64), exclusive=True)
    pad = tf.zeros([1], a.dtype)
    values = tf.where(
        from_true,
        tf.gather(tf.concat([a, pad], 0), tf.where(from_true, pos_true, tf.size(a, out_type=tf.int64))),
        tf.gather(tf.concat([b, pad], 0), tf.where(from_true, tf.size(b, out_type=tf.int64), pos_false)),
    )
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def _re2_escape(s: str) -> str:
    return "".join("\\" + c if not c.isalnum() else c for c in s)
