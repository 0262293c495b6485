"""Retrieval of the search representations beside TF-IDF: sparse, hybrid, BM25 and the SVD of TF-IDF.

The cases are the evaluation's retrieval cases (``Evaluator.retrieval_cases``: test posts with their
character or artist tags removed; a hit is a neighbour among the 10 nearest sharing one). Sides:

- ``sparse.``: the model's sparse tag vectors (``sparse_vectors.sparse_rows``: idf of the present tags,
  the masked-tag head's expected tags, the character and artist columns scaled by a subject weight, every
  column optionally by its subject lift counted on the baseline's posts outside the slice), cosine;
- ``hybrid.``: ``(1 - a) cos_dense + a cos_sparse``; ``a`` (``hybrid.fusion_weight``) and the sparse
  vector's idf power, expansion terms, subject weight and lift exponent (``hybrid.idf_power``,
  ``hybrid.expansion_terms``, ``hybrid.subject_weight``, ``hybrid.lift``, also used by ``sparse.``;
  ``sparse_vectors.SPARSE_SETTINGS``) are chosen on the
  model's held-out validation slice (``data.validation_slice``: training posts it never trained on, made
  into cases exactly as the test posts are, rating and score included) by ``choose_search_settings``,
  never on the test split; a model
  without the slice gets the fixed ``sparse_vectors.FUSION_WEIGHT`` and the vector's settings chosen on
  seeded posts of the baseline's training sample (tags only; ``validation.held_out`` says which);
- ``bm25.``: BM25 over the visible tags, Lucene's variant as bm25s computes it, with a term frequency
  of 1: ``sum over shared tags of idf(t) / (1 + k1 (1 - b + b |d| / avgdl))``, ``idf = log(1 + (N - n +
  0.5) / (n + 0.5))``, N, n and avgdl from the baseline's training sample, for each ``b`` of ``BM25_B`` as ``.b{b}``, and the best of them unsuffixed (an optimistic
  baseline: its ``b`` is picked on the test cases);
- ``lift.``: counting with the subject lift and no model: the TF-IDF vector with every column times its
  lift weight (idf power 1, no expansion, subject weight 1), which says what the lift gives without the model;
- ``svd.``: the rank-``width`` truncated SVD of the training sample's TF-IDF matrix (unit rows), the
  linear dense vector of the model's width: a case is its unit TF-IDF row times the top right singular
  vectors (``cooccurrence.top_eigenpairs``, which never forms the Gram matrix).

Memory: masked-tag logits are held ``CASE_BATCH`` cases at a time and turned into sparse rows at once;
the SVD holds (vocab x width) floats; nothing scales with the training split beyond the baseline's sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cooccurrence import top_eigenpairs
from ..modeling.categories_booru_embed import CATEGORY_IDS
from ..sparse_vectors import (FUSION_WEIGHT, FUSION_WEIGHTS, SPARSE_SETTINGS, column_weighted, fuse, hybrid_rows,
                              sparse_rows, unit_rows)
from .metrics import retrieval_recall_at_k
from .runner import ModelRunner

BM25_B = (0.0, 0.25, 0.5, 0.75, 1.0)
BM25_K1 = 1.5  # bm25s' default; with a term frequency of 1 it only sets how much length normalisation counts
VALIDATION_POSTS = 2000  # training posts of the slice the fusion weight is chosen on
CASE_BATCH = 256  # masked-tag logits held at once: (cases, vocab) float32
CATEGORIES = ("character", "artist")


def choose_fusion_weight(dense: Sequence[np.ndarray], lexical: Sequence[Any], labels: Sequence[Sequence[set[int]]],
                         weights: Sequence[float] = FUSION_WEIGHTS) -> tuple[float, dict[float, float]]:
    """The sparse share ``a`` of the hybrid with the best mean recall@10 over the case sets, and every weight's mean.

    ``dense[i]``, ``lexical[i]`` and ``labels[i]`` are the dense vectors, sparse vectors and labels of
    case set ``i`` (e.g. characters, then artists); ties go to the smaller weight. Holds two (cases, cases)
    float32 matrices per case set: meant for a validation slice of a few thousand posts.
    """
    from scipy import sparse

    # each case set's two cosine matrices once; a weight's fused matrix is scored as queries against the
    # identity (``documents``), which ranks by the fused cosines themselves
    sets = [(unit_rows(d) @ unit_rows(d).T, (unit_rows(s) @ unit_rows(s).T).toarray(), ls)
            for d, s, ls in zip(dense, lexical, labels) if len(ls) >= 2]
    means = {}
    for weight in weights:
        recalls = [retrieval_recall_at_k(fuse(d, s, weight), ls, documents=sparse.identity(len(ls), format="csr"))[0]
                   for d, s, ls in sets]
        recalls = [r for r in recalls if np.isfinite(r)]
        means[float(weight)] = float(np.mean(recalls)) if recalls else float("nan")
    finite = {w: m for w, m in means.items() if np.isfinite(m)}
    best = max(finite, key=lambda w: (finite[w], -w)) if finite else 0.5
    return best, means


def setting_name(power: float, terms: int, subject_weight: float, lift: float, weight: float) -> str:
    """``p{power}.t{terms}.s{subject weight}.l{lift exponent}.w{weight}``: the name of one search setting's
    validation recall."""
    return f"p{power:g}.t{terms}.s{subject_weight:g}.l{lift:g}.w{weight:g}"


def choose_search_settings(dense: Sequence[np.ndarray],
                           lexical: dict[tuple[float, int, float, float], Sequence[Any]],
                           labels: Sequence[Sequence[set[int]]], weights: Sequence[float] = (FUSION_WEIGHT,),
                           ) -> tuple[tuple[float, int, float, float], float, dict[str, float]]:
    """((idf power, expansion terms, subject weight, lift exponent), fusion weight among ``weights``) with the
    best mean recall@10 of the hybrid, and every combination's mean, named by ``setting_name``.

    ``lexical[setting]`` holds the sparse vectors of each case set with those
    settings; ties go to the first settings of the grid and the smaller weight. The weight defaults to the
    fixed ``FUSION_WEIGHT`` (``sparse_vectors`` says why it is not chosen on training posts).
    """
    best, means = None, {}
    for setting, vectors in lexical.items():
        weight, by_weight = choose_fusion_weight(dense, vectors, labels, weights)
        means.update({setting_name(*setting, w): m for w, m in by_weight.items()})
        if best is None or by_weight[weight] > best[2]:
            best = (setting, weight, by_weight[weight])
    return best[0], best[1], means


def model_vectors(evaluator: Any, runner: ModelRunner, posts: Sequence[tuple[Any, np.ndarray]],
                  settings: Sequence[tuple[float, int, float, float]] = SPARSE_SETTINGS,
                  ) -> tuple[np.ndarray, dict[tuple[float, int, float, float], Any]]:
    """Dense embeddings, and sparse vectors with each (idf power, expansion terms, subject weight, lift exponent)
    of (post or None, visible tags) pairs (the vectors of one power and terms have their columns weighted per
    subject weight and lift, ``sparse_vectors.column_weighted``, with the evaluator's lift weights)."""
    from scipy import sparse

    dense = runner.run([evaluator._sequence(p, tags) for p, tags in posts], "embeddings")["embeddings"]
    vector_settings = list(dict.fromkeys((power, terms) for power, terms, *_ in settings))
    parts: dict[tuple[float, int], list[Any]] = {setting: [] for setting in vector_settings}
    for start in range(0, len(posts), CASE_BATCH):
        chunk = posts[start : start + CASE_BATCH]
        logits = runner.run([evaluator._sequence(p, tags, mask=True) for p, tags in chunk], "mlm")["mlm"]
        for power, terms in vector_settings:
            parts[(power, terms)].append(sparse_rows([tags for _, tags in chunk], logits, evaluator.candidates,
                                                     evaluator.baseline.idf, terms=terms, power=power))
    empty = sparse.csr_matrix((0, evaluator.info.vocab_size), dtype=np.float32)
    rows = {setting: sparse.vstack(p).tocsr() if p else empty for setting, p in parts.items()}
    lift = evaluator.lift_weights if any(lift for *_, lift in settings) else None
    return dense, column_weighted(rows, evaluator.info.token_categories, lift, settings)


def validation_cases(evaluator: Any, incidence: Any, category: int,
                     rows: np.ndarray) -> tuple[list[tuple[None, np.ndarray]], list[set[int]]]:
    """Retrieval cases from posts ``rows`` of an incidence matrix (the baseline's training sample, for a
    model without a held-out slice; tags only: no rating, no score)."""
    cats = evaluator.info.token_categories
    posts, labels = [], []
    for row in rows:
        tags = incidence.indices[incidence.indptr[row] : incidence.indptr[row + 1]].astype(np.int64)
        removed = tags[cats[tags] == category]
        if len(removed) and len(removed) < len(tags):
            posts.append((None, tags[cats[tags] != category]))
            labels.append(set(removed.tolist()))
    return posts, labels


def slice_cases(evaluator: Any) -> tuple[int, dict[str, tuple[list[tuple[Any, np.ndarray]], list[set[int]]]]]:
    """(posts in the slice, each of ``CATEGORIES``' retrieval cases): the held-out validation slice's posts
    made into cases as the test posts are, or, without a slice, ``VALIDATION_POSTS`` seeded posts of the
    baseline's training sample (tags only)."""
    if evaluator.validation is not None:
        return len(evaluator.validation), {name: evaluator.retrieval_cases(CATEGORY_IDS[name], evaluator.validation)
                                           for name in CATEGORIES}
    total = evaluator.baseline.incidence.shape[0]
    rows = np.sort(np.random.default_rng([evaluator.seed, 5]).permutation(total)[:VALIDATION_POSTS])
    return len(rows), {name: validation_cases(evaluator, evaluator.baseline.incidence, CATEGORY_IDS[name], rows)
                       for name in CATEGORIES}


def search_settings(evaluator: Any, runner: ModelRunner,
                    out: dict[str, float]) -> tuple[tuple[float, int, float, float], float]:
    """Choose the sparse vector's (idf power, expansion terms, subject weight, lift exponent) and the hybrid's
    weight on the held-out validation slice (or, without one, the vector's settings alone on
    ``VALIDATION_POSTS`` seeded training posts); record them and every combination's recall."""
    held_out = evaluator.validation is not None
    count, cases = slice_cases(evaluator)
    dense, lexical, labels = [], {setting: [] for setting in SPARSE_SETTINGS}, []
    for posts, ls in cases.values():
        if len(posts) >= 2:
            d, by_setting = model_vectors(evaluator, runner, posts)
            dense.append(d), labels.append(ls)
            for setting, vectors in by_setting.items():
                lexical[setting].append(vectors)
    setting, weight, means = choose_search_settings(dense, lexical, labels,
                                                    FUSION_WEIGHTS if held_out else (FUSION_WEIGHT,))
    out["hybrid.fusion_weight"] = weight
    out["hybrid.idf_power"], out["hybrid.expansion_terms"], out["hybrid.subject_weight"], out["hybrid.lift"] = setting
    out["count.validation.posts"], out["validation.held_out"] = float(count), float(held_out)
    for name, mean in means.items():
        out[f"validation.hybrid.{name}.recall@10"] = mean
    return setting, weight


def bm25_sides(evaluator: Any, visible: Sequence[np.ndarray], b: float, k1: float = BM25_K1) -> tuple[Any, Any]:
    """(queries, documents) sparse rows whose inner products are BM25 scores with term frequency 1 (module docstring)."""
    from scipy import sparse

    incidence = evaluator.baseline.incidence
    posts, counts = incidence.shape[0], evaluator.baseline.counts.astype(np.float64)
    idf = np.log1p((posts - counts + 0.5) / (counts + 0.5)).astype(np.float32)
    mean_length = max(incidence.nnz / max(posts, 1), 1e-12)
    lengths = np.array([len(v) for v in visible], dtype=np.float64)
    rows = np.repeat(np.arange(len(visible)), lengths.astype(np.int64))
    cols = np.concatenate(visible) if len(visible) else np.zeros(0, dtype=np.int64)
    shape = (len(visible), evaluator.info.vocab_size)
    queries = sparse.csr_matrix((idf[cols], (rows, cols)), shape=shape)
    saturation = 1.0 / (1.0 + k1 * (1.0 - b + b * lengths / mean_length))  # (posts,) Lucene's tf part at tf = 1
    documents = sparse.csr_matrix((saturation[rows].astype(np.float32), (rows, cols)), shape=shape)
    return queries, documents


def svd_projection(evaluator: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(seen columns, (seen, width) right singular vectors) of the training sample's unit TF-IDF rows."""
    from scipy import sparse

    incidence = evaluator.baseline.incidence
    seen = np.flatnonzero(evaluator.baseline.counts > 0)
    matrix = unit_rows(incidence[:, seen] @ sparse.diags(evaluator.baseline.idf[seen].astype(np.float32))).tocsr()
    rank = min(width, len(seen), matrix.shape[0])
    _, vectors = top_eigenpairs(matrix, rank, evaluator.seed)
    return seen, vectors.astype(np.float32)


def lexical_and_hybrid_retrieval(evaluator: Any, runner: ModelRunner | None, out: dict[str, float],
                                 width: int) -> None:
    """Add the ``sparse``, ``hybrid``, ``bm25``, ``lift`` and ``svd`` retrieval recalls (module docstring) to ``out``.

    ``width`` is the SVD's rank: the model's embedding size. Without a model only BM25, the lift and the SVD are
    measured.
    """
    setting, weight = search_settings(evaluator, runner, out) if runner is not None else (None, None)
    seen, projection = svd_projection(evaluator, width)
    out["svd.width"] = float(projection.shape[1])
    for name in CATEGORIES:
        posts, labels = evaluator.retrieval_cases(CATEGORY_IDS[name])
        if len(posts) < 2:
            continue
        visible = [tags[evaluator.candidates[tags]] for _, tags in posts]
        bm25 = {}
        for b in BM25_B:
            queries, documents = bm25_sides(evaluator, visible, b)
            bm25[b] = retrieval_recall_at_k(queries, labels, documents=documents)[0]
            out[f"bm25.retrieval.{name}.b{b:g}.recall@10"] = bm25[b]
        out[f"bm25.retrieval.{name}.recall@10"] = max(bm25.values())
        tfidf = unit_rows(evaluator.baseline.tfidf(visible)).tocsr()
        lifted = sparse_rows(visible, None, evaluator.candidates, evaluator.baseline.idf, terms=0, power=1.0,
                             column_weights=evaluator.lift_weights)
        out[f"lift.retrieval.{name}.recall@10"] = retrieval_recall_at_k(lifted, labels)[0]
        out[f"svd.retrieval.{name}.recall@10"] = retrieval_recall_at_k(np.asarray(tfidf[:, seen] @ projection), labels)[0]
        if runner is None:
            continue
        dense, by_setting = model_vectors(evaluator, runner, posts, settings=(setting,))
        lexical = by_setting[setting]
        out[f"sparse.retrieval.{name}.recall@10"] = retrieval_recall_at_k(lexical, labels)[0]
        out[f"hybrid.retrieval.{name}.recall@10"] = retrieval_recall_at_k(hybrid_rows(dense, lexical, weight), labels)[0]
        out[f"sparse.retrieval.{name}.nonzeros_per_post"] = float(lexical.nnz / lexical.shape[0])
