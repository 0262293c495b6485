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

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..modeling.categories_booru_embed import CATEGORY_IDS
from ..sequences import FIRST_TAG_CATEGORY, RATING, SCORE, SPECIAL, TokenInfo, mark_masks, pack_flat

IGNORE_INDEX = -100
# Categories a contrastive view may leave out whole (general tags carry the post; they stay).
VIEW_DROPPABLE_CATEGORIES = ("character", "artist", "copyright", "meta")
# Tags that make two posts of a batch contrastive positives (``contrastive_subject_positives``), at most
# SUBJECTS_PER_POST a post (a fixed width, so the groups of every process can be gathered).
SUBJECT_CATEGORIES = ("character", "artist")
SUBJECTS_PER_POST = 8


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts - starts, counts)


def _first_per_post(post_of: np.ndarray, values: np.ndarray, num_posts: int) -> np.ndarray:
    """(num_posts,) the first of ``values`` of each post (``post_of`` ascending), -1 where a post has none."""
    out = np.full(num_posts, -1, dtype=np.int64)
    present, first = np.unique(post_of, return_index=True)
    out[present] = values[first]
    return out


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """The int64 concatenation of ``arrays`` (empty for none)."""
    return np.concatenate([*arrays, np.zeros(0, dtype=np.int64)])


@dataclass
class _Draws:
    """The random draws of one batch, one entry per post (see ``PretrainingCollator._draw``)."""

    selected: list[np.ndarray] = field(default_factory=list)  # kept candidates: indices into the post's candidates
    hidden: list[np.ndarray] = field(default_factory=list)  # hidden tags: indices into the post's maskable tags
    view_a: list[np.ndarray] = field(default_factory=list)  # kept tags of each view: positions in the post's tags
    view_b: list[np.ndarray] = field(default_factory=list)
    flags: list[list[bool]] = field(default_factory=list)  # drop r/s, mask r/s, view a keeps r/s, view b keeps r/s


class PretrainingCollator:
    """Turn a list of encoded posts into one pre-training batch (see the module docstring for the layout).

    Output keys: the model inputs of ``pack_sequences`` plus ``mlm_positions``; for the set loss
    ``mlm_group_kind`` (G,) 0 tags / 1 rating / 2 score, ``mlm_target_group``/``mlm_target_ids``/
    ``mlm_target_weights`` (targets, weights summing to 1 per group), ``mlm_exclude_group``/
    ``mlm_exclude_ids`` (visible tags, never valid answers); ``contrastive_subjects`` (B, 8) the post's
    character and artist ids, -1 padded (see ``objectives.info_nce``); ``readback_sequence``/``readback_ids``
    (the post's known tags, for each of its 3 sequences; with ``readback_target="own"`` the known tags each
    sequence shows); ``rating_labels``/``score_labels`` (3B,) class
    index, -100 where the token is visible or unknown; ``num_posts``; ``num_tokens``.

    The work is numpy over the batch's tokens laid flat; only the random draws run post by post
    (``_draw``, a few generator calls each), so a worker collates several thousand posts a second
    (``bench/bench_loader.py``).
    """

    def __init__(self, info: TokenInfo, config: Any, packed: bool | None = None) -> None:
        self.info = info
        self.config = config
        self.packed = config.packed if packed is None else packed
        self.seed = int(config.seed)
        self.epoch = 0
        self._is_unk = np.zeros(info.vocab_size, dtype=bool)
        self._is_unk[list(info.unk_token_ids)] = True
        self._rating_class = np.full(info.vocab_size, IGNORE_INDEX, dtype=np.int64)
        self._rating_class[list(info.rating_token_ids)] = np.arange(len(info.rating_token_ids))
        self._score_class = np.full(info.vocab_size, IGNORE_INDEX, dtype=np.int64)
        self._score_class[list(info.score_token_ids)] = np.arange(len(info.score_token_ids))
        self._droppable = np.array([CATEGORY_IDS[name] for name in VIEW_DROPPABLE_CATEGORIES], dtype=np.int64)
        self._subject_categories = np.array([CATEGORY_IDS[name] for name in SUBJECT_CATEGORIES], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Draw the masks and views of ``epoch`` (a fresh, reproducible draw per epoch)."""
        self.epoch = int(epoch)

    def _draw(self, rng: np.random.Generator, candidates: np.ndarray, candidate_unknown: np.ndarray,
              candidate_categories: np.ndarray, metadata: np.ndarray) -> _Draws:
        """Every random draw of the batch, post by post, in this order per post.

        A permutation of its candidate tags (the first ``max_tags`` are kept); the share of its maskable
        (known) tags to hide and which; whether rating and score are dropped, then masked; for each view,
        which whole categories it leaves out (``view_drop_category_probability``; drawn only when that is
        above 0), the share of the remaining tags kept, which, and whether it keeps rating and score
        (drawn only when the post has them). ``candidates`` (B,) candidate counts; ``candidate_unknown``
        and ``candidate_categories`` (total candidates,) whether each is an unknown-tag token, and its
        category; ``metadata`` (B, 2) whether the post has a rating / score.
        """
        cfg = self.config
        draws = _Draws()
        drop = cfg.view_drop_category_probability > 0
        full_view = getattr(cfg, "full_post_view", False)
        offsets = np.cumsum(candidates) - candidates
        unknown = np.bincount(np.repeat(np.arange(len(candidates)), candidates), weights=candidate_unknown,
                              minlength=len(candidates)).astype(np.int64)
        for p, (count, unk, (has_rating, has_score)) in enumerate(
            zip(candidates.tolist(), unknown.tolist(), metadata.tolist())
        ):
            selected = rng.permutation(count)[: cfg.max_tags]
            n = len(selected)
            if unk and count > cfg.max_tags:  # which unknown-tag tokens survived the cut
                unk = int(candidate_unknown[offsets[p] + selected].sum())
            maskable = n - unk
            fraction = rng.uniform(cfg.mask_fraction_min, cfg.mask_fraction_max)
            k = min(maskable, max(1, round(fraction * maskable))) if maskable else 0
            draws.selected.append(selected)
            draws.hidden.append(rng.choice(maskable, size=k, replace=False))
            flags = (rng.random(2) < cfg.metadata_drop_probability).tolist()
            flags += (rng.random(2) < cfg.metadata_mask_probability).tolist()
            # the categories of the post's tags in the order they take (category order, see __call__)
            tag_categories = np.sort(candidate_categories[offsets[p] + selected]) if drop and n else None
            for kept in (draws.view_a, draws.view_b):
                if full_view and kept is draws.view_a:  # the whole post (no category dropped)
                    kept.append(np.arange(n))
                else:
                    kept.append(self._partial_view(rng, n, tag_categories))
                flags.append(has_rating and rng.random() < cfg.view_metadata_probability)
                flags.append(has_score and rng.random() < cfg.view_metadata_probability)
            draws.flags.append(flags)
        return draws

    def _partial_view(self, rng: np.random.Generator, n: int, tag_categories: np.ndarray | None) -> np.ndarray:
        """Positions of the ``n`` tags a partial view keeps: whole categories dropped (when ``tag_categories``
        is given), then a random share of the rest; never empty when the post has a tag."""
        cfg = self.config
        pool = np.arange(n)
        if tag_categories is not None:
            dropped = self._droppable[rng.random(len(self._droppable)) < cfg.view_drop_category_probability]
            remaining = np.flatnonzero(~np.isin(tag_categories, dropped))
            pool = remaining if len(remaining) else pool  # a view never comes out empty
        size = len(pool)
        keep_count = max(1, round(rng.uniform(cfg.view_keep_min, cfg.view_keep_max) * size)) if size else 0
        return pool[rng.choice(size, size=keep_count, replace=False)] if size else pool

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Build the batch of ``examples`` (dicts with ``id``, ``input_ids``, ``category_ids``)."""
        info = self.info
        rng = np.random.default_rng([self.seed, self.epoch, *(int(e["id"]) for e in examples)])
        num_posts = len(examples)
        ids, cats, post_of = _flatten(examples)
        rating = _first_per_post(post_of[cats == RATING], ids[cats == RATING], num_posts)  # -1: none
        score = _first_per_post(post_of[cats == SCORE], ids[cats == SCORE], num_posts)
        has = np.stack([rating >= 0, score >= 0], axis=1)  # (B, 2)
        is_tag = cats >= FIRST_TAG_CATEGORY
        tag_ids, tag_cats, tag_post = ids[is_tag], cats[is_tag], post_of[is_tag]
        # candidates: the first of each known tag of a post (a repeat would be hidden and visible), every unknown
        _, first = np.unique(tag_post * info.vocab_size + tag_ids, return_index=True)
        candidate = self._is_unk[tag_ids].copy()
        candidate[first] = True
        cand = np.flatnonzero(candidate)  # flat tag index of every candidate, post by post
        counts = np.bincount(tag_post[cand], minlength=num_posts)
        draws = self._draw(rng, counts, self._is_unk[tag_ids[cand]], tag_cats[cand], has)
        flags = np.array(draws.flags, dtype=bool).reshape(num_posts, 8)

        # each post's tags: its kept candidates put in category order (stable: shuffled within a category)
        sizes = np.fromiter(map(len, draws.selected), np.int64, num_posts)
        kept = cand[_concat(draws.selected) + np.repeat(np.cumsum(counts) - counts, sizes)]
        kept_post = np.repeat(np.arange(num_posts), sizes)
        kept = kept[np.argsort(kept_post * len(CATEGORY_IDS) + tag_cats[kept], kind="stable")]
        tags, tag_categories = tag_ids[kept], tag_cats[kept]
        known = ~self._is_unk[tags]
        maskable = np.flatnonzero(known)
        maskable_count = np.bincount(kept_post[maskable], minlength=num_posts)
        k = np.fromiter(map(len, draws.hidden), np.int64, num_posts)
        hidden = np.zeros(len(tags), dtype=bool)
        hidden[maskable[_concat(draws.hidden) + np.repeat(np.cumsum(maskable_count) - maskable_count, k)]] = True

        # metadata slots of the 3B sequences: the masked post's (dropped, masked or kept), then the views'
        present = np.concatenate([has & ~flags[:, 0:2], has & flags[:, 4:6], has & flags[:, 6:8]])  # (3B, 2)
        masked_slot = np.zeros_like(present)
        masked_slot[:num_posts] = present[:num_posts] & flags[:, 2:4]
        slot_ids = np.where(masked_slot, info.mask_token_id, np.tile(np.stack([rating, score], axis=1), (3, 1)))
        unseen = np.tile(has, (3, 1)) & ~(present & ~masked_slot)

        # tags of the 3B sequences, as positions in ``tags``: the masked posts' visible ones, then the views
        offset = np.cumsum(sizes) - sizes
        views = [np.sort(_concat(v) + np.repeat(offset, [len(x) for x in v])) for v in (draws.view_a, draws.view_b)]
        visible = np.flatnonzero(~hidden)
        tag_counts = np.concatenate([sizes - k, *([len(x) for x in v] for v in (draws.view_a, draws.view_b))])
        out_ids, out_cats, seq_lengths = _assemble(
            info, present, slot_ids, tags, tag_categories, np.concatenate([visible, *views]), tag_counts, k > 0)
        batch = pack_flat(out_ids, out_cats, seq_lengths, packed=self.packed, pad_token_id=info.pad_token_id)
        batch["mlm_positions"] = mark_masks(batch, info.mask_token_id)
        batch.update(_mask_targets(masked_slot[:num_posts], k, rating, score, tags, hidden, visible, kept_post))
        if getattr(self.config, "readback_target", "post") == "own":  # each sequence's own known tags
            sources = np.concatenate([visible, *views])
            sequence = np.repeat(np.arange(3 * num_posts), tag_counts)
            shown = known[sources]
            readback_sequence, readback_ids = sequence[shown], tags[sources][shown]
        else:
            readback_sequence, readback_ids = _readback(kept_post[known], tags[known], num_posts, info.vocab_size)
        subject = known & np.isin(tag_categories, self._subject_categories)
        batch.update(
            contrastive_subjects=torch.from_numpy(
                _subject_table(kept_post[subject], tags[subject], num_posts, info.vocab_size)),
            readback_sequence=torch.from_numpy(readback_sequence),
            readback_ids=torch.from_numpy(readback_ids),
            rating_labels=torch.from_numpy(
                np.where(unseen[:, 0], np.tile(self._rating_class[rating.clip(0)], 3), IGNORE_INDEX)),
            score_labels=torch.from_numpy(
                np.where(unseen[:, 1], np.tile(self._score_class[score.clip(0)], 3), IGNORE_INDEX)),
            num_posts=torch.tensor(num_posts),
            num_tokens=torch.tensor(len(out_ids)),
        )
        return batch


def _flatten(examples: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The posts' ``input_ids`` and ``category_ids`` back to back, and the post of every token."""
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), np.int64, len(examples))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(e["input_ids"] for e in examples), np.int64, total)
    cats = np.fromiter(itertools.chain.from_iterable(e["category_ids"] for e in examples), np.int64, total)
    return ids, cats, np.repeat(np.arange(len(examples)), lengths)


def _assemble(
    info: TokenInfo, present: np.ndarray, slot_ids: np.ndarray, tags: np.ndarray, tag_categories: np.ndarray,
    sources: np.ndarray, tag_counts: np.ndarray, tags_masked: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, categories and lengths of the 3B sequences ``<cls> [rating] [score] tags [<mask>]``, flat.

    ``present`` (3B, 2) which metadata slots a sequence has, holding ``slot_ids`` (a token or ``<mask>``);
    ``tags[sources]`` the sequences' tags, ``tag_counts`` each; ``tags_masked`` (B,) whether the masked
    post (the first B sequences) ends with the ``<mask>`` of its hidden tags.
    """
    mask_suffix = np.concatenate([tags_masked, np.zeros(2 * len(tags_masked), dtype=bool)])
    slots = present.sum(axis=1)
    lengths = 1 + slots + tag_counts + mask_suffix
    starts = np.cumsum(lengths) - lengths
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    cats = np.empty_like(ids)
    ids[starts], cats[starts] = info.cls_token_id, SPECIAL
    slot_at = (starts[:, None] + np.cumsum(present, axis=1))[present]
    ids[slot_at] = slot_ids[present]
    cats[slot_at] = np.broadcast_to(np.array([RATING, SCORE]), present.shape)[present]
    tag_at = _ragged_arange(starts + 1 + slots, tag_counts)
    ids[tag_at], cats[tag_at] = tags[sources], tag_categories[sources]
    mask_at = (starts + lengths - 1)[mask_suffix]
    ids[mask_at], cats[mask_at] = info.mask_token_id, SPECIAL
    return ids, cats, lengths


def _mask_targets(
    masked_slot: np.ndarray, k: np.ndarray, rating: np.ndarray, score: np.ndarray, tags: np.ndarray,
    hidden: np.ndarray, visible: np.ndarray, tag_post: np.ndarray,
) -> dict[str, torch.Tensor]:
    """The ``mlm_*`` tensors: mask groups in the row-major order of their ``<mask>`` tokens (per post:
    rating, score, then the ``k`` hidden ``tags``), their targets, and the visible tags they exclude."""
    num_posts = len(k)
    posts = np.arange(num_posts)
    group_on = np.concatenate([masked_slot, (k > 0)[:, None]], axis=1)  # (B, 3) rating, score, tags
    group_of = (np.cumsum(group_on.ravel()) - 1).reshape(num_posts, 3)
    hidden_at = np.flatnonzero(hidden)  # post by post, in the order of the post's tags
    hidden_post = tag_post[hidden_at]
    by_post = np.argsort(
        np.concatenate([3 * posts[group_on[:, 0]], 3 * posts[group_on[:, 1]] + 1, 3 * hidden_post + 2]), kind="stable")
    target_ids = np.concatenate([rating[group_on[:, 0]], score[group_on[:, 1]], tags[hidden_at]])
    target_group = np.concatenate([group_of[group_on[:, 0], 0], group_of[group_on[:, 1], 1], group_of[hidden_post, 2]])
    target_weights = np.concatenate([np.ones(group_on[:, :2].sum()), 1.0 / k[hidden_post]]).astype(np.float32)
    excluded = visible[k[tag_post[visible]] > 0]  # the visible tags of a post that hides some
    return {
        "mlm_group_kind": torch.from_numpy(np.tile(np.array([RATING, SCORE, SPECIAL]), num_posts)[group_on.ravel()]),
        "mlm_target_group": torch.from_numpy(target_group[by_post]),
        "mlm_target_ids": torch.from_numpy(target_ids[by_post]),
        "mlm_target_weights": torch.from_numpy(target_weights[by_post]),
        "mlm_exclude_group": torch.from_numpy(group_of[tag_post[excluded], 2]),
        "mlm_exclude_ids": torch.from_numpy(tags[excluded]),
    }


def _subject_table(post_of: np.ndarray, tags: np.ndarray, num_posts: int, vocab_size: int) -> np.ndarray:
    """(num_posts, SUBJECTS_PER_POST) each post's subject ``tags`` ascending (the first ones), -1 padded."""
    keys = np.sort(post_of * vocab_size + tags)  # a known tag never repeats in a post
    post, tag = keys // vocab_size, keys % vocab_size
    rank = np.arange(len(keys)) - np.searchsorted(post, post)  # position within its post
    table = np.full((num_posts, SUBJECTS_PER_POST), -1, dtype=np.int64)
    keep = rank < SUBJECTS_PER_POST
    table[post[keep], rank[keep]] = tag[keep]
    return table


def _readback(post_of: np.ndarray, tags: np.ndarray, num_posts: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sequence, tag) read-back pairs: each post's known ``tags``, sorted, for its 3 sequences, post by post."""
    keys = np.sort(post_of * vocab_size + tags)  # a known tag never repeats in a post
    per_post = np.bincount(keys // vocab_size, minlength=num_posts)
    instances = np.repeat(per_post, 3)  # (post, block) in post order
    sequence = np.tile(np.arange(3) * num_posts, num_posts) + np.repeat(np.arange(num_posts), 3)
    at = _ragged_arange(np.repeat(np.cumsum(per_post) - per_post, 3), instances)
    return np.repeat(sequence, instances), keys[at] % vocab_size


def _subject_tokens(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, subject_categories: Sequence[int],
    exclude_ids: frozenset[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(post of each subject token, its tag id, posts of every tag id) of flat posts.

    Subject tokens are those of ``subject_categories`` not in ``exclude_ids`` (the unknown-tag tokens).
    """
    subject = np.isin(categories, subject_categories) & ~np.isin(ids, list(exclude_ids))
    posts_of = np.bincount(ids[subject], minlength=int(ids.max(initial=0)) + 1)  # a tag never repeats in a post
    post_index = np.repeat(np.arange(len(lengths)), lengths)[subject]
    return post_index, ids[subject], posts_of


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
    post_index, tags, posts_of = _subject_tokens(ids, categories, lengths, subject_categories, exclude_ids)
    weights = np.ones(len(lengths))
    if not len(tags):
        return weights
    median = np.median(posts_of[posts_of > 0])
    rarest = np.full(len(lengths), np.inf)
    np.minimum.at(rarest, post_index, posts_of[tags].astype(np.float64))
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
    post_index, tags, posts_of = _subject_tokens(ids, categories, lengths, subject_categories, exclude_ids)
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
