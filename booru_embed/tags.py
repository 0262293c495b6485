"""Normalise tag sets with a tokenizer's aliases and implications: one set, or a whole DATA_DIR.

``booru-embed normalize DIR "TAGS" [--implications keep|minimal|complete] [--style tags|prompt] [--json]``
``booru-embed normalize DIR --dataset DATA_DIR --output DATA_DIR2 [--implications ...]``

DIR is a tokenizer or model folder. The rules themselves live in the remote code
(``modeling/normalization_booru_embed.py``, ``tokenizer.normalize``) so Hub users get the same answers;
this module loads the tokenizer with the package's own class (so any folder works, also one saved
before ``normalize`` existed), streams a DATA_DIR through it and counts what changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .modeling.categories_booru_embed import TAG_CATEGORIES
from .modeling.normalization_booru_embed import IMPLICATION_MODES, STYLES, NormalizedTags

if TYPE_CHECKING:
    import datasets

    from .modeling.tokenization_booru_embed import BooruEmbedTokenizer

INFO_FILE = "normalize_info.json"
BATCH_ROWS = 10_000  # posts per datasets.map batch: bounded memory, little per-batch overhead
# What normalising changed, as counted into normalize_info.json and the caption export's info.
CHANGE_KEYS = ("posts", "posts_changed", "aliases_resolved", "duplicates_removed", "implied_removed",
               "implied_added", "unknown_kept")


def load_tokenizer(folder: str | Path) -> BooruEmbedTokenizer:
    """The tokenizer of a tokenizer or model folder, with this package's code; UsageError when it is none."""
    from .modeling.tokenization_booru_embed import BooruEmbedTokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        raise UsageError(f"not a tokenizer or model folder (no vocab.json): {folder}")
    return BooruEmbedTokenizer.from_pretrained(str(folder))


def count_changes(counts: Counter, result: NormalizedTags, changed: bool) -> None:
    """Add one normalised post's changes to ``counts`` (keys ``CHANGE_KEYS``)."""
    counts["posts"] += 1
    counts["posts_changed"] += int(changed)
    counts["aliases_resolved"] += len(result.aliases)
    counts["duplicates_removed"] += result.duplicates
    counts["implied_removed"] += len(result.removed)
    counts["implied_added"] += len(result.added)
    counts["unknown_kept"] += len(result.unknown)


def load_data_dir(path: str | Path) -> datasets.DatasetDict:
    """A DATA_DIR (``load_from_disk``) with its tag columns checked; UsageError otherwise."""
    import datasets

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise UsageError(f"not a DATA_DIR (no dataset_dict.json; build it with `booru-embed build-dataset`): {path}")
    data = datasets.load_from_disk(str(path))
    for name, split in data.items():
        missing = [c for c in ("id", *TAG_CATEGORIES) if c not in split.column_names]
        if missing:
            raise UsageError(f"{path}: split {name!r} lacks columns {', '.join(missing)}")
    return data


def _normalize_batch(batch: dict[str, list], tokenizer: Any, implications: str, split: str) -> dict[str, list]:
    """One datasets.map batch: the tag columns (and rating) normalised, plus one column per change count.

    The counts travel as columns (``_count_<key>``, summed afterwards) so they survive ``num_proc``.
    """
    columns = [c for c in (*TAG_CATEGORIES, "rating") if c in batch]
    out: dict[str, list] = {c: [] for c in columns}
    counts = {key: [] for key in CHANGE_KEYS}
    for row in range(len(batch["id"])):
        post = {c: batch[c][row] for c in columns}
        try:
            result = tokenizer.normalize(post, implications)
        except ValueError as error:
            raise UsageError(f"{split} post id {batch['id'][row]}: {error}") from None
        changed = False
        for category in TAG_CATEGORIES:
            tags = result.tags[category]
            changed = changed or set(tags) != set(post[category] or [])
            out[category].append(tags)
        if "rating" in columns:
            changed = changed or result.rating != post["rating"]
            out["rating"].append(result.rating)
        row_counts: Counter = Counter()
        count_changes(row_counts, result, changed)
        for key in CHANGE_KEYS:
            counts[key].append(row_counts[key])
    return {**out, **{f"_count_{key}": values for key, values in counts.items()}}


def normalize_data_dir(data_dir: str | Path, output: str | Path, tokenizer: Any, implications: str = "keep",
                       batch_size: int = BATCH_ROWS, num_proc: int | None = None) -> dict[str, Any]:
    """Write DATA_DIR ``output``: every split of ``data_dir`` with its tags normalised; return the counts.

    Streams through ``datasets.map`` in batches of ``batch_size`` posts (bounded memory, a progress bar
    per split, ``num_proc`` worker processes) into a temporary folder beside ``output``; other columns
    (``id``, ``score``, ...) are kept as they are. The counts are also written to ``output/normalize_info.json``.
    """
    if implications not in IMPLICATION_MODES:
        raise UsageError(f"--implications must be one of {', '.join(IMPLICATION_MODES)}, got {implications!r}")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"--output {output} exists and is not empty: choose a new folder")
    data = load_data_dir(data_dir)
    import datasets
    import pyarrow.compute as pc

    output.parent.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"data_dir": str(data_dir), "implications": implications, "splits": {}}
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as scratch:
        splits = {}
        for name, split in data.items():
            count_columns = [f"_count_{key}" for key in CHANGE_KEYS]
            features = datasets.Features({**split.features, **{c: datasets.Value("int32") for c in count_columns}})
            mapped = split.map(
                _normalize_batch, batched=True, batch_size=batch_size, features=features, num_proc=num_proc,
                fn_kwargs={"tokenizer": tokenizer, "implications": implications, "split": name},
                cache_file_name=str(Path(scratch) / f"{name}.arrow"), load_from_cache_file=False,
                new_fingerprint=uuid.uuid4().hex, desc=f"normalize {name}",
            )
            table = mapped.with_format("arrow")
            info["splits"][name] = {key: int(pc.sum(table[f"_count_{key}"]).as_py() or 0) for key in CHANGE_KEYS}
            splits[name] = mapped.remove_columns(count_columns)
        datasets.DatasetDict(splits).save_to_disk(str(output))
        del splits  # release the scratch Arrow files before the folder goes
    info["total"] = {key: sum(s[key] for s in info["splits"].values()) for key in CHANGE_KEYS}
    (output / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def add_normalization_flags(parser: argparse.ArgumentParser) -> None:
    """``--implications`` and ``--style``, shared by ``normalize`` and ``export-captions``."""
    parser.add_argument("--implications", choices=IMPLICATION_MODES, default="keep",
                        help="keep implied tags, remove them (minimal) or add them (complete); default keep")
    parser.add_argument("--style", choices=STYLES, default="tags",
                        help="tags: Danbooru spelling (default); prompt: spaces in tags, parentheses escaped \\( \\), "
                             "the input's weights written back as (tag:1.2)")


def add_normalize_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed normalize``."""
    parser.add_argument("dir", metavar="DIR", help="tokenizer or model folder (its aliases and implications are used)")
    parser.add_argument("tags", metavar="TAGS", nargs="?",
                        help='tag set: "1girl solo long_hair" or "1girl, long hair" (omit with --dataset)')
    add_normalization_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object by category with what changed")
    parser.add_argument("--dataset", metavar="DATA_DIR", help="normalise every post of this DATA_DIR instead of TAGS")
    parser.add_argument("--output", metavar="DATA_DIR2", help="with --dataset: the DATA_DIR to write")
    parser.add_argument("--batch-size", type=int, default=BATCH_ROWS, help=f"with --dataset: posts per batch (default {BATCH_ROWS})")
    parser.add_argument("--num-proc", type=int, help="with --dataset: worker processes (default: one)")


def run_normalize(args: argparse.Namespace) -> int:
    """Run ``booru-embed normalize``."""
    if args.dataset is not None:
        if args.tags is not None:
            raise UsageError("give either TAGS or --dataset, not both")
        if args.output is None:
            raise UsageError("--dataset needs --output DATA_DIR2")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
        tokenizer = load_tokenizer(args.dir)
        if args.num_proc is not None and args.num_proc < 1:
            raise UsageError(f"--num-proc must be at least 1, got {args.num_proc}")
        info = normalize_data_dir(args.dataset, args.output, tokenizer, args.implications, args.batch_size, args.num_proc)
        for name, counts in info["splits"].items():
            print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
        print(f"wrote {args.output} and {Path(args.output) / INFO_FILE}")
        return 0
    if args.output is not None:
        raise UsageError("--output goes with --dataset")
    if args.tags is None or not args.tags.replace(",", " ").split():
        raise UsageError("the tag set is empty: give at least one tag (or --dataset DATA_DIR)")
    tokenizer = load_tokenizer(args.dir)
    try:
        result = tokenizer.normalize(args.tags, args.implications)
    except ValueError as error:
        raise UsageError(str(error)) from None
    text = result.to_string(args.style)
    if args.json:
        print(json.dumps({"string": text, **result.to_dict()}, ensure_ascii=False))
        return 0
    print(text)
    notes = [("aliases resolved", [f"{a} -> {c}" for a, c in result.aliases.items()]),
             ("not in the vocabulary (kept)", result.unknown),
             ("implied tags removed", result.removed), ("implied tags added", result.added),
             ("ignored, not tags", [f"{piece} ({reason})" for piece, reason in result.ignored])]
    for label, items in notes:
        if items:
            print(f"note: {label}: {', '.join(items)}", file=sys.stderr)
    return 0


__all__ = ["add_normalization_flags", "count_changes", "load_data_dir", "load_tokenizer", "normalize_data_dir"]
