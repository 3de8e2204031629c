"""Writes the two bundled multiple-choice task files, built from the bundled corpus (data/pydoc_topics).

    python data/make_tasks.py      # rewrites data/tasks/*.jsonl (seeded: the same files every time)

Each line is `{"context": str, "choices": [str, ...], "gold": int}` (docs/evaluation.md):

    pydoc_last_word.jsonl      a sentence of the corpus without its last word; the choices are that
                               word and three other words of the corpus (a cloze, as LAMBADA is)
    pydoc_next_sentence.jsonl  a sentence; the choices are the sentence that follows it in the same
                               paragraph and three sentences of other topics (as HellaSwag's endings)

Sentences come from prose paragraphs only (no code, no headings), 8 to 24 words long (a choice fits the `tiny` model's context of 64 tokens).
"""

import json
import os
import random
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ITEMS = 100
SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")


def paragraphs(text: str):
    """Prose paragraphs of one document, each as one line: no indented code, no headings."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith(" ") or set(line.strip()) <= set("*=-") for line in lines):
            continue
        yield " ".join(line.strip() for line in lines)


def topics():
    """[(topic index, [[sentence, ...] per paragraph])] of the corpus, in file order."""
    out = []
    folder = os.path.join(HERE, "pydoc_topics")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for doc in f.read().split("<|endoftext|>"):
                paras = [[s for s in SENTENCE_END.split(p) if 8 <= len(s.split()) <= 24] for p in paragraphs(doc)]
                out.append([p for p in paras if p])
    return [(i, paras) for i, paras in enumerate(out) if paras]


def shuffled_choices(rng: random.Random, gold: str, others):
    choices = [gold] + list(others)
    rng.shuffle(choices)
    return choices, choices.index(gold)


def last_word_items(rng: random.Random, corpus):
    sentences = [s for _, paras in corpus for p in paras for s in p]
    words = sorted({w for s in sentences for w in re.findall(r"\b[a-z]{4,}\b", s)})
    items = []
    for sentence in rng.sample(sentences, len(sentences)):
        match = re.match(r"^(.*\S) ([a-z]{3,})([.!?])$", sentence)
        if match is None:
            continue
        context, gold = match.group(1), match.group(2)
        choices, index = shuffled_choices(rng, gold, rng.sample([w for w in words if w != gold], 3))
        items.append({"context": context, "choices": choices, "gold": index})
        if len(items) == ITEMS:
            break
    return items


def next_sentence_items(rng: random.Random, corpus):
    pairs = [(t, p[i], p[i + 1]) for t, paras in corpus for p in paras for i in range(len(p) - 1)]
    items = []
    for topic, sentence, following in rng.sample(pairs, min(ITEMS, len(pairs))):
        others = rng.sample([s for t, _, s in pairs if t != topic], 3)
        choices, index = shuffled_choices(rng, following, others)
        items.append({"context": sentence, "choices": choices, "gold": index})
    return items


def main() -> None:
    corpus = topics()
    out = os.path.join(HERE, "tasks")
    os.makedirs(out, exist_ok=True)
    for name, make in (("pydoc_last_word", last_word_items), ("pydoc_next_sentence", next_sentence_items)):
        items = make(random.Random(0), corpus)
        with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
        print(f"wrote {len(items)} items to {out}/{name}.jsonl")


if __name__ == "__main__":
    main()
