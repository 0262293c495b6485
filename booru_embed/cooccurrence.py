"""Tag co-occurrence: the post x tag incidence matrix, the cosine of co-counts, and its low-rank factors.

One home for the counting that two parts of the project share: the evaluation baseline (Danbooru's
"related tags", ``cos(a, b) = n(a and b) / sqrt(n(a) n(b))``, and the tag vectors of its retrieval
baseline) and the spectral initialisation of the token embeddings (``training/cooccurrence_init.py``).

Everything starts from flat posts (``ids`` of all their tokens, one post after the other, ``lengths``
tokens each, as ``sequences.flat_posts`` reads them from the encoded Arrow columns) and builds a sparse
CSR matrix without a per-post Python object. The memory is set by the number of posts counted, so
callers that face Danbooru-sized splits count a seeded sample.

Low-rank factors. With ``Y = X D^-1/2`` (``X`` the incidence, ``D`` the tags' post counts), ``Y^T Y``
is the cosine of co-counts, and the rows of ``V S`` from the truncated SVD ``Y ~ U S V^T`` have dot
products that are its best rank-``dim`` approximation. ``V`` and ``S^2`` come from a randomised range
finder that only multiplies by ``Y`` in chunks of posts: it never forms the (vocab x vocab) matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from .modeling.categories_booru_embed import CATEGORY_IDS

COSINE_BLOCK_NONZEROS = 16_000_000  # bound on one block of the cosine matrix while it is built (~200 MB)
T = TypeVar("T")
MAX_THREADS = 8  # threads of the sparse products (the range finder's each hold a (vocab x width) partial sum)


def sparse_threads(requested: int | None = None) -> int:
    """Threads for scipy's sparse products, which release the GIL: ``requested``, else torch's intra-op
    thread count (``OMP_NUM_THREADS`` or the cores), at most ``MAX_THREADS``."""
    import torch

    return max(1, min(requested or torch.get_num_threads(), MAX_THREADS))


def in_row_blocks(function: Callable[[int, int], T], rows: int, threads: int | None = None) -> list[T]:
    """``function(low, high)`` for ``sparse_threads(threads)`` contiguous blocks of ``range(rows)`` (some
    may be empty), one thread each; the results in block order."""
    edges = np.linspace(0, rows, sparse_threads(threads) + 1).astype(int)
    with ThreadPoolExecutor(len(edges) - 1) as pool:
        return list(pool.map(function, edges[:-1], edges[1:]))


def incidence_matrix(ids: np.ndarray, lengths: np.ndarray, vocab_size: int, counted: np.ndarray | None = None) -> sp.csr_matrix:
    """(posts, vocab_size) float32 CSR: 1 where a post holds a token, once however often it repeats.

    ``counted`` (parallel to ``ids``, bool) keeps only some tokens; the others are left out. Built
    straight from the flat arrays (posts are already grouped), so the memory is a few bytes per token.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if counted is not None:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        kept_before = np.concatenate([[0], np.cumsum(counted, dtype=np.int64)])
        lengths = kept_before[starts[1:]] - kept_before[starts[:-1]]  # counted tokens of each post
        ids = ids[counted]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    index_type = np.int32 if len(ids) < 2**31 and vocab_size < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (np.ones(len(ids), dtype=np.float32), np.asarray(ids, dtype=index_type), indptr.astype(index_type)),
        shape=(len(lengths), vocab_size),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a token counts once per post
    return matrix


def tag_counts(incidence: sp.csr_matrix) -> np.ndarray:
    """(vocab,) float32 number of posts that hold each token (exact up to 2**24 posts)."""
    return np.bincount(incidence.indices, minlength=incidence.shape[1]).astype(np.float32)


def cosine_matrix(incidence: sp.csr_matrix, block_nonzeros: int = COSINE_BLOCK_NONZEROS) -> sp.csr_matrix:
    """(vocab, vocab) float32 CSR of ``n(a and b) / sqrt(n(a) n(b))``, zero on the diagonal.

    Built in blocks of rows, ``X[:, block]^T X``, each scaled and stripped of its diagonal as soon as
    it is made, so the peak is the result plus one block of at most about ``block_nonzeros`` entries per
    thread (``sparse_threads``; a row can hold no more entries than the vocabulary, nor than the tokens of
    the posts that hold its tag).
    The result still grows with the posts counted (common tags co-occur with most of the vocabulary).
    """
    counts = tag_counts(incidence)
    vocab = incidence.shape[1]
    by_tag = incidence.T.tocsr()  # (vocab, posts)
    post_lengths = np.diff(incidence.indptr).astype(np.float64)
    row_bound = np.minimum(by_tag @ post_lengths, vocab)  # most entries row t can have
    cuts = np.searchsorted(np.cumsum(row_bound), np.arange(block_nonzeros, row_bound.sum(), block_nonzeros), side="right")
    edges = np.unique(np.concatenate([[0], cuts, [vocab]]))

    def block_entries(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, end = bounds
        block = (by_tag[start:end] @ incidence).tocsr()  # (end - start, vocab) co-counts
        block.sort_indices()
        rows = np.repeat(np.arange(start, end), np.diff(block.indptr))
        values = block.data / np.maximum(np.sqrt(counts[rows] * counts[block.indices]), 1e-12)  # float32 throughout
        keep = (rows != block.indices) & (values != 0)
        return block.indices[keep], values[keep].astype(np.float32), np.bincount(rows[keep] - start, minlength=end - start)

    indptr_parts, index_parts, data_parts = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    with ThreadPoolExecutor(sparse_threads()) as pool:  # blocks in order; one block per thread at a time
        for indices, data, kept_per_row in pool.map(block_entries, zip(edges[:-1], edges[1:])):
            index_parts.append(indices)
            data_parts.append(data)
            indptr_parts.append(offset + np.cumsum(kept_per_row))
            offset += len(indices)
    indices = np.concatenate(index_parts) if index_parts else np.zeros(0, dtype=np.int32)
    data = np.concatenate(data_parts) if data_parts else np.zeros(0, dtype=np.float32)
    return sp.csr_matrix((data, indices, np.concatenate(indptr_parts)), shape=(vocab, vocab))


def spectral_rows(incidence: sp.csr_matrix, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose dot products approximate the cosine of co-counts of ``incidence``'s columns.

    Returns a (vocab, dim) float32 array (rows of tokens no post holds are zero; columns past the rank
    the data allows are zero; columns in order of decreasing singular value, so the first ``k`` are the
    rank-``k`` approximation) and a (vocab,) bool array of the rows that were seen.
    """
    counts = tag_counts(incidence)
    seen = counts > 0
    embeddings = np.zeros((incidence.shape[1], dim), dtype=np.float32)
    rank = min(dim, int(seen.sum()), incidence.shape[0])
    if rank < 1:
        return embeddings, seen
    normalised = (incidence[:, seen] @ sp.diags((1.0 / np.sqrt(counts[seen])).astype(np.float32))).tocsr()
    values, vectors = top_eigenpairs(normalised, rank, seed)
    keep = values > 1e-6 * max(values.max(initial=0.0), 1e-30)  # directions the data does not have stay zero
    embeddings[np.flatnonzero(seen), : int(keep.sum())] = vectors[:, keep] * np.sqrt(values[keep])
    return embeddings, seen


def cooccurrence_embeddings(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, vocab_size: int, dim: int, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``spectral_rows`` of flat posts where tags, rating and score tokens count (special tokens do not).

    The posts are given flat: ``ids`` and ``categories`` of all their tokens, one post after the
    other, ``lengths`` tokens each.
    """
    incidence = incidence_matrix(ids, lengths, vocab_size, counted=categories >= CATEGORY_IDS["rating"])
    return spectral_rows(incidence, dim, seed)


def top_eigenpairs(
    matrix: sp.csr_matrix, rank: int, seed: int, oversample: int = 10, power_iterations: int = 4,
    chunk_rows: int = 65_536, threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank`` largest eigenvalues and eigenvectors of ``matrix.T @ matrix``, never formed.

    A randomised range finder with power iterations (Halko, Martinsson and Tropp, 2011): the Gram
    matrix is applied as ``sum over row chunks of chunk.T @ (chunk @ Q)``, so the memory is
    (columns x rank) per thread plus one chunk, for any number of rows. Exact when ``rank + oversample``
    reaches the matrix's rank, close otherwise (the bench compares it with ARPACK), which is all an
    initialisation needs. The chunks are split into contiguous runs (``in_row_blocks``), whose
    partial sums are added in order, so a given thread count always gives the same result. The
    orthonormalisation is torch's QR (LAPACK through torch is about 3x numpy's here).
    """
    import torch

    columns = matrix.shape[1]
    width = min(rank + oversample, columns)
    starts = range(0, matrix.shape[0], chunk_rows)

    def gram_part(run: range, block: np.ndarray) -> np.ndarray:
        out = np.zeros_like(block)
        for start in run:
            chunk = matrix[start: start + chunk_rows]
            out += chunk.T @ (chunk @ block)
        return out

    def gram_times(block: np.ndarray) -> np.ndarray:
        parts = in_row_blocks(lambda low, high: gram_part(starts[low:high], block), len(starts), threads)
        return functools.reduce(np.add, parts)

    def orthonormal(block: np.ndarray) -> np.ndarray:
        return torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(block)))[0].numpy()

    basis = np.random.default_rng(seed).standard_normal((columns, width)).astype(np.float32)
    for _ in range(power_iterations + 1):
        basis = orthonormal(gram_times(basis))
    values, rotation = np.linalg.eigh(basis.T @ gram_times(basis))
    order = np.argsort(values)[::-1][:rank]
    return np.clip(values[order], 0.0, None), basis @ rotation[:, order]
