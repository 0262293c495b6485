"""What an aligner is trained toward: each joined post's own booru-embed embedding and its tags.

Posts are read from the DATA_DIR split in chunks, embedded by the model (the raw pooled embedding, not
normalised, so the norm can be compared too), and their tag token ids kept as a CSR pair
(``offsets``, ``tag_ids``) with their characters. ``PostTargets`` is saved once in the aligner's
``checkpoints/`` so a resumed run does not embed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

DATA_COLUMNS = ("meta", "general", "artist", "copyright", "character", "rating", "score")
CHUNK = 16_384  # posts read, tokenised and embedded at a time (bounded memory at a million posts)


@dataclass
class PostTargets:
    """Per post (in pair order): raw embedding, tag token ids (CSR) and characters (CSR of names)."""

    embeddings: np.ndarray  # (n, embedding_dim) float32
    offsets: np.ndarray  # (n + 1,) int64 into tag_ids
    tag_ids: np.ndarray  # (total,) int32
    character_offsets: np.ndarray  # (n + 1,) int64 into characters
    characters: np.ndarray  # (total,) str

    def __len__(self) -> int:
        """Number of posts."""
        return len(self.embeddings)

    def tags_of(self, row: int) -> np.ndarray:
        """Tag token ids of post ``row``."""
        return self.tag_ids[self.offsets[row] : self.offsets[row + 1]]

    def character_sets(self) -> list[frozenset]:
        """Each post's set of character names."""
        o, c = self.character_offsets, self.characters
        return [frozenset(c[o[i] : o[i + 1]].tolist()) for i in range(len(self))]

    def save(self, path: Path) -> None:
        """Write an ``.npz`` through a temporary name (a reader never sees half a file)."""
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, embeddings=self.embeddings, offsets=self.offsets, tag_ids=self.tag_ids,
                 character_offsets=self.character_offsets, characters=self.characters.astype(str))
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> PostTargets:
        """Read what ``save`` wrote."""
        with np.load(path, allow_pickle=False) as data:
            return cls(**{key: data[key] for key in data.files})


def compute_targets(embedder: Any, table: Any, split_rows: np.ndarray, batch_size: int = 256,
                    bar: Any = None) -> PostTargets:
    """The targets of rows ``split_rows`` of a DATA_DIR split (a ``datasets.Dataset``), in that order."""
    columns = [c for c in DATA_COLUMNS if c in table.column_names]
    parts: dict[str, list[np.ndarray]] = {"embeddings": [], "tag_ids": [], "lengths": [], "characters": [],
                                          "character_lengths": []}
    is_tag = embedder._is_tag
    for start in range(0, len(split_rows), CHUNK):
        rows = split_rows[start : start + CHUNK]
        batch = table.select_columns([*columns, "id"])[rows.tolist()] if len(rows) else {}
        posts = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        sequences = embedder._ids(posts)
        empty = [i for i, ids in enumerate(sequences) if len(ids) == 1]
        if empty:
            raise UsageError(f"post id {batch['id'][empty[0]]} has no tags, rating or score ({len(empty)} such post(s))")
        parts["embeddings"].append(embedder._raw_pooled(sequences, batch_size))
        tags = [np.asarray([t for t in ids if is_tag[t]], dtype=np.int32) for ids in sequences]
        parts["tag_ids"].append(np.concatenate(tags) if tags else np.zeros(0, np.int32))
        parts["lengths"].append(np.asarray([len(t) for t in tags], dtype=np.int64))
        names = [post.get("character") or [] for post in posts]
        parts["characters"].append(np.asarray([n for row in names for n in row], dtype=str))
        parts["character_lengths"].append(np.asarray([len(row) for row in names], dtype=np.int64))
        if bar is not None:
            bar.update(len(rows))
    width = embedder.embedding_dim

    def joined(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype=dtype)

    return PostTargets(
        embeddings=np.concatenate(parts["embeddings"]) if parts["embeddings"] else np.zeros((0, width), np.float32),
        offsets=np.concatenate([[0], np.cumsum(joined("lengths", np.int64))]).astype(np.int64),
        tag_ids=joined("tag_ids", np.int32),
        character_offsets=np.concatenate([[0], np.cumsum(joined("character_lengths", np.int64))]).astype(np.int64),
        characters=joined("characters", str),
    )
