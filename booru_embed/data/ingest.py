"""``build-dataset``: Danbooru exports (CSV, TSV, Parquet, JSON Lines) -> a ``datasets`` DATA_DIR.

The build, one module per step: ``sources`` finds the input files, tells their format and checks
their headers before anything is written, then hands each file to its reader (``readers`` for
exports, ``booru_chars``, ``json_array``), which gives ``blocks.Block`` s of rows that end on a
record boundary, so memory stays bounded whatever the input size. ``checks`` checks the fields of a
whole block at once (id, score, rating, NUL bytes, tag count); here the passing rows are split
while still strings, and only then are the tag strings split into lists. Worker threads handle the
blocks; results are written in input order by ``writer``, which keeps a post id's last occurrence
and turns the finished Arrow files into the DatasetDict.

The split is a hash of the post id (:func:`is_test_post`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import UsageError
from ..modeling.normalization_booru_embed import parse_rating
from .blocks import BLOCK_BYTES, SCHEMA, TAG_COLUMNS, Job
from .booru_chars import one_per_pair
from .checks import DEFAULT_MAX_TAGS, CheckedRows, check_rows, tag_lists
from .sources import check_input, expand_inputs, parse_jobs
from .writer import SPLITS, RejectLog, SplitWriter, check_output, save_dataset_dict


def is_test_post(ids: np.ndarray, test_fraction: float) -> np.ndarray:
    """True for the post ids that belong to the test split.

    The split is ``splitmix64(id) / 2**64 < test_fraction``: a stable function of the id alone, so a
    post never changes split when the export is refreshed, reordered or cut into other files, and
    the test split at a smaller fraction is a subset of the one at a larger fraction.
    """
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < test_fraction


def _split_tables(checked: CheckedRows, test_fraction: float) -> dict[str, pa.Table]:
    """The passing rows as a SCHEMA table per split, filtered while still strings (cheaper than
    filtering lists) before the tag strings are split."""
    is_test = is_test_post(checked.ids, test_fraction)
    tables = {}
    for split, rows_in_split in (("train", checked.good & ~is_test), ("test", checked.good & is_test)):
        keep = pa.array(rows_in_split)
        tables[split] = pa.table({
            "id": pa.array(checked.ids[rows_in_split]),
            "rating": checked.columns["rating"].filter(keep),
            "score": pa.array(checked.score[rows_in_split].astype(np.int32), mask=~checked.has_score[rows_in_split]),
            **{name: tag_lists(checked.columns[f"tag_string_{name}"].filter(keep))[0] for name in TAG_COLUMNS},
        }, schema=SCHEMA)
    return tables


def _run_job(job: Job, max_tags: int, test_fraction: float,
             default_rating: str | None) -> tuple[int, dict[str, pa.Table], list[tuple[int, str, str, str]]]:
    """Parse and check one block: (rows read, passing rows by split, all rejects in line order)."""
    block = job()
    checked = check_rows(block, max_tags, default_rating)
    tables, rejects = _split_tables(checked, test_fraction), checked.rejects
    if block.source:
        rejects = [reject + (block.source,) for reject in rejects]
    return len(block.lines) + len(block.rejects), tables, sorted(block.rejects + rejects, key=lambda r: r[0])


def _stream_inputs(files: list[Path], folder: Path, writer: SplitWriter, max_tags: int, test_fraction: float,
                   block_bytes: int, progress: bool | None, workers: int,
                   default_rating: str | None) -> tuple[int, Counter, dict]:
    """Parse, check and write every row of ``files``; return (rows read, rejects by reason, per file)."""
    from tqdm.auto import tqdm

    per_file = {str(p): {"rows": 0, "rejected": 0} for p in files}
    rows_read = 0
    with RejectLog(folder / "rejects.jsonl") as reject_log, \
            tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="build-dataset",
                 disable=None if progress is None else not progress) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build-dataset") as pool:
        in_flight: deque[tuple[Path, Future, int]] = deque()

        def finish_oldest() -> None:
            nonlocal rows_read
            path, future, size = in_flight.popleft()
            rows, tables, rejects = future.result()
            writer.write(tables)
            reject_log.write(path, rejects)
            per_file[str(path)]["rows"] += rows
            per_file[str(path)]["rejected"] += len(rejects)
            rows_read += rows
            bar.update(size)

        # blocks are parsed and checked in worker threads (pyarrow and numpy release the GIL) and
        # written in input order, so "last occurrence" and line numbers follow the input
        for path in files:
            for job, size in parse_jobs(path, block_bytes):
                in_flight.append((path, pool.submit(_run_job, job, max_tags, test_fraction, default_rating), size))
                while len(in_flight) > workers:
                    finish_oldest()
        while in_flight:
            finish_oldest()
    writer.close()
    return rows_read, reject_log.reasons, per_file


def build_dataset(inputs: Sequence[str | Path], output: Path, test_fraction: float = 0.05,
                  max_tags: int = DEFAULT_MAX_TAGS, block_bytes: int = BLOCK_BYTES,
                  progress: bool | None = None, workers: int | None = None, default_rating: str | None = None) -> dict:
    """Build DATA_DIR ``output`` from export files (paths or globs); return the build info.

    Writes the DatasetDict (``train``, ``test``), ``rejects.jsonl`` (one object per rejected row:
    file, line, reason, detail, raw) and ``build_info.json`` (rows read, kept, rejected by reason,
    duplicates, rows per split). Raises UsageError, before writing anything, for a missing file, an
    unknown format, an empty file, a wrong header or an output folder that holds something else;
    and, leaving ``output`` as it was, for an input without any rows. The build happens in a
    sibling folder that replaces ``output`` only when it is complete.
    ``progress``: show a progress bar (None: only on a terminal). ``workers``: threads that parse
    and check blocks (default: one per CPU, at most 4).

    A source without ratings or scores (a booru-chars files table without those columns) gives posts
    with a null rating (unknown) and a null score (none); ``default_rating`` (a letter or word) is the
    rating of those posts instead. ``build_info.json`` counts them (``posts_without_rating``,
    ``posts_without_score``).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if max_tags < 1:
        raise UsageError(f"--max-tags must be positive, got {max_tags}")
    try:
        default_rating = parse_rating(default_rating)
    except ValueError as error:
        raise UsageError(f"--default-rating: {error}") from None
    files = one_per_pair(expand_inputs(inputs))
    for path in files:
        check_input(path)
    output = Path(output)
    check_output(output)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.building-{uuid.uuid4().hex[:8]}")
    scratch = staging / ".rows"
    scratch.mkdir(parents=True)
    # `import datasets` costs about a second of one core; it runs while the first blocks are parsed
    importing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-datasets")
    datasets_module = importing.submit(importlib.import_module, "datasets")
    importing.shutdown(wait=False)
    try:
        writer = SplitWriter(scratch, SCHEMA)
        rows_read, reasons, per_file = _stream_inputs(files, staging, writer, max_tags, test_fraction, block_bytes,
                                                      progress, workers or max(1, min(4, os.cpu_count() or 1)),
                                                      default_rating)
        datasets = datasets_module.result()
        features = datasets.Features.from_arrow_schema(SCHEMA)
        if rows_read == 0:
            raise UsageError(f"no posts in the input ({len(files)} file(s) with a header only)")
        splits, duplicates = {}, 0
        for split in SPLITS:
            splits[split], dropped = writer.drop_duplicates(split)
            duplicates += dropped
        save_dataset_dict(staging, writer.paths, features)
        shutil.rmtree(scratch)
        reloaded = datasets.load_from_disk(str(staging))  # the layout is datasets' own: check it reads back
        if {s: len(reloaded[s]) for s in SPLITS} != splits or reloaded["train"].features != features:
            raise RuntimeError(f"{staging} does not read back as written; datasets' folder layout may have changed")
        unknown = {column: sum(reloaded[s].data.table[column].null_count for s in SPLITS) for column in ("rating", "score")}
        del reloaded
        rejected = sum(reasons.values())
        info = {
            "inputs": [str(p) for p in files],
            "rows_read": rows_read,
            "kept": rows_read - rejected - duplicates,
            "rejected": rejected,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "duplicates": duplicates,
            "splits": splits,
            "posts_without_rating": unknown["rating"],
            "posts_without_score": unknown["score"],
            "default_rating": default_rating,
            "test_fraction": test_fraction,
            "split_rule": "test if splitmix64(id) / 2**64 < test_fraction",
            "max_tags": max_tags,
            "per_file": per_file,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if info["kept"] != sum(splits.values()):
            raise RuntimeError(f"row accounting is off: {info}")
        (staging / "build_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return info


def add_build_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed build-dataset``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="export files or globs (.csv, .tsv, .parquet, .jsonl, .json; .gz/.bz2/.zst compressed text too), "
                             "booru-chars .sqlite/.db files or X_tags.tsv + X_files.tsv pairs")
    parser.add_argument("--output", type=Path, required=True, help="DATA_DIR to write")
    parser.add_argument("--test-fraction", type=float, default=0.05, help="share of posts in the test split (default 0.05)")
    parser.add_argument("--max-tags", type=int, default=DEFAULT_MAX_TAGS,
                        help=f"reject posts with more tags than this (default {DEFAULT_MAX_TAGS})")
    parser.add_argument("--default-rating", metavar="RATING",
                        help="rating of the posts of a source without ratings (a booru-chars files table without a "
                             "rating column), e.g. g for Safebooru; default: unknown (no rating token)")


def run_build_dataset(args: argparse.Namespace) -> int:
    """Run ``booru-embed build-dataset`` and print the summary."""
    info = build_dataset(args.inputs, args.output, test_fraction=args.test_fraction, max_tags=args.max_tags,
                         default_rating=args.default_rating)
    print(f"read {info['rows_read']} rows from {len(info['inputs'])} file(s) in {info['seconds']:.1f} s: "
          f"kept {info['kept']} (train {info['splits']['train']}, test {info['splits']['test']}), "
          f"duplicates {info['duplicates']}, rejected {info['rejected']}")
    if info["posts_without_rating"] or info["posts_without_score"]:
        print(f"  {info['posts_without_rating']} posts without a rating (unknown; --default-rating sets one), "
              f"{info['posts_without_score']} without a score (the source has none)")
    for reason, count in info["rejected_by_reason"].items():
        print(f"  rejected {count} x {reason} (see {Path(args.output) / 'rejects.jsonl'})")
    print(f"wrote {args.output}")
    return 0
