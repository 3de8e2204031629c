"""Text generation with a GPT-2 model: temperature and top-k sampling, or greedy decoding.

This loop re-runs the model on the whole (cropped) context for each new token; it is simple and
exact, and serves the pipeline's samples and the MLflow model.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.text.bpe import BPETokenizer


class GenerationError(ValueError):
    """A sampling setting is out of range."""


def check_settings(max_new_tokens: int, temperature: float, top_k: int) -> None:
    """Raises GenerationError naming the setting when one is out of range."""
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens = {max_new_tokens} must be >= 0.")
    if temperature < 0:
        raise GenerationError(f"temperature = {temperature} must be >= 0 (0 means greedy).")
    if top_k < 0:
        raise GenerationError(f"top_k = {top_k} must be >= 0 (0 means no top-k filtering).")


def sample_next(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Picks the next id from float logits `(V,)`: argmax if temperature == 0, else a sample."""
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64) / temperature
    if top_k and top_k < logits.shape[0]:
        kth = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return int(rng.choice(p.shape[0], p=p))


def generate_ids(model: GPT2, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, rng: Optional[np.random.Generator] = None,
                 stop_id: Optional[int] = None) -> List[int]:
    """Returns the new ids after `prompt_ids` (without the prompt), stopping at `stop_id`."""
    check_settings(max_new_tokens, temperature, top_k)
    rng = rng or np.random.default_rng()
    ids = list(prompt_ids) or ([stop_id] if stop_id is not None else [0])
    n_prompt = len(ids)
    for _ in range(max_new_tokens):
        context = np.asarray([ids[-model.config.n_ctx:]], dtype=np.int32)  # (1, T)
        logits = np.asarray(model(context, training=False))[0, -1]  # (V,)
        nxt = sample_next(logits, temperature, top_k, rng)
        if stop_id is not None and nxt == stop_id:
            break
        ids.append(nxt)
    return ids[n_prompt:]


def generate_text(model: GPT2, tokenizer: BPETokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                  temperature: float = 1.0, top_k: int = 0, seed: Optional[int] = None) -> List[str]:
    """Continues each prompt; returns only the generated text of each."""
    rng = np.random.default_rng(seed)
    out = []
    for prompt in prompts:
        new = generate_ids(model, tokenizer.encode(prompt), max_new_tokens, temperature, top_k, rng,
                           stop_id=tokenizer.eot_id)
        out.append(tokenizer.decode(new))
    return out
