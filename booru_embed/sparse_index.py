"""The sparse half of a search index: an inverted index of the posts' sparse tag vectors, and their idf power.

``INDEX_DIR/sparse.npz`` holds the unit-normalised sparse vectors (``BooruEmbedder.embed_sparse``) of
every post as a scipy CSC matrix (posts x vocabulary): column ``t`` is tag ``t``'s posting list (the
posts holding or expected to hold it, with their weights), so a query's cosine to every post is the
sum of its few columns scaled by its weights, exact, with scipy (``SparsePostings.scores``).

The sparse vectors' idf power and expansion terms (``sparse_vectors.SPARSE_SETTINGS``) and the hybrid's weight ``a`` in
``(1 - a) cos_dense + a cos_sparse`` are chosen when the index is built, before the posts are embedded,
never on the test split (``choose_index_settings``): each validation post with a character (artist) tag
and another tag is a query without its character (artist) tags, a hit a neighbour among the 10 nearest
sharing one, and the combination whose hybrid has the best mean recall@10 over the two is stored in
``index_info.json``. The validation posts (``validation_slice``) are the model's held-out slice of the
training split (``data.validation_slice``), posts it never trained on; a model without one (trained
with ``--validation-posts 0``, or not a local folder) falls back to ``VALIDATION_POSTS`` seeded training
posts and the fixed ``FUSION_WEIGHT``, since on posts the model trained on the dense side looks stronger
than it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .evaluation.hybrid_retrieval import VALIDATION_POSTS, choose_search_settings
from .modeling.categories_booru_embed import TAG_CATEGORIES
from .sparse_vectors import SPARSE_SETTINGS, unit_rows

if TYPE_CHECKING:
    from .embedder import BooruEmbedder

SPARSE_FILE = "sparse.npz"
VALIDATION_CATEGORIES = ("character", "artist")
VALIDATION_SEED = 0


def save_postings(path: Path, shards: Sequence[Any]) -> dict[str, float]:
    """Write the unit rows of the stacked shard matrices as a CSC inverted index; return its size figures."""
    from scipy import sparse

    matrix = unit_rows(sparse.vstack(list(shards)).tocsr()).tocsc()
    matrix.sort_indices()
    sparse.save_npz(path, matrix, compressed=False)
    return {"nonzeros": int(matrix.nnz), "nonzeros_per_post": round(matrix.nnz / max(matrix.shape[0], 1), 2),
            "bytes": int(path.stat().st_size)}


class SparsePostings:
    """The loaded inverted index: exact sparse cosines of queries to every post."""

    def __init__(self, matrix: Any) -> None:
        """Wrap a (posts, vocab) CSC matrix of unit rows (use ``load``)."""
        self.matrix = matrix

    @classmethod
    def load(cls, path: Path) -> SparsePostings:
        """Read ``sparse.npz`` as written by ``save_postings``."""
        from scipy import sparse

        return cls(sparse.load_npz(path).tocsc())

    def scores(self, query: Any) -> np.ndarray:
        """(posts,) float32 cosine of one query row (a 1 x vocab sparse matrix, unit norm or zero) to every post."""
        row = query.tocsr()
        columns = self.matrix[:, row.indices]  # the query tags' posting lists
        return np.asarray(columns @ row.data.astype(np.float32)).ravel()


def posts_at(table: Any, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows ``rows`` of a split (a ``datasets.Dataset``) as tag-set dicts by category."""
    columns = [c for c in (*TAG_CATEGORIES, "rating", "score") if c in table.column_names]
    return table.select(rows).select_columns(columns).to_list()


def validation_slice(model_dir: str | Path, training: Any) -> tuple[list[dict[str, Any]], str]:
    """(posts, source) the search settings are chosen on: the model's held-out posts found in ``training``
    (source ``held-out``), else ``VALIDATION_POSTS`` seeded posts of ``training`` (source ``training``)."""
    from .data.validation_slice import read_validation_ids, rows_with_ids

    ids = read_validation_ids(model_dir) if Path(model_dir).is_dir() else None
    rows = rows_with_ids(training, ids) if ids is not None else np.zeros(0, dtype=np.int64)
    if len(rows) >= 2:
        return posts_at(training, rows), "held-out"
    seeded = np.sort(np.random.default_rng(VALIDATION_SEED).permutation(len(training))[:VALIDATION_POSTS])
    return posts_at(training, seeded), "training"


def choose_index_settings(embedder: BooruEmbedder, posts: Sequence[dict[str, Any]], dim: int, scale: float,
                          weights: Sequence[float]) -> tuple[tuple[float, int], float, dict[str, float]]:
    """((idf power, expansion terms), hybrid weight among ``weights``) with the best mean recall@10 on the
    character and artist cases of ``posts``, and every combination's mean (module docstring)."""
    dense, lexical, labels = [], {setting: [] for setting in SPARSE_SETTINGS}, []
    for category in VALIDATION_CATEGORIES:
        cases = [({k: v for k, v in post.items() if k != category}, post[category]) for post in posts
                 if post.get(category) and any(post.get(c) for c in TAG_CATEGORIES if c != category)]
        if len(cases) < 2:
            continue
        queries = [query for query, _ in cases]
        number: dict[str, int] = {}  # tag name -> label number
        dense.append(embedder.embed(queries, dim=dim, progress=False))
        for power, terms in SPARSE_SETTINGS:
            lexical[(power, terms)].append(embedder.embed_sparse(queries, terms=terms, scale=scale, power=power,
                                                                 progress=False))
        labels.append([{number.setdefault(tag, len(number)) for tag in tags} for _, tags in cases])
    return choose_search_settings(dense, lexical, labels, weights=weights)
