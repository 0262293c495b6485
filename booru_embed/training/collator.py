"""Batches for pre-training: masked posts, contrastive views and packing, built fresh every epoch.

Each post of a batch becomes three sequences, in this order in the batch (``B`` posts give ``3B``
sequences): the *masked* post (for masked-tag prediction), then *view a* and *view b* (two random
subsets of its tags, for the contrastive objective). Read-back and the rating / score heads use the
pooled embeddings of all three.

Masking, as a set. The model has no positions, so ``k`` mask tokens in one post are identical inputs
and would all produce the same output: their targets can only be "the set of hidden tags". The hidden
tags are therefore replaced by ONE ``<mask>`` token whose target is the whole hidden set (uniform
weights, see ``objectives.set_prediction_loss``). It has category 0 (special), i.e. it does NOT keep
the category of the hidden tags: at inference (``suggest``, evaluation) we do not know which
categories are missing, nor how many tags, and a single category-less ``<mask>`` appended to the
visible tags is exactly the training input. Rating and score are fixed slots: when masked, they become
a ``<mask>`` with category 1 (rating) or 2 (score), predicted among the rating / score tokens; they
are also left out sometimes, as in suggestions asked for a bare list of tags.

Everything random is drawn from ``numpy.random.default_rng([seed, epoch, *post ids])``: the masks
of a batch depend only on its posts and the epoch, not on worker processes or on where a run resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..modeling.categories_booru_embed import CATEGORY_IDS
from ..sequences import RATING, SCORE, SPECIAL, Post, TokenInfo, build_sequence, mark_masks, pack_sequences

IGNORE_INDEX = -100
# Categories a contrastive view may leave out whole (general tags carry the post; they stay).
VIEW_DROPPABLE_CATEGORIES = ("character", "artist", "copyright", "meta")
# Tags that make two posts of a batch contrastive positives (``contrastive_subject_positives``), at most
# SUBJECTS_PER_POST a post (a fixed width, so the groups of every process can be gathered).
SUBJECT_CATEGORIES = ("character", "artist")
SUBJECTS_PER_POST = 8


class PretrainingCollator:
    """Turn a list of encoded posts into one pre-training batch (see the module docstring for the layout).

    Output keys: the model inputs of ``pack_sequences`` plus ``mlm_positions``; for the set loss
    ``mlm_group_kind`` (G,) 0 tags / 1 rating / 2 score, ``mlm_target_group``/``mlm_target_ids``/
    ``mlm_target_weights`` (targets, weights summing to 1 per group), ``mlm_exclude_group``/
    ``mlm_exclude_ids`` (visible tags, never valid answers); ``contrastive_subjects`` (B, 8) the post's
    character and artist ids, -1 padded (see ``objectives.info_nce``); ``readback_sequence``/``readback_ids``
    (the post's tags, for each of its 3 sequences); ``rating_labels``/``score_labels`` (3B,) class
    index, -100 where the token is visible or unknown; ``num_posts``; ``num_tokens``.
    """

    def __init__(self, info: TokenInfo, config: Any, packed: bool | None = None) -> None:
        self.info = info
        self.config = config
        self.packed = config.packed if packed is None else packed
        self.seed = int(config.seed)
        self.epoch = 0
        self._rating_class = {t: i for i, t in enumerate(info.rating_token_ids)}
        self._score_class = {t: i for i, t in enumerate(info.score_token_ids)}
        self._unk = np.array(sorted(info.unk_token_ids), dtype=np.int64)
        self._droppable = np.array([CATEGORY_IDS[name] for name in VIEW_DROPPABLE_CATEGORIES], dtype=np.int64)
        self._subject_categories = np.array([CATEGORY_IDS[name] for name in SUBJECT_CATEGORIES], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Draw the masks and views of ``epoch`` (a fresh, reproducible draw per epoch)."""
        self.epoch = int(epoch)

    def _shuffle_within_categories(self, post: Post, rng: np.random.Generator) -> Post:
        """Drop repeated known tags, keep at most ``max_tags`` (a random subset), shuffle within categories.

        Repeats of a known tag would be both hidden and visible; repeats of an unknown-tag token are
        kept (they say how many unknown tags the post has).
        """
        _, first = np.unique(post.tags, return_index=True)
        unique = np.zeros(len(post.tags), dtype=bool)
        unique[first] = True
        candidates = np.flatnonzero(unique | np.isin(post.tags, self._unk))
        order = candidates[rng.permutation(len(candidates))][: self.config.max_tags]
        order = order[np.argsort(post.tag_categories[order], kind="stable")]
        return Post(post.rating, post.score, post.tags[order], post.tag_categories[order])

    def _view(self, post: Post, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        """One contrastive view: whole categories dropped, then a random share of the remaining tags kept.

        Each of character, artist, copyright and meta is left out entirely with probability
        ``view_drop_category_probability`` (a post keeps at least one tag): a search query or a
        conditioning prompt often lacks a whole category, and the embedding should stay put.
        """
        cfg = self.config
        pool = np.arange(len(post.tags))
        if cfg.view_drop_category_probability > 0 and len(pool):
            dropped = self._droppable[rng.random(len(self._droppable)) < cfg.view_drop_category_probability]
            remaining = pool[~np.isin(post.tag_categories, dropped)]
            pool = remaining if len(remaining) else pool
        n = len(pool)
        keep_count = max(1, round(rng.uniform(cfg.view_keep_min, cfg.view_keep_max) * n)) if n else 0
        kept = np.sort(rng.choice(pool, size=keep_count, replace=False)) if n else np.zeros(0, dtype=np.int64)
        keep_rating = post.rating is not None and rng.random() < cfg.view_metadata_probability
        keep_score = post.score is not None and rng.random() < cfg.view_metadata_probability
        ids, cats = build_sequence(
            self.info,
            post.rating if keep_rating else None,
            post.score if keep_score else None,
            post.tags[kept],
            post.tag_categories[kept],
        )
        return ids, cats, keep_rating, keep_score

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Build the batch of ``examples`` (dicts with ``id``, ``input_ids``, ``category_ids``)."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, self.epoch, *(int(e["id"]) for e in examples)])
        num_posts = len(examples)
        masked_seqs, view_a, view_b = [], [], []
        groups: list[int] = []
        target_group, target_ids, target_weights = [], [], []
        exclude_group, exclude_ids = [], []
        readback_seq, readback_ids = [], []
        subjects = np.full((num_posts, SUBJECTS_PER_POST), -1, dtype=np.int64)
        rating_labels = np.full(3 * num_posts, IGNORE_INDEX, dtype=np.int64)
        score_labels = np.full(3 * num_posts, IGNORE_INDEX, dtype=np.int64)
        for p, example in enumerate(examples):
            post = self._shuffle_within_categories(Post.from_encoded(example["input_ids"], example["category_ids"]), rng)
            maskable = np.flatnonzero(~np.isin(post.tags, self._unk))
            own = np.unique(post.tags[maskable][np.isin(post.tag_categories[maskable], self._subject_categories)])
            subjects[p, : min(len(own), SUBJECTS_PER_POST)] = own[:SUBJECTS_PER_POST]
            fraction = rng.uniform(cfg.mask_fraction_min, cfg.mask_fraction_max)
            k = min(len(maskable), max(1, round(fraction * len(maskable)))) if len(maskable) else 0
            hidden = np.zeros(len(post.tags), dtype=bool)
            hidden[rng.choice(maskable, size=k, replace=False)] = True
            # each metadata slot of the masked post: dropped, masked, or kept
            rating, score = post.rating, post.score
            drop_rating, drop_score = rng.random(2) < cfg.metadata_drop_probability
            mask_draws = rng.random(2) < cfg.metadata_mask_probability
            rating = None if drop_rating else rating
            score = None if drop_score else score
            mask_rating = rating is not None and bool(mask_draws[0])
            mask_score = score is not None and bool(mask_draws[1])
            masked_seqs.append(
                build_sequence(
                    self.info, rating, score, post.tags[~hidden], post.tag_categories[~hidden],
                    mask_rating, mask_score, mask_tags=k > 0,
                )
            )
            # mask groups in the row-major order of their <mask> tokens: rating, score, tags
            for kind, masked, token in ((RATING, mask_rating, post.rating), (SCORE, mask_score, post.score)):
                if masked:
                    target_group.append(len(groups))
                    target_ids.append(token)
                    target_weights.append(1.0)
                    groups.append(kind)
            if k:
                g = len(groups)
                groups.append(SPECIAL)
                target_group.extend([g] * k)
                target_ids.extend(post.tags[hidden].tolist())
                target_weights.extend([1.0 / k] * k)
                visible = post.tags[~hidden]
                exclude_group.extend([g] * len(visible))
                exclude_ids.extend(visible.tolist())
            labels_visible = []
            for v, views in enumerate((view_a, view_b)):
                ids, cats, kept_rating, kept_score = self._view(post, rng)
                views.append((ids, cats))
                labels_visible.append((1 + v, kept_rating, kept_score))
            labels_visible.append((0, rating is not None and not mask_rating, score is not None and not mask_score))
            for block, rating_seen, score_seen in labels_visible:
                s = block * num_posts + p
                if post.rating is not None and not rating_seen:
                    rating_labels[s] = self._rating_class[post.rating]
                if post.score is not None and not score_seen:
                    score_labels[s] = self._score_class[post.score]
            tags = np.unique(post.tags[maskable])
            for block in range(3):
                readback_seq.extend([block * num_posts + p] * len(tags))
                readback_ids.extend(tags.tolist())
        sequences = masked_seqs + view_a + view_b
        batch = pack_sequences(sequences, packed=self.packed, pad_token_id=self.info.pad_token_id)
        batch["mlm_positions"] = mark_masks(batch, self.info.mask_token_id)
        batch.update(
            mlm_group_kind=torch.tensor(groups, dtype=torch.long),
            mlm_target_group=torch.tensor(target_group, dtype=torch.long),
            mlm_target_ids=torch.tensor(target_ids, dtype=torch.long),
            mlm_target_weights=torch.tensor(target_weights, dtype=torch.float32),
            mlm_exclude_group=torch.tensor(exclude_group, dtype=torch.long),
            mlm_exclude_ids=torch.tensor(exclude_ids, dtype=torch.long),
            readback_sequence=torch.tensor(readback_seq, dtype=torch.long),
            readback_ids=torch.tensor(readback_ids, dtype=torch.long),
            contrastive_subjects=torch.from_numpy(subjects),
            rating_labels=torch.from_numpy(rating_labels),
            score_labels=torch.from_numpy(score_labels),
            num_posts=torch.tensor(num_posts),
            num_tokens=torch.tensor(sum(len(s[0]) for s in sequences)),
        )
        return batch


def rare_subject_weights(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, subject_categories: Sequence[int],
    exclude_ids: frozenset[int], exponent: float, cap: float = 4.0,
) -> np.ndarray:
    """How often each post is drawn per epoch: ``(median / n) ** exponent``, between 1 and ``cap``.

    The posts are given flat: ``ids`` and ``categories`` of all their tokens, one post after the other,
    ``lengths`` tokens each. ``n`` is the number of posts of the post's rarest *subject* tag (a token of
    ``subject_categories``, characters and artists, not in ``exclude_ids``, the unknown-tag tokens),
    ``median`` the median of that count over all subject tags. Posts without a subject, and posts whose
    subjects are all at least median-common, are drawn once. Co-occurrence counts learn a 15-post
    character in one pass; the model needs several, so its rare subjects get them.
    """
    subject = np.isin(categories, subject_categories) & ~np.isin(ids, list(exclude_ids))
    posts_of = np.bincount(ids[subject], minlength=int(ids.max(initial=0)) + 1)  # a tag never repeats in a post
    weights = np.ones(len(lengths))
    if not subject.any():
        return weights
    median = np.median(posts_of[posts_of > 0])
    post_index = np.repeat(np.arange(len(lengths)), lengths)[subject]
    rarest = np.full(len(lengths), np.inf)
    np.minimum.at(rarest, post_index, posts_of[ids[subject]].astype(np.float64))
    has_subject = np.isfinite(rarest)
    weights[has_subject] = np.clip((median / rarest[has_subject]) ** exponent, 1.0, cap)
    return weights


def rarest_subject_groups(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, subject_categories: Sequence[int],
    exclude_ids: frozenset[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The posts grouped by their rarest subject tag, for ``EpochBatchSampler(partners=...)``.

    Flat posts as in ``rare_subject_weights``. Returns (``group``, ``members``, ``starts``): ``group[i]``
    the rarest subject (character or artist, fewest posts, ties to the lower id) of post i or -1;
    ``members[starts[g]:starts[g + 1]]`` the posts whose rarest subject is the g-th (ascending tag id).
    """
    subject = np.isin(categories, subject_categories) & ~np.isin(ids, list(exclude_ids))
    posts_of = np.bincount(ids[subject], minlength=int(ids.max(initial=0)) + 1)
    post_index = np.repeat(np.arange(len(lengths)), lengths)[subject]
    tags = ids[subject]
    # per post, the subject with the fewest posts: sort by (post, count, id) and take each post's first
    order = np.lexsort((tags, posts_of[tags], post_index))
    first = np.ones(len(order), dtype=bool)
    first[1:] = post_index[order][1:] != post_index[order][:-1]
    rarest_tag = np.full(len(lengths), -1, dtype=np.int64)
    rarest_tag[post_index[order][first]] = tags[order][first]
    has = rarest_tag >= 0
    subjects, group_of = np.unique(rarest_tag[has], return_inverse=True)
    group = np.full(len(lengths), -1, dtype=np.int64)
    group[has] = group_of
    members = np.flatnonzero(has)[np.argsort(group_of, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(group_of, minlength=len(subjects)))])
    return group, members, starts


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` post indices, in a fresh order every epoch, seeded by (seed, epoch).

    With ``lengths`` given, indices are length-bucketed: shuffled, cut into chunks of
    ``bucket_batches`` batches, sorted by length inside a chunk, batched, and the batches shuffled, so
    a batch holds posts of similar length and pads little. The last incomplete batch is dropped (the
    contrastive objective wants full batches); a dropped post comes back in the next epoch's order.
    With ``weights`` (draws per epoch, >= 1, see ``rare_subject_weights``), post i is drawn
    floor(w_i) times plus once more with probability frac(w_i); the draws are made once, from the seed,
    so every epoch has the same length and a resumed run the same batches. The k-th draws of the posts
    form round k, shuffled and bucketed on its own: two draws of a post have the same length, and
    bucketed together they would land in one batch, a post as its own contrastive negative.
    With ``partners`` (``rarest_subject_groups``), half of every batch is drawn as above and each of
    those posts brings a partner: another post of its rarest character or artist (a random post when it
    has none), so that even a rare subject meets itself in a batch (``contrastive_subject_positives``).
    An epoch then has twice the batches, each with half its posts from the order.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 50,
        weights: np.ndarray | None = None,
        partners: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.partners = partners
        self.drawn_per_batch = self.batch_size if partners is None else self.batch_size - self.batch_size // 2
        self.drop_last = True
        self.seed = int(seed)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_batches = bucket_batches
        self.epoch = 0
        self.rounds = [np.arange(self.num_items)]
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            extra = np.random.default_rng([self.seed, 1 << 30]).random(self.num_items) < weights - np.floor(weights)
            draws = np.floor(weights).astype(np.int64) + extra
            self.rounds = [np.flatnonzero(draws > k) for k in range(int(draws.max(initial=1)))]
        self.items = np.concatenate(self.rounds)

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) // self.drawn_per_batch

    def _partners_of(self, posts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A partner for each post: another post of the same rarest-subject group, else a random post."""
        group, members, starts = self.partners
        g = group[posts]
        size = np.where(g >= 0, starts[g + 1] - starts[np.maximum(g, 0)], 0)
        pick = (rng.random(len(posts)) * np.maximum(size - 1, 1)).astype(np.int64)
        candidate = members[starts[np.maximum(g, 0)] + pick]
        candidate = np.where(candidate == posts, members[starts[np.maximum(g, 0)] + size - 1], candidate)
        random = self.items[rng.integers(0, len(self.items), len(posts))]
        return np.where(size >= 2, candidate, random)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunk = self.drawn_per_batch * self.bucket_batches
        parts = []
        for items in self.rounds:
            order = items[rng.permutation(len(items))]
            if self.lengths is not None:
                pieces = [order[i : i + chunk] for i in range(0, len(order), chunk)]
                order = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")] for p in pieces])
            parts.append(order)
        order = np.concatenate(parts)
        usable = len(self) * self.drawn_per_batch
        batches = order[:usable].reshape(-1, self.drawn_per_batch) if usable else np.zeros(
            (0, self.drawn_per_batch), dtype=np.int64)
        if self.lengths is not None or len(self.rounds) > 1:  # rounds and buckets in random order
            batches = batches[rng.permutation(len(batches))]
        for batch in batches:
            if self.partners is not None:
                batch = np.concatenate([batch, self._partners_of(batch, rng)[: self.batch_size - len(batch)]])
            yield batch.tolist()
