"""Read-back: what a post's embedding keeps of the post, beside the linear code of the same width.

A post's tags are read back from the first D dims of its embedding (the model's read-back head of
width D) and scored by F1 at the threshold where precision equals recall, over all tags, per tag
category, on the 2,000 most common training tags and on the others (``rest``). The baseline is the
**linear code** of the same width: the truncated SVD of the training posts' binary tag vectors
(right singular vectors V_D, by a randomised range finder, ``cooccurrence.top_eigenpairs``, whose
memory is set by the vocabulary and D, not by the number of posts), a post x read back by
projection, x V_D V_D^T. It is the best any linear D-dim code of the tags can do in squared error,
so a learned embedding that keeps the post should read back at least as well.

Also reported: how much each width adds over the one below it, and the share of the posts with a
character tag whose character is read back (one of their characters scores at least the P = R
threshold of all tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cooccurrence import tag_counts, top_eigenpairs
from .metrics import RankingAccumulator, f1_at_equal_precision_recall

READBACK_WIDTHS = (32, 64, 128)  # widths of the linear code when no model gives its own


class LinearCode:
    """The linear code of the training posts' binary tag vectors at widths up to ``width``.

    ``incidence`` is the (posts, vocab) CSR matrix of the training posts' tags (1 per tag a post holds).
    ``basis`` is (vocab, width), columns by decreasing singular value (so its first D columns are the
    rank-D code); rows of tags no training post holds are zero.
    """

    def __init__(self, incidence: Any, width: int, seed: int) -> None:
        counts = tag_counts(incidence)
        seen = counts > 0
        self.basis = np.zeros((incidence.shape[1], width), dtype=np.float32)
        rank = min(width, int(seen.sum()), incidence.shape[0])
        if rank >= 1:
            binary = incidence[:, seen].tocsr().astype(np.float32)
            binary.data[:] = 1.0
            _, vectors = top_eigenpairs(binary, rank, seed)
            self.basis[np.flatnonzero(seen), :rank] = vectors

    def scores(self, tag_sets: Sequence[np.ndarray], width: int) -> np.ndarray:
        """(posts, vocab) float32 reconstruction x V_D V_D^T of each post's binary tag vector at width D."""
        from scipy import sparse

        basis = self.basis[:, :width]
        rows = np.repeat(np.arange(len(tag_sets)), [len(t) for t in tag_sets])
        cols = np.concatenate([*tag_sets, np.zeros(0, dtype=np.int64)])
        posts = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                                  shape=(len(tag_sets), basis.shape[0]))
        posts.data[:] = 1.0  # a repeated tag is still one entry of a binary vector
        return np.asarray(posts @ basis) @ basis.T


class ReadbackScore:
    """The read-back metrics of one reader (the model or the linear code) at one width.

    ``groups`` name -> (vocab,) bool tag groups (``all`` among them); ``is_character`` (vocab,) bool.
    """

    def __init__(self, groups: dict[str, np.ndarray], is_character: np.ndarray) -> None:
        self.accumulator = RankingAccumulator(groups, ks=(1,))
        self.is_character = is_character
        self.best_character: list[float] = []  # per post with a character: its best character's score

    def add(self, scores: np.ndarray, answers: Sequence[set[int]]) -> None:
        """Add posts: ``scores`` (posts, vocab), -inf outside the candidates; ``answers`` their true tags."""
        for row, answer in enumerate(answers):
            characters = [t for t in answer if self.is_character[t]]
            if characters:
                self.best_character.append(float(scores[row, characters].max()))
        self.accumulator.add(scores, answers)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}.micro_f1``, ``.macro_f1``, per group ``.{group}.micro_f1`` / ``.macro_f1``, and
        ``.character_share``."""
        out = {k: v for k, v in self.accumulator.metrics(prefix).items() if "recall@" not in k}
        pairs = self.accumulator.pairs["all"]
        if pairs and self.best_character:
            scores, hits, tags = (np.concatenate(parts) for parts in zip(*pairs))
            _, _, threshold = f1_at_equal_precision_recall(scores, hits, tags, self.accumulator.positives["all"])
            out[f"{prefix}.character_share"] = float(np.mean(np.array(self.best_character) >= threshold))
        return out


class ReadbackReport:
    """Read-back of the model (when given) and of the linear code at each width, fed a batch of posts at a time.

    ``widths`` the model's read-back sizes (``nested_dims + [embedding_dim]``) or ``READBACK_WIDTHS``;
    ``linear`` a ``LinearCode`` at least as wide as the widest.
    """

    def __init__(self, groups: dict[str, np.ndarray], is_character: np.ndarray, widths: Sequence[int],
                 linear: LinearCode, with_model: bool) -> None:
        self.widths = list(widths)
        self.linear = linear
        self.candidates = groups["all"]
        self.ruled_out = np.flatnonzero(~self.candidates)
        sides = ("model", "linear") if with_model else ("linear",)
        self.scores = {(side, d): ReadbackScore(groups, is_character) for side in sides for d in self.widths}

    def add_model(self, width: int, logits: np.ndarray, answers: Sequence[set[int]]) -> None:
        """The model's read-back ``logits`` (posts, vocab) at ``width`` for posts whose true tags are ``answers``."""
        logits[:, self.ruled_out] = -np.inf  # in place: the ranking reads the candidate columns only
        self.scores["model", width].add(logits, answers)

    def add_linear(self, tag_sets: Sequence[np.ndarray], answers: Sequence[set[int]]) -> None:
        """The linear code's read-back of posts whose known tags are ``tag_sets``, at every width."""
        for d in self.widths:
            scores = self.linear.scores(tag_sets, d)
            scores[:, self.ruled_out] = -np.inf
            self.scores["linear", d].add(scores, answers)

    def metrics(self) -> dict[str, float]:
        """Every side's metrics as ``{side}.readback.dim{D}.*``, with ``.added_micro_f1`` (F1 at D minus F1 at
        the width below) from the second width on."""
        out: dict[str, float] = {}
        for (side, d), score in self.scores.items():
            out.update(score.metrics(f"{side}.readback.dim{d}"))
        for side in {side for side, _ in self.scores}:
            for low, high in zip(self.widths, self.widths[1:]):
                below, above = out.get(f"{side}.readback.dim{low}.micro_f1"), out.get(f"{side}.readback.dim{high}.micro_f1")
                if below is not None and above is not None:
                    out[f"{side}.readback.dim{high}.added_micro_f1"] = above - below
        return out
