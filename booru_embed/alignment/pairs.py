"""Pair files (post id, external embedding) and their join to a DATA_DIR by post id.

Three layouts are read: ``.npz`` with arrays ``ids`` (n,) and ``embs`` (n, d) (the layout of the public
WD-tagger embedding sets), ``.safetensors`` with the same two tensors, and Parquet with an integer ``id``
column and an ``embedding`` list column. Every row must be finite and every id distinct; ids that no
split of the DATA_DIR holds are counted and listed (``Join.absent``), never dropped without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.splits import open_split
from ..errors import UsageError

SUFFIXES = (".npz", ".safetensors", ".parquet")
LISTED_IDS = 10  # absent ids named in a one-line message; all of them go to absent_ids.txt


def _arrays_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("ids", "embs") if key not in data.files]
            if missing:
                raise UsageError(f"--pairs {path} lacks array(s) {', '.join(missing)} (it holds: {', '.join(data.files)})")
            return np.asarray(data["ids"]), np.asarray(data["embs"])
    except (OSError, ValueError) as error:
        raise UsageError(f"--pairs {path} is not a readable .npz: {error}") from None


def _arrays_safetensors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        data = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise UsageError(f"--pairs {path} is not a readable .safetensors file: {error}") from None
    missing = [key for key in ("ids", "embs") if key not in data]
    if missing:
        raise UsageError(f"--pairs {path} lacks tensor(s) {', '.join(missing)} (it holds: {', '.join(data)})")
    return data["ids"], data["embs"]


def _arrays_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"--pairs {path} is not a readable Parquet file: {error}") from None
    missing = [key for key in ("id", "embedding") if key not in table.column_names]
    if missing:
        raise UsageError(f"--pairs {path} lacks column(s) {', '.join(missing)} (it holds: {', '.join(table.column_names)})")
    column = table["embedding"].combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise UsageError(f"--pairs {path}: column embedding must be a list of numbers, got {column.type}")
    if column.null_count:
        raise UsageError(f"--pairs {path}: {column.null_count} row(s) have no embedding")
    lengths = np.asarray(column.value_lengths()) if not pa.types.is_fixed_size_list(column.type) \
        else np.full(len(column), column.type.list_size)
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise UsageError(f"--pairs {path}: embeddings differ in length (row 0 has {lengths[0]}, row {row} has {lengths[row]})")
    width = int(lengths[0]) if len(lengths) else 0
    values = column.flatten().to_numpy(zero_copy_only=False)
    return table["id"].to_numpy(), values.reshape(len(column), width)


def read_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (n,), embeddings float32 (n, d)) of a pair file; one-line UsageError for any fault.

    Faults: a missing file or unknown suffix, missing arrays, ids that are not integers or not distinct,
    a shape that is not (n,) and (n, d) with the same n, no row, and rows holding NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--pairs file not found: {path}")
    readers = {".npz": _arrays_npz, ".safetensors": _arrays_safetensors, ".parquet": _arrays_parquet}
    if path.suffix not in readers:
        raise UsageError(f"--pairs must end in {', '.join(SUFFIXES)}, got {path.name}")
    ids, embs = readers[path.suffix](path)
    if ids.ndim != 1 or embs.ndim != 2 or len(ids) != len(embs):
        raise UsageError(f"--pairs {path}: ids must be (n,) and embeddings (n, d), got {ids.shape} and {embs.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise UsageError(f"--pairs {path}: ids must be integers (Danbooru post ids), got {ids.dtype}")
    if not np.issubdtype(embs.dtype, np.floating):
        raise UsageError(f"--pairs {path}: embeddings must be floating point, got {embs.dtype}")
    if len(ids) == 0 or embs.shape[1] == 0:
        raise UsageError(f"--pairs {path} holds no pairs")
    embs = np.ascontiguousarray(embs, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(embs).all(axis=1))
    if len(bad):
        raise UsageError(f"--pairs {path}: {len(bad)} row(s) hold NaN or infinite values "
                         f"(post ids {', '.join(map(str, ids[bad[:LISTED_IDS]]))})")
    ids = ids.astype(np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        raise UsageError(f"--pairs {path}: {len(repeated)} post id(s) occur more than once "
                         f"({', '.join(map(str, repeated[:LISTED_IDS]))})")
    return ids, embs


@dataclass
class Join:
    """Pairs matched to DATA_DIR rows: per split, the pair rows and the split rows they match."""

    pair_rows: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (m,) rows of the pair file
    split_rows: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (m,) rows of that split
    absent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # ids found in no split

    def count(self, split: str) -> int:
        """Pairs matched in ``split``."""
        return len(self.pair_rows.get(split, ()))


def join_pairs(ids: np.ndarray, data_dir: str | Path) -> Join:
    """Match post ids to every split of DATA_DIR (ids are distinct there); ids in no split go to ``absent``.

    A UsageError when no id matches any split (an empty join: the wrong DATA_DIR or a different id space).
    """
    import datasets

    open_split(Path(data_dir), "train")  # one-line errors for a folder that is not a DATA_DIR
    splits = datasets.load_from_disk(str(data_dir))
    join, matched = Join(), np.zeros(len(ids), dtype=bool)
    for split in splits:
        split_ids = splits[split].with_format("arrow")["id"].to_numpy().astype(np.int64, copy=False)
        order = np.argsort(split_ids, kind="stable")
        positions = np.clip(np.searchsorted(split_ids[order], ids), 0, max(len(order) - 1, 0))
        found = (split_ids[order][positions] == ids) if len(order) else np.zeros(len(ids), dtype=bool)
        join.pair_rows[split] = np.flatnonzero(found)
        join.split_rows[split] = order[positions[found]]
        matched |= found
    join.absent = ids[~matched]
    if not matched.any():
        raise UsageError(f"none of the {len(ids)} post ids of --pairs is in {data_dir} "
                         f"(first ids: {', '.join(map(str, ids[:LISTED_IDS]))})")
    return join


def absent_note(join: Join, total: int) -> str | None:
    """A one-line note counting and naming the ids absent from the DATA_DIR (None when all were found)."""
    if not len(join.absent):
        return None
    shown = ", ".join(map(str, join.absent[:LISTED_IDS])) + (", ..." if len(join.absent) > LISTED_IDS else "")
    return f"{len(join.absent)} of {total} post ids are in no split of the DATA_DIR and were not used: {shown}"
