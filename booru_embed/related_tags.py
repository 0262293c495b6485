"""Danbooru's related tags counted from posts: the co-occurrence cosine a tool can add to the model's suggestions.

``cos(a, b) = n(a and b) / sqrt(n(a) n(b))`` over the posts of a DATA_DIR split (``cooccurrence``), and
a tag set's related-tags score of tag ``b``: the sum of ``cos(a, b)`` over its tags ``a``, the
evaluation's baseline. ``BooruEmbedder.suggest(..., distinctive=True, related=RelatedTags...)`` ranks
by the mean of the model's distinctive score and the log of this score (``ranking.with_counts``): on
characters with few posts the counts find partners the model has not learned, on the rest the model
keeps its lead (docs/danbooru-pairs.md).

Memory: the cosine matrix holds one entry per pair of tags seen together, so a split is counted on a
seeded sample of at most ``max_posts`` posts (the evaluation's baseline counts 1M the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_POSTS = 1_000_000  # posts counted by default: the evaluation baseline's sample size
SAMPLE_SEED = 0


class RelatedTags:
    """The co-occurrence cosine of a set of posts, as a tag set's related-tags scores."""

    def __init__(self, cosine: Any) -> None:
        """Wrap a (vocab, vocab) scipy sparse cosine matrix (``cooccurrence.cosine_matrix``; use ``from_split``)."""
        self.cosine = cosine.tocsr()

    @classmethod
    def from_split(cls, data_dir: str | Path, tokenizer: Any, split: str = "train",
                   max_posts: int | None = MAX_POSTS, flag: str = "--dataset") -> RelatedTags:
        """Count ``split`` of DATA_DIR (a seeded sample of ``max_posts`` posts; None: all) with ``tokenizer``'s
        vocabulary; only tag tokens count (``TokenInfo.tag_candidates``). A folder that is not a DATA_DIR
        with that split raises ``UsageError`` naming ``flag``."""
        from .cooccurrence import cosine_matrix
        from .data.bulk_encoding import encode_dataset
        from .data.splits import open_split
        from .sequences import TokenInfo

        table = open_split(Path(data_dir), split, flag)
        if max_posts is not None and len(table) > max_posts:
            rows = np.sort(np.random.default_rng(SAMPLE_SEED).permutation(len(table))[:max_posts])
            table = table.select(rows)
        info = TokenInfo.from_tokenizer(tokenizer)
        return cls(cosine_matrix(tag_incidence(encode_dataset(tokenizer, table)["input_ids"], info)))

    def scores(self, ids: Sequence[int]) -> np.ndarray:
        """(vocab,) float32 related-tags score of every tag for the tag set of token ids ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[ids < self.cosine.shape[0]]
        return np.asarray(self.cosine[ids].sum(axis=0), dtype=np.float32).ravel()


def tag_incidence(posts: Sequence[Sequence[int]], info: Any) -> Any:
    """(posts, vocab) CSR incidence of the tag tokens (``info.tag_candidates()``) of encoded posts' token ids."""
    from .cooccurrence import incidence_matrix

    candidates = info.tag_candidates()
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in posts]) if len(posts) else np.zeros(0, np.int64)
    lengths = np.array([len(p) for p in posts], dtype=np.int64)
    return incidence_matrix(ids, lengths, info.vocab_size, counted=candidates[ids])
