"""Start the tag embeddings from the training split's tag co-occurrence (a spectral initialisation).

A tag seen in 15 posts gets few gradient steps, and a randomly initialised row learns its neighbours
slowly; counting learns them in one pass. So, before training, every tag's input (and untied output)
embedding row can be set to its row of ``V S`` from the truncated SVD ``Y ~ U S V^T`` of the
post-tag incidence matrix with unit-norm columns, ``Y = X D^-1/2`` (``D``: the tags' post counts).
Then ``Y^T Y`` is the cosine of tag co-counts, the "related tags" score, and ``(V S)(V S)^T`` is its
best rank-``dim`` approximation: tags that go together start close together. Training refines it.

``V`` and ``S^2`` are the top eigenpairs of ``Y^T Y``, found by a randomised range finder that only
multiplies by ``Y`` (sparse) in chunks of posts: seconds for the generated corpus, a few minutes for
a million posts and a 768-wide model (``max_posts`` caps the sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .collator import RATING, flat_posts


def cooccurrence_embeddings(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, vocab_size: int, dim: int, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose dot products approximate the cosine of token co-counts, and which rows were seen.

    The posts are given flat: ``ids`` and ``categories`` of all their tokens, one post after the
    other, ``lengths`` tokens each. Tags, rating and score tokens count; special tokens do not.
    Returns a (vocab_size, dim) float32 array (rows of unseen tokens are zero; columns past the rank
    the data allows are zero) and a (vocab_size,) bool array of the rows that were seen.
    """
    counted = categories >= RATING
    post_index = np.repeat(np.arange(len(lengths)), lengths)[counted]
    incidence = sp.csr_matrix(
        (np.ones(int(counted.sum()), dtype=np.float32), (post_index, ids[counted])),
        shape=(len(lengths), vocab_size),
    )
    incidence.sum_duplicates()
    incidence.data[:] = 1.0  # a token counts once per post
    counts = np.asarray(incidence.sum(axis=0)).ravel()
    seen = counts > 0
    embeddings = np.zeros((vocab_size, dim), dtype=np.float32)
    rank = min(dim, int(seen.sum()), len(lengths))
    if rank < 1:
        return embeddings, seen
    normalised = (incidence[:, seen] @ sp.diags((1.0 / np.sqrt(counts[seen])).astype(np.float32))).tocsr()
    values, vectors = top_eigenpairs(normalised, rank, seed)
    keep = values > 1e-6 * max(values.max(initial=0.0), 1e-30)  # directions the data does not have stay zero
    embeddings[np.flatnonzero(seen), : int(keep.sum())] = vectors[:, keep] * np.sqrt(values[keep])
    return embeddings, seen


def top_eigenpairs(
    matrix: sp.csr_matrix, rank: int, seed: int, oversample: int = 10, power_iterations: int = 4,
    chunk_rows: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest eigenvalues and eigenvectors of ``matrix.T @ matrix``, never formed.

    A randomised range finder with power iterations (Halko, Martinsson and Tropp, 2011): the Gram
    matrix is applied as ``sum over row chunks of chunk.T @ (chunk @ Q)``, so the memory is
    (columns x rank) plus one chunk, for any number of rows. Exact when ``rank + oversample`` reaches the
    matrix's rank, close otherwise (the bench compares it with ARPACK), which is all an initialisation needs.
    """
    columns = matrix.shape[1]
    width = min(rank + oversample, columns)

    def gram_times(block: np.ndarray) -> np.ndarray:
        out = np.zeros_like(block)
        for start in range(0, matrix.shape[0], chunk_rows):
            chunk = matrix[start: start + chunk_rows]
            out += chunk.T @ (chunk @ block)
        return out

    basis = np.random.default_rng(seed).standard_normal((columns, width)).astype(np.float32)
    for _ in range(power_iterations + 1):
        basis, _ = np.linalg.qr(gram_times(basis))
    values, rotation = np.linalg.eigh(basis.T @ gram_times(basis))
    order = np.argsort(values)[::-1][:rank]
    return np.clip(values[order], 0.0, None), basis @ rotation[:, order]


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
