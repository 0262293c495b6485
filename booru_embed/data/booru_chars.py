"""booru-chars distributions (Safebooru, Danbooru, ...) -> the row blocks ``build-dataset`` checks and writes.

booru-chars ships each booru as two long tables: *files*, one row per post (``booru, fid`` and the
post's metadata, rating and score among it), and *tags*, one row per tag of a post (``booru, fid,
tag, tag_id, tag_cat``, ``tag_cat`` in Danbooru's numbering). It comes as a TSV pair
(``X_tags.tsv`` with ``X_files.tsv`` or ``X.tsv``) or as a sqlite database with a ``files`` and a
``tags`` table. Both are read the same way: a TSV pair is first loaded into a temporary sqlite
database (row id = line number), then two cursors ordered by post id (``ORDER BY fid``; sqlite
sorts on disk, so memory stays bounded and the input need not be sorted) are merged, one batch at a
time, into posts: one row per files row, its tags grouped by category and sorted.

Row checks and their reasons in ``rejects.jsonl`` (``line`` is the TSV line or the sqlite rowid):
tag rows with a missing or non-integer fid (``bad_id``), an empty tag or one with whitespace
(``bad_tag``), a missing category (``missing_field``) or one outside 0, 1, 3, 4, 5
(``unknown_category``), no files row for their fid (``orphan_tag``), or another booru than the
input's first files row (``other_booru``: post ids are per booru, so one DATA_DIR holds one booru).
Files rows are checked like any export row (id, rating, score, tag count). A files row without tag
rows is a post without tags and is kept, as an export row with empty tag strings is. booru-chars' own
files table (``booru, fid, shard, file_name, torr_md5, ...``) has no rating and no score column: its
posts get an unknown rating (null; ``build-dataset --default-rating`` sets one) and no score (null).
"""

from __future__ import annotations

import bisect
import functools
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..modeling.categories_booru_embed import DANBOORU_CATEGORY_NAMES, RATING_ALIASES
from .blocks import INPUT_COLUMNS, RAW_CHARS, TAG_COLUMNS, Block, Job, printable, text_blocks

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
# accepted column names (case-insensitive), first match wins
TAG_FIELDS = {"fid": ("fid",), "tag": ("tag",), "tag_cat": ("tag_cat",), "booru": ("booru",)}
FILE_FIELDS = {"fid": ("fid",), "rating": ("rating", "g_ratn", "ratn"), "score": ("score", "g_score", "scor"),
               "booru": ("booru",)}
# fields a table may lack: booru-chars' own files tables (``booru, fid, shard, file_name, ...``) have no
# rating and no score; their posts get an unknown rating and no score
OPTIONAL_FIELDS = ("booru", "rating", "score")
# booru-chars writes ratings as words (Safe / Questionable / Explicit / None). Safebooru's "safe"
# (its only rating) is read as Danbooru's general; "none" (no rating known) is rejected as bad_rating.
RATING_WORDS = {**RATING_ALIASES, "safe": "g"}
_CATEGORY_INDEX = {str(number): TAG_COLUMNS.index(name) for number, name in DANBOORU_CATEGORY_NAMES.items()}
_BATCH_ROWS = 100_000
# a valid post id: a non-negative integer of at most 18 digits, stored as integer or text
_KEY = ("CASE WHEN (typeof({0}) = 'integer' AND {0} >= 0 AND {0} < 1000000000000000000) OR "
        "(typeof({0}) = 'text' AND length({0}) BETWEEN 1 AND 18 AND {0} NOT GLOB '*[^0-9]*') "
        "THEN CAST({0} AS INTEGER) ELSE -1 END")


# ----------------------------------------------------------------------------- which inputs

def _tsv_header(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        first = handle.readline(1 << 20)
    return first.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n").decode("utf-8", "replace").lower().split("\t")


def _is_tags_header(names: Sequence[str]) -> bool:
    return {"fid", "tag", "tag_cat"} <= set(names)


def is_booru_chars(path: Path) -> bool:
    """True for a sqlite file (by suffix) or a TSV whose header has ``fid`` but no ``id`` (a booru-chars table)."""
    if path.suffix.lower() in SQLITE_SUFFIXES:
        return True
    if path.suffix.lower() != ".tsv":
        return False
    names = _tsv_header(path)
    return "fid" in names and "id" not in names


def _pair(path: Path) -> tuple[Path, Path]:
    """(tags TSV, files TSV) of the pair ``path`` belongs to; UsageError when the partner is missing."""
    stem = path.name[: -len(path.suffix)]
    if _is_tags_header(_tsv_header(path)):
        base = stem[: -len("_tags")] if stem.lower().endswith("_tags") else stem
        candidates = [path.with_name(f"{base}_files{path.suffix}"), path.with_name(f"{base}{path.suffix}")]
        for candidate in candidates:
            if candidate != path and candidate.is_file():
                return path, candidate
        raise UsageError(f"{path}: booru-chars tags TSV without its files TSV "
                         f"(looked for {' or '.join(c.name for c in candidates if c != path)})")
    base = stem[: -len("_files")] if stem.lower().endswith("_files") else stem
    tags = path.with_name(f"{base}_tags{path.suffix}")
    if not tags.is_file():
        raise UsageError(f"{path}: booru-chars files TSV without its tags TSV (looked for {tags.name})")
    return tags, path


def one_per_pair(paths: Sequence[Path]) -> list[Path]:
    """The inputs with each booru-chars TSV pair once, as its tags TSV (given one file or both)."""
    result: list[Path] = []
    for path in paths:
        if path.suffix.lower() == ".tsv" and is_booru_chars(path):
            path = _pair(path)[0]
        if path not in result:
            result.append(path)
    return result


# ----------------------------------------------------------------------------- the tables

@dataclass
class _Table:
    """One of the two tables: where it is and which column holds each field."""

    name: str  # table name in the database
    columns: dict[str, str | None]  # field -> column name (None: absent, for the optional booru)
    source: dict[str, str]  # what rejects.jsonl says the rows come from: {"file": ...} or {"table": ...}

    @property
    def absent(self) -> frozenset[str]:
        """The optional fields this table lacks."""
        return frozenset(field for field, column in self.columns.items() if column is None)

    def select(self, fields: Sequence[str]) -> str:
        """SQL for ``rowid, key, fields...`` in post id order."""
        values = ", ".join(f'"{self.columns[f]}"' if self.columns[f] else "NULL" for f in fields)
        key = _KEY.format(f'"{self.columns["fid"]}"')
        return f'SELECT rowid, {key} AS k, {values} FROM "{self.name}" ORDER BY k, rowid'


def _find_columns(available: Sequence[str], fields: dict[str, tuple[str, ...]], where: str) -> dict[str, str | None]:
    lower = {name.lower(): name for name in available}
    found: dict[str, str | None] = {}
    for field, names in fields.items():
        found[field] = next((lower[n] for n in names if n in lower), None)
        if found[field] is None and field not in OPTIONAL_FIELDS:
            raise UsageError(f"{where}: no {field} column (accepted: {', '.join(names)}; found: {', '.join(available)})")
    return found


def _open_database(path: Path) -> tuple[sqlite3.Connection, _Table, _Table]:
    """Open a booru-chars sqlite file read-only and find its tables; UsageError for anything else."""
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = {name.lower(): name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    except sqlite3.DatabaseError as error:
        raise UsageError(f"{path}: not a readable sqlite database ({error})") from None
    found = []
    for table, fields in (("files", FILE_FIELDS), ("tags", TAG_FIELDS)):
        if table not in tables:
            connection.close()
            raise UsageError(f"{path}: no {table} table (a booru-chars database has files and tags; "
                             f"found: {', '.join(tables.values()) or 'none'})")
        names = [row[1] for row in connection.execute(f'PRAGMA table_info("{tables[table]}")')]
        try:
            columns = _find_columns(names, fields, f"{path} table {tables[table]}")
        except UsageError:
            connection.close()
            raise
        found.append(_Table(tables[table], columns, {"table": table}))
    return connection, found[0], found[1]


def check_booru_chars(path: Path) -> None:
    """Stop early (UsageError) on a malformed sqlite file or TSV pair; nothing has been written yet."""
    if path.suffix.lower() in SQLITE_SUFFIXES:
        connection, _, _ = _open_database(path)
        connection.close()
        return
    tags, files = _pair(path)
    for tsv, fields in ((tags, TAG_FIELDS), (files, FILE_FIELDS)):
        if tsv.stat().st_size == 0:
            raise UsageError(f"{tsv}: empty file")
        _find_columns(_tsv_header(tsv), fields, str(tsv))


# ----------------------------------------------------------------------------- TSV pair -> sqlite

def _reject(line: int, reason: str, detail: str, raw: str, source: dict[str, str]) -> tuple:
    return (line, reason, detail, raw, source)


def _load_tsv(tsv: Path, connection: sqlite3.Connection, table: str, fields: dict[str, tuple[str, ...]],
              block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Copy the fields of one TSV into ``table`` (rowid = line); yield a job per block with its malformed lines."""
    header = _tsv_header(tsv)
    columns = _find_columns(header, fields, str(tsv))
    wanted = [header.index(columns[f]) if columns[f] else None for f in fields]
    names = ", ".join(fields)
    connection.execute(f"CREATE TABLE {table} (rowid INTEGER PRIMARY KEY, {names})")
    insert = f"INSERT INTO {table} VALUES ({', '.join('?' * (len(fields) + 1))})"
    source = {"file": str(tsv)}
    with pa.input_stream(str(tsv)) as stream:
        for text in text_blocks(stream, False, block_bytes, tsv):
            rows, rejects = [], []
            for offset, raw_bytes in enumerate(bytes(text.data).split(b"\n")[:-1]):
                line = text.line + offset
                raw = raw_bytes.rstrip(b"\r").decode("utf-8", "surrogateescape")
                if line == 1 or not raw.strip():
                    continue  # the header; a blank line holds no row
                try:
                    raw.encode("utf-8")
                except UnicodeEncodeError:
                    rejects.append(_reject(line, "invalid_utf8", "not valid UTF-8", printable(raw), source))
                    continue
                values = raw.split("\t")
                if len(values) != len(header):
                    rejects.append(_reject(line, "wrong_column_count", f"{len(values)} fields, expected {len(header)}",
                                           raw, source))
                    continue
                rows.append((line, *(values[i] if i is not None else None for i in wanted)))
            connection.executemany(insert, rows)
            yield functools.partial(Block.only_rejects, rejects), len(text.data)


# ----------------------------------------------------------------------------- grouping into posts

def _raw(fields: Sequence[str], row: tuple) -> str:
    """A row's fields as JSON (what rejects.jsonl shows of a booru-chars row)."""
    return json.dumps(dict(zip(fields, row[2:])), ensure_ascii=False, default=str)[:RAW_CHARS]


_TAG_READ = ("fid", "tag", "tag_cat", "booru")
_FILE_READ = ("fid", "rating", "score", "booru")
_NO_KEY = np.iinfo(np.int64).max  # above every key


def _check_tags(rows: list[tuple], booru: object, source: dict[str, str]) -> tuple[list[tuple], list[tuple]]:
    """Good tag rows as (key, category index, tag, row) and the rejected rows."""
    good, rejects = [], []
    for row in rows:
        line, key, fid, tag, category, row_booru = row
        if isinstance(tag, int) and not isinstance(tag, bool):
            tag = str(tag)
        index = _CATEGORY_INDEX.get(str(category)) if isinstance(category, (int, str)) else None
        if key < 0:
            reason, detail = "bad_id", f"fid={fid!r}"
        elif row_booru != booru:
            reason, detail = "other_booru", f"booru={row_booru!r}, this input's posts are from {booru!r}"
        elif not isinstance(tag, str) or not tag or len(tag.split()) != 1 or tag.strip() != tag:
            reason, detail = "bad_tag", f"tag={tag!r}"
        elif category is None or category == "":
            reason, detail = "missing_field", "tag_cat is empty"
        elif index is None:
            reason, detail = "unknown_category", f"tag_cat={category!r} (Danbooru's are 0, 1, 3, 4, 5)"
        else:
            good.append((key, index, tag, row))
            continue
        rejects.append(_reject(line, reason, detail[:120], _raw(_TAG_READ, row), source))
    return good, rejects


def _rating(value: object) -> str | None:
    """A rating as the letter Danbooru uses when it is one of booru-chars' words, else as it is."""
    if value is None:
        return None
    text = str(value)
    return RATING_WORDS.get(text.lower(), text)


def _tag_strings(tags: list[tuple], file_keys: np.ndarray) -> dict[str, pa.Array]:
    """Space-joined, sorted tags of each category for each files row (null: none)."""
    strings = {name: pa.nulls(len(file_keys), pa.string()) for name in TAG_COLUMNS}
    if not tags:
        return strings
    table = pa.table({"k": pa.array([t[0] for t in tags], pa.int64()), "c": pa.array([t[1] for t in tags], pa.int8()),
                      "t": pa.array([t[2] for t in tags], pa.string())})
    table = table.sort_by([("c", "ascending"), ("k", "ascending"), ("t", "ascending")])
    categories = table["c"].to_numpy()
    for index, name in enumerate(TAG_COLUMNS):
        start, stop = np.searchsorted(categories, [index, index + 1])
        if start == stop:
            continue
        keys = table["k"].slice(start, stop - start).to_numpy()
        unique, first = np.unique(keys, return_index=True)
        offsets = pa.array(np.append(first, len(keys)).astype(np.int32))
        joined = pc.binary_join(pa.ListArray.from_arrays(offsets, table["t"].slice(start, stop - start).combine_chunks()), " ")
        position = np.searchsorted(unique, file_keys).clip(0, len(unique) - 1)
        found = pa.array(unique[position] == file_keys)
        strings[name] = pc.if_else(found, joined.take(pa.array(position)), pa.scalar(None, pa.string()))
    return strings


def _post_block(files: list[tuple], tags: list[tuple], booru: object, tags_source: dict[str, str],
                files_source: dict[str, str], absent: frozenset[str] = frozenset()) -> Block:
    """Files rows and the good tag rows of the same post ids -> a block of posts; tag rows whose
    fid has no files row and files rows of another booru are its rejects. ``absent``: the files
    table's missing optional fields (its posts have no rating or no score)."""
    rejects = []
    posts = []
    for row in files:
        if row[5] != booru:
            rejects.append(_reject(row[0], "other_booru", f"booru={row[5]!r}, this input's posts are from {booru!r}"[:120],
                                   _raw(_FILE_READ, row), files_source))
        else:
            posts.append(row)
    file_keys = np.array([row[1] for row in posts], dtype=np.int64)
    if tags:
        orphan = ~np.isin(np.array([t[0] for t in tags], dtype=np.int64), file_keys[file_keys >= 0])
        for i in np.flatnonzero(orphan).tolist():
            line, key = tags[i][3][0], tags[i][0]
            rejects.append(_reject(line, "orphan_tag", f"no files row with fid {key}", _raw(_TAG_READ, tags[i][3]),
                                   tags_source))
        tags = [t for t, lost in zip(tags, orphan.tolist()) if not lost]
    strings = _tag_strings(tags, file_keys)
    columns = {
        "id": pa.array([str(row[1]) if row[1] >= 0 else (None if row[2] is None else str(row[2])) for row in posts],
                       pa.string()),
        "rating": pa.array([_rating(row[3]) for row in posts], pa.string()),
        "score": pa.array([None if row[4] is None else str(row[4]) for row in posts], pa.string()),
        **{f"tag_string_{name}": strings[name] for name in TAG_COLUMNS},
    }
    return Block({name: columns[name] for name in INPUT_COLUMNS}, np.array([row[0] for row in posts], dtype=np.int64),
                  lambda i: _raw(_FILE_READ, posts[i]), rejects=rejects, source=files_source,
                  absent=absent & {"rating", "score"})


class _Cursor:
    """One table's rows in post id order, fetched in batches, with the last key seen."""

    def __init__(self, connection: sqlite3.Connection, table: _Table, fields: Sequence[str]):
        self.cursor = connection.execute(table.select(fields))
        self.done = False
        self.last_key = -2  # below every key (invalid ids have key -1)

    def fetch(self) -> list[tuple]:
        """The next batch of rows (empty at the end)."""
        rows = self.cursor.fetchmany(_BATCH_ROWS)
        if rows:
            self.last_key = rows[-1][1]
        else:
            self.done = True
        return rows


def _posts(connection: sqlite3.Connection, files_table: _Table, tags_table: _Table,
           total_bytes: int) -> Iterator[tuple[Job, int]]:
    """Merge the two cursors, both in post id order, into blocks of posts.

    A post id is complete once both cursors have gone past it, so every round emits the rows with a
    key below the smaller of the two last keys seen (rows of that key may continue in the next
    batch) and then fetches a batch from the cursor(s) at that key: memory holds about one batch
    of each table.
    """
    booru_column = f'"{files_table.columns["booru"]}"' if files_table.columns["booru"] else "NULL"
    first = connection.execute(f'SELECT {booru_column} FROM "{files_table.name}" ORDER BY rowid LIMIT 1').fetchone()
    booru = first[0] if first else None
    file_count = connection.execute(f'SELECT count(*) FROM "{files_table.name}"').fetchone()[0]
    files, tags = _Cursor(connection, files_table, _FILE_READ), _Cursor(connection, tags_table, _TAG_READ)
    pending_files: list[tuple] = []
    pending_tags: list[tuple] = []
    while True:
        limits = [cursor.last_key for cursor in (files, tags) if not cursor.done]
        bound = min(limits) if limits else _NO_KEY
        cut_files = bisect.bisect_left(pending_files, bound, key=lambda row: row[1]) if limits else len(pending_files)
        cut_tags = bisect.bisect_left(pending_tags, bound, key=lambda tag: tag[0]) if limits else len(pending_tags)
        if cut_files or cut_tags:
            size = int(total_bytes * cut_files / max(1, file_count))
            yield functools.partial(_post_block, pending_files[:cut_files], pending_tags[:cut_tags], booru,
                                    tags_table.source, files_table.source, files_table.absent), size
            pending_files, pending_tags = pending_files[cut_files:], pending_tags[cut_tags:]
        if not limits:
            return
        if not files.done and files.last_key == bound:
            pending_files += files.fetch()
        if not tags.done and tags.last_key == bound:
            good, rejects = _check_tags(tags.fetch(), booru, tags_table.source)
            pending_tags += good
            if rejects:
                yield functools.partial(Block.only_rejects, rejects), 0


def booru_chars_jobs(path: Path, block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Parse jobs for one booru-chars input (sqlite file, or the tags TSV of a pair)."""
    if path.suffix.lower() in SQLITE_SUFFIXES:
        connection, files_table, tags_table = _open_database(path)
        try:
            yield from _posts(connection, files_table, tags_table, path.stat().st_size)
        finally:
            connection.close()
        return
    tags_tsv, files_tsv = _pair(path)
    folder = Path(tempfile.mkdtemp(prefix="booru-chars-"))
    connection = sqlite3.connect(folder / "pair.sqlite", isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("BEGIN")
        yield from _load_tsv(tags_tsv, connection, "tags", TAG_FIELDS, block_bytes)
        yield from _load_tsv(files_tsv, connection, "files", FILE_FIELDS, block_bytes)
        connection.execute("COMMIT")
        fields = [name for name in TAG_FIELDS]
        tags_table = _Table("tags", dict(zip(fields, fields)), {"file": str(tags_tsv)})
        found = _find_columns(_tsv_header(files_tsv), FILE_FIELDS, str(files_tsv))
        files_table = _Table("files", {name: name if found[name] else None for name in FILE_FIELDS}, {"file": str(files_tsv)})
        yield from _posts(connection, files_table, tags_table, files_tsv.stat().st_size)
    finally:
        connection.close()
        shutil.rmtree(folder, ignore_errors=True)
