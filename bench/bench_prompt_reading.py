"""Benchmark reading tag-set text: the prompt-aware reader against the plain split it replaced.

Microseconds per post of the reading before prompts were read (a comma list split on commas, else
words: the baseline) and of ``read_tag_text`` with a 150k-name vocabulary, on Danbooru tag strings
and on the same posts written as prompts (``prompt_tag``, every third tag weighted ``(tag:1.2)``).
All in one process, best of ``--repeats`` rounds run round-robin (the machine may be shared).

    python bench/bench_prompt_reading.py [--posts 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from bench_tokenizer import best_seconds  # this folder is first on sys.path when run as a script

from booru_embed.data.synthetic import default_tag_data
from booru_embed.modeling.normalization_booru_embed import emphasized, prompt_tag, read_tag_text


def plain_split(text: str) -> list[str]:
    """The reading before prompts were read: a comma list split on commas (``\\(`` unescaped), else words."""
    if "," in text:
        return [item.replace("\\(", "(").replace("\\)", ")") for item in text.split(",")]
    return text.split()


def tag_names() -> list[str]:
    """Danbooru's tag names (the shared list), or made-up ones when it is absent."""
    folder = default_tag_data()
    if folder is None:
        return [f"tag_{i}" for i in range(150_000)]
    with open(Path(folder) / "tags.csv", encoding="utf-8", newline="") as handle:
        return [row[0] for row in csv.reader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = tag_names()
    known = frozenset(names)
    rng = random.Random(0)
    posts = [rng.sample(names[:20_000], 30) for _ in range(args.posts)]  # 30 tags, the common ones
    strings = [" ".join(post) for post in posts]
    prompts = [", ".join(emphasized(prompt_tag(t), 1.2 if i % 3 == 0 else 1.0) for i, t in enumerate(post)) for post in posts]
    seconds = best_seconds({
        "tag strings: plain split (baseline)": lambda: [plain_split(s) for s in strings],
        "tag strings: read_tag_text": lambda: [read_tag_text(s, known) for s in strings],
        "prompts: plain split": lambda: [plain_split(p) for p in prompts],
        "prompts: read_tag_text": lambda: [read_tag_text(p, known) for p in prompts],
    }, args.repeats)
    timings = {name: value * 1e6 / len(posts) for name, value in seconds.items()}
    print(f"{len(posts)} posts of 30 tags, vocabulary of {len(known)} names, best of {args.repeats}\n")
    print("| reading | us/post | vs plain split of the same texts |\n|---|---|---|")
    for name, value in timings.items():
        baseline = timings[name.split(":")[0] + ": plain split" + (" (baseline)" if name.startswith("tag") else "")]
        print(f"| {name} | {value:.1f} | {value / baseline:.2f}x |")


if __name__ == "__main__":
    main()
