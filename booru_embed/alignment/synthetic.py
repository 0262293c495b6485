"""Synthetic external embeddings for tests and benchmarks: what an image embedder might see of a post.

An image shows its general, character and copyright tags; its artist and meta tags are only partly
visible (each kept with probability ``partial_share``, drawn once per post). Each tag has a fixed random
vector; a post's visible vectors are summed (scaled by 1/sqrt(count)), passed through tanh of a random
linear layer (the non-linear map) and a random projection to ``dim``, and Gaussian noise of
``noise`` times the rows' typical norm is added. Everything is drawn from ``seed``, so the same post
always gets the same vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VISIBLE = ("general", "character", "copyright")
PARTLY_VISIBLE = ("artist", "meta")
HIDDEN = 256


def _tag_vectors(names: list[str], width: int, seed: int) -> dict[str, np.ndarray]:
    """One fixed random vector per tag name (sorted first, so the set alone decides them)."""
    rng = np.random.default_rng([seed, 1])
    vectors = rng.standard_normal((len(names), width)).astype(np.float32)
    return dict(zip(sorted(names), vectors))


def synthetic_embeddings(posts: list[dict], dim: int = 64, seed: int = 0, noise: float = 0.1,
                         partial_share: float = 0.5) -> np.ndarray:
    """(len(posts), dim) float32 external vectors of tag-set dicts (see the module docstring)."""
    rng = np.random.default_rng([seed, 2])
    names = sorted({tag for post in posts for category in (*VISIBLE, *PARTLY_VISIBLE) for tag in post.get(category) or []})
    vectors = _tag_vectors(names, HIDDEN, seed)
    layer = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / np.sqrt(HIDDEN)
    projection = rng.standard_normal((HIDDEN, dim)).astype(np.float32) / np.sqrt(HIDDEN)
    visibility = np.random.default_rng([seed, 3])
    summed = np.zeros((len(posts), HIDDEN), dtype=np.float32)
    for row, post in enumerate(posts):
        tags = [t for c in VISIBLE for t in post.get(c) or []]
        tags += [t for c in PARTLY_VISIBLE for t in post.get(c) or [] if visibility.random() < partial_share]
        if tags:
            summed[row] = np.sum([vectors[t] for t in tags], axis=0) / np.sqrt(len(tags))
    out = np.tanh(summed @ layer * 2.0) @ projection
    scale = float(np.sqrt((out**2).sum(axis=1).mean())) or 1.0
    out += noise * scale / np.sqrt(dim) * np.random.default_rng([seed, 4]).standard_normal(out.shape).astype(np.float32)
    return out.astype(np.float32)


def write_synthetic_pairs(data_dir: str | Path, output: str | Path, dim: int = 64, seed: int = 0,
                          noise: float = 0.1, extra_ids: tuple[int, ...] = ()) -> Path:
    """An ``.npz`` pair file (``ids``, ``embs``) for every post of every split of DATA_DIR.

    ``extra_ids`` adds rows for post ids that the DATA_DIR lacks (random vectors), to exercise the
    absent-id report.
    """
    import datasets

    data = datasets.load_from_disk(str(data_dir))
    posts, ids, seen = [], [], set()
    for split in data:
        columns = [c for c in (*VISIBLE, *PARTLY_VISIBLE) if c in data[split].column_names]
        table = data[split].select_columns([*columns, "id"]).to_dict()
        for post_id, values in zip(table["id"], zip(*(table[c] for c in columns))):
            if post_id not in seen:  # a post id once, even where splits overlap
                seen.add(post_id)
                posts.append(dict(zip(columns, values)))
                ids.append(post_id)
    embs = synthetic_embeddings(posts, dim=dim, seed=seed, noise=noise)
    if extra_ids:
        extra = np.random.default_rng([seed, 5]).standard_normal((len(extra_ids), dim)).astype(np.float32)
        embs, ids = np.concatenate([embs, extra]), ids + list(extra_ids)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, ids=np.asarray(ids, dtype=np.int64), embs=embs)
    return output
