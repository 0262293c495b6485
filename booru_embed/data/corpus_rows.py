"""Pieces shared by the corpus generators (``synthetic`` and ``danbooru_pairs``): the CSV layout of a
BigQuery export, tags drawn independently per post, grouping drawn (post, tag) pairs by post, and the
transitive closure of an implication table."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

import numpy as np

T = TypeVar("T", bound=Hashable)

CSV_HEADER = (
    "id,rating,score,tag_string_meta,tag_string_general,tag_string_artist,"
    "tag_string_copyright,tag_string_character"
)

def implication_closures(implications: Iterable[tuple[T, T]]) -> dict[T, tuple[T, ...]]:
    """Every antecedent of the (antecedent, consequent) pairs -> all it implies, directly or through a chain."""
    direct: dict[T, list[T]] = {}
    for antecedent, consequent in implications:
        direct.setdefault(antecedent, []).append(consequent)
    closed: dict[T, tuple[T, ...]] = {}
    for start in direct:
        seen: list[T] = []
        stack = list(direct[start])
        while stack:
            tag = stack.pop()
            if tag != start and tag not in seen:
                seen.append(tag)
                stack.extend(direct.get(tag, ()))
        closed[start] = tuple(seen)
    return closed


def quote_field(field: str) -> str:
    """A CSV field as BigQuery writes it: empty as ``""``, quoted when it has a quote or comma."""
    if not field:
        return '""'
    if '"' in field or "," in field or "\n" in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def post_runs(posts: np.ndarray, ids: np.ndarray, num_posts: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ids grouped by post): post i's ids are ``ids[starts[i]:starts[i + 1]]``."""
    order = np.argsort(posts, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(posts, minlength=num_posts))]), ids[order]


def independent_tags(rng: np.random.Generator, probability: np.ndarray, richness: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Tags each in a post independently, with probability min(1, p_tag * richness_post), as ``post_runs``.

    Common tags (p >= 0.02) get a coin per post; each rarer tag gets its number of posts from a binomial
    and lands on posts drawn by richness (its rare duplicates within a post collapse later).
    """
    n = len(richness)
    head = np.flatnonzero(probability >= 0.02)
    tail = np.flatnonzero(probability < 0.02)
    hit = rng.random((n, len(head))) < np.minimum(1.0, probability[head][None, :] * richness[:, None])  # (posts, head)
    head_posts, head_columns = np.nonzero(hit)
    tail_ids = np.repeat(tail, rng.binomial(n, probability[tail]))
    tail_posts = rng.choice(n, size=len(tail_ids), p=richness / richness.sum())
    return post_runs(np.concatenate([head_posts, tail_posts]), np.concatenate([head[head_columns], tail_ids]), n)
