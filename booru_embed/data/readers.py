"""The ``build-dataset`` readers of Danbooru exports: CSV, TSV, JSON Lines and Parquet -> row blocks.

Each text block is parsed by pyarrow (the fast path). When pyarrow reports anything irregular in a
block (a row with the wrong number of fields, invalid UTF-8, blank lines) that block alone is
parsed again by Python's ``csv``/``json`` modules, which know the line of every record, so every
rejected row is reported with its line and reason and good data keeps full speed.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .blocks import INPUT_COLUMNS, Block, Job, Text, open_input, printable, source_keys, text_blocks


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


def _fast_csv(text: Text, header: list[str], delimiter: str) -> Block | None:
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

    return Block(columns, text.line + offsets, raw, may_have_nul=text.has_nul)


def _slow_csv(text: Text, header: list[str], delimiter: str) -> Block:
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
            rejects.append((line, "invalid_utf8", "not valid UTF-8", printable(raw)))
            continue
        if len(fields) != len(header):
            rejects.append((line, "wrong_column_count", f"{len(fields)} fields, expected {len(header)}", raw))
            continue
        good.append([fields[i] for i in wanted])
        lines.append(line)
        raws.append(raw)
    columns = {name: pa.array([row[i] for row in good], type=pa.string()) for i, name in enumerate(INPUT_COLUMNS)}
    return Block(columns, np.asarray(lines, dtype=np.int64), raws.__getitem__, rejects=rejects)


def _parse_csv(text: Text, header: list[str], delimiter: str) -> Block:
    """One CSV/TSV block: the fast path, or the slow one when the fast path finds anything irregular."""
    return _fast_csv(text, header, delimiter) or _slow_csv(text, header, delimiter)


def csv_jobs(path: Path, kind: str, compression: str | None, block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Parse jobs for one CSV (``kind`` "csv") or TSV file, each with the number of input bytes it stands for."""
    delimiter = "," if kind == "csv" else "\t"
    with open_input(path, compression) as stream:
        blocks = text_blocks(stream, delimiter == ",", block_bytes, path)
        head = next(blocks)
        data = bytes(head.data)
        cut = data.find(b"\n")
        names = data[:cut].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r").decode("utf-8", "replace")
        header = next(csv.reader([names], delimiter=delimiter))
        first = [Text(data[cut + 1:], 2, head.newlines - 1, head.has_nul)] if len(data) > cut + 1 else []
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
    """A column as strings: tag lists joined with spaces, numbers cast."""
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.binary_join(array, " ")
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def _parse_jsonl(text: Text) -> Block:
    """One JSON Lines block with pyarrow, or the slow path for blank lines, odd types or bad JSON."""
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
    return Block(columns, text.line + np.arange(table.num_rows), lambda i: line_raw(i, 1), may_have_nul=text.has_nul)


def jsonl_jobs(path: Path, compression: str | None, block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Parse jobs for one JSON Lines file, each with the number of input bytes it stands for."""
    with open_input(path, compression) as stream:
        for text in text_blocks(stream, False, block_bytes, path):
            yield functools.partial(_parse_jsonl, text), len(text.data)


def _slow_jsonl(text: Text) -> Block:
    """Parse a JSON Lines block line by line with Python's json module, rejecting what does not decode."""
    records, rejects = [], []
    for offset, raw_bytes in enumerate(bytes(text.data).split(b"\n")[:-1]):
        line = text.line + offset
        raw = raw_bytes.decode("utf-8", "surrogateescape")
        if not raw.strip():
            continue
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            rejects.append((line, "invalid_utf8", "not valid UTF-8", printable(raw)))
            continue
        try:
            records.append((line, raw, json.loads(raw)))
        except json.JSONDecodeError as error:
            rejects.append((line, "invalid_json", str(error), raw))
    return json_block(records, rejects)


def json_block(records: list[tuple[int, str, object]], rejects: list[tuple]) -> Block:
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
    return Block(columns, np.asarray(lines, dtype=np.int64), raws.__getitem__, rejects=sorted(rejects, key=lambda r: r[0]))


def _parse_parquet(batch: pa.RecordBatch, first_row: int) -> Block:
    """One Parquet record batch (rows numbered from ``first_row``) as a block."""
    keys = source_keys(batch.schema.names)
    columns = {c: _to_strings(batch.column(key)) for c, key in zip(INPUT_COLUMNS, keys)}

    def raw(i: int) -> str:
        return json.dumps({c: columns[c][i].as_py() for c in INPUT_COLUMNS}, ensure_ascii=False)

    return Block(columns, first_row + np.arange(batch.num_rows), raw)


def parquet_jobs(path: Path) -> Iterator[tuple[Job, int]]:
    """Parse jobs for one Parquet file, one per record batch, each with the input bytes it stands for."""
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    total = max(1, source.metadata.num_rows)
    size = path.stat().st_size
    row = 1
    for batch in source.iter_batches(batch_size=200_000, columns=source_keys(source.schema_arrow.names)):
        yield functools.partial(_parse_parquet, batch, row), int(size * batch.num_rows / total)
        row += batch.num_rows

