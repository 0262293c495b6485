"""Start the tag embeddings from the training split's tag co-occurrence (a spectral initialisation).

A tag seen in 15 posts gets few gradient steps, and a randomly initialised row learns its neighbours
slowly; counting learns them in one pass. So, before training, every tag's input (and untied output)
embedding row can be set to its row of ``V S`` from the truncated SVD ``Y ~ U S V^T`` of the
post-tag incidence matrix with unit-norm columns, ``Y = X D^-1/2`` (``D``: the tags' post counts).
Then ``Y^T Y`` is the cosine of tag co-counts, the "related tags" score, and ``(V S)(V S)^T`` is its
best rank-``dim`` approximation: tags that go together start close together. Training refines it.

``--embedding-init lift`` starts the rows instead at ``w_t V_t`` (``lift_rows``), ``V`` from the SVD of the
posts' unit TF-IDF vectors with every column times its subject lift (``sparse_vectors.subject_lift_weights``),
``w`` those columns' weights: a post's summed rows are then its lift-weighted vector's rank-``dim`` code, the
linear code that finds same-subject posts best (docs/search.md, "An embedding start from the subject lift").

``V`` and ``S^2`` are the top eigenpairs of ``Y^T Y``, found by a randomised range finder that only
multiplies by ``Y`` (sparse) in chunks of posts: seconds for the generated corpus, a few minutes for
a million posts and a 768-wide model (``max_posts`` caps the sample). The counting and the range
finder live in ``booru_embed/cooccurrence.py``, shared with the evaluation's baselines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cooccurrence import cooccurrence_embeddings
from ..sequences import flat_posts


def lift_rows(ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, vocab_size: int, dim: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``w_t V_t``: ``V`` the top right singular vectors of the unit-row posts x tags matrix weighted by
    ``w = idf * subject lift``, so a post's mean row is its lift-weighted TF-IDF vector's rank-``dim`` code."""
    from scipy import sparse

    from ..cooccurrence import incidence_matrix, tag_counts, top_eigenpairs
    from ..modeling.categories_booru_embed import CATEGORY_IDS
    from ..sparse_vectors import idf_weights, subject_lift_weights, unit_rows

    incidence = incidence_matrix(ids, lengths, vocab_size, counted=categories >= CATEGORY_IDS["rating"])
    token_categories = np.zeros(vocab_size, dtype=np.int64)
    token_categories[ids] = categories
    counts = tag_counts(incidence)
    seen = counts > 0
    weights = idf_weights(counts, incidence.shape[0]) * subject_lift_weights(incidence, token_categories)
    weighted = unit_rows(incidence[:, seen] @ sparse.diags(weights[seen])).tocsr()
    rank = min(dim, int(seen.sum()), incidence.shape[0])
    rows = np.zeros((vocab_size, dim), dtype=np.float32)
    _, vectors = top_eigenpairs(weighted, rank, seed)
    rows[np.flatnonzero(seen), :rank] = vectors * weights[seen, None]
    return rows, seen


def initialise_from_cooccurrence(model: Any, train_encoded: Any, seed: int, max_posts: int = 1_000_000,
                                 lift: bool = False) -> int:
    """Overwrite the seen rows of the token (and untied output) embeddings with co-occurrence rows.

    Counts come from at most ``max_posts`` posts of ``train_encoded`` (a seeded sample when there are
    more). The rows are scaled so that their mean norm is that of the random rows they replace, which
    keeps the rest of the initialisation in its designed range. Returns the number of rows set.
    """
    import torch

    table = train_encoded.data.table.select(["input_ids", "category_ids"])
    if len(table) > max_posts:
        table = table.take(np.sort(np.random.default_rng(seed).choice(len(table), max_posts, replace=False)))
    token_embeddings = model.get_input_embeddings().weight
    vocab_size, dim = token_embeddings.shape
    rows, seen = (lift_rows if lift else cooccurrence_embeddings)(*flat_posts(table), vocab_size, dim, seed)
    seen_rows = torch.from_numpy(rows[seen])
    mean_norm = seen_rows.norm(dim=1).mean()
    if mean_norm == 0:
        return 0
    matrices = [token_embeddings]
    if getattr(model, "output_embeddings", None) is not None:
        matrices.append(model.output_embeddings.weight)
    index = torch.from_numpy(np.flatnonzero(seen))
    with torch.no_grad():
        for matrix in matrices:
            target_norm = matrix[index].norm(dim=1).mean()
            matrix[index] = (seen_rows * (target_norm / mean_norm)).to(matrix.dtype)
    return int(seen.sum())
