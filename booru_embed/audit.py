"""`booru-embed audit`: the least plausible present tags and the most plausible missing ones, per post.

For each post of a DATA_DIR split, ``BooruEmbedder.score_tags`` gives every present tag's fit (the
probability the rest of the post gives it, leave-one-out through the masked-tag head) and
``BooruEmbedder.suggest`` the missing tags. REPORT_DIR receives ``audit.jsonl`` (one object per post:
``id``, ``suspicious`` [[tag, fit], ...] lowest fit first, ``missing`` [[tag, probability], ...],
``unknown`` tags outside the vocabulary) and ``report.md`` (the tags most often among a post's
suspicious ones, with the share of their occurrences flagged, and the posts with the least plausible
tags). Posts stream through in row batches; memory holds only per-tag counters and the examples.
``--max-posts N`` audits a uniform sample of N posts drawn with ``--seed`` (kept in split order).
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .embedder import BooruEmbedder, load_for_command
from .errors import UsageError
from .modeling.categories_booru_embed import TAG_CATEGORIES

ROW_BATCH = 256  # dataset rows read at a time (bounded memory on large splits)
EXAMPLES = 5  # posts shown in report.md
REPORT_TAGS = 20  # rows of each table in report.md
MIN_OCCURRENCES = 10  # a tag's flagged share is listed only when it occurs this often


def _tag_dict(row: dict[str, Any]) -> dict[str, Any]:
    """The tag-set dict of one dataset row (tag categories, rating, score)."""
    return {key: row[key] for key in (*TAG_CATEGORIES, "rating", "score") if key in row and row[key] is not None}


def audit_post(embedder: BooruEmbedder, tags: dict[str, Any], top_k: int) -> tuple[dict[str, Any], list[str]]:
    """One post's audit row and its known (vocabulary) tags.

    The row holds ``suspicious`` (the ``top_k`` lowest-fit present tags, lowest first), ``missing``
    (suggest's top ``top_k``, implied tags first) and ``unknown`` (tags outside the vocabulary).
    A post without tags gets empty lists.
    """
    if not any(tags.get(category) for category in TAG_CATEGORIES):
        return {"suspicious": [], "missing": [], "unknown": []}, []
    scores = embedder.score_tags(tags)
    known = sorted(((tag, score) for tag, score in scores.items() if score is not None), key=lambda item: item[1])
    missing = embedder.suggest(tags, top_k=top_k)[:top_k]
    row = {"suspicious": [[tag, round(score, 6)] for tag, score in known[:top_k]],
           "missing": [[tag, round(score, 6)] for tag, score in missing],
           "unknown": [tag for tag, score in scores.items() if score is None]}
    return row, [tag for tag, _ in known]


def _select(table: Any, max_posts: int | None, seed: int) -> Any:
    """The rows to audit: all, or a seeded uniform sample of ``max_posts`` in split order."""
    if max_posts is None or max_posts >= len(table):
        return table
    chosen = np.sort(np.random.default_rng(seed).choice(len(table), size=max_posts, replace=False))
    return table.select(chosen)


def _report(summary: dict[str, Any], flagged: Counter, occurrences: Counter, examples: list) -> str:
    """report.md: settings, the most often suspicious tags, their flagged shares, example posts."""
    lines = [f"# Tag audit of {summary['dataset']} ({summary['split']})", "",
             f"Model: `{summary['model']}`. Posts audited: {summary['posts']} ({summary['selection']}). "
             f"A tag is *flagged* when it is among its post's {summary['top_k']} least plausible tags "
             "(lowest leave-one-out fit); posts with no more than that many known tags are not counted.", "",
             "## Most often flagged", "", "| tag | flagged | occurrences | share flagged |", "|---|---:|---:|---:|"]
    for tag, count in flagged.most_common(REPORT_TAGS):
        lines.append(f"| `{tag}` | {count} | {occurrences[tag]} | {count / occurrences[tag]:.0%} |")
    frequent = [(count / occurrences[tag], tag) for tag, count in flagged.items() if occurrences[tag] >= MIN_OCCURRENCES]
    lines += ["", f"## Highest share flagged (tags occurring at least {MIN_OCCURRENCES} times)", "",
              "| tag | share flagged | occurrences |", "|---|---:|---:|"]
    for share, tag in sorted(frequent, key=lambda item: (-item[0], item[1]))[:REPORT_TAGS]:
        lines.append(f"| `{tag}` | {share:.0%} | {occurrences[tag]} |")
    lines += ["", "## Posts with the least plausible tags", ""]
    for _, post_id, row in sorted(examples, key=lambda item: -item[0]):
        suspicious = ", ".join(f"`{tag}` {score:.2g}" for tag, score in row["suspicious"])
        missing = ", ".join(f"`{tag}` {score:.2g}" for tag, score in row["missing"])
        lines += [f"- post {post_id}: suspicious {suspicious}; missing {missing}"]
    return "\n".join(lines) + "\n"


def audit(model_dir: str, data_dir: Path, output: Path, split: str = "test", max_posts: int | None = None,
          top_k: int = 5, seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Audit ``split`` of DATA_DIR with MODEL_DIR into REPORT_DIR ``output``; return a summary."""
    import datasets
    from tqdm.auto import tqdm

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if max_posts is not None and max_posts < 1:
        raise UsageError(f"--max-posts must be at least 1, got {max_posts}")
    if not (Path(data_dir) / "dataset_dict.json").is_file():
        raise UsageError(f"--dataset {data_dir} is not a DATA_DIR (no dataset_dict.json; run build-dataset first)")
    splits = datasets.load_from_disk(str(data_dir))
    if split not in splits:
        raise UsageError(f"--split {split!r} is not in {data_dir} (splits: {', '.join(splits)})")
    embedder = load_for_command(model_dir, device)
    table = _select(splits[split], max_posts, seed)
    selection = "all" if len(table) == len(splits[split]) else f"a uniform sample drawn with seed {seed}"
    output.mkdir(parents=True, exist_ok=True)
    flagged: Counter = Counter()
    occurrences: Counter = Counter()
    examples: list = []  # min-heap of (-lowest fit, id, row): the EXAMPLES posts with the least plausible tags
    with (output / "audit.jsonl").open("w", encoding="utf-8") as sink, \
            tqdm(total=len(table), desc="audit", unit="post", disable=None) as bar:
        for batch in table.iter(batch_size=ROW_BATCH):
            for index in range(len(batch["id"])):
                row = _tag_dict({key: values[index] for key, values in batch.items()})
                audited, known = audit_post(embedder, row, top_k)
                result = {"id": int(batch["id"][index]), **audited}
                sink.write(json.dumps(result, ensure_ascii=False) + "\n")
                if len(known) > top_k:
                    occurrences.update(known)
                    flagged.update(tag for tag, _ in result["suspicious"])
                if result["suspicious"]:
                    item = (-result["suspicious"][0][1], result["id"], result)
                    (heapq.heappush if len(examples) < EXAMPLES else heapq.heappushpop)(examples, item)
                bar.update(1)
    summary = {"model": str(model_dir), "dataset": str(data_dir), "split": split, "posts": len(table),
               "selection": selection, "top_k": top_k, "seed": seed}
    (output / "report.md").write_text(_report(summary, flagged, occurrences, examples), encoding="utf-8")
    return summary


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed audit``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("--dataset", required=True, type=Path, help="DATA_DIR to audit")
    parser.add_argument("--output", required=True, type=Path, help="REPORT_DIR for audit.jsonl and report.md")
    parser.add_argument("--split", default="test", help="split to audit (default: test)")
    parser.add_argument("--max-posts", type=int, help="audit a seeded uniform sample of N posts (default: all)")
    parser.add_argument("--top-k", type=int, default=5, help="suspicious and missing tags per post (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-posts sample (default: 0)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_audit(args: argparse.Namespace) -> int:
    """Run ``booru-embed audit``."""
    summary = audit(args.model_dir, args.dataset, args.output, args.split, args.max_posts, args.top_k,
                    args.seed, args.device)
    print(f"audited {summary['posts']} posts of {summary['split']} ({summary['selection']}): "
          f"wrote {args.output / 'audit.jsonl'} and {args.output / 'report.md'}")
    return 0
