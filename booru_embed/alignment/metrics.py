"""The aligner's report: the seed's four measures, tag F1 at precision = recall, and nearest-post hits.

Three sources of tags are compared on the same test posts: the read-back of the post's own booru-embed
embedding (the ceiling), the read-back of the aligned external vector, and a linear probe from the
external vector straight to the tags. F1 is micro F1 at the threshold where precision equals recall
(``evaluation.metrics``), over all tags, per category, and on rare tags (those outside the
``min(POPULAR_TAGS, tags // 2)`` most frequent tags of the training pairs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluation.metrics import RankingAccumulator
from ..modeling.categories_booru_embed import CATEGORY_NAMES, TAG_CATEGORIES

POPULAR_TAGS = 2000  # as evaluation's popular/rest split; on a small vocabulary the rarer half is "rare"
HIT_K = 10


def tag_groups(categories: np.ndarray, is_tag: np.ndarray, tag_counts: np.ndarray) -> dict[str, np.ndarray]:
    """(vocab,) bool masks: ``all`` tags, one per category that has tags, and ``rare``."""
    groups = {"all": is_tag.copy()}
    for name in TAG_CATEGORIES:
        members = is_tag & (categories == CATEGORY_NAMES.index(name))
        if members.any():
            groups[name] = members
    tags = np.flatnonzero(is_tag)
    popular = tags[np.argsort(-tag_counts[tags], kind="stable")[: min(POPULAR_TAGS, len(tags) // 2)]]
    groups["rare"] = is_tag.copy()
    groups["rare"][popular] = False
    return groups


class TagF1:
    """Accumulates one source's tag scores over batches; ``metrics`` gives F1 at P=R per group."""

    def __init__(self, groups: dict[str, np.ndarray]) -> None:
        """Score the columns of ``groups`` (see ``tag_groups``)."""
        self.accumulator = RankingAccumulator(groups, ks=(1,))
        self.groups = groups

    def add(self, logits: np.ndarray, answers: Sequence[set[int]]) -> None:
        """(posts, vocab) scores of a batch and each post's true tag ids."""
        self.accumulator.add(np.asarray(logits, dtype=np.float32), answers)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}.f1`` (all tags) and ``{prefix}.f1.{group}`` for every other group."""
        raw = self.accumulator.metrics("x")
        out = {f"{prefix}.f1": raw["x.micro_f1"]}
        out.update({f"{prefix}.f1.{name}": raw[f"x.{name}.micro_f1"] for name in self.groups
                    if name != "all" and f"x.{name}.micro_f1" in raw})
        return out


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def _bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Elementwise BCE with logits (numerically stable), targets in [0, 1]."""
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


class PairMeasures:
    """Sums of the seed's four measures of an aligned vector against the post's own embedding."""

    def __init__(self) -> None:
        """Start empty."""
        self.sums = {"cosine": 0.0, "norm_diff": 0.0, "relative_norm_diff": 0.0, "bce_tags": 0.0,
                     "bce_readback": 0.0, "mse_readback": 0.0}
        self.posts = 0

    def add(self, aligned: np.ndarray, target: np.ndarray, aligned_logits: np.ndarray,
            target_logits: np.ndarray, truth: np.ndarray, is_tag: np.ndarray) -> None:
        """One batch: raw vectors (n, d), read-back logits (n, vocab), multi-hot true tags (n, vocab)."""
        a, t = aligned.astype(np.float64), target.astype(np.float64)
        na, nt = np.linalg.norm(a, axis=1), np.linalg.norm(t, axis=1)
        self.sums["cosine"] += float(((a * t).sum(1) / np.maximum(na * nt, 1e-12)).sum())
        self.sums["norm_diff"] += float(np.abs(na - nt).sum())
        self.sums["relative_norm_diff"] += float((np.abs(na - nt) / np.maximum(nt, 1e-12)).sum())
        x, reference = aligned_logits[:, is_tag].astype(np.float64), _sigmoid(target_logits[:, is_tag].astype(np.float64))
        self.sums["bce_tags"] += float(_bce(x, truth[:, is_tag]).mean(1).sum())
        self.sums["bce_readback"] += float(_bce(x, reference).mean(1).sum())
        self.sums["mse_readback"] += float(((_sigmoid(x) - reference) ** 2).mean(1).sum())
        self.posts += len(a)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Means over posts: cosine, norm differences, BCE against the tags and against the ceiling's read-back, MSE."""
        return {f"{prefix}.{key}": value / max(self.posts, 1) for key, value in self.sums.items()}


def nearest_hits(queries: np.ndarray, own_rows: np.ndarray, index: np.ndarray, characters: Sequence[frozenset],
                 k: int = HIT_K, chunk: int = 8192) -> tuple[float, float]:
    """(hit@k, character hit@k) of unit-row ``queries`` against unit-row ``index`` by cosine.

    hit@k: the query's own post (``own_rows``, its row of ``index``) or a post sharing one of its characters
    is among the k nearest. Character hit@k: on queries with a character, a post sharing one is among the
    k nearest with the own post left out. ``characters`` holds each index row's set of characters.
    """
    count = min(k + 1, len(index))
    best_scores = np.full((len(queries), count), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), count), dtype=np.int64)
    for start in range(0, len(index), chunk):
        scores = queries @ index[start : start + chunk].T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, rows], axis=1)
        top = np.argsort(-merged_scores, axis=1, kind="stable")[:, :count]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    hits, character_hits = [], []
    for own, rows in zip(own_rows, best_rows):
        wanted = characters[own]
        shared = [bool(wanted & characters[row]) for row in rows]
        hits.append(own in rows[:k] or any(shared[:k]))
        if wanted:
            others = [s for row, s in zip(rows, shared) if row != own][:k]
            character_hits.append(any(others))
    return float(np.mean(hits)), float(np.mean(character_hits)) if character_hits else float("nan")
