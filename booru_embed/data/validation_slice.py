"""The validation slice: training posts held out of training, where the search settings are chosen.

Training holds out a seeded slice of the train split (``held_out_rows``: ``validation_posts`` posts, at
most ``MAX_SHARE`` of the split) and writes their post ids to ``MODEL_DIR/validation_posts.json``. The
model never sees them, so ``booru-embed index`` and ``evaluate`` choose the hybrid search's fusion weight
and the sparse vector's idf power on them as on unseen posts, and the test split chooses nothing.
(Choosing on posts the model trained on misleads: its contrastive objective paired exactly those
posts with same-subject partners, so the dense side looks far stronger there than on new posts.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

VALIDATION_FILE = "validation_posts.json"
MAX_SHARE = 0.05  # the slice never takes more than this share of the train split


def held_out_rows(total: int, requested: int, seed: int) -> np.ndarray:
    """Sorted rows of a train split of ``total`` posts to hold out: ``min(requested, MAX_SHARE * total)``, seeded."""
    count = min(int(requested), int(MAX_SHARE * total))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 7]).permutation(total)[:count]).astype(np.int64)


def write_validation_ids(folder: Path, ids: np.ndarray, seed: int) -> None:
    """Write ``validation_posts.json`` (the held-out post ids of the train split) into a model folder."""
    record = {"split": "train", "seed": int(seed), "count": int(len(ids)), "ids": [int(i) for i in ids]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / VALIDATION_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def read_validation_ids(model_dir: str | Path) -> np.ndarray | None:
    """The held-out post ids of a model folder, or None when it has none (trained without a slice, or older)."""
    path = Path(model_dir) / VALIDATION_FILE
    if not path.is_file():
        return None
    ids = json.loads(path.read_text(encoding="utf-8"))["ids"]
    return np.asarray(ids, dtype=np.int64) if ids else None


def rows_with_ids(table: Any, ids: np.ndarray) -> np.ndarray:
    """Sorted rows of a DATA_DIR split (a ``datasets.Dataset`` with an ``id`` column) whose post id is in ``ids``."""
    column = np.asarray(table.select_columns(["id"]).with_format("arrow")[:]["id"].to_numpy(), dtype=np.int64)
    return np.flatnonzero(np.isin(column, ids))
