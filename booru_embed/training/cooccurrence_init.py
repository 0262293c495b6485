"""Start the tag embeddings from the training split's tag co-occurrence (a spectral initialisation).

A tag seen in 15 posts gets few gradient steps, and a randomly initialised row learns its neighbours
slowly; counting learns them in one pass. So, before training, every tag's input (and untied output)
embedding row can be set to its row of ``V S`` from the truncated SVD ``Y ~ U S V^T`` of the
post-tag incidence matrix with unit-norm columns, ``Y = X D^-1/2`` (``D``: the tags' post counts).
Then ``Y^T Y`` is the cosine of tag co-counts, the "related tags" score, and ``(V S)(V S)^T`` is its
best rank-``dim`` approximation: tags that go together start close together. Training refines it.

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


def initialise_from_cooccurrence(model: Any, train_encoded: Any, seed: int, max_posts: int = 1_000_000) -> int:
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
    rows, seen = cooccurrence_embeddings(*flat_posts(table), vocab_size, dim, seed)
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
