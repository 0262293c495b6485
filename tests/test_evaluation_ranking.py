"""The evaluation's top-k selection: the same rankings as a stable sort of whole rows, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from booru_embed.evaluation import RankingAccumulator
from booru_embed.evaluation.metrics import TOP_K, top_k


def tied_scores(rng: np.random.Generator, rows: int, width: int, levels: int) -> np.ndarray:
    """Scores with many equal values (``levels`` distinct ones) and about 30% -inf (non-candidates)."""
    scores = rng.integers(0, levels, size=(rows, width)).astype(np.float32)
    scores[rng.random((rows, width)) < 0.3] = -np.inf
    return scores


@pytest.mark.parametrize("levels", [2, 7, 10**6])
def test_top_k_is_the_head_of_a_stable_sort(levels: int) -> None:
    rng = np.random.default_rng(levels)
    for width, k in ((1, 5), (50, 50), (50, 49), (300, 100), (2000, 100)):
        scores = tied_scores(rng, 12, width, levels)
        idx, vals = top_k(scores, k)
        expected = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, width)]
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_array_equal(vals, np.take_along_axis(scores, expected, axis=1))


def reference_pairs(scores: np.ndarray, members: np.ndarray, answers: list[set[int]]):
    """A group's kept (score, hit, tag) triples the plain way: a stable sort of the group's columns."""
    columns = np.flatnonzero(members)
    order = np.argsort(-scores[:, columns], axis=1, kind="stable")[:, :TOP_K]
    idx = columns[order]
    vals = np.take_along_axis(scores, idx, axis=1)
    hits = np.array([[t in answer for t in row] for row, answer in zip(idx, answers)], dtype=bool)
    finite = np.isfinite(vals)
    return vals[finite], hits[finite], idx[finite]


def test_accumulator_groups_match_a_full_sort_of_each_group() -> None:
    rng = np.random.default_rng(0)
    vocab = 1500
    groups = {"all": rng.random(vocab) < 0.9}
    category = rng.integers(0, 3, vocab)
    popular = rng.random(vocab) < 0.1
    groups.update({f"cat{c}": groups["all"] & (category == c) for c in range(3)})
    groups.update({"popular": groups["all"] & popular, "rest": groups["all"] & ~popular, "empty": np.zeros(vocab, bool)})
    acc = RankingAccumulator(groups)
    batches = []
    for _ in range(3):
        scores = np.where(groups["all"], tied_scores(rng, 40, vocab, 5), -np.inf)
        answers = [{int(rng.choice(np.flatnonzero(row == row.max())))}  # one of the best-scored, some others
                   | set(rng.choice(np.flatnonzero(groups["all"]), size=rng.integers(0, 5), replace=False).tolist())
                   for row in scores]
        acc.add(scores, answers)
        batches.append((scores, answers))
    for name, members in groups.items():
        if not members.any():
            assert all(len(part[0]) == 0 for part in acc.pairs[name])
            continue
        for (scores, answers), got in zip(batches, acc.pairs[name]):
            for a, b in zip(got, reference_pairs(scores, members, answers)):
                np.testing.assert_array_equal(a, b)
    ranked = np.concatenate([np.argsort(-np.where(groups["all"], s, -np.inf), axis=1, kind="stable")[:, :10]
                             for s, _ in batches])
    np.testing.assert_array_equal(np.array(acc.ranked), ranked)
    assert 0 < acc.metrics("m")["m.micro_f1"] < 1


def test_one_group_of_every_column_with_non_candidates_at_minus_inf_equals_the_candidate_group() -> None:
    """The read-back's in-place form: no column copy, the same kept pairs and metrics as ranking the candidates."""
    rng = np.random.default_rng(1)
    vocab = 800
    candidates = rng.random(vocab) < 0.8
    by_group = RankingAccumulator({"all": candidates}, ks=(1,))
    in_place = RankingAccumulator({"all": np.ones(vocab, dtype=bool)}, ks=(1,))
    for _ in range(2):
        scores = rng.normal(size=(30, vocab)).astype(np.float32)
        answers = [set(rng.choice(np.flatnonzero(candidates), size=3, replace=False).tolist()) for _ in range(30)]
        by_group.add(scores, answers)
        masked = scores.copy()
        masked[:, ~candidates] = -np.inf
        in_place.add(masked, answers)
    for got, expected in zip(in_place.pairs["all"], by_group.pairs["all"]):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    assert in_place.metrics("x") == by_group.metrics("x")
