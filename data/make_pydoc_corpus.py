"""Writes the bundled demo corpus: the help topics of Python's own documentation.

`pydoc_data.topics` ships with every CPython (it is what `help('FOR')` prints): about 465 KB of
English prose about the Python language, under the Python Software Foundation License.
Each topic becomes one document; documents are separated by `<|endoftext|>` and spread over
four files so that the pipeline reads a folder of several files.

    python data/make_pydoc_corpus.py      # rewrites data/pydoc_topics/*.txt
"""

import os
import sys

SEPARATOR = "\n<|endoftext|>\n"
N_FILES = 4


def main(out_dir: str) -> None:
    from pydoc_data.topics import topics

    names = sorted(topics)
    os.makedirs(out_dir, exist_ok=True)
    for i in range(N_FILES):
        docs = [topics[name].strip() for name in names[i::N_FILES]]
        with open(os.path.join(out_dir, f"topics_{i:02d}.txt"), "w", encoding="utf-8") as f:
            f.write(SEPARATOR.join(docs) + "\n")
    print(f"wrote {len(names)} documents from Python {sys.version.split()[0]} into {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "pydoc_topics"))
