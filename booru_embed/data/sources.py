"""The inputs of ``build-dataset``: paths and globs -> files, the format of each (by its suffixes and,
for ``.tsv`` and ``.json``, its first bytes), an early check of each file's header, and the parse
jobs of the reader that format needs (``readers``, ``booru_chars``, ``json_array``).
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from ..errors import UsageError
from .blocks import INPUT_COLUMNS, Job, open_input, source_keys
from .booru_chars import booru_chars_jobs, check_booru_chars, is_booru_chars
from .json_array import check_json_array, is_json_array, json_array_jobs
from .readers import csv_jobs, jsonl_jobs, parquet_jobs

_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
            ".sqlite": "booru-chars", ".sqlite3": "booru-chars", ".db": "booru-chars"}


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The input files named by ``inputs`` (paths or globs, a glob's matches sorted); UsageError for
    a glob without a match, a path that is no file, or no input at all."""
    files: list[Path] = []
    for item in inputs:
        text = str(item)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise UsageError(f"no input file matches {text}")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise UsageError(f"input file not found: {path}")
            files.append(path)
    if not files:
        raise UsageError("no input files given")
    return files


def format_of(path: Path) -> tuple[str, str | None]:
    """(format, compression) of an input file: format one of "csv", "tsv", "parquet", "jsonl",
    "json-array", "booru-chars"; compression a pyarrow codec name or None. UsageError if unknown."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    kind = _FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None or (kind in ("parquet", "booru-chars") and compression):
        raise UsageError(f"{path}: unknown input format (use .csv, .tsv, .parquet, .jsonl, .json, "
                         ".sqlite/.db, optionally .gz/.bz2/.zst for text)")
    if kind == "tsv" and not compression:
        kind = "booru-chars" if is_booru_chars(path) else kind
    if kind == "json":
        kind = "json-array" if is_json_array(path, compression) else "jsonl"
    return kind, compression


def _missing_columns(names: Sequence[str], per_category: bool) -> list[str]:
    """Required columns not in ``names``; ``per_category``: a ``<category>`` column may stand in for
    ``tag_string_<category>`` (Parquet and JSON, whose columns can hold lists)."""
    return [c for c in (source_keys(names) if per_category else INPUT_COLUMNS) if c not in names]


def check_input(path: Path) -> None:
    """Stop early on an empty file or a wrong header (nothing has been written yet)."""
    kind, compression = format_of(path)
    if kind == "booru-chars":
        return check_booru_chars(path)
    if kind == "json-array":
        return check_json_array(path, compression)
    if kind == "parquet":
        import pyarrow.parquet as pq
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as error:
            raise UsageError(f"{path}: not a readable Parquet file ({error})") from None
    else:
        with open_input(path, compression) as stream:
            head = stream.read(1 << 20)
        if not head.strip():
            raise UsageError(f"{path}: empty file")
        first = head.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf").rstrip(b"\r").decode("utf-8", "replace")
        if kind == "jsonl":
            try:
                record = json.loads(first)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                raise UsageError(f"{path}: first line is not a JSON object")
            names = list(record)
        else:
            names = next(csv.reader([first], delimiter="," if kind == "csv" else "\t"))
    missing = _missing_columns(names, per_category=kind != "csv" and kind != "tsv")
    if missing:
        raise UsageError(f"{path}: wrong header, missing column(s) {', '.join(missing)} "
                         f"(expected {','.join(INPUT_COLUMNS)})")


def parse_jobs(path: Path, block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Parse jobs for every block of one input file (run in worker threads, results used in order),
    each with the number of input bytes it stands for."""
    kind, compression = format_of(path)
    if kind == "booru-chars":
        return booru_chars_jobs(path, block_bytes)
    if kind == "json-array":
        return json_array_jobs(path, compression, block_bytes)
    if kind == "parquet":
        return parquet_jobs(path)
    if kind == "jsonl":
        return jsonl_jobs(path, compression, block_bytes)
    return csv_jobs(path, kind, compression, block_bytes)

