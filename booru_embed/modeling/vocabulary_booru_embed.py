"""The whole-tag vocabulary: the one owner of ``vocab.json`` (rows layout, writing, validation) and canonical order.

Remote code: copied next to the weights with the tokenizer, so it imports only the standard library,
numpy and its sibling files.

``vocab.json`` holds every row in id order as ``[token, kind, category, count]`` (kind is ``special``,
``rating``, ``score``, ``tag`` or ``unused``) and the score bucket boundaries. Tags and the other kinds
are separate namespaces: a tag literally named ``<pad>`` is a tag, never padding. ``Vocabulary.layout``
lays the rows out as ``build-tokenizer`` writes them: ``<pad> <cls> <mask>``, the ratings, the score
buckets, then each category of ``PRIORITY_ORDER`` with its tags rarer first and its unknown token
last, padded with ``unused`` rows to a multiple of 64. Any other id order still reads (ranks below).

Canonical order and shuffle groups: ``rank`` puts ``<cls>``, ratings, score buckets, then each
category's tags (rarer first) and unknown token in that order; ``group`` numbers those blocks, and
shuffling within categories permutes tokens only inside one group.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .categories_booru_embed import CATEGORY_IDS, PRIORITY_ORDER, RATINGS, TAG_CATEGORIES
from .normalization_booru_embed import resolve_alias

PAD_TOKEN, CLS_TOKEN, MASK_TOKEN = "<pad>", "<cls>", "<mask>"
UNK_TOKENS = {category: f"<unk_{category}>" for category in TAG_CATEGORIES}
VOCAB_FORMAT = 1
VOCAB_MULTIPLE = 64  # embedding rows padded to a multiple of 64 for efficient matrix shapes
Row = tuple[str, str, int, int]  # (token, kind, category id, training count)


def rating_token(rating: str) -> str:
    """The vocabulary token of a rating letter (``g`` -> ``rating:g``)."""
    return f"rating:{rating}"


def score_token_names(boundaries: Sequence[int]) -> list[str]:
    """Token names of the score buckets cut at ``boundaries``, in Danbooru's search syntax."""
    if not boundaries:
        return ["score:any"]
    names = [f"score:<{boundaries[0]}"]
    for low, high in zip(boundaries, boundaries[1:]):
        names.append(f"score:{low}" if high == low + 1 else f"score:{low}..{high - 1}")
    names.append(f"score:>={boundaries[-1]}")
    return names


def read_json_file(path: str | os.PathLike | None, default: Any) -> Any:
    """A JSON file's content, or ``default`` when ``path`` is None (an optional table not saved)."""
    if path is None:
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_table_file(path: str | os.PathLike, table: Mapping[str, Any]) -> None:
    """Write an alias or implication table as a JSON object, one sorted key per line."""
    body = ",\n".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(table[k], ensure_ascii=False)}" for k in sorted(table))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("{\n" + body + "\n}\n")


class Vocabulary:
    """The rows of ``vocab.json`` and what follows from them: id maps, canonical ranks, shuffle groups."""

    def __init__(self, rows: Sequence[Sequence[Any]], score_boundaries: Sequence[int]) -> None:
        self.tokens: list[str] = [str(r[0]) for r in rows]
        self.kinds: list[str] = [str(r[1]) for r in rows]
        self.categories: list[int] = [int(r[2]) for r in rows]
        self.counts: list[int] = [int(r[3]) for r in rows]
        self.score_boundaries: list[int] = [int(b) for b in score_boundaries]
        self.tag_ids: dict[str, int] = {}
        self.other_ids: dict[str, int] = {}
        for index, (token, kind) in enumerate(zip(self.tokens, self.kinds)):
            (self.tag_ids if kind == "tag" else self.other_ids)[token] = index
        for token, expected in ((PAD_TOKEN, 0), (CLS_TOKEN, 1), (MASK_TOKEN, 2)):
            if self.other_ids.get(token) != expected:
                raise ValueError(f"vocabulary must have {token} at id {expected}")
        self.cls_id = self.other_ids[CLS_TOKEN]
        self.unk_ids = {c: self.other_ids[UNK_TOKENS[c]] for c in TAG_CATEGORIES}
        self.rating_ids = {r: self.other_ids[rating_token(r)] for r in RATINGS}
        self.score_ids = [self.other_ids[name] for name in score_token_names(self.score_boundaries)]
        self.tag_token_ids = [i for i, kind in enumerate(self.kinds) if kind == "tag"]
        self.rank, self.group = self._canonical_ranks()
        self.rank_to_id = np.argsort(self.rank).astype(np.int32)
        # True for vocabularies laid out by ``layout``: then sorting ids is canonical ordering.
        self.rank_is_identity = all(rank == index for index, rank in enumerate(self.rank))
        self.categories_np = np.asarray(self.categories, dtype=np.int8)

    @classmethod
    def layout(
        cls,
        kept: Mapping[str, Sequence[tuple[str, int]]],
        rating_counts: Mapping[str, int],
        score_boundaries: Sequence[int],
        bucket_counts: Sequence[int],
    ) -> Vocabulary:
        """Rows in id order from the kept ``(tag, count)`` pairs per category (rarer first), padded to a multiple of 64."""
        rows: list[Row] = [(PAD_TOKEN, "special", 0, 0), (CLS_TOKEN, "special", 0, 0), (MASK_TOKEN, "special", 0, 0)]
        rows += [(rating_token(r), "rating", CATEGORY_IDS["rating"], rating_counts.get(r, 0)) for r in RATINGS]
        names = score_token_names(score_boundaries)
        rows += [(name, "score", CATEGORY_IDS["score"], int(n)) for name, n in zip(names, bucket_counts)]
        for category in PRIORITY_ORDER:  # ids in canonical order: sorting a post's ids orders it
            rows += [(tag, "tag", CATEGORY_IDS[category], int(n)) for tag, n in kept.get(category, [])]
            rows.append((UNK_TOKENS[category], "special", CATEGORY_IDS[category], 0))
        rows += [(f"<unused_{i}>", "unused", 0, 0) for i in range(-len(rows) % VOCAB_MULTIPLE)]
        return cls(rows, score_boundaries)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Vocabulary:
        """Read and validate ``vocab.json`` (format, special rows at ids 0-2, every rating/score/unknown row)."""
        vocab = read_json_file(path, None)
        if not isinstance(vocab, dict) or vocab.get("format") != VOCAB_FORMAT:
            found = vocab.get("format") if isinstance(vocab, dict) else type(vocab).__name__
            raise ValueError(f"{path}: unsupported vocabulary format {found!r}")
        return cls(vocab["tokens"], vocab["score_boundaries"])

    def rows(self) -> list[Row]:
        """Every row ``(token, kind, category, count)`` in id order."""
        return list(zip(self.tokens, self.kinds, self.categories, self.counts))

    def write(self, path: str | os.PathLike) -> None:
        """Write ``vocab.json``: the rows in id order (one per line) and the score boundaries."""
        header = f'{{"format": {VOCAB_FORMAT}, "score_boundaries": {json.dumps(self.score_boundaries)}, "tokens": [\n'
        body = ",\n".join(json.dumps([t, k, c, n], ensure_ascii=False) for t, k, c, n in self.rows())
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(header + body + "\n]}\n")

    def __len__(self) -> int:
        return len(self.tokens)

    def score_bucket(self, score: int) -> int:
        """Index of the score bucket that ``score`` falls into (buckets start at their boundary)."""
        return bisect.bisect_right(self.score_boundaries, score)

    def tag_lookup(self, aliases: Mapping[str, str]) -> dict[str, int]:
        """Spelling -> id for every tag and every alias antecedent whose canonical tag is in the vocabulary."""
        lookup: dict[str, int] = {}
        for antecedent in aliases:
            canonical = resolve_alias(antecedent, aliases)
            if canonical in self.tag_ids:
                lookup[antecedent] = self.tag_ids[canonical]
        lookup.update({tag: i for tag, i in self.tag_ids.items() if tag not in aliases})
        return lookup

    def _canonical_ranks(self) -> tuple[list[int], list[int]]:
        """Rank and shuffle group of every id.

        Canonical order: ``<cls>``, ratings, score buckets, then each category of ``PRIORITY_ORDER`` with
        its tags rarer first and its unknown token last. Those tokens take the ranks of their own id set
        in that order (so a vocabulary laid out canonically has rank == id); other rows keep rank == id.
        """
        order = [self.cls_id, *self.rating_ids.values(), *self.score_ids]
        groups = [0] + [1] * len(self.rating_ids) + [2] * len(self.score_ids)
        for group, category in enumerate(PRIORITY_ORDER, start=3):
            category_id = CATEGORY_IDS[category]
            tags = [i for i in self.tag_token_ids if self.categories[i] == category_id]
            tags.sort(key=lambda i: (self.counts[i], self.tokens[i]))
            order += [*tags, self.unk_ids[category]]
            groups += [group] * (len(tags) + 1)
        rank = list(range(len(self.tokens)))
        group_of = [len(PRIORITY_ORDER) + 3] * len(self.tokens)
        for slot, index, group in zip(sorted(order), order, groups):
            rank[index], group_of[index] = slot, group
        return rank, group_of


__all__ = [
    "CLS_TOKEN", "MASK_TOKEN", "PAD_TOKEN", "UNK_TOKENS", "VOCAB_FORMAT", "VOCAB_MULTIPLE", "Vocabulary",
    "rating_token", "read_json_file", "score_token_names", "write_table_file",
]
