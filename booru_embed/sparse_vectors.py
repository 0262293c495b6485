"""Sparse tag vectors for search: the expected TF-IDF vector of a post, from the masked-tag head.

Numpy and scipy only, shared by the embedder (torch and ONNX backends), the evaluation and the index.

A post's sparse vector has one column per vocabulary token. Its *present* tags get a power of their
inverse document frequency, ``idf(t)^power`` with ``idf(t) = log((1 + N) / (1 + n(t))) + 1`` from the
training counts, the TF-IDF baseline's idf (``evaluation/baselines.py``): at ``power`` 1 and without
expansion the vector IS the TF-IDF vector, at 0 it is the binary tag set. The *expansion* terms are the
tags the masked-tag head predicts from the visible tags (the input of ``suggest``: the tags plus one
``<mask>``), weighted as the expected weight

    w(t) = idf(t)^power * min(1, scale * p(t | visible tags))

where ``p`` is the head's softmax over the absent tags. Training spreads the softmax over the whole
hidden set, so ``p`` is about P(t hidden) / (number hidden): ``scale`` plays the number of tags a post
is assumed to miss, and a tag the head is sure of gets its full idf, the weight a present tag has.
Only the ``terms`` heaviest expansion tags are kept (a bounded number of non-zeros per post), never a
present tag. Tags outside the vocabulary have no column: they shape the model's prediction through
their unknown-tag token but get no weight of their own, and a tag set without a single vocabulary tag
gets an all-zero row (it can only be found by the dense vector).

Why a power: on the generated corpora, the flat weights (power 0) found same-character posts best
(characters are told by their common traits, and rare incidental tags mislead a cosine) and full idf
(power 1) same-artist posts best, so the index and the evaluation choose the vector's settings, with
the fusion weight, on the model's held-out validation posts (``SPARSE_SETTINGS``: each idf power with
expansion, and the plain TF-IDF vector, so that where expansion only blurs exact rare tags the choice
can fall back to counting); ``IDF_POWER`` is the default of ``embed_sparse``.

Why a subject weight: a search for posts like a given one usually lacks what it looks for (the
character, the artist) and holds the other subject tags, which are rare and so dominate an idf-weighted
vector: a query without its character ranks the same artist's posts first, whatever they show. The
finished vector's character and artist columns are therefore multiplied by ``subject_weight``
(``SUBJECT_WEIGHTS``, chosen on the validation posts with the other settings; 1 leaves the vector as
it is), as BM25F weighs a document's fields. The expansion tags are picked before the weighting.

Why a subject lift: idf says how rare a tag is, not whether it tells subjects apart (a rare incidental
tag is rare in every character's posts). The *subject lift* of a tag t says how much more often two
posts that both carry t share a character or an artist than two posts do at all:

    lift(t) = P(two posts share a subject | both have t) / P(two posts share a subject)

counted on training posts (``subject_lift_weights``: over pairs of distinct posts, smoothed toward 1 by
``LIFT_SMOOTHING`` pairs). The column weight ``sqrt(max(log lift(t), 0) + LIFT_FLOOR)`` makes the inner
product of two vectors the sum of the shared tags' log lifts, the evidence a naive-Bayes reading gives
for the two posts sharing a subject; the floor keeps tags that say nothing about subjects (lift at or
below 1) in the vector with a small weight, so a tag set of such tags still has a direction. A subject
tag's own lift is the largest (its posts always share it). The vector's settings carry it as an
exponent (``LIFT_EXPONENTS``: 0 leaves the idf vector, 1 multiplies each column by its lift weight),
chosen on the validation posts with the others; the lift is counted on training posts outside them.

Fusion (``fuse``): the hybrid score is the convex combination ``(1 - a) cos_dense + a cos_sparse``
(``a`` chosen on the validation posts, ``FUSION_WEIGHT`` without them) of the two cosines (Bruch, Gai and Ingber, ACM TOIS 2023: a convex combination of normalised scores beat
reciprocal rank fusion, with one weight tuned on a few labelled queries). Both cosines are bounded, so
they need no per-query normalisation, and the combination is the inner product of the concatenation
``[sqrt(1 - a) dense, sqrt(a) sparse]`` of unit rows (``hybrid_rows``): exact scoring and the evaluation
use that identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .modeling.categories_booru_embed import CATEGORY_IDS
from .ranking import masked_log_softmax

EXPANSION_TERMS = 16  # expansion tags kept per post: bounded non-zeros, past the head's confident guesses
EXPANSION_SCALE = 4.0  # the number of tags a post is assumed to miss (see the module docstring)
FUSION_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # a grid for choose_fusion_weight
# The sparse share a of the hybrid for a model WITHOUT a held-out validation slice (trained with
# --validation-posts 0, or before the slice existed); with one, index and evaluate choose a on FUSION_WEIGHTS.
# Chosen on TRAINING posts it came out too low (0.7-0.8), because the dense embedding was trained
# contrastively on exactly those posts with same-subject partners, so it finds their characters 2.5 times
# as well as on unseen posts (many-characters seed 0: 0.29 vs 0.11). 0.9 was read off the test splits of
# the choosing settings default and many-characters (seed 0; docs/search.md).
FUSION_WEIGHT = 0.9
# (idf power, expansion terms) pairs of the vectors the index and the evaluation choose among, each with every
# subject weight (module docstring); the last is the TF-IDF vector itself: with it, a subject weight of 1 and a
# fusion weight of 1 the hybrid ranks exactly as TF-IDF does
VECTOR_SETTINGS = ((0.0, EXPANSION_TERMS), (0.5, EXPANSION_TERMS), (1.0, EXPANSION_TERMS), (1.0, 0))
SUBJECT_CATEGORIES = ("character", "artist")  # the columns ``subject_weight`` scales (module docstring)
SUBJECT_WEIGHTS = (1.0, 0.5)  # the subject weights the validation posts choose among
LIFT_EXPONENTS = (0.0, 1.0)  # without and with the subject lift weights (module docstring)
LIFT_SMOOTHING = 2.0  # pairs of posts at the overall share-a-subject rate added to every tag's pairs
LIFT_FLOOR = 0.1  # the squared weight of a tag whose lift is at most 1
# (idf power, expansion terms, subject weight, lift exponent) settings the index and the evaluation choose
# among; a subject weight of 1 and no lift come first, so a tie keeps the plain vector
SPARSE_SETTINGS = tuple((power, terms, subject, lift) for power, terms in VECTOR_SETTINGS
                        for subject in SUBJECT_WEIGHTS for lift in LIFT_EXPONENTS)
IDF_POWER = 0.5  # embed_sparse's default: between what characters (0) and artists (1) preferred


def idf_weights(counts: Sequence[int] | np.ndarray, num_posts: int) -> np.ndarray:
    """(vocab,) float32 ``log((1 + N) / (1 + n)) + 1`` of the training counts ``n`` of ``N`` posts (TF-IDF's idf)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (np.log((1.0 + num_posts) / (1.0 + counts)) + 1.0).astype(np.float32)


def sparse_rows(present: Sequence[np.ndarray], logits: np.ndarray | None, candidates: np.ndarray, idf: np.ndarray,
                terms: int = EXPANSION_TERMS, scale: float = EXPANSION_SCALE, power: float = IDF_POWER,
                column_weights: np.ndarray | None = None) -> Any:
    """(posts, vocab) float32 CSR sparse vectors: ``idf^power`` of the present tags plus the expansion terms.

    ``present`` holds each post's vocabulary token ids (non-candidates such as rating or unknown-tag
    tokens are ignored); ``logits`` (posts, vocab) the masked-tag logits of each post's tags plus one
    ``<mask>`` (None, or ``terms`` 0: no expansion); ``candidates`` (vocab,) the tokens a vector may hold.
    A post without a candidate tag gets an empty row (module docstring). ``column_weights`` (vocab,), e.g.
    ``subject_column_weights``, multiplies every column of the finished vectors (``weigh_columns``).
    """
    from scipy import sparse

    if terms < 0 or scale < 0 or power < 0:
        raise ValueError(f"terms, scale and power must be non-negative, got {terms}, {scale} and {power}")
    idf = np.asarray(idf, dtype=np.float32) ** np.float32(power)
    tags = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in present]
    tags = [ids[candidates[ids]] for ids in tags]
    rows = [np.repeat(np.arange(len(tags)), [len(ids) for ids in tags])]
    cols = [np.concatenate(tags) if tags else np.zeros(0, dtype=np.int64)]
    values = [idf[cols[0]]]
    expand = np.flatnonzero([len(ids) > 0 for ids in tags]) if logits is not None and terms > 0 else []
    if len(expand):
        allowed = np.repeat(candidates[None], len(expand), axis=0)  # (expanded posts, vocab)
        allowed[np.repeat(np.arange(len(expand)), [len(tags[i]) for i in expand]),
                np.concatenate([tags[i] for i in expand])] = False  # never a present tag
        probability = np.exp(masked_log_softmax(np.asarray(logits, dtype=np.float32)[expand], allowed))
        weight = np.where(allowed, idf * np.minimum(1.0, scale * probability), 0.0)
        kept = min(terms, weight.shape[1] - 1)
        chosen = np.argpartition(-weight, kept, axis=1)[:, :terms]  # (expanded posts, terms)
        chosen_weight = np.take_along_axis(weight, chosen, axis=1)
        positive = chosen_weight > 0
        rows.append(np.repeat(expand, terms).reshape(len(expand), terms)[positive])
        cols.append(chosen[positive])
        values.append(chosen_weight[positive])
    matrix = sparse.csr_matrix((np.concatenate(values).astype(np.float32),
                                (np.concatenate(rows), np.concatenate(cols))), shape=(len(tags), len(candidates)))
    matrix.sort_indices()
    return matrix if column_weights is None else weigh_columns(matrix, column_weights)


def subject_column_weights(token_categories: np.ndarray, subject_weight: float) -> np.ndarray:
    """(vocab,) float32: ``subject_weight`` for the tokens of ``SUBJECT_CATEGORIES``, 1 for every other token."""
    if subject_weight < 0:
        raise ValueError(f"the subject weight must be non-negative, got {subject_weight}")
    subjects = np.isin(np.asarray(token_categories), [CATEGORY_IDS[name] for name in SUBJECT_CATEGORIES])
    return np.where(subjects, np.float32(subject_weight), np.float32(1.0)).astype(np.float32)


def subject_lift_weights(incidence: Any, token_categories: np.ndarray, smoothing: float = LIFT_SMOOTHING,
                         floor: float = LIFT_FLOOR, exclude_rows: np.ndarray | None = None,
                         chunk: int = 4096) -> np.ndarray:
    """(vocab,) float32 column weights ``sqrt(max(log lift(t), 0) + floor)`` (module docstring) from the binary
    (posts, vocab) ``incidence`` of training posts, without its rows ``exclude_rows``; the subjects are the
    tokens of ``SUBJECT_CATEGORIES``.

    For a tag t on n posts, of which n_k carry subject k: ``lift = ((sum_k n_k (n_k - 1)) / (n (n - 1)))
    / rate``, the pairs of its posts that share a subject over all its pairs, against ``rate``, the same
    share over all posts; ``smoothing`` pairs at ``rate`` are added to every tag, so a tag on one post has
    lift 1 (as has a tag without a pair when ``smoothing`` is 0). Memory: one float32 copy of
    ``incidence`` (column-major, so its transpose is the tags' posting lists at no cost) and the
    (vocab, ``chunk``) co-counts of ``chunk`` subjects at a time.
    """
    from scipy import sparse

    by_post = sparse.csc_matrix(incidence, dtype=np.float32, copy=True)
    by_post.data[:] = 1.0
    if exclude_rows is not None and len(exclude_rows):
        by_post.data[np.isin(by_post.indices, exclude_rows)] = 0.0
        by_post.eliminate_zeros()
    posts = by_post.shape[0] - (len(np.unique(exclude_rows)) if exclude_rows is not None else 0)
    vocab = by_post.shape[1]
    subjects = np.flatnonzero(np.isin(np.asarray(token_categories)[:vocab],
                                      [CATEGORY_IDS[name] for name in SUBJECT_CATEGORIES]))
    counts = np.diff(by_post.indptr).astype(np.float64)  # posts of each tag
    same = np.zeros(vocab)
    by_tag = by_post.T  # (vocab, posts) CSR: a view of the same arrays
    for start in range(0, len(subjects), chunk):
        together = (by_tag @ by_post[:, subjects[start : start + chunk]]).tocsr()  # (vocab, chunk) co-counts
        data = together.data.astype(np.float64)
        together.data = (data * (data - 1.0)).astype(np.float32)
        same += np.asarray(together.sum(axis=1, dtype=np.float64)).ravel()
    subject_counts = counts[subjects]
    rate = (subject_counts * (subject_counts - 1)).sum() / max(posts * (posts - 1), 1)
    if rate <= 0:  # no two posts share a subject: nothing tells subjects apart
        return np.full(vocab, np.sqrt(floor), dtype=np.float32)
    pairs = counts * (counts - 1) + smoothing
    lift = np.divide(same + smoothing * rate, pairs * rate, out=np.ones(vocab), where=pairs > 0)  # no pair: 1
    return np.sqrt(np.maximum(np.log(lift), 0.0) + floor).astype(np.float32)


def column_weighted(vectors: dict[tuple[float, int], Any], token_categories: np.ndarray,
                    lift_weights: np.ndarray | None,
                    settings: Sequence[tuple[float, int, float, float]] = SPARSE_SETTINGS,
                    ) -> dict[tuple[float, int, float, float], Any]:
    """The sparse vectors of each (idf power, expansion terms, subject weight, lift exponent) of ``settings``:
    those of ``vectors[(power, terms)]`` with each column scaled by its subject weight times its
    ``lift_weights`` (``subject_lift_weights``) to the lift exponent (weight 1, exponent 0: the matrix itself).
    Raises ValueError for a lift exponent without ``lift_weights``."""
    result = {}
    for power, terms, subject, lift in settings:
        weights = setting_column_weights(token_categories, subject, lift_weights, lift)
        matrix = vectors[(power, terms)]
        result[(power, terms, subject, lift)] = matrix if weights is None else weigh_columns(matrix, weights)
    return result


def setting_column_weights(token_categories: np.ndarray, subject_weight: float, lift_weights: np.ndarray | None,
                           lift_exponent: float) -> np.ndarray | None:
    """(vocab,) float32 column weights of a subject weight and a lift exponent (``LIFT_EXPONENTS``): the subject
    columns times ``subject_weight``, every column times its ``lift_weights ** lift_exponent``; None when both
    leave the vector as it is. Raises ValueError for a lift exponent without ``lift_weights``."""
    weights = subject_column_weights(token_categories, subject_weight) if subject_weight != 1.0 else None
    if not lift_exponent:
        return weights
    if lift_weights is None:
        raise ValueError("a setting with the subject lift needs the lift weights")
    lifted = np.asarray(lift_weights, dtype=np.float32) ** np.float32(lift_exponent)
    return lifted if weights is None else weights * lifted


def weigh_columns(matrix: Any, column_weights: np.ndarray) -> Any:
    """A CSR copy of the sparse ``matrix`` (rows, vocab) with each column multiplied by its ``column_weights``."""
    from scipy import sparse

    weighted = sparse.csr_matrix(matrix, dtype=np.float32, copy=True)
    weighted.data *= np.asarray(column_weights, dtype=np.float32)[weighted.indices]
    return weighted


def unit_rows(matrix: Any) -> Any:
    """Rows scaled to unit L2 norm (an all-zero row stays zero); sparse stays sparse, dense stays dense."""
    from scipy import sparse

    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix, dtype=np.float32)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
        return sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ matrix
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def hybrid_rows(dense: np.ndarray, sparse_vectors: Any, weight: float) -> Any:
    """CSR rows whose inner products are ``(1 - weight) cos_dense + weight cos_sparse`` (module docstring)."""
    from scipy import sparse

    check_weight(weight)
    return sparse.hstack([np.sqrt(1.0 - weight) * sparse.csr_matrix(unit_rows(dense)),
                          np.sqrt(weight) * unit_rows(sparse_vectors)]).tocsr()


def fuse(dense_scores: np.ndarray, sparse_scores: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * dense_scores + weight * sparse_scores``: the hybrid score from the two cosines."""
    check_weight(weight)
    return (1.0 - weight) * np.asarray(dense_scores) + weight * np.asarray(sparse_scores)


def check_weight(weight: float) -> None:
    """ValueError unless 0 <= weight <= 1 (the sparse side's share of the hybrid score)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the fusion weight must lie in [0, 1], got {weight}")
