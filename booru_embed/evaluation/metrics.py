"""Metrics on plain arrays: F1 at the precision = recall threshold, recall@k, retrieval recall, peak memory.

Threshold metrics follow the WD tagger reports: micro F1 at the threshold where precision equals
recall (that is, when as many (post, tag) pairs are predicted as there are true ones, so F1 = the
share of true pairs among the top-scored ones); macro F1 is the mean over tags of F1 at that same
threshold. Candidates outside each case's top ``TOP_K`` are treated as not predicted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_K = 100  # candidates kept per case; P=R thresholds never reach deeper on tag-set data


def f1_at_equal_precision_recall(
    scores: np.ndarray, hits: np.ndarray, tags: np.ndarray, positives_per_tag: dict[int, int]
) -> tuple[float, float, float]:
    """(micro F1, macro F1, threshold) at the threshold where precision equals recall.

    ``scores``/``hits``/``tags`` are parallel arrays of scored (case, tag) pairs (``hits`` True when
    the tag is a true answer of its case); ``positives_per_tag`` counts the true pairs of every tag,
    scored or not. Precision equals recall when the number predicted equals the number of positives P,
    so the threshold is the P-th highest score and micro F1 = hits among the top P / P. Macro F1 is the
    mean over tags with a positive of 2 tp / (predicted + positives) at that threshold.
    """
    total = sum(positives_per_tag.values())
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")[:total]
    micro = float(hits[order].sum() / total)
    threshold = float(scores[order[-1]]) if len(order) else float("inf")
    predicted = np.bincount(tags[order], minlength=1)
    true_positive = np.bincount(tags[order][hits[order]], minlength=1)
    f1s = []
    for tag, positives in positives_per_tag.items():
        if positives:
            tp = true_positive[tag] if tag < len(true_positive) else 0
            pred = predicted[tag] if tag < len(predicted) else 0
            f1s.append(2 * tp / (pred + positives))
    return micro, float(np.mean(f1s)), threshold


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    """Mean over cases of |top-k ∩ positives| / min(k, |positives|) (1.0 = as good as possible)."""
    values = [len(set(row[:k].tolist()) & pos) / min(k, len(pos)) for row, pos in zip(ranked, positives) if pos]
    return float(np.mean(values)) if values else float("nan")


def retrieval_recall_at_k(
    vectors: np.ndarray, labels: Sequence[set[int]], k: int = 10, chunk: int = 1024, documents: Any = None,
) -> tuple[float, float]:
    """(recall@k, chance) of finding posts that share a label among the k nearest by cosine.

    For each query with at least one other post sharing a label: (neighbours among its k nearest,
    itself excluded, that share a label) / min(k, posts sharing a label). Chance is the same
    quantity expected from k random neighbours. ``vectors`` is a dense array or a scipy sparse
    matrix (TF-IDF rows: a sparse product is far cheaper than a dense one over the vocabulary).
    With ``documents`` (the same posts as other rows, e.g. BM25's document side) the score is the raw
    inner product ``vectors @ documents.T``, nothing normalised: an asymmetric scorer.
    """
    n = len(labels)
    if n < 2:
        return float("nan"), float("nan")
    if documents is not None:
        unit, others = vectors, documents
    elif hasattr(vectors, "tocsr"):
        from scipy import sparse

        vectors = vectors.tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1))).ravel()
        unit = sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ vectors
    else:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    if documents is None:
        others = unit
    label_to_posts: dict[int, set[int]] = {}
    for i, ls in enumerate(labels):
        for label in ls:
            label_to_posts.setdefault(label, set()).add(i)
    # posts sharing a label, itself excluded: a count for one label, a set union for several
    relevant = np.array([len(label_to_posts[next(iter(ls))]) - 1 if len(ls) == 1
                         else len(set().union(*(label_to_posts[lab] for lab in ls)) - {i}) if ls else 0
                         for i, ls in enumerate(labels)], dtype=np.int64)
    width = max(1, max(len(ls) for ls in labels))
    padded = np.full((n, width), -1, dtype=np.int64)  # each post's labels, -1 padded
    for i, ls in enumerate(labels):
        padded[i, : len(ls)] = sorted(ls)
    k_eff = min(k, n - 1)
    found = np.zeros(n, dtype=np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        sims = unit[rows] @ others.T  # (chunk, n)
        sims = sims.toarray() if hasattr(sims, "toarray") else sims
        sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]  # (chunk, k)
        mine = padded[rows][:, None, :, None]  # (chunk, 1, width, 1)
        theirs = padded[top][:, :, None, :]  # (chunk, k, 1, width)
        shares = ((mine == theirs) & (mine >= 0)).any(axis=(2, 3))  # (chunk, k)
        found[rows] = shares.sum(axis=1)
    queries = relevant > 0
    if not queries.any():
        return float("nan"), float("nan")
    best = np.minimum(k, relevant[queries])
    recall = found[queries] / best
    chance = k_eff * relevant[queries] / (n - 1) / best
    return float(recall.mean()), float(chance.mean())


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k highest scores of every row, best first; equal scores rank the lower
    index first (the order a stable sort of the whole row gives).

    ``torch.topk`` keeps k + 1 entries a row (no sort or partition of the whole row in numpy); only
    rows whose k-th and (k+1)-th scores tie, where which tied entries make the cut is up to the kernel,
    are sorted in full.
    """
    import torch

    rows, width = scores.shape
    k = min(k, width)
    if k == 0 or rows == 0:
        return np.zeros((rows, k), dtype=np.int64), np.zeros((rows, k), dtype=scores.dtype)
    scores = np.ascontiguousarray(scores)
    vals, idx = (t.numpy() for t in torch.topk(torch.from_numpy(scores), min(k + 1, width), dim=1))
    order = np.lexsort((idx, -vals))  # along each row: by score, then by index
    idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
    if vals.shape[1] > k:
        for row in np.flatnonzero(vals[:, k - 1] == vals[:, k]):
            idx[row, :k] = np.argsort(-scores[row], kind="stable")[:k]
            vals[row, :k] = scores[row, idx[row, :k]]
    return idx[:, :k], vals[:, :k]


class RankingAccumulator:
    """Collects the scores of many cases, per tag group, for the threshold and recall@k metrics."""

    def __init__(self, groups: dict[str, np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> None:
        self.groups = groups  # name -> (vocab,) bool
        self.ks = ks
        self.pairs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {g: [] for g in groups}
        self.positives: dict[str, dict[int, int]] = {g: {} for g in groups}
        self.ranked: list[np.ndarray] = []
        self.answers: list[set[int]] = []
        # "atoms": the columns sharing one set of groups (here category x popular). Each column is ranked
        # once, in its atom; a group's top TOP_K is merged from the top TOP_K of its atoms.
        signature = sum(members.astype(np.int64) << bit for bit, members in enumerate(groups.values()))
        kinds = np.unique(signature[signature > 0]) if len(groups) else np.zeros(0, dtype=np.int64)
        self.atoms = [np.flatnonzero(signature == kind) for kind in kinds]
        self.atoms_of = {name: [a for a, kind in enumerate(kinds) if kind >> bit & 1] for bit, name in enumerate(groups)}

    def add(self, scores: np.ndarray, answers: Sequence[set[int]]) -> None:
        """Add cases: ``scores`` (cases, vocab), -inf where a case rules a tag out (its visible tags), the
        columns outside every group never looked at; ``answers`` the true tags."""
        cases, vocab = scores.shape
        answer_rows = np.repeat(np.arange(len(answers)), [len(a) for a in answers])
        answer_ids = np.fromiter((t for a in answers for t in a), dtype=np.int64, count=len(answer_rows))
        answer_keys = np.unique(answer_rows * vocab + answer_ids)  # (case, tag) pairs as case * vocab + tag
        best = []
        for columns in self.atoms:
            # np.take gives C order (a[:, idx] is F order, slow to rank); an atom of every column needs no copy
            atom_scores = scores if len(columns) == vocab else np.take(scores, columns, axis=1)
            idx, vals = top_k(atom_scores, TOP_K)
            best.append((columns[idx], vals))
        for name, members in self.groups.items():
            parts = [best[a] for a in self.atoms_of[name]]
            idx = np.concatenate([p[0] for p in parts], axis=1) if parts else np.zeros((cases, 0), dtype=np.int64)
            vals = np.concatenate([p[1] for p in parts], axis=1) if parts else np.zeros((cases, 0), dtype=scores.dtype)
            order = np.lexsort((idx, -vals))[:, :TOP_K]  # the atoms' best, merged: by score, then by index
            idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
            finite = np.isfinite(vals)
            hits = np.isin(np.arange(cases)[:, None] * vocab + idx, answer_keys)
            self.pairs[name].append((vals[finite], hits[finite], idx[finite]))
            counts = self.positives[name]
            for t, n in zip(*np.unique(answer_ids[members[answer_ids]], return_counts=True)):
                counts[int(t)] = counts.get(int(t), 0) + int(n)
            if name == "all":
                self.ranked.extend(idx[:, : max(self.ks)])
                self.answers.extend(answers)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}.micro_f1``, ``.macro_f1``, per group ``.{group}.micro_f1``, and ``.recall@k``."""
        out: dict[str, float] = {}
        for name in self.groups:
            if not self.pairs[name]:
                continue
            scores, hits, tags = (np.concatenate(parts) for parts in zip(*self.pairs[name]))
            micro, macro, _ = f1_at_equal_precision_recall(scores, hits, tags, self.positives[name])
            key = prefix if name == "all" else f"{prefix}.{name}"
            out[f"{key}.micro_f1"] = micro
            out[f"{key}.macro_f1"] = macro
        ranked = np.array(self.ranked) if self.ranked else np.zeros((0, 1), dtype=np.int64)
        for k in self.ks:
            out[f"{prefix}.recall@{k}"] = recall_at_k(ranked, self.answers, k)
        return out


def peak_memory_mb() -> float:
    """The process's peak resident memory so far, in MB (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:  # no `resource` module on Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux

