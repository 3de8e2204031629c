"""The quality of generated text (plain TensorFlow, no TFX): samples of fixed prompts with a fixed
seed, and figures about them that perplexity does not show.

    sample_distinct_1, sample_distinct_2   distinct words and word pairs over all the samples, as a
                                           share of all words and pairs (Li et al. 2016: low values
                                           mean the model says the same few things)
    sample_repeated_4gram_share            the share of each sample's word 4-grams that repeat an
                                           earlier 4-gram of the same sample (loops, "the the the")
    sample_mean_words                      words per sample

Words are the sample's whitespace-separated pieces, the continuation only (not the prompt). The
prompts are the openings of the eval documents (`document_openings`), so that they fit any
language the model was trained on.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

from tfx_gpt2.model.generate import Generator
from tfx_gpt2.model.sampling import SamplingConfig

SAMPLE_SETTINGS = dict(max_new_tokens=48, temperature=1.0, top_k=40, seed=0)  # the server's defaults, seeded
OPENING_TOKENS = 8


def document_openings(blocks: Iterable[Sequence[int]], eot_id: int, count: int) -> List[List[int]]:
    """The first `OPENING_TOKENS` tokens of the first `count` documents of packed `blocks` that
    have that many (a document opens the stream, and follows each `<|endoftext|>`)."""
    openings: List[List[int]] = []
    current: List[int] = []
    opening = True  # the tokens read since the last <|endoftext|> are an opening still being read
    for k, block in enumerate(blocks):
        for token in (block if k == 0 else block[1:]):  # consecutive blocks share one token
            if token == eot_id:
                current, opening = [], True
            elif opening:
                current.append(int(token))
                if len(current) == OPENING_TOKENS:
                    openings.append(current)
                    current, opening = [], False
                    if len(openings) == count:
                        return openings
    return openings


def generate_samples(model, tokenizer, prompts: Sequence[Sequence[int]], **settings) -> List[Dict[str, str]]:
    """[{prompt, text}] of each prompt (token ids), sampled with `SAMPLE_SETTINGS` (or `settings`)."""
    config = SamplingConfig(**{**SAMPLE_SETTINGS, **settings})
    texts = Generator(model, tokenizer).generate([tokenizer.decode(p) for p in prompts], config)
    return [{"prompt": tokenizer.decode(p), "text": t} for p, t in zip(prompts, texts)]


def _ngrams(words: Sequence[str], n: int) -> List[tuple]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def sample_quality(texts: Sequence[str]) -> Dict[str, float]:
    """The figures of the module docstring for the generated `texts`."""
    words = [t.split() for t in texts]
    unigrams = [w for ws in words for w in ws]
    bigrams = [g for ws in words for g in _ngrams(ws, 2)]
    repeated = total = 0
    for ws in words:
        grams = _ngrams(ws, 4)
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return {"sample_distinct_1": len(set(unigrams)) / len(unigrams) if unigrams else 0.0,
            "sample_distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
            "sample_repeated_4gram_share": repeated / total if total else 0.0,
            "sample_mean_words": float(np.mean([len(ws) for ws in words])) if words else 0.0,
            "samples": len(texts)}
