"""``analyze``: how big the vocabulary and the context must be, from a DATA_DIR.

Writes to REPORT_DIR: ``report.md`` (tables and the recommendation), ``stats.json`` (every number),
``tag_counts.tsv`` (category, tag, count; most frequent first) and PNG plots: coverage curves, tags
per post, ratings and scores, top tags. Counting streams the memory-mapped Arrow tables in batches.

Quantiles are "covering" quantiles (numpy ``inverted_cdf``): p99.9 = 30 means at least 99.9% of the
posts have at most 30. The recommended context length counts every token of a post: ``<cls>``, the
rating and score-bucket tokens, and the tags.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..errors import UsageError
from ..modeling.categories_booru_embed import RATINGS, TAG_CATEGORIES

SPECIAL_TOKENS = 3  # <cls>, rating, score bucket: every post has them before its tags
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
COVERAGE_LEVELS = (0.9, 0.95, 0.99, 0.999)
BATCH_ROWS = 100_000


def _descending(counts: Mapping[str, int] | Sequence[int] | np.ndarray) -> np.ndarray:
    values = counts.values() if isinstance(counts, Mapping) else counts
    return np.sort(np.fromiter(values, dtype=np.int64) if not isinstance(values, np.ndarray) else values)[::-1]


def recommend_min_counts(counts_by_category: Mapping[str, Mapping[str, int] | Sequence[int]],
                         coverage: float) -> dict[str, int]:
    """Per category, the highest minimum count whose kept tags cover at least ``coverage`` of the
    tag occurrences of that category.

    ``counts_by_category``: category -> {tag: count} (or just the counts). Keeping every tag with
    count >= the returned value covers at least ``coverage`` (ties can make it more). A category
    without tags gets 1. Raises UsageError unless 0 < coverage <= 1.
    """
    if not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage must be in (0, 1], got {coverage}")
    chosen = {}
    for category, counts in counts_by_category.items():
        ordered = _descending(counts)
        if ordered.size == 0:
            chosen[category] = 1
            continue
        covered = np.cumsum(ordered)
        needed = int(np.searchsorted(covered, coverage * covered[-1], side="left"))
        chosen[category] = max(1, int(ordered[min(needed, ordered.size - 1)]))
    return chosen


def vocabulary_size(counts: Mapping[str, int] | Sequence[int], min_count: int) -> tuple[int, float]:
    """Number of tags with count >= ``min_count`` and the share of occurrences they cover."""
    ordered = _descending(counts)
    kept = ordered[ordered >= min_count]
    return int(kept.size), float(kept.sum() / ordered.sum()) if ordered.size else 1.0


def covering_quantiles(values: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/p99.9 (values that at least that share of posts do not exceed), max and mean."""
    if values.size == 0:
        return {**{k: 0 for k in QUANTILES}, "max": 0, "mean": 0.0}
    result = {k: int(np.quantile(values, q, method="inverted_cdf")) for k, q in QUANTILES.items()}
    return {**result, "max": int(values.max()), "mean": round(float(values.mean()), 3)}


def recommend_context_length(tags_per_post: np.ndarray, quantile: float = 0.999) -> int:
    """Tokens (``<cls>``, rating, score bucket and the tags) that at least ``quantile`` of posts fit in."""
    if tags_per_post.size == 0:
        return SPECIAL_TOKENS
    return SPECIAL_TOKENS + int(np.quantile(tags_per_post, quantile, method="inverted_cdf"))


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(parts).group_by("tag").aggregate([("count", "sum")])
    return table.select(["tag", "count_sum"]).rename_columns(["tag", "count"])


def count_dataset(tables: Sequence[pa.Table]) -> dict:
    """Tag counts per category (tag -> count, most frequent first), tags per post, ratings, scores."""
    partial: dict[str, list[pa.Table]] = {c: [] for c in TAG_CATEGORIES}
    lengths: dict[str, list[np.ndarray]] = {c: [] for c in TAG_CATEGORIES}
    ratings: list[pa.Table] = []
    scores: list[np.ndarray] = []
    bar = tqdm(total=sum(t.num_rows for t in tables), unit=" posts", desc="analyze", disable=None)
    for table in tables:
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            bar.update(batch.num_rows)
            for category in TAG_CATEGORIES:
                column = batch.column(category)
                lengths[category].append(pc.list_value_length(column).to_numpy(zero_copy_only=False))
                counted = pc.value_counts(pc.list_flatten(column)).flatten()
                partial[category].append(pa.table({"tag": counted[0], "count": counted[1].cast(pa.int64())}))
                if len(partial[category]) >= 16:
                    partial[category] = [_merge_counts(partial[category])]
            counted = pc.value_counts(batch.column("rating")).flatten()
            ratings.append(pa.table({"tag": counted[0], "count": counted[1].cast(pa.int64())}))
            scores.append(pc.drop_null(batch.column("score")).to_numpy(zero_copy_only=False))  # null: no score
    bar.close()
    counts = {}
    for category in TAG_CATEGORIES:
        merged = _merge_counts(partial[category]) if partial[category] else pa.table({"tag": [], "count": []})
        merged = merged.sort_by([("count", "descending"), ("tag", "ascending")])
        counts[category] = dict(zip(merged["tag"].to_pylist(), merged["count"].to_pylist()))
    rating_counts = dict(zip(*_merge_counts(ratings).to_pydict().values())) if ratings else {}
    per_category = {c: np.concatenate(lengths[c]) if lengths[c] else np.zeros(0, np.int64) for c in TAG_CATEGORIES}
    return {
        "counts": counts,
        "lengths": per_category,
        "ratings": {**{r: int(rating_counts.get(r, 0)) for r in RATINGS}, "unknown": int(rating_counts.get(None, 0))},
        "scores": np.concatenate(scores) if scores else np.zeros(0, np.int32),
    }


def _load_tables(data_dir: Path, split: str) -> tuple[list[pa.Table], dict[str, int]]:
    from datasets import load_from_disk

    if not (data_dir / "dataset_dict.json").is_file():
        raise UsageError(f"{data_dir} is not a DATA_DIR (no dataset_dict.json; run build-dataset first)")
    dataset = load_from_disk(str(data_dir))
    names = list(dataset) if split == "all" else [split]
    if any(name not in dataset for name in names):
        raise UsageError(f"{data_dir} has no split {split!r} (has {', '.join(dataset)})")
    return [dataset[n].data.table for n in names], {n: len(dataset[n]) for n in names}


def _stats(counted: dict, splits: dict[str, int], coverage: float, split: str) -> dict:
    lengths = counted["lengths"]
    total = sum(lengths.values()) if lengths["general"].size else np.zeros(0, np.int64)
    min_counts = recommend_min_counts(counted["counts"], coverage)
    categories = {}
    for category in TAG_CATEGORIES:
        counts = counted["counts"][category]
        ordered = _descending(counts)
        covered = np.cumsum(ordered)
        vocab, share = vocabulary_size(counts, min_counts[category])
        categories[category] = {
            "distinct_tags": len(counts),
            "occurrences": int(ordered.sum()),
            "tags_for_coverage": {str(level): int(np.searchsorted(covered, level * covered[-1]) + 1) if ordered.size else 0
                                  for level in COVERAGE_LEVELS},
            "recommended_min_count": min_counts[category],
            "recommended_vocabulary": vocab,
            "recommended_coverage": round(share, 6),
            "top": [[tag, count] for tag, count in list(counts.items())[:20]],
        }
    scores = counted["scores"]
    return {
        "split": split,
        "posts": sum(splits.values()),
        "posts_by_split": splits,
        "categories": categories,
        "tags_per_post": {"all": covering_quantiles(total), **{c: covering_quantiles(lengths[c]) for c in TAG_CATEGORIES}},
        "ratings": counted["ratings"],
        "score": {**covering_quantiles(scores), "posts_with_score": int(scores.size), "min": int(scores.min()) if scores.size else 0,
                  "p1": int(np.quantile(scores, 0.01, method="inverted_cdf")) if scores.size else 0},
        "recommendation": {
            "coverage": coverage,
            "min_counts": min_counts,
            "vocabulary": sum(categories[c]["recommended_vocabulary"] for c in TAG_CATEGORIES),
            "context_length": recommend_context_length(total),
            "context_quantile": 0.999,
            "context_counts": "<cls> + rating + score bucket + tags",
        },
    }


def _plots(counted: dict, stats: dict, output: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    written = []
    colours = dict(zip(TAG_CATEGORIES, ("tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange")))

    fig, ax = plt.subplots(figsize=(8, 5))
    for category in TAG_CATEGORIES:
        ordered = _descending(counted["counts"][category])
        if ordered.size:
            ax.plot(np.arange(1, ordered.size + 1), np.cumsum(ordered) / ordered.sum(), label=category,
                    color=colours[category])
            size = stats["categories"][category]["recommended_vocabulary"]
            ax.plot([size], [stats["categories"][category]["recommended_coverage"]], "o", color=colours[category])
    ax.axhline(stats["recommendation"]["coverage"], color="grey", linestyle="--", linewidth=1,
               label=f"target {stats['recommendation']['coverage']:g}")
    ax.set(xscale="log", xlabel="vocabulary size (most frequent tags first)", ylabel="share of tag occurrences covered",
           title="Coverage by category (dots: recommended vocabulary)")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, output / "coverage.png"))

    total = sum(counted["lengths"].values()) + SPECIAL_TOKENS
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5), width_ratios=(1.1, 1, 1.2))
    left.hist(total, bins=min(100, max(10, int(total.max()) - int(total.min()) + 1)), color="tab:blue")
    for name, value in (("p50", stats["tags_per_post"]["all"]["p50"]), ("p99.9", stats["tags_per_post"]["all"]["p99.9"])):
        left.axvline(value + SPECIAL_TOKENS, color="black", linestyle="--", linewidth=1)
        left.text(value + SPECIAL_TOKENS, left.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    left.set(yscale="log", xlabel="tokens per post (<cls> + rating + score + tags)", ylabel="posts",
             title=f"Context length: {stats['recommendation']['context_length']} covers 99.9% of posts")
    general = counted["lengths"]["general"]
    middle.hist(general, bins=np.arange(general.max() + 2) - 0.5, color=colours["general"])
    middle.set(xlabel="general tags per post", ylabel="posts", title="General tags per post")
    # the other categories have a handful of tags a post: the share of posts with 0, 1, 2, ... of them
    few = [c for c in TAG_CATEGORIES if c != "general"]
    top = 6  # the last bar gathers posts with `top` or more
    for i, category in enumerate(few):
        shares = np.bincount(np.minimum(counted["lengths"][category], top), minlength=top + 1) / max(1, len(general))
        right.bar(np.arange(top + 1) + (i - (len(few) - 1) / 2) * 0.2, shares, width=0.2, label=category,
                  color=colours[category])
    right.set_xticks(range(top + 1), [str(k) for k in range(top)] + [f"{top}+"])
    right.set(xlabel="tags per post", ylabel="share of posts", title="Tags per post: artist, copyright, character, meta")
    right.legend()
    written.append(_save(fig, output / "lengths.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(list(stats["ratings"]), list(stats["ratings"].values()), color="tab:green")
    left.set(xlabel="rating", ylabel="posts", title="Ratings")
    scores = counted["scores"]
    if scores.size:
        positive = np.unique(np.round(np.geomspace(1, max(2, scores.max() + 1), 40)))
        negative = np.unique(np.round(np.geomspace(1, max(2, 1 - scores.min()), 20))) if scores.min() < 0 else np.zeros(0)
        edges = np.concatenate([-negative[::-1], [0], positive]) - 0.5  # whole scores fall inside bins
        right.hist(scores, bins=edges, color="tab:purple")
        right.set(xscale="symlog", yscale="log")
    else:
        right.text(0.5, 0.5, "no post has a score", ha="center", va="center", transform=right.transAxes)
    right.set(xlabel="score", ylabel="posts", title="Score (heavy tail)")
    written.append(_save(fig, output / "ratings_scores.png"))

    fig, axes = plt.subplots(1, len(TAG_CATEGORIES), figsize=(20, 5))
    for ax, category in zip(axes, TAG_CATEGORIES):
        top = stats["categories"][category]["top"][:15][::-1]
        ax.barh([t for t, _ in top], [n for _, n in top], color=colours[category])
        ax.set_title(f"top {category}")
        ax.tick_params(axis="y", labelsize=7)
        # three short count labels (12k, 1.5M): long ones run into each other on narrow panels
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.xaxis.set_major_formatter(FuncFormatter(_short_count))
        ax.set_xlabel("posts")
    written.append(_save(fig, output / "top_tags.png"))
    plt.close("all")
    return written


def _short_count(value: float, _position: int) -> str:
    """An axis count as 950, 12k or 1.5M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def _report(stats: dict, plots: list[str]) -> str:
    rec = stats["recommendation"]
    lines = [f"# Dataset analysis ({stats['split']} split{'s' if stats['split'] == 'all' else ''}: {stats['posts']} posts)", "",
             "## Recommendation", "",
             f"- Context length: **{rec['context_length']} tokens** (covers 99.9% of posts; counts {rec['context_counts']}).",
             f"- Minimum count per category for {rec['coverage']:g} coverage of tag occurrences "
             f"(vocabulary {rec['vocabulary']} tags in all):", "",
             "| category | min count | tags kept | coverage |", "|---|---|---|---|"]
    for category, c in stats["categories"].items():
        lines.append(f"| {category} | {c['recommended_min_count']} | {c['recommended_vocabulary']} | {c['recommended_coverage']:.4f} |")
    min_count_flags = " ".join(f"--min-count {k}={v}" for k, v in rec["min_counts"].items())
    lines += ["", f"`booru-embed build-tokenizer DATA_DIR --output TOKENIZER_DIR {min_count_flags}`", "",
              "## Tags by category", "",
              "| category | distinct tags | occurrences | " + " | ".join(f"tags for {lv:g}" for lv in COVERAGE_LEVELS) + " |",
              "|---|---|---|" + "---|" * len(COVERAGE_LEVELS)]
    for category, c in stats["categories"].items():
        lines.append(f"| {category} | {c['distinct_tags']} | {c['occurrences']} | "
                     + " | ".join(str(c["tags_for_coverage"][str(lv)]) for lv in COVERAGE_LEVELS) + " |")
    lines += ["", "Full counts: `tag_counts.tsv`.", "", "## Tags per post", "",
              "| | " + " | ".join(list(QUANTILES) + ["max", "mean"]) + " |", "|---|" + "---|" * (len(QUANTILES) + 2)]
    for name, q in stats["tags_per_post"].items():
        lines.append(f"| {name} | " + " | ".join(str(q[k]) for k in list(QUANTILES) + ["max", "mean"]) + " |")
    total = max(1, stats["posts"])
    lines += ["", "## Ratings and scores", "", "| rating | posts | share |", "|---|---|---|"]
    lines += [f"| {r} | {n} | {n / total:.3f} |" for r, n in stats["ratings"].items()]
    s = stats["score"]
    if s["posts_with_score"]:
        lines += ["", f"Score ({s['posts_with_score']} posts have one): min {s['min']}, p1 {s['p1']}, p50 {s['p50']}, "
                  f"p90 {s['p90']}, p99 {s['p99']}, p99.9 {s['p99.9']}, max {s['max']}, mean {s['mean']}."]
    else:
        lines += ["", "Score: no post has one (the source has no scores)."]
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def analyze(data_dir: Path, output: Path, coverage: float = 0.99, split: str = "train") -> dict:
    """Analyze DATA_DIR ``data_dir`` (``split``: a split name or ``"all"``); write REPORT_DIR ``output``.

    Returns the statistics also written to ``stats.json``, including ``recommendation``:
    ``min_counts`` per category for ``coverage`` and ``context_length`` covering 99.9% of posts.
    """
    if not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage must be in (0, 1], got {coverage}")
    data_dir, output = Path(data_dir), Path(output)
    tables, splits = _load_tables(data_dir, split)
    counted = count_dataset(tables)
    if sum(splits.values()) == 0:
        raise UsageError(f"{data_dir}: split {split!r} holds no posts")
    stats = _stats(counted, splits, coverage, split)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "tag_counts.tsv", "w", encoding="utf-8") as handle:
        handle.write("category\ttag\tcount\n")
        for category in TAG_CATEGORIES:
            handle.writelines(f"{category}\t{tag}\t{count}\n" for tag, count in counted["counts"][category].items())
    plots = _plots(counted, stats, output)
    (output / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    (output / "report.md").write_text(_report(stats, plots), encoding="utf-8")
    return stats


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed analyze``."""
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder written by build-dataset")
    parser.add_argument("--output", type=Path, required=True, help="REPORT_DIR to write")
    parser.add_argument("--coverage", type=float, default=0.99,
                        help="share of tag occurrences the recommended vocabulary covers, per category (default 0.99)")
    parser.add_argument("--split", default="train", help="split to analyze, or 'all' (default: train, the vocabulary's source)")


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``booru-embed analyze`` and print the recommendation."""
    stats = analyze(args.data_dir, args.output, coverage=args.coverage, split=args.split)
    rec = stats["recommendation"]
    print(f"analyzed {stats['posts']} posts ({stats['split']}): context length {rec['context_length']} covers 99.9%; "
          f"min counts for {rec['coverage']:g} coverage: "
          + ", ".join(f"{k}={v}" for k, v in rec["min_counts"].items()) + f" ({rec['vocabulary']} tags)")
    print(f"wrote {args.output / 'report.md'}")
    return 0
