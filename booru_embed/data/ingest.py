"""``build-dataset``: Danbooru exports (CSV, TSV, Parquet, JSON Lines) -> a ``datasets`` DATA_DIR.

booru-chars inputs and whole-JSON-array files have their own readers (``booru_chars``, ``json_array``),
which give the same blocks; ``_format_of`` picks the reader.

The input is streamed in blocks that end on a record boundary, so memory stays bounded whatever
the input size. Each block is parsed by pyarrow (the fast path). When pyarrow reports anything
irregular in a block (a row with the wrong number of fields, invalid UTF-8, blank lines) that block
alone is parsed again by Python's ``csv``/``json`` modules, which know the line of every record, so
every rejected row is reported with its file, line and reason and good data keeps full speed.
Field checks (id, score, rating, NUL bytes, tag count) are vectorised over the whole block; the
rows are then filtered by checks and split while still strings, and only then are the tag
strings split into lists. Worker threads handle the blocks; results are written in input order.

Passing rows go to one Arrow file per split; the split is a hash of the post id
(:func:`is_test_post`). A post id seen again keeps its last occurrence: the ids of each split
(8 bytes a row) are kept in memory and resolved at the end. The finished Arrow files become the
shards of the DatasetDict without another copy (see ``_save_dataset_dict``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import glob
import importlib
import io
import itertools
import json
import os
import shutil
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..modeling.categories_booru_embed import RATING_ALIASES, RATINGS

TAG_COLUMNS = ("meta", "general", "artist", "copyright", "character")
INPUT_COLUMNS = ("id", "rating", "score") + tuple(f"tag_string_{c}" for c in TAG_COLUMNS)
SCHEMA = pa.schema([("id", pa.int64()), ("rating", pa.string()), ("score", pa.int32())]
                   + [(c, pa.list_(pa.string())) for c in TAG_COLUMNS])
SPLITS = ("train", "test")
DEFAULT_MAX_TAGS = 2000  # Danbooru's most heavily tagged posts have several hundred tags
BLOCK_BYTES = 32 << 20
MAX_RECORD_BYTES = 256 << 20  # a record longer than this means a quote was never closed
RAW_CHARS = 300  # raw text kept per rejected row
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
            ".sqlite": "booru-chars", ".sqlite3": "booru-chars", ".db": "booru-chars"}


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


@dataclass
class _Block:
    """Rows of one input block as strings, before the field checks."""

    columns: dict[str, pa.Array]  # the INPUT_COLUMNS as string arrays (nulls = missing)
    lines: np.ndarray  # int64 line (or row) number of every row
    raw: Callable[[int], str]  # row index -> raw text of that row
    may_have_nul: bool = True  # False when the raw input has no NUL byte at all
    rejects: list[tuple] = field(default_factory=list)  # structural: line, reason, detail, raw[, where]
    # where the rows come from when that is not the input file itself ({"file": ...} or {"table": ...});
    # a reject may carry its own as a fifth element
    source: dict[str, str] | None = None

    @classmethod
    def only_rejects(cls, rejects: list[tuple]) -> _Block:
        """A block without rows that only reports ``rejects``."""
        empty = pa.array([], pa.string())
        return cls({name: empty for name in INPUT_COLUMNS}, np.zeros(0, dtype=np.int64), str, rejects=rejects)


_Job = Callable[[], _Block]


# ----------------------------------------------------------------------------- input files

def _expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
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


def _format_of(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSION.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    kind = _FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None or (kind in ("parquet", "booru-chars") and compression):
        raise UsageError(f"{path}: unknown input format (use .csv, .tsv, .parquet, .jsonl, .json, "
                         ".sqlite/.db, optionally .gz/.bz2/.zst for text)")
    if kind == "tsv" and not compression:
        from .booru_chars import is_booru_chars  # (imports this module's block type)
        kind = "booru-chars" if is_booru_chars(path) else kind
    if kind == "json":
        from .json_array import is_json_array
        kind = "json-array" if is_json_array(path, compression) else "jsonl"
    return kind, compression


def _open(path: Path, compression: str | None):
    return pa.input_stream(str(path), compression=compression)


def source_keys(names: Sequence[str] | dict) -> list[str]:
    """The input column read for each of INPUT_COLUMNS: ``tag_string_<category>`` or, when the input
    has none, the per-category column ``<category>`` (a list, as a DATA_DIR and some metadata dumps hold)."""
    return [name[len("tag_string_"):] if name.startswith("tag_string_") and name not in names
            and name[len("tag_string_"):] in names else name for name in INPUT_COLUMNS]


def _missing_columns(names: Sequence[str], per_category: bool) -> list[str]:
    """Required columns not in ``names``; ``per_category``: a ``<category>`` column may stand in for
    ``tag_string_<category>`` (Parquet and JSON, whose columns can hold lists)."""
    return [c for c in (source_keys(names) if per_category else INPUT_COLUMNS) if c not in names]


def _check_input(path: Path) -> None:
    """Stop early on an empty file or a wrong header (nothing has been written yet)."""
    kind, compression = _format_of(path)
    if kind == "booru-chars":
        from .booru_chars import check_booru_chars
        return check_booru_chars(path)
    if kind == "json-array":
        from .json_array import check_json_array
        return check_json_array(path, compression)
    if kind == "parquet":
        import pyarrow.parquet as pq
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as error:
            raise UsageError(f"{path}: not a readable Parquet file ({error})") from None
    else:
        with _open(path, compression) as stream:
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


# ----------------------------------------------------------------------------- text blocks

def _record_end(data: bytes, quoted: bool) -> int:
    """Index of the last newline in ``data`` that ends a record (-1 if none)."""
    end = data.rfind(b"\n")
    if not quoted or end < 0:
        return end
    open_quotes = data.count(b'"', 0, end) % 2  # the block starts on a record boundary
    while end >= 0 and open_quotes:
        previous = data.rfind(b"\n", 0, end)
        open_quotes ^= data.count(b'"', previous + 1, end) % 2
        end = previous
    return end


@dataclass
class _Text:
    """A block of a text input: whole records, ending with a newline."""

    data: bytes | memoryview
    line: int  # line number of its first byte
    newlines: int
    has_nul: bool


def _text_blocks(stream, quoted: bool, block_bytes: int, path: Path) -> Iterator[_Text]:
    """Cut a text stream into blocks of whole records. On a seekable stream a block is a view of
    what was read and the stream seeks back to the end of the last whole record (no copies)."""
    pending = b""
    line = 1
    start = 0  # input offset of the first byte of ``data``
    seekable = stream.seekable()
    while True:
        chunk = stream.read(block_bytes)
        data = pending + chunk if pending else chunk
        if not chunk:
            if data:
                data = data if data.endswith(b"\n") else data + b"\n"
                yield _Text(data, line, data.count(b"\n"), b"\x00" in data)
            return
        end = _record_end(data, quoted)
        if end < 0:
            if len(data) > max(8 * block_bytes, MAX_RECORD_BYTES):
                raise UsageError(f"{path}: unterminated quoted field starting near line {line}")
            pending = data
            continue
        newlines = data.count(b"\n", 0, end + 1)
        has_nul = data.find(b"\x00", 0, end + 1) >= 0
        if seekable:
            start += end + 1
            stream.seek(start)
            pending = b""
            yield _Text(memoryview(data)[: end + 1] if end + 1 < len(data) else data, line, newlines, has_nul)
        else:
            pending = data[end + 1:]
            yield _Text(data[: end + 1], line, newlines, has_nul)
        line += newlines


def _raw_lines(block: bytes | memoryview) -> Callable[[int, int], str]:
    """A function (first line index, number of lines) -> the raw text of those lines of ``block``."""
    newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)

    def raw(index: int, count: int) -> str:
        start = 0 if index == 0 else int(newlines[index - 1]) + 1
        return str(block[start: int(newlines[index + count - 1])], "utf-8", "backslashreplace")

    return raw


def _single_array(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array (no copy when it is a single chunk, as a whole-block parse gives)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _fast_csv(text: _Text, header: list[str], delimiter: str) -> _Block | None:
    """Parse a block with pyarrow; None when anything is irregular (the slow path decides then)."""
    import pyarrow.csv as pacsv

    irregular: list[object] = []
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(text.data)),
            # one chunk, one thread: blocks are already parsed in parallel by the worker threads
            read_options=pacsv.ReadOptions(column_names=header, use_threads=False, block_size=len(text.data) + 1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if delimiter == "," else False,
                                             newlines_in_values=delimiter == ",",
                                             invalid_row_handler=lambda row: irregular.append(row) or "skip"),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 include_columns=list(INPUT_COLUMNS),
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None
    if irregular:
        return None
    rows = table.num_rows
    offsets = np.arange(rows, dtype=np.int64)
    if text.newlines != rows:
        if len(header) != len(INPUT_COLUMNS):
            return None  # newlines may hide in columns we did not read
        inside = np.zeros(rows, dtype=np.int64)
        for name in INPUT_COLUMNS:
            inside += pc.count_substring(table[name], "\n").to_numpy(zero_copy_only=False)
        if rows + int(inside.sum()) != text.newlines:
            return None  # blank lines: let the slow path count them
        offsets += np.concatenate([[0], np.cumsum(inside)[:-1]])
    else:
        inside = np.zeros(rows, dtype=np.int64)
    columns = {name: _single_array(table[name]) for name in INPUT_COLUMNS}
    line_raw = None

    def raw(i: int) -> str:
        nonlocal line_raw
        line_raw = line_raw or _raw_lines(text.data)
        return line_raw(int(offsets[i]), int(inside[i]) + 1)

    return _Block(columns, text.line + offsets, raw, may_have_nul=text.has_nul)


def _slow_csv(text: _Text, header: list[str], delimiter: str) -> _Block:
    """Parse a block record by record with Python's csv module, which knows every record's lines."""
    first_line = text.line
    decoded = str(text.data, "utf-8", "surrogateescape")
    physical = decoded.split("\n")
    reader = csv.reader(io.StringIO(decoded, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
    wanted = [header.index(c) for c in INPUT_COLUMNS]
    good: list[list[str]] = []
    lines: list[int] = []
    raws: list[str] = []
    rejects = []
    previous = 0
    for fields in reader:
        start, previous = previous, reader.line_num
        if not fields:
            continue  # a blank line holds no post
        raw = "\n".join(physical[start:previous])
        line = first_line + start
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            rejects.append((line, "invalid_utf8", "not valid UTF-8", _printable(raw)))
            continue
        if len(fields) != len(header):
            rejects.append((line, "wrong_column_count", f"{len(fields)} fields, expected {len(header)}", raw))
            continue
        good.append([fields[i] for i in wanted])
        lines.append(line)
        raws.append(raw)
    columns = {name: pa.array([row[i] for row in good], type=pa.string()) for i, name in enumerate(INPUT_COLUMNS)}
    return _Block(columns, np.asarray(lines, dtype=np.int64), raws.__getitem__, rejects=rejects)


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parse_csv(text: _Text, header: list[str], delimiter: str) -> _Block:
    return _fast_csv(text, header, delimiter) or _slow_csv(text, header, delimiter)


def _csv_jobs(path: Path, kind: str, compression: str | None, block_bytes: int) -> Iterator[tuple[_Job, int]]:
    delimiter = "," if kind == "csv" else "\t"
    with _open(path, compression) as stream:
        blocks = _text_blocks(stream, delimiter == ",", block_bytes, path)
        head = next(blocks)
        data = bytes(head.data)
        cut = data.find(b"\n")
        names = data[:cut].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r").decode("utf-8", "replace")
        header = next(csv.reader([names], delimiter=delimiter))
        first = [_Text(data[cut + 1:], 2, head.newlines - 1, head.has_nul)] if len(data) > cut + 1 else []
        for text in itertools.chain(first, blocks):
            yield functools.partial(_parse_csv, text, header, delimiter), len(text.data)


def _json_value(value: object) -> str | None:
    """A JSON field as the string a CSV export would hold (tag lists joined); ValueError if it has none."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    raise ValueError(f"holds {json.dumps(value)[:40]}")


def _to_strings(array: pa.Array) -> pa.Array:
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.binary_join(array, " ")
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def _parse_jsonl(text: _Text) -> _Block:
    import pyarrow.json as pajson

    try:
        table = pajson.read_json(pa.BufferReader(pa.py_buffer(text.data)),
                                 parse_options=pajson.ParseOptions(unexpected_field_behavior="infer"))
        if table.num_rows != text.newlines:
            return _slow_jsonl(text)  # blank lines: the slow path skips them
        keys = source_keys(table.column_names)
        for name in keys:
            if name in table.column_names and not (pa.types.is_string(table[name].type) or pa.types.is_integer(table[name].type)
                                                   or pa.types.is_null(table[name].type)
                                                   or table[name].type == pa.list_(pa.string())):
                return _slow_jsonl(text)  # floats, objects, booleans: the slow path says which row
        columns = {c: (_to_strings(table[key].combine_chunks()) if key in table.column_names
                       else pa.nulls(table.num_rows, pa.string())) for c, key in zip(INPUT_COLUMNS, keys)}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _slow_jsonl(text)
    line_raw = _raw_lines(text.data)
    return _Block(columns, text.line + np.arange(table.num_rows), lambda i: line_raw(i, 1), may_have_nul=text.has_nul)


def _jsonl_jobs(path: Path, compression: str | None, block_bytes: int) -> Iterator[tuple[_Job, int]]:
    with _open(path, compression) as stream:
        for text in _text_blocks(stream, False, block_bytes, path):
            yield functools.partial(_parse_jsonl, text), len(text.data)


def _slow_jsonl(text: _Text) -> _Block:
    records, rejects = [], []
    for offset, raw_bytes in enumerate(bytes(text.data).split(b"\n")[:-1]):
        line = text.line + offset
        raw = raw_bytes.decode("utf-8", "surrogateescape")
        if not raw.strip():
            continue
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            rejects.append((line, "invalid_utf8", "not valid UTF-8", _printable(raw)))
            continue
        try:
            records.append((line, raw, json.loads(raw)))
        except json.JSONDecodeError as error:
            rejects.append((line, "invalid_json", str(error), raw))
    return json_block(records, rejects)


def json_block(records: list[tuple[int, str, object]], rejects: list[tuple]) -> _Block:
    """Decoded JSON values (line, raw text, value) -> a block of posts; a value that is no post object,
    or holds a field no export could, is added to ``rejects`` (which the block reports)."""
    good, lines, raws = [], [], []
    for line, raw, record in records:
        if not isinstance(record, dict):
            rejects.append((line, "invalid_json", "not a JSON object", raw))
            continue
        try:
            values = [_json_value(record.get(key)) for key in source_keys(record)]
        except ValueError as error:
            rejects.append((line, "invalid_json", f"a field {error}", raw))
            continue
        good.append(values)
        lines.append(line)
        raws.append(raw)
    columns = {name: pa.array([row[i] for row in good], type=pa.string()) for i, name in enumerate(INPUT_COLUMNS)}
    return _Block(columns, np.asarray(lines, dtype=np.int64), raws.__getitem__, rejects=sorted(rejects, key=lambda r: r[0]))


def _parse_parquet(batch: pa.RecordBatch, first_row: int) -> _Block:
    keys = source_keys(batch.schema.names)
    columns = {c: _to_strings(batch.column(key)) for c, key in zip(INPUT_COLUMNS, keys)}

    def raw(i: int) -> str:
        return json.dumps({c: columns[c][i].as_py() for c in INPUT_COLUMNS}, ensure_ascii=False)

    return _Block(columns, first_row + np.arange(batch.num_rows), raw)


def _parquet_jobs(path: Path) -> Iterator[tuple[_Job, int]]:
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    total = max(1, source.metadata.num_rows)
    size = path.stat().st_size
    row = 1
    for batch in source.iter_batches(batch_size=200_000, columns=source_keys(source.schema_arrow.names)):
        yield functools.partial(_parse_parquet, batch, row), int(size * batch.num_rows / total)
        row += batch.num_rows


def _jobs(path: Path, block_bytes: int) -> Iterator[tuple[_Job, int]]:
    """Parse jobs for every block of one input file (run in worker threads, results used in order),
    each with the number of input bytes it stands for."""
    kind, compression = _format_of(path)
    if kind == "booru-chars":
        from .booru_chars import booru_chars_jobs
        return booru_chars_jobs(path, block_bytes)
    if kind == "json-array":
        from .json_array import json_array_jobs
        return json_array_jobs(path, compression, block_bytes)
    if kind == "parquet":
        return _parquet_jobs(path)
    if kind == "jsonl":
        return _jsonl_jobs(path, compression, block_bytes)
    return _csv_jobs(path, kind, compression, block_bytes)


# ----------------------------------------------------------------------------- field checks

def _offsets(array: pa.Array) -> np.ndarray:
    """The int32 offsets of a string or list array, as numpy (zero-copy)."""
    return np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)


def _tag_lists(strings: pa.Array) -> tuple[pa.ListArray, np.ndarray]:
    """Space-separated tag strings -> lists without empty strings or repeats (first order kept),
    and the number of tags each string had.

    Empty strings are marked null for the split, so they give no token instead of one "" (Danbooru
    posts often have no artist, copyright or character). Danbooru's tag strings are sorted,
    single-spaced and without repeats: then one comparison of neighbouring tokens proves it and the
    split lists are used as they are. Otherwise empty tokens and repeats are removed and the lists
    rebuilt.
    """
    rows = len(strings)
    strings = pc.fill_null(strings, "") if strings.null_count else strings
    present = np.diff(_offsets(strings)) > 0
    if not present.all():
        validity = np.packbits(np.concatenate([np.ones(strings.offset, dtype=bool), present]), bitorder="little")
        strings = pa.StringArray.from_buffers(rows, strings.buffers()[1], strings.buffers()[2],
                                              pa.py_buffer(validity), offset=strings.offset)
    lists = pc.split_pattern(strings, " ")
    flat = pc.list_flatten(lists)
    row_starts = _offsets(lists) - _offsets(lists)[0]  # a null (empty) row has no token
    value_offsets = _offsets(flat)
    nonempty = value_offsets[1:] != value_offsets[:-1]  # double or edge spaces leave "" tokens
    counts = np.diff(row_starts)
    if len(flat) > 1:
        # in order when every neighbour pair that is not increasing straddles two rows (counted on
        # Arrow's bit-packed booleans: converting them to numpy would cost 4x the comparison)
        increasing = pc.less(flat.slice(0, len(flat) - 1), flat.slice(1))
        boundaries = row_starts[1:-1][(row_starts[1:-1] > 0) & (row_starts[1:-1] < len(flat))]
        boundaries = boundaries[np.concatenate([[True], boundaries[1:] != boundaries[:-1]])[: len(boundaries)]] - 1
        not_increasing = len(increasing) - (pc.sum(increasing).as_py() or 0)
        not_increasing_between_rows = len(boundaries) - (pc.sum(increasing.take(pa.array(boundaries))).as_py() or 0)
        in_order = not_increasing == not_increasing_between_rows
    else:
        in_order = True
    if in_order and nonempty.all():
        return pa.ListArray.from_arrays(pa.array(row_starts), flat), counts
    parents = np.repeat(np.arange(rows), counts)
    flat, parents = flat.filter(pa.array(nonempty)), parents[nonempty]
    counts = np.bincount(parents, minlength=rows)
    if not in_order and len(flat) > 1:
        codes = pc.dictionary_encode(flat).indices.to_numpy().astype(np.int64)
        _, first = np.unique(parents * (int(codes.max()) + 1) + codes, return_index=True)
        first.sort()
        flat, parents = flat.take(pa.array(first)), parents[first]
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat), counts


def _tag_counts(columns: dict[str, pa.Array], max_tags: int) -> np.ndarray:
    """Non-empty tags per row over all categories, exact wherever the total could exceed ``max_tags``
    (k tags need at least 2k - 1 characters, so shorter rows are not split here)."""
    bound = np.zeros(len(columns["id"]), dtype=np.int64)
    for name in TAG_COLUMNS:
        bound += (np.diff(_offsets(columns[f"tag_string_{name}"])) + 1) // 2
    suspects = np.flatnonzero(bound > max_tags)
    if len(suspects):
        bound[suspects] = 0
        for name in TAG_COLUMNS:
            bound[suspects] += _tag_lists(columns[f"tag_string_{name}"].take(pa.array(suspects)))[1]
    return bound


def _rating_letters(ratings: pa.Array) -> pa.Array:
    """Danbooru's rating words (``general``, ``sensitive``, ... as metadata dumps write them) -> its letters."""
    index = pc.index_in(ratings, value_set=pa.array(list(RATING_ALIASES)))
    if index.null_count == len(index):
        return ratings
    return pc.coalesce(pa.array(list(RATING_ALIASES.values())).take(index), ratings)


def _check_rows(block: _Block, max_tags: int, test_fraction: float) -> tuple[dict[str, pa.Table], list[tuple[int, str, str, str]]]:
    """The rows of ``block`` that pass every field check as a SCHEMA table per split, and the rejected rows.

    Rows are filtered (by checks and split) while still strings, which is cheaper than filtering
    lists, and only then are the tag strings split.
    """
    columns = block.columns
    rows = len(block.lines)
    reason = np.zeros(rows, dtype=np.int8)  # 0: passes, else 1 + index in codes
    codes: list[str] = []
    detail_of: dict[int, str] = {}

    def flag(mask: np.ndarray, code: str, column: str | None) -> None:
        new = np.flatnonzero(mask & (reason == 0))
        codes.append(code)
        reason[new] = len(codes)
        if column is not None:
            for i in new.tolist():
                detail_of[i] = f"{column}={columns[column][i].as_py()!r}"[:120]

    def as_numpy(array: pa.Array) -> np.ndarray:
        return array.to_numpy(zero_copy_only=False)

    def matches(array: pa.Array, pattern: str) -> np.ndarray:
        found = pc.match_substring_regex(array, pattern)
        return as_numpy(pc.fill_null(found, False) if found.null_count else found)

    missing = np.zeros(rows, dtype=bool)
    nul = np.zeros(rows, dtype=bool)
    for name in INPUT_COLUMNS:
        if columns[name].null_count and name in ("id", "rating", "score"):  # a null tag string has no tags
            missing |= as_numpy(columns[name].is_null())
        if block.may_have_nul:
            nul |= as_numpy(pc.fill_null(pc.match_substring(columns[name], "\x00"), False))
    flag(missing, "missing_field", None)
    flag(nul, "nul_byte", None)
    flag(~matches(columns["id"], r"^[0-9]{1,18}$"), "bad_id", "id")
    score_ok = matches(columns["score"], r"^-?[0-9]{1,10}$")
    score = np.zeros(rows, dtype=np.int64)
    score[score_ok] = as_numpy(pc.cast(columns["score"].filter(pa.array(score_ok)), pa.int64()))
    score_ok &= (score >= -(2**31)) & (score < 2**31)
    flag(~score_ok, "bad_score", "score")
    columns["rating"] = _rating_letters(columns["rating"])
    flag(~as_numpy(pc.is_in(columns["rating"], pa.array(RATINGS))), "bad_rating", "rating")
    for name in TAG_COLUMNS:
        if columns[f"tag_string_{name}"].null_count:
            columns[f"tag_string_{name}"] = pc.fill_null(columns[f"tag_string_{name}"], "")
    total = _tag_counts(columns, max_tags)
    flag(total > max_tags, "too_many_tags", None)
    for i in np.flatnonzero(total > max_tags).tolist():
        detail_of.setdefault(i, f"{int(total[i])} tags, at most {max_tags} allowed")

    good = reason == 0
    ids = np.zeros(rows, dtype=np.int64)
    ids[good] = as_numpy(pc.cast(columns["id"].filter(pa.array(good)), pa.int64()))
    is_test = is_test_post(ids, test_fraction)
    tables = {}
    for split, rows_in_split in (("train", good & ~is_test), ("test", good & is_test)):
        keep = pa.array(rows_in_split)
        tables[split] = pa.table({
            "id": pa.array(ids[rows_in_split]),
            "rating": columns["rating"].filter(keep),
            "score": pa.array(score[rows_in_split].astype(np.int32)),
            **{name: _tag_lists(columns[f"tag_string_{name}"].filter(keep))[0] for name in TAG_COLUMNS},
        }, schema=SCHEMA)
    rejects = []
    for i in np.flatnonzero(~good).tolist():
        code = codes[reason[i] - 1]
        rejects.append((int(block.lines[i]), code, detail_of.get(i, code.replace("_", " ")), block.raw(i)))
    return tables, rejects


# ----------------------------------------------------------------------------- the build

def _run_job(job: _Job, max_tags: int, test_fraction: float) -> tuple[int, dict[str, pa.Table], list[tuple[int, str, str, str]]]:
    """Parse and check one block: (rows read, passing rows by split, all rejects in line order)."""
    block = job()
    tables, rejects = _check_rows(block, max_tags, test_fraction)
    if block.source:
        rejects = [reject + (block.source,) for reject in rejects]
    return len(block.lines) + len(block.rejects), tables, sorted(block.rejects + rejects, key=lambda r: r[0])


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``. An existing ``target`` is deleted first: renaming over a file
    makes ext4 (``auto_da_alloc``) write the whole new file to disk before the rename returns."""
    target.unlink(missing_ok=True)
    source.rename(target)


class _SplitWriter:
    """Appends checked rows to one Arrow stream file per split and remembers their ids."""

    def __init__(self, folder: Path, schema: pa.Schema):
        self.schema = schema
        self.paths = {s: folder / f"{s}.arrow" for s in SPLITS}
        self.sinks = {s: pa.OSFile(str(p), "wb") for s, p in self.paths.items()}
        self.writers = {s: pa.ipc.new_stream(self.sinks[s], schema) for s in SPLITS}
        self.ids: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}

    def write(self, tables: dict[str, pa.Table]) -> None:
        """Append each split's rows of one block."""
        for split, table in tables.items():
            if table.num_rows:
                self.writers[split].write_table(table)
                self.ids[split].append(table["id"].to_numpy())

    def close(self) -> None:
        """Finish the Arrow streams."""
        for split in SPLITS:
            self.writers[split].close()
            self.sinks[split].close()

    def drop_duplicates(self, split: str) -> tuple[int, int]:
        """Keep the last occurrence of every id in the split's file; return (rows kept, rows dropped)."""
        ids = np.concatenate(self.ids[split]) if self.ids[split] else np.zeros(0, dtype=np.int64)
        if (np.diff(ids) > 0).all():
            return len(ids), 0  # increasing ids, as exports sorted by id have: no repeats, no sort needed
        _, first_from_end = np.unique(ids[::-1], return_index=True)
        if len(first_from_end) == len(ids):
            return len(ids), 0
        keep = np.zeros(len(ids), dtype=bool)
        keep[len(ids) - 1 - first_from_end] = True
        path = self.paths[split]
        deduplicated = path.with_suffix(".dedup.arrow")
        with pa.OSFile(str(path), "rb") as source, pa.OSFile(str(deduplicated), "wb") as sink, \
                pa.ipc.new_stream(sink, self.schema) as writer:
            done = 0
            for batch in pa.ipc.open_stream(source):
                writer.write_batch(batch.filter(pa.array(keep[done: done + batch.num_rows])))
                done += batch.num_rows
        _move(deduplicated, path)
        return int(keep.sum()), int(len(ids) - keep.sum())


def _save_dataset_dict(output: Path, files: dict[str, Path], features) -> None:
    """Turn one finished Arrow stream file per split into a DatasetDict folder without copying rows.

    ``save_to_disk`` writes an empty DatasetDict with the right features (the metadata files
    ``load_from_disk`` reads), then each split's single shard is replaced by the finished file,
    which has the same Arrow schema (``load_from_disk`` takes the features from
    ``dataset_info.json``; the build checks that they read back). A fresh fingerprint
    keeps ``datasets`` from mixing caches of different builds.
    """
    import datasets

    empty = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict({s: empty for s in files}).save_to_disk(str(output), num_shards={s: 1 for s in files})
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    for split, path in files.items():
        _move(path, output / split / "data-00000-of-00001.arrow")
        state_path = output / split / "state.json"
        state = json.loads(state_path.read_text(encoding="utf-8"))
        state["_fingerprint"] = uuid.uuid4().hex[:16]
        state_path.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def _check_output(output: Path) -> None:
    """An output folder may be new, empty, or an earlier DATA_DIR (replaced once the build succeeds)."""
    if output.exists():
        if not output.is_dir():
            raise UsageError(f"output {output} exists and is not a folder")
        ours = (output / "build_info.json").exists() or (output / "dataset_dict.json").exists()
        if any(output.iterdir()) and not ours:
            raise UsageError(f"output folder {output} is not empty and holds no dataset; choose another")


def _stream_inputs(files: list[Path], folder: Path, writer: _SplitWriter, max_tags: int, test_fraction: float,
                   block_bytes: int, progress: bool | None, workers: int) -> tuple[int, Counter, dict]:
    """Parse, check and write every row of ``files``; return (rows read, rejects by reason, per file)."""
    from tqdm.auto import tqdm

    reasons: Counter[str] = Counter()
    per_file = {str(p): {"rows": 0, "rejected": 0} for p in files}
    rows_read = 0
    with open(folder / "rejects.jsonl", "w", encoding="utf-8") as rejects_file, \
            tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="build-dataset",
                 disable=None if progress is None else not progress) as bar, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="build-dataset") as pool:
        in_flight: deque[tuple[Path, Future, int]] = deque()

        def finish_oldest() -> None:
            nonlocal rows_read
            path, future, size = in_flight.popleft()
            rows, tables, rejects = future.result()
            writer.write(tables)
            for line, reason, detail, raw, *where in rejects:
                reasons[reason] += 1
                record = {"file": str(path), **(where[0] if where else {}), "line": line, "reason": reason,
                          "detail": detail, "raw": raw[:RAW_CHARS]}
                rejects_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            per_file[str(path)]["rows"] += rows
            per_file[str(path)]["rejected"] += len(rejects)
            rows_read += rows
            bar.update(size)

        # blocks are parsed and checked in worker threads (pyarrow and numpy release the GIL) and
        # written in input order, so "last occurrence" and line numbers follow the input
        for path in files:
            for job, size in _jobs(path, block_bytes):
                in_flight.append((path, pool.submit(_run_job, job, max_tags, test_fraction), size))
                while len(in_flight) > workers:
                    finish_oldest()
        while in_flight:
            finish_oldest()
    writer.close()
    return rows_read, reasons, per_file


def build_dataset(inputs: Sequence[str | Path], output: Path, test_fraction: float = 0.05,
                  max_tags: int = DEFAULT_MAX_TAGS, block_bytes: int = BLOCK_BYTES,
                  progress: bool | None = None, workers: int | None = None) -> dict:
    """Build DATA_DIR ``output`` from export files (paths or globs); return the build info.

    Writes the DatasetDict (``train``, ``test``), ``rejects.jsonl`` (one object per rejected row:
    file, line, reason, detail, raw) and ``build_info.json`` (rows read, kept, rejected by reason,
    duplicates, rows per split). Raises UsageError, before writing anything, for a missing file, an
    unknown format, an empty file, a wrong header or an output folder that holds something else;
    and, leaving ``output`` as it was, for an input without any rows. The build happens in a
    sibling folder that replaces ``output`` only when it is complete.
    ``progress``: show a progress bar (None: only on a terminal). ``workers``: threads that parse
    and check blocks (default: one per CPU, at most 4).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if max_tags < 1:
        raise UsageError(f"--max-tags must be positive, got {max_tags}")
    from .booru_chars import one_per_pair
    files = one_per_pair(_expand_inputs(inputs))
    for path in files:
        _check_input(path)
    output = Path(output)
    _check_output(output)
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
        writer = _SplitWriter(scratch, SCHEMA)
        rows_read, reasons, per_file = _stream_inputs(files, staging, writer, max_tags, test_fraction, block_bytes,
                                                      progress, workers or max(1, min(4, os.cpu_count() or 1)))
        datasets = datasets_module.result()
        features = datasets.Features.from_arrow_schema(SCHEMA)
        if rows_read == 0:
            raise UsageError(f"no posts in the input ({len(files)} file(s) with a header only)")
        splits, duplicates = {}, 0
        for split in SPLITS:
            splits[split], dropped = writer.drop_duplicates(split)
            duplicates += dropped
        _save_dataset_dict(staging, writer.paths, features)
        shutil.rmtree(scratch)
        reloaded = datasets.load_from_disk(str(staging))  # the layout is datasets' own: check it reads back
        if {s: len(reloaded[s]) for s in SPLITS} != splits or reloaded["train"].features != features:
            raise RuntimeError(f"{staging} does not read back as written; datasets' folder layout may have changed")
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


def run_build_dataset(args: argparse.Namespace) -> int:
    """Run ``booru-embed build-dataset`` and print the summary."""
    info = build_dataset(args.inputs, args.output, test_fraction=args.test_fraction, max_tags=args.max_tags)
    print(f"read {info['rows_read']} rows from {len(info['inputs'])} file(s) in {info['seconds']:.1f} s: "
          f"kept {info['kept']} (train {info['splits']['train']}, test {info['splits']['test']}), "
          f"duplicates {info['duplicates']}, rejected {info['rejected']}")
    for reason, count in info["rejected_by_reason"].items():
        print(f"  rejected {count} x {reason} (see {Path(args.output) / 'rejects.jsonl'})")
    print(f"wrote {args.output}")
    return 0
