"""The classical baselines, counted from the training split: co-occurrence, TF-IDF, tag vectors, naive Bayes.

The suggestion baseline is Danbooru's "related tags": from the training split, the cosine of two tags'
post sets, ``cos(a, b) = n(a and b) / sqrt(n(a) n(b))``; missing tags of a post are scored by the sum
of their cosines to the visible tags. Retrieval's baseline is TF-IDF cosine over the visible tags
(IDF from the training split), and a second one (``tagvec.*``) the idf-weighted mean of the visible
tags' co-occurrence SVD rows (``cooccurrence.spectral_rows``); rating / score's is naive Bayes over the
visible tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cooccurrence import cosine_matrix, in_row_blocks, incidence_matrix, spectral_rows, tag_counts


class CooccurrenceBaseline:
    """Danbooru's related tags from the training split (see the module docstring).

    ``posts`` is a sequence of tag-id arrays, or the (posts, vocab) CSR incidence matrix
    (``cooccurrence.incidence_matrix``) already built from them; ``ratings`` / ``scores`` the class of
    each post (-1: unknown). The matrix is kept for the tag vectors of the retrieval baseline.
    """

    def __init__(self, posts: Sequence[np.ndarray] | Any, vocab_size: int, ratings: np.ndarray, scores: np.ndarray,
                 num_ratings: int, num_scores: int) -> None:
        if not hasattr(posts, "tocsr"):
            lengths = np.array([len(p) for p in posts], dtype=np.int64)
            ids = np.concatenate(posts) if len(posts) else np.zeros(0, dtype=np.int64)
            posts = incidence_matrix(ids, lengths, vocab_size)
        self.incidence = posts
        self.counts = tag_counts(self.incidence)
        self.cosine = cosine_matrix(self.incidence)
        # rows at least half full (common tags co-occur with most of the vocabulary) also kept dense: no
        # larger than their CSR, and their share of a related-tags score is a BLAS product
        self.dense_rows = np.flatnonzero(np.diff(self.cosine.indptr) >= vocab_size / 2)
        self.dense_cosine = self.cosine[self.dense_rows].toarray()
        self.dense_position = np.full(vocab_size, -1, dtype=np.int64)  # a tag's row in dense_cosine, or -1
        self.dense_position[self.dense_rows] = np.arange(len(self.dense_rows))
        self.idf = np.log((1 + self.incidence.shape[0]) / (1 + self.counts)).astype(np.float32) + 1.0
        self.rating_log_prob = self._log_conditional(self.incidence, ratings, num_ratings)
        self.score_log_prob = self._log_conditional(self.incidence, scores, num_scores)
        self.vocab_size = vocab_size
        self._tag_vectors: dict[tuple[int, int], np.ndarray] = {}

    def tag_vectors(self, dim: int, seed: int) -> np.ndarray:
        """(vocab, dim) co-occurrence SVD rows of the tags (``cooccurrence.spectral_rows``), computed once."""
        if (dim, seed) not in self._tag_vectors:
            self._tag_vectors[dim, seed] = spectral_rows(self.incidence, dim, seed)[0]
        return self._tag_vectors[dim, seed]

    @staticmethod
    def _log_conditional(incidence: Any, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """(vocab, classes) log P(class | tag) with add-one smoothing; -1 labels are unknown."""
        from scipy import sparse

        known = labels >= 0
        onehot = sparse.csr_matrix(
            (np.ones(known.sum(), dtype=np.float32), (np.flatnonzero(known), labels[known])),
            shape=(incidence.shape[0], num_classes),
        )
        table = np.asarray((incidence.T @ onehot).todense()) + 1.0
        return np.log(table / table.sum(axis=1, keepdims=True)).astype(np.float32)

    def _incidence(self, visible: Sequence[np.ndarray], weights: np.ndarray | None = None) -> Any:
        from scipy import sparse

        rows = np.repeat(np.arange(len(visible)), [len(v) for v in visible])
        cols = np.concatenate(visible) if len(visible) else np.zeros(0, dtype=np.int64)
        data = np.ones(len(cols), dtype=np.float32) if weights is None else weights[cols]
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(visible), self.vocab_size))

    def suggest_scores(self, visible: Sequence[np.ndarray]) -> np.ndarray:
        """(cases, vocab) float32 sum of cosines to the visible tags.

        The visible tags with a dense row add theirs by a dense product, the others by a sparse one
        (at 146k tags and 1M posts, 134 dense rows held 75% of the entries a case's sum touched).
        Blocks of cases go to threads (``in_row_blocks``; scipy's sparse products release the GIL), each
        writing its rows of the one result.
        """
        scores = np.zeros((len(visible), self.vocab_size), dtype=np.float32)

        def fill(low: int, high: int) -> None:
            chunk = visible[low:high]
            tags = np.concatenate(chunk) if chunk else np.zeros(0, dtype=np.int64)
            case = np.repeat(np.arange(len(chunk)), [len(t) for t in chunk])
            position = self.dense_position[tags]
            common = np.zeros((len(chunk), len(self.dense_rows)), dtype=np.float32)
            np.add.at(common, (case[position >= 0], position[position >= 0]), 1.0)  # a repeated tag counts twice
            np.matmul(common, self.dense_cosine, out=scores[low:high])
            rest = self._incidence([t[self.dense_position[t] < 0] for t in chunk])
            scores[low:high] += (rest @ self.cosine).toarray()

        in_row_blocks(fill, len(visible))
        return scores

    def tfidf(self, visible: Sequence[np.ndarray]) -> Any:
        """(cases, vocab) TF-IDF vectors of the visible tags, a sparse CSR matrix."""
        return self._incidence(visible, self.idf)

    def mean_tag_vectors(self, visible: Sequence[np.ndarray], vectors: np.ndarray) -> np.ndarray:
        """(cases, dim) idf-weighted mean of the rows of ``vectors`` of each case's visible tags."""
        weights = self.tfidf(visible)
        total = np.asarray(weights.sum(axis=1))
        return np.asarray(weights @ vectors) / np.maximum(total, 1e-12)

    def classify(self, visible: Sequence[np.ndarray], log_prob: np.ndarray) -> np.ndarray:
        """Naive-Bayes class of each case from its visible tags (sum of log P(class | tag))."""
        return np.asarray(self._incidence(visible) @ log_prob).argmax(axis=1)
