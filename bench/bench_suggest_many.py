"""``suggest`` one tag set at a time vs ``suggest_many`` in batches, same process, same answers.

    python bench/bench_suggest_many.py MODEL_DIR DATA_DIR [--posts 512] [--batch-sizes 16,64,256]

Tag sets are the first ``--posts`` test posts of DATA_DIR (rating plus every tag). Prints seconds and
tag sets per second for each way, with the ratio to the one-at-a-time loop; checks that every way
returns the same tags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Parse the flags, time both ways, print the table."""
    import datasets

    from booru_embed.embedder import BooruEmbedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--posts", type=int, default=512)
    parser.add_argument("--batch-sizes", default="16,64,256")
    args = parser.parse_args()
    test = datasets.load_from_disk(args.data_dir)["test"]
    rows = test.select(range(min(args.posts, len(test))))
    tagsets = [{"rating": row["rating"], **{c: row[c] for c in ("general", "character", "copyright", "artist", "meta")}}
               for row in rows]
    embedder = BooruEmbedder.from_pretrained(args.model_dir, device="cpu")
    embedder.suggest(tagsets[0])  # warm-up
    started = time.perf_counter()
    alone = [embedder.suggest(tagset, top_k=32, expand_implications=False) for tagset in tagsets]
    base = time.perf_counter() - started
    print(f"| way ({len(tagsets)} tag sets) | seconds | tag sets/s | ratio |\n|---|---|---|---|")
    print(f"| suggest, one at a time | {base:.2f} | {len(tagsets) / base:,.0f} | 1.00 |")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        started = time.perf_counter()
        together = embedder.suggest_many(tagsets, top_k=32, expand_implications=False, batch_size=size)
        seconds = time.perf_counter() - started
        same = sum([t for t, _ in a] == [t for t, _ in b] for a, b in zip(alone, together))
        print(f"| suggest_many, batch {size} | {seconds:.2f} | {len(tagsets) / seconds:,.0f} | {base / seconds:.2f} |"
              f"{'' if same == len(tagsets) else f' ({len(tagsets) - same} lists differ)'}")


if __name__ == "__main__":
    main()
