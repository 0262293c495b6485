"""Danbooru's real tag associations, as the ``danbooru-pairs`` corpus setting reads them.

The source is a table of pair counts (``cooccurrence.parquet``: ``tag_a``, ``tag_b``, ``count``, the
posts carrying both tags) with the tag tables of Danbooru (``tags.csv`` for each tag's category and
post count, ``aliases.tsv``, ``implications.tsv``). ``count / post_count(a)`` estimates how often ``b``
comes with ``a``. Reading the source resolves aliases on both sides (an old name's pair counts join
the canonical tag's, the larger count kept), drops pairs whose tag ``tags.csv`` does not know, and
keeps the tags a corpus needs: every tag of the pairs, the tags of every other category with at least
``MIN_POSTS`` posts (general tags are a post's background; the pair table has no artist or meta tags;
characters and copyrights without pairs still count for the vocabulary) and every meta tag, and the
implications among them.

That selection is a ``PairTable``; ``write_derivative`` saves it as three small parquet files, and the
package ships them (``booru_embed/data/danbooru_pairs/``, with a README naming the sources and their
licenses), so a corpus drawn from the shipped copy is the very corpus drawn from the sources.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

PAIRS_FILE = "cooccurrence.parquet"
DERIVATIVE_FILES = ("tags.parquet", "pairs.parquet", "implications.parquet")
# Tags of tags.csv kept beyond those of the pairs, by category: posts they need (meta: all of them).
# why: the general tags below 100 posts add 0.07 tags a post between them; 50 keeps the shipped copy near 2.3 MB
MIN_POSTS = {0: 100, 1: 50, 3: 50, 4: 50, 5: 0}
CATEGORY_NUMBERS = {"general": 0, "artist": 1, "copyright": 3, "character": 4, "meta": 5}


@dataclass
class PairTable:
    """Tags with their category and post count, their pair counts, and the implications among them.

    Attributes:
        names: tag names, by category then most posts first.
        categories: Danbooru category number of each tag (0 general, 1 artist, 3 copyright, 4 character, 5 meta).
        post_counts: posts of each tag (``tags.csv``).
        pair_a / pair_b / pair_count: pairs as indices into ``names`` (``pair_a < pair_b``), posts with both.
        implications: (antecedent, consequent) indices.
        source: where the table was read from.
    """

    names: list[str]
    categories: np.ndarray
    post_counts: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_count: np.ndarray
    implications: np.ndarray
    source: str

    def rates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both directions of every pair: (source tag, partner, ``count / post_count(source)`` clipped to 1).

        The clip: ``tags.csv`` predates the pair counts, so a few tags have more pair posts than posts.
        """
        source = np.concatenate([self.pair_a, self.pair_b])
        partner = np.concatenate([self.pair_b, self.pair_a])
        count = np.concatenate([self.pair_count, self.pair_count]).astype(np.float64)
        return source, partner, np.minimum(1.0, count / self.post_counts[source])

    def index(self) -> dict[str, int]:
        """Tag name -> row."""
        return {name: i for i, name in enumerate(self.names)}


def default_tag_data() -> Path | None:
    """The real tag tables in ``../shared/data/danbooru-2025-05`` next to the repository, or None."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "danbooru-2025-05"
    return path if (path / "tags.csv").is_file() else None


def default_pairs_dir() -> Path | None:
    """``../shared/data/danbooru-cooccurrence`` next to the repository when it holds the table, else None."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "danbooru-cooccurrence"
    return path if (path / PAIRS_FILE).is_file() else None


def packaged_dir() -> Path:
    """The derivative shipped inside the package."""
    return Path(__file__).resolve().parent / "danbooru_pairs"


def load_pair_table(pairs_dir: Path | None, tag_data: Path | None) -> PairTable:
    """The table of ``pairs_dir``: a folder with ``cooccurrence.parquet`` (read with the tag tables of
    ``tag_data``) or a derivative (``DERIVATIVE_FILES``); None means the shared table when present,
    else the shipped derivative. Missing or malformed files raise a one-line ``UsageError``."""
    if pairs_dir is None:
        pairs_dir = default_pairs_dir()
        if pairs_dir is None or tag_data is None:
            return read_derivative(packaged_dir())
    pairs_dir = Path(pairs_dir)
    if (pairs_dir / PAIRS_FILE).is_file():
        if tag_data is None:
            raise UsageError(f"{pairs_dir / PAIRS_FILE} needs Danbooru's tag tables: pass --tag-data DIR with tags.csv")
        return read_sources(pairs_dir / PAIRS_FILE, Path(tag_data))
    if all((pairs_dir / name).is_file() for name in DERIVATIVE_FILES):
        return read_derivative(pairs_dir)
    raise UsageError(f"no pair table in {pairs_dir}: expected {PAIRS_FILE} or {', '.join(DERIVATIVE_FILES)}")


def _read_parquet(path: Path, columns: dict[str, str]) -> dict[str, np.ndarray]:
    """The ``columns`` (name -> 'string' or 'int') of a parquet file; a missing or mistyped column is a ``UsageError``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UsageError(f"pair table file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise UsageError(f"{path} is not a readable parquet file: {error}") from None
    out = {}
    for name, kind in columns.items():
        if name not in table.column_names:
            raise UsageError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
        column = table.column(name)
        ok = pa.types.is_string(column.type) or pa.types.is_large_string(column.type) if kind == "string" \
            else pa.types.is_integer(column.type)
        if not ok or column.null_count:
            raise UsageError(f"{path}: column {name!r} must be {kind}s without nulls, got {column.type}"
                             f"{' with nulls' if column.null_count else ''}")
        out[name] = np.asarray(column.to_pylist(), dtype=object) if kind == "string" else column.to_numpy()
    if len(table) == 0:
        raise UsageError(f"{path} has no rows")
    return out


def _read_tags_csv(tag_data: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """``tags.csv`` (name -> (category, post count)) and the aliases of its fourth column and of ``aliases.tsv``."""
    from .tag_tables import read_pair_table

    path = tag_data / "tags.csv"
    if not path.is_file():
        raise UsageError(f"no tags.csv in tag data folder {tag_data}")
    tags: dict[str, tuple[int, int]] = {}
    aliases: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) < 3 or not row[1].isdigit() or not row[2].isdigit():
                raise UsageError(f"{path}:{line}: expected name,category,post_count[,aliases], got {row!r}")
            tags[row[0]] = (int(row[1]), int(row[2]))
            for alias in (row[3].split(",") if len(row) > 3 and row[3] else []):
                aliases.setdefault(alias, row[0])
    if (tag_data / "aliases.tsv").is_file():
        for antecedent, consequent in read_pair_table(tag_data / "aliases.tsv", "alias"):
            aliases.setdefault(antecedent, consequent)
    return tags, aliases


def read_sources(pairs_file: Path, tag_data: Path) -> PairTable:
    """The ``PairTable`` of Danbooru's pair counts and tag tables (see the module docstring)."""
    from .tag_tables import read_pair_table

    columns = _read_parquet(pairs_file, {"tag_a": "string", "tag_b": "string", "count": "int"})
    if (columns["count"] < 1).any():
        raise UsageError(f"{pairs_file}: column 'count' has values below 1")
    tags, aliases = _read_tags_csv(tag_data)
    resolve = np.vectorize(lambda t: aliases.get(t, t), otypes=[object])
    a, b, count = resolve(columns["tag_a"]), resolve(columns["tag_b"]), columns["count"].astype(np.int64)
    known = np.array([x in tags and y in tags and x != y for x, y in zip(a.tolist(), b.tolist())], dtype=bool)
    if not known.any():
        raise UsageError(f"{pairs_file}: no pair of two different tags that {tag_data / 'tags.csv'} knows")
    a, b, count = a[known], b[known], count[known]
    keep = {t for t in a.tolist()} | {t for t in b.tolist()}
    keep |= {t for t, (c, n) in tags.items() if n >= MIN_POSTS.get(c, 0)}
    names = sorted(keep, key=lambda t: (tags[t][0], -tags[t][1], t))
    row = {t: i for i, t in enumerate(names)}
    first = np.array([row[t] for t in a.tolist()], dtype=np.int64)
    second = np.array([row[t] for t in b.tolist()], dtype=np.int64)
    low, high = np.minimum(first, second), np.maximum(first, second)
    key = low * len(names) + high
    order = np.lexsort((-count, key))  # per pair, the largest count first (an alias's pairs join the tag's)
    key, count = key[order], count[order]
    unique = np.concatenate([[True], key[1:] != key[:-1]])
    implications = []
    if (tag_data / "implications.tsv").is_file():
        for antecedent, consequent in read_pair_table(tag_data / "implications.tsv", "implication"):
            antecedent, consequent = aliases.get(antecedent, antecedent), aliases.get(consequent, consequent)
            if antecedent in row and consequent in row and antecedent != consequent:
                implications.append((row[antecedent], row[consequent]))
    return PairTable(names=names, categories=np.array([tags[t][0] for t in names], dtype=np.int8),
                     post_counts=np.array([tags[t][1] for t in names], dtype=np.int64),
                     pair_a=(key[unique] // len(names)).astype(np.int32), pair_b=(key[unique] % len(names)).astype(np.int32),
                     pair_count=count[unique].astype(np.int32),
                     implications=np.array(sorted(set(implications)), dtype=np.int32).reshape(-1, 2),
                     source=f"{pairs_file} with {tag_data}")


def write_derivative(table: PairTable, folder: Path) -> list[Path]:
    """Save ``table`` as ``DERIVATIVE_FILES`` in ``folder`` (zstd parquet; pairs and implications as row indices)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "tags.parquet": {"name": pa.array(table.names, pa.string()), "category": pa.array(table.categories, pa.int8()),
                         "post_count": pa.array(table.post_counts, pa.int32())},
        "pairs.parquet": {"a": pa.array(table.pair_a, pa.int32()), "b": pa.array(table.pair_b, pa.int32()),
                          "count": pa.array(table.pair_count, pa.int32())},
        "implications.parquet": {"antecedent": pa.array(table.implications[:, 0], pa.int32()),
                                 "consequent": pa.array(table.implications[:, 1], pa.int32())},
    }
    paths = []
    for name, columns in tables.items():
        pq.write_table(pa.table(columns), folder / name, compression="zstd", compression_level=19)
        paths.append(folder / name)
    return paths


def read_derivative(folder: Path) -> PairTable:
    """The ``PairTable`` that ``write_derivative`` saved in ``folder``."""
    tags = _read_parquet(folder / "tags.parquet", {"name": "string", "category": "int", "post_count": "int"})
    pairs = _read_parquet(folder / "pairs.parquet", {"a": "int", "b": "int", "count": "int"})
    implications = _read_parquet(folder / "implications.parquet", {"antecedent": "int", "consequent": "int"})
    n = len(tags["name"])
    rows = np.concatenate([pairs["a"], pairs["b"], implications["antecedent"], implications["consequent"]])
    if rows.min() < 0 or rows.max() >= n or (pairs["count"] < 1).any() or (tags["post_count"] < 1).any():
        raise UsageError(f"{folder}: pair or implication rows outside the {n} tags, or counts below 1")
    return PairTable(names=tags["name"].tolist(), categories=tags["category"].astype(np.int8),
                     post_counts=tags["post_count"].astype(np.int64), pair_a=pairs["a"].astype(np.int32),
                     pair_b=pairs["b"].astype(np.int32), pair_count=pairs["count"].astype(np.int32),
                     implications=np.stack([implications["antecedent"], implications["consequent"]], axis=1).astype(np.int32),
                     source=str(folder))


__all__ = ["PairTable", "default_pairs_dir", "default_tag_data", "load_pair_table", "packaged_dir", "read_derivative", "read_sources",
           "write_derivative"]


if __name__ == "__main__":  # rebuild the shipped copy: python -m booru_embed.data.pair_table
    if default_pairs_dir() is None or default_tag_data() is None:
        raise SystemExit("needs ../shared/data/danbooru-cooccurrence and ../shared/data/danbooru-2025-05")
    for written in write_derivative(read_sources(default_pairs_dir() / PAIRS_FILE, default_tag_data()), packaged_dir()):
        print(f"{written} {written.stat().st_size:,} bytes")
