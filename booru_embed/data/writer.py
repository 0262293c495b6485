"""What ``build-dataset`` writes: the checked rows to one Arrow file per split (a post id seen again
keeps its last occurrence: the ids of each split, 8 bytes a row, are kept in memory and resolved at
the end), those files as the shards of a DatasetDict without another copy, and ``rejects.jsonl``.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import UsageError
from .blocks import RAW_CHARS

SPLITS = ("train", "test")


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``. An existing ``target`` is deleted first: renaming over a file
    makes ext4 (``auto_da_alloc``) write the whole new file to disk before the rename returns."""
    target.unlink(missing_ok=True)
    source.rename(target)


class SplitWriter:
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


def save_dataset_dict(output: Path, files: dict[str, Path], features) -> None:
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


def check_output(output: Path) -> None:
    """An output folder may be new, empty, or an earlier DATA_DIR (replaced once the build succeeds)."""
    if output.exists():
        if not output.is_dir():
            raise UsageError(f"output {output} exists and is not a folder")
        ours = (output / "build_info.json").exists() or (output / "dataset_dict.json").exists()
        if any(output.iterdir()) and not ours:
            raise UsageError(f"output folder {output} is not empty and holds no dataset; choose another")



class RejectLog:
    """``rejects.jsonl``: one JSON object per rejected row (file, line, reason, detail, raw cut to
    RAW_CHARS, and where in the file when a reader says), with the count of rejects by reason."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")
        self.reasons: Counter[str] = Counter()

    def write(self, path: Path, rejects: list[tuple]) -> None:
        """Append the rejects (line, reason, detail, raw[, where]) of one block of input file ``path``."""
        for line, reason, detail, raw, *where in rejects:
            self.reasons[reason] += 1
            record = {"file": str(path), **(where[0] if where else {}), "line": line, "reason": reason,
                      "detail": detail, "raw": raw[:RAW_CHARS]}
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()
