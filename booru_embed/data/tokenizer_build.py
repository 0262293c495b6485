"""Choose the whole-tag vocabulary from the training split's counts and write a tokenizer folder.

``booru-embed build-tokenizer DATA_DIR --output TOKENIZER_DIR [--aliases FILE] [--implications FILE]
[--min-count CATEGORY=N ...] [--coverage F] [--score-buckets N]``

A tag is kept when its training count reaches its category's minimum count. The defaults are lower for
artists, characters and copyrights than for general and meta tags: one artist or character tag names a
whole style or subject, so a few dozen posts already teach the model something about it, while a
general tag needs more examples to be told apart from the many general tags it co-occurs with.
Artists also have by far the longest tail: in Danbooru's own counts (``tags.csv``), scaled to a
1M-post training sample, a minimum of 3 keeps 98.8% of artist occurrences while 10 keeps only 73%;
for general tags 10 still keeps 99.8% (docs/tokenizer.md has the table).
``--coverage F`` instead picks, per category, the highest minimum count that still keeps a fraction F
of that category's tag occurrences (``booru_embed.data.analysis.recommend_min_counts``, the same rule
``booru-embed analyze`` reports); ``--min-count`` overrides either for the categories it names.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..modeling.categories_booru_embed import TAG_CATEGORIES
from .tag_tables import load_aliases, load_implications

if TYPE_CHECKING:
    import datasets

    from ..modeling.tokenization_booru_embed import BooruEmbedTokenizer

# Minimum training posts per kept tag, per category (see the module docstring and docs/tokenizer.md).
DEFAULT_MIN_COUNTS = {"general": 10, "artist": 3, "copyright": 5, "character": 5, "meta": 10}
DEFAULT_SCORE_BUCKETS = 8
BUILD_INFO_FILE = "vocab_build.json"


def count_tags(split: datasets.Dataset, aliases: dict[str, str] | None = None, batch_size: int = 200_000) -> dict[str, dict[str, int]]:
    """Training count of every tag, by category: tags normalised and alias-resolved, counted with Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..modeling.normalization_booru_embed import normalize_tag, resolve_alias

    columns = [c for c in TAG_CATEGORIES if c in split.column_names]
    raw: dict[str, Counter] = {c: Counter() for c in TAG_CATEGORIES}
    for batch in split.select_columns(columns).with_format("arrow").iter(batch_size=batch_size):
        for category in columns:
            counted = pc.value_counts(pc.cast(batch[category].combine_chunks().flatten(), pa.string()))
            tags, numbers = counted.field("values").to_pylist(), counted.field("counts").to_pylist()
            raw[category].update({t: n for t, n in zip(tags, numbers) if t is not None})
    counts: dict[str, dict[str, int]] = {c: {} for c in TAG_CATEGORIES}
    for category, counter in raw.items():
        for tag, number in counter.items():
            tag = resolve_alias(normalize_tag(tag), aliases or {})
            if tag:
                counts[category][tag] = counts[category].get(tag, 0) + number
    return counts


def assign_categories(counts: dict[str, dict[str, int]]) -> dict[str, tuple[str, int]]:
    """Each tag's category (where it was used most; ties go to the more specific category) and total count."""
    preference = ("character", "copyright", "artist", "meta", "general")
    assigned: dict[str, tuple[str, int]] = {}
    best: dict[str, int] = {}
    for category in preference:
        for tag, number in counts.get(category, {}).items():
            total = assigned.get(tag, ("", 0))[1] + number
            if number > best.get(tag, 0):
                best[tag] = number
                assigned[tag] = (category, total)
            else:
                assigned[tag] = (assigned[tag][0], total)
    return assigned


def score_boundaries(scores: list[int], num_buckets: int) -> list[int]:
    """Integer lower bounds of buckets 1..n-1 at the score quantiles (duplicates merged, empty buckets dropped)."""
    import numpy as np

    if num_buckets < 1:
        raise UsageError(f"--score-buckets must be at least 1, got {num_buckets}")
    values = np.asarray(scores, dtype=np.int64)
    if num_buckets == 1 or values.size == 0:
        return []
    cuts = np.quantile(values, np.arange(1, num_buckets) / num_buckets, method="higher")
    return sorted({int(c) for c in cuts if c > values.min()})


def parse_min_counts(items: list[str] | None) -> dict[str, int]:
    """``["artist=2", "general=50"]`` -> ``{"artist": 2, "general": 50}`` (UsageError on a bad item)."""
    parsed = {}
    for item in items or []:
        category, sep, number = item.partition("=")
        category = category.strip().lower()
        if not sep or category not in TAG_CATEGORIES or not number.strip().isdigit() or int(number) < 1:
            raise UsageError(f"--min-count expects CATEGORY=N with CATEGORY in {', '.join(TAG_CATEGORIES)} and N >= 1, got {item!r}")
        parsed[category] = int(number)
    return parsed


def _train_split(data_dir: str | Path) -> datasets.Dataset:
    import datasets

    data_dir = Path(data_dir)
    if not (data_dir / "dataset_dict.json").is_file():
        raise UsageError(f"not a DATA_DIR (no dataset_dict.json; build it with `booru-embed build-dataset`): {data_dir}")
    data = datasets.load_from_disk(str(data_dir))
    if "train" not in data:
        raise UsageError(f"{data_dir} has no 'train' split (splits: {', '.join(data)})")
    missing = [c for c in ("rating", "score", *TAG_CATEGORIES) if c not in data["train"].column_names]
    if missing:
        raise UsageError(f"{data_dir}: train split lacks columns {', '.join(missing)}")
    return data["train"]


def build_tokenizer(
    data_dir: str | Path,
    output: str | Path,
    aliases: str | Path | None = None,
    implications: str | Path | None = None,
    min_counts: dict[str, int] | None = None,
    coverage: float | None = None,
    score_buckets: int = DEFAULT_SCORE_BUCKETS,
) -> BooruEmbedTokenizer:
    """Count the training split, choose the vocabulary, and write a tokenizer folder to ``output``.

    ``min_counts`` overrides the per-category minimum for the categories it names; ``coverage`` picks the
    others from the counts (``recommend_min_counts`` of the analysis). Writes ``vocab_build.json`` beside the tokenizer
    with the thresholds, kept tags and coverage per category.
    """
    import numpy as np
    import pyarrow.compute as pc

    from ..modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from ..modeling.vocabulary_booru_embed import Vocabulary
    from .analysis import recommend_min_counts

    if coverage is not None and not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage must be in (0, 1], got {coverage}")
    train = _train_split(data_dir)
    alias_table = load_aliases(aliases) if aliases else {}
    implication_table = load_implications(implications, alias_table) if implications else {}
    for category in min_counts or {}:
        if category not in TAG_CATEGORIES:
            raise UsageError(f"unknown tag category {category!r} in min_counts (expected {', '.join(TAG_CATEGORIES)})")

    assigned = assign_categories(count_tags(train, alias_table))
    by_category: dict[str, dict[str, int]] = {c: {} for c in TAG_CATEGORIES}
    for tag, (category, number) in assigned.items():
        by_category[category][tag] = number
    thresholds = dict(DEFAULT_MIN_COUNTS)
    if coverage is not None:
        thresholds.update(recommend_min_counts(by_category, coverage))
    thresholds.update(min_counts or {})

    kept: dict[str, list[tuple[str, int]]] = {}
    stats: dict[str, dict[str, float]] = {}
    for category, counts in by_category.items():
        # Rarer first, the tokenizer's canonical order within a category.
        chosen = sorted(((t, n) for t, n in counts.items() if n >= thresholds[category]), key=lambda item: (item[1], item[0]))
        kept[category] = chosen
        total = sum(counts.values())
        stats[category] = {
            "min_count": thresholds[category],
            "tags_seen": len(counts),
            "tags_kept": len(chosen),
            "occurrences": total,
            "coverage": (sum(n for _, n in chosen) / total) if total else 1.0,
        }

    scores = train.with_format("arrow")["score"]
    scores = pc.drop_null(scores).to_numpy().astype(np.int64) if len(scores) else np.zeros(0, np.int64)
    boundaries = score_boundaries(scores, score_buckets)
    bucket_counts = np.bincount(np.searchsorted(boundaries, scores, side="right"), minlength=len(boundaries) + 1).tolist()
    rating_counts = dict(Counter(train.with_format("arrow")["rating"].to_pylist()))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    vocabulary = Vocabulary.layout(kept, rating_counts, boundaries, bucket_counts)
    tokenizer = BooruEmbedTokenizer.from_vocabulary(vocabulary, alias_table, implication_table)
    tokenizer.save_pretrained(str(output))  # vocab.json, the tables and tokenizer_config.json, each written once
    info = {
        "data_dir": str(data_dir),
        "train_posts": len(train),
        "vocab_size": len(vocabulary),
        "score_boundaries": boundaries,
        "aliases": len(alias_table),
        "implications": len(implication_table),
        "categories": stats,
    }
    (output / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return tokenizer


def add_build_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed build-tokenizer``."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder written by build-dataset")
    parser.add_argument("--output", required=True, metavar="TOKENIZER_DIR", help="folder to write the tokenizer to")
    parser.add_argument("--aliases", metavar="FILE", help="alias TSV (antecedent<TAB>consequent): resolved when counting and encoding")
    parser.add_argument("--implications", metavar="FILE", help="implication TSV stored with the tokenizer (used by suggest/evaluate)")
    parser.add_argument(
        "--min-count",
        action="append",
        metavar="CATEGORY=N",
        help=f"minimum training posts for a tag of CATEGORY to be kept (repeatable; defaults {DEFAULT_MIN_COUNTS})",
    )
    parser.add_argument("--coverage", type=float, metavar="F", help="per category, keep the tags covering a fraction F of occurrences")
    parser.add_argument("--score-buckets", type=int, default=DEFAULT_SCORE_BUCKETS, metavar="N", help="score quantile buckets (default 8)")


def run_build_tokenizer(args: argparse.Namespace) -> int:
    """Build the tokenizer folder and print what was kept per category."""
    min_counts = parse_min_counts(args.min_count)
    print(f"counting tags in {args.data_dir} ...", flush=True)
    tokenizer = build_tokenizer(
        args.data_dir,
        args.output,
        aliases=args.aliases,
        implications=args.implications,
        min_counts=min_counts,
        coverage=args.coverage,
        score_buckets=args.score_buckets,
    )
    info = json.loads((Path(args.output) / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    for category, stats in info["categories"].items():
        print(
            f"{category:>9}: kept {stats['tags_kept']:>7} of {stats['tags_seen']:>7} tags "
            f"(min count {stats['min_count']}, {stats['coverage']:.1%} of occurrences)"
        )
    print(f"vocabulary: {len(tokenizer)} tokens, {len(tokenizer.score_token_ids)} score buckets; written to {args.output}")
    return 0
