"""The pre-training collator as it was before its batch-wide rewrite: one Python pass per post.

Kept as the oracle of ``tests/test_collator.py::test_batch_wide_collator_gives_the_batches_of_the_per_post_one``:
the vectorised ``PretrainingCollator`` must give exactly these batches (same random draws, same tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from booru_embed.sequences import RATING, SCORE, SPECIAL, Post, TokenInfo, build_sequence, mark_masks, pack_sequences
from booru_embed.training.collator import IGNORE_INDEX, SUBJECTS_PER_POST, PretrainingCollator


class ReferenceCollator(PretrainingCollator):
    """``PretrainingCollator`` before the rewrite: same constructor, ``set_epoch`` and output keys."""

    def __init__(self, info: TokenInfo, config: Any, packed: bool | None = None) -> None:
        super().__init__(info, config, packed)
        self._unk = np.array(sorted(info.unk_token_ids), dtype=np.int64)

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

    def _view(self, post: Post, rng: np.random.Generator, whole: bool = False) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        """One contrastive view: whole categories dropped, then a random share of the remaining tags kept.

        Each of character, artist, copyright and meta is left out entirely with probability
        ``view_drop_category_probability`` (a post keeps at least one tag): a search query or a
        conditioning prompt often lacks a whole category, and the embedding should stay put.
        A ``whole`` view (``full_post_view``, the first view) keeps every tag and draws only its metadata.
        """
        cfg = self.config
        pool = np.arange(len(post.tags))
        if whole:
            kept = pool
        elif cfg.view_drop_category_probability > 0 and len(pool):
            dropped = self._droppable[rng.random(len(self._droppable)) < cfg.view_drop_category_probability]
            remaining = pool[~np.isin(post.tag_categories, dropped)]
            pool = remaining if len(remaining) else pool
        if not whole:
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
                ids, cats, kept_rating, kept_score = self._view(post, rng, whole=v == 0 and cfg.full_post_view)
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
