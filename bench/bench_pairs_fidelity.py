"""How close a ``danbooru-pairs`` corpus is to Danbooru: pair rates, vocabulary, post lengths.

    python bench/bench_pairs_fidelity.py --posts 50000 --seed 0 [--workdir runs/pairs-fidelity] [--plot docs/x.png]

Generates the corpus (or reuses it), then prints:
- for the most common pairs of the table whose conditioning tag is on at least ``--min-posts`` posts of
  the corpus, the conditional rate ``P(b | a)`` in the corpus against the table's ``count / post_count(a)``:
  Pearson correlation and mean absolute error (and a scatter plot);
- the known pairs of the tests (``usada_pekora`` -> ``rabbit_ears`` ...);
- distinct tags by category against Danbooru's expected number at the same post count, estimated from
  ``tags.csv`` as ``sum over tags of 1 - (1 - post_count / danbooru_posts) ** posts`` (tags under 25 posts,
  absent from ``tags.csv``, are not counted: the estimate is a lower bound);
- tags a post (mean and percentiles, overall and by category).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from booru_embed.data.pair_table import CATEGORY_NUMBERS, load_pair_table  # noqa: E402
from booru_embed.data.corpus_rows import implication_closures  # noqa: E402
from booru_embed.data.synthetic import default_tag_data, generate_corpus  # noqa: E402
from booru_embed.data.synthetic_settings import setting  # noqa: E402

FIELDS = ("meta", "general", "artist", "copyright", "character")
KNOWN = (("usada_pekora", "rabbit_ears"), ("usada_pekora", "carrot_hair_ornament"), ("hakurei_reimu", "hair_tubes"),
         ("hatsune_miku", "aqua_necktie"), ("izayoi_sakuya", "twin_braids"))


def read_posts(path: Path) -> list[dict[str, list[str]]]:
    """Each post's tags by category."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [{"rating": row["rating"], **{f: row[f"tag_string_{f}"].split() for f in FIELDS}}
                for row in csv.DictReader(handle)]


def pair_rates(posts: list[dict[str, list[str]]], table, min_posts: int, top: int):
    """(table rate, corpus rate, source, partner) for the ``top`` most common table pairs measurable in the corpus."""
    tag_sets = [set(t for f in FIELDS for t in p[f]) for p in posts]
    counts = Counter(t for s in tag_sets for t in s)
    source, partner, rate = table.rates()
    order = np.argsort(-np.concatenate([table.pair_count, table.pair_count]), kind="stable")
    names = table.names
    chosen = []
    for i in order.tolist():
        a, b = names[source[i]], names[partner[i]]
        if counts[a] >= min_posts:
            chosen.append((float(rate[i]), a, b))
            if len(chosen) == top:
                break
    wanted = {a for _, a, _ in chosen}
    together = Counter()
    pairs_of = {}
    for r, a, b in chosen:
        pairs_of.setdefault(a, set()).add(b)
    for s in tag_sets:
        for a in wanted & s:
            for b in pairs_of[a] & s:
                together[a, b] += 1
    return [(r, together[a, b] / counts[a], a, b) for r, a, b in chosen], counts


def main() -> None:
    """Generate (or reuse) the corpus and print the fidelity figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "pairs-fidelity")
    parser.add_argument("--min-posts", type=int, default=100, help="corpus posts a conditioning tag needs")
    parser.add_argument("--top", type=int, default=1000, help="pairs compared")
    parser.add_argument("--plot", type=Path, default=None, help="scatter plot of the rates (png)")
    args = parser.parse_args()
    corpus = args.workdir / f"pairs-{args.posts}-s{args.seed}.csv"
    if not corpus.is_file():
        generate_corpus(corpus, args.posts, seed=args.seed, tag_data=default_tag_data(), spec=setting("danbooru-pairs"))
    table = load_pair_table(None, default_tag_data())
    posts = read_posts(corpus)
    rows, counts = pair_rates(posts, table, args.min_posts, args.top)
    expected, measured = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    names = table.names
    implied = {(names[a], names[c]) for a, cs in implication_closures(table.implications.tolist()).items() for c in cs}
    forced = np.array([(a, b) in implied for _, _, a, b in rows], dtype=bool)  # P(b|a) = 1 on every post
    print(f"corpus {corpus} ({len(posts)} posts, seed {args.seed}); table {table.source}")
    print(f"\npair rates P(b|a), {len(rows)} most common table pairs with a on >= {args.min_posts} posts:")
    for label, keep in (("all", np.ones(len(rows), dtype=bool)), ("without implications", ~forced),
                        ("implications (a implies b)", forced)):
        e, m = expected[keep], measured[keep]
        r = f"{np.corrcoef(e, m)[0, 1]:.3f}" if e.std() > 0 and m.std() > 0 else "-"
        print(f"  {label:<27} {keep.sum():>5} pairs: Pearson r {r}, mean abs error "
              f"{np.abs(e - m).mean():.3f}, mean table rate {e.mean():.3f}, mean corpus rate {m.mean():.3f}")
    tag_sets = [set(t for f in FIELDS for t in p[f]) for p in posts]
    index = table.index()
    print("\nknown pairs: corpus rate (posts of a) vs table rate")
    for a, b in KNOWN:
        with_a = [s for s in tag_sets if a in s]
        source, partner, rate = table.rates()
        hit = np.flatnonzero((source == index[a]) & (partner == index[b]))
        corpus_rate = sum(b in s for s in with_a) / max(1, len(with_a))
        print(f"  {a} -> {b}: {corpus_rate:.3f} ({len(with_a)} posts) vs {float(rate[hit[0]]):.3f}")
    print(f"\ndistinct tags at {len(posts)} posts: corpus vs Danbooru's expected (lower bound, from tags.csv)")
    danbooru_posts = setting("danbooru-pairs").danbooru_posts
    by_category: dict[int, list[int]] = {}
    with (default_tag_data() / "tags.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            by_category.setdefault(int(row[1]), []).append(int(row[2]))
    total_c = total_d = 0
    for field in FIELDS:
        seen = len({t for p in posts for t in p[field]})
        c = np.array(by_category[CATEGORY_NUMBERS[field]], dtype=np.float64)
        expect = float((1 - (1 - c / danbooru_posts) ** len(posts)).sum())
        total_c, total_d = total_c + seen, total_d + expect
        print(f"  {field:<10} {seen:>7} vs {expect:>9.0f}")
    print(f"  {'all':<10} {total_c:>7} vs {total_d:>9.0f}")
    lengths = np.array([sum(len(p[f]) for f in FIELDS) for p in posts])
    print(f"\ntags a post: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, p10 {np.percentile(lengths, 10):.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}")
    print("  by category (mean): " + ", ".join(f"{f} {np.mean([len(p[f]) for p in posts]):.2f}" for f in FIELDS))
    chars = Counter(min(len(p["character"]), 4) for p in posts)
    print("  characters a post: " + ", ".join(f"{k if k < 4 else '4+'}: {chars[k] / len(posts):.2f}" for k in sorted(chars)))
    ratings = Counter(p["rating"] for p in posts)
    print("  ratings: " + ", ".join(f"{r} {ratings[r] / len(posts):.2f}" for r in "gsqe"))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        left.scatter(expected[~forced], measured[~forced], s=6, alpha=0.5, label="pairs")
        left.scatter(expected[forced], measured[forced], s=6, alpha=0.5, color="tab:red", label="a implies b")
        left.legend(loc="lower right")
        left.plot([0, 1], [0, 1], color="grey", linewidth=1)
        left.set(xlabel="table: count / post_count(a)", ylabel="corpus: P(b | a)",
                 title=f"{len(rows)} most common pairs; r = {np.corrcoef(expected[~forced], measured[~forced])[0, 1]:.3f} "
                       "without implications")
        right.hist(lengths, bins=np.arange(0, lengths.max() + 5, 4))
        right.set(xlabel="tags a post", ylabel="posts", title=f"post length ({len(posts)} posts, mean {lengths.mean():.1f})")
        figure.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
