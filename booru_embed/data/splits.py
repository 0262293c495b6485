"""Open one split of a DATA_DIR for reading, memory-mapped, with one-line errors for the usual mistakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError


def open_split(data_dir: Path, split: str, flag: str = "--dataset") -> Any:
    """The ``split`` of DATA_DIR as a memory-mapped ``datasets.Dataset`` (rows are read only when asked for).

    ``flag`` names the command-line option in the errors: a folder that is not a DATA_DIR, or a
    split it lacks, raises ``UsageError``.
    """
    if not (Path(data_dir) / "dataset_dict.json").is_file():
        raise UsageError(f"{flag} {data_dir} is not a DATA_DIR (no dataset_dict.json)")
    import datasets

    data = datasets.load_from_disk(str(data_dir))
    if split not in data:
        raise UsageError(f"--split {split!r} is not in {data_dir} (splits: {', '.join(data)})")
    return data[split]
