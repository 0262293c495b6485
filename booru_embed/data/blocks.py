"""The row block every ``build-dataset`` reader gives: the input columns it holds (and ``SCHEMA``, the
rows they become), and the cutting of text inputs into blocks that end on a record boundary, so
memory stays bounded whatever the input size and each block can be parsed on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import UsageError

TAG_COLUMNS = ("meta", "general", "artist", "copyright", "character")
INPUT_COLUMNS = ("id", "rating", "score") + tuple(f"tag_string_{c}" for c in TAG_COLUMNS)
SCHEMA = pa.schema([("id", pa.int64()), ("rating", pa.string()), ("score", pa.int32())]
                   + [(c, pa.list_(pa.string())) for c in TAG_COLUMNS])
# bytes read per text block: at 16 MB glibc serves the buffers from its heap and reuses their pages;
# 32 MB buffers are mmap'd afresh each time (twice the page faults, 29.3 s instead of 24.3 s at 5.8M posts)
BLOCK_BYTES = 16 << 20
MAX_RECORD_BYTES = 256 << 20  # a record longer than this means a quote was never closed
RAW_CHARS = 300  # raw text kept per rejected row


@dataclass
class Block:
    """Rows of one input block as strings, before the field checks."""

    columns: dict[str, pa.Array]  # the INPUT_COLUMNS as string arrays (nulls = missing)
    lines: np.ndarray  # int64 line (or row) number of every row
    raw: Callable[[int], str]  # row index -> raw text of that row
    may_have_nul: bool = True  # False when the raw input has no NUL byte at all
    rejects: list[tuple] = field(default_factory=list)  # structural: line, reason, detail, raw[, where]
    # where the rows come from when that is not the input file itself ({"file": ...} or {"table": ...});
    # a reject may carry its own as a fifth element
    source: dict[str, str] | None = None
    # input columns the source does not have at all (booru-chars without rating or score): their nulls
    # are an unknown rating / no score, not a missing field
    absent: frozenset[str] = frozenset()

    @classmethod
    def only_rejects(cls, rejects: list[tuple]) -> Block:
        """A block without rows that only reports ``rejects``."""
        empty = pa.array([], pa.string())
        return cls({name: empty for name in INPUT_COLUMNS}, np.zeros(0, dtype=np.int64), str, rejects=rejects)


Job = Callable[[], Block]


def open_input(path: Path, compression: str | None) -> pa.NativeFile:
    """A byte stream of ``path``, decompressed with ``compression`` (a pyarrow codec name or None)."""
    return pa.input_stream(str(path), compression=compression)


def source_keys(names: Sequence[str] | dict) -> list[str]:
    """The input column read for each of INPUT_COLUMNS: ``tag_string_<category>`` or, when the input
    has none, the per-category column ``<category>`` (a list, as a DATA_DIR and some metadata dumps hold)."""
    return [name[len("tag_string_"):] if name.startswith("tag_string_") and name not in names
            and name[len("tag_string_"):] in names else name for name in INPUT_COLUMNS]


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
class Text:
    """A block of a text input: whole records, ending with a newline."""

    data: bytes | memoryview
    line: int  # line number of its first byte
    newlines: int
    has_nul: bool


def text_blocks(stream, quoted: bool, block_bytes: int, path: Path) -> Iterator[Text]:
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
                yield Text(data, line, data.count(b"\n"), b"\x00" in data)
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
            yield Text(memoryview(data)[: end + 1] if end + 1 < len(data) else data, line, newlines, has_nul)
        else:
            pending = data[end + 1:]
            yield Text(data[: end + 1], line, newlines, has_nul)
        line += newlines


def printable(text: str) -> str:
    """``text`` decoded with ``surrogateescape`` as readable text: undecodable bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
