"""The pre-training collator and batch sampler, on plain id arrays (no tokenizer needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from booru_embed.sequences import Post, TokenInfo
from booru_embed.training.collator import (
    IGNORE_INDEX, EpochBatchSampler, PretrainingCollator, rare_subject_weights, rarest_subject_groups,
)
from booru_embed.training.config import TrainingConfig

# vocabulary: 0 pad, 1 cls, 2 mask, 3-6 ratings g s q e, 7-9 score buckets, 10 <unk_general>,
# 11-40 general tags, 41-45 characters
CATEGORIES = np.array([0, 0, 0] + [1] * 4 + [2] * 3 + [3] + [3] * 30 + [6] * 5)
INFO = TokenInfo(
    token_categories=CATEGORIES,
    rating_token_ids=(3, 4, 5, 6),
    score_token_ids=(7, 8, 9),
    unk_token_ids=frozenset({10}),
)


def make_post(post_id: int, rng: np.random.Generator, rating: int | None = 4, score: int | None = 8) -> dict:
    """An encoded post: cls, rating, score, some general tags, a character, maybe an unknown tag."""
    general = rng.choice(np.arange(11, 41), size=rng.integers(2, 12), replace=False).tolist()
    tags = general + [int(rng.integers(41, 46))] + ([10] if post_id % 3 == 0 else [])
    ids = [1] + ([rating] if rating else []) + ([score] if score else []) + tags
    return {"id": post_id, "input_ids": ids, "category_ids": CATEGORIES[ids].tolist()}


def sequences_of(batch: dict) -> list[np.ndarray]:
    """Split a packed batch back into its sequences."""
    ids = batch["input_ids"][0].numpy()
    cu = batch["cu_seqlens"].numpy()
    return [ids[cu[i] : cu[i + 1]] for i in range(len(cu) - 1)]


@pytest.fixture
def posts() -> list[dict]:
    rng = np.random.default_rng(1)
    return [make_post(i, rng, rating=None if i == 5 else 4, score=None if i == 6 else 8) for i in range(16)]


def test_readback_target_own_reads_back_the_tags_each_sequence_shows(posts):
    whole = PretrainingCollator(INFO, TrainingConfig(seed=2, readback_target="post"))(posts)
    own = PretrainingCollator(INFO, TrainingConfig(seed=2, readback_target="own"))(posts)
    assert torch.equal(whole["input_ids"], own["input_ids"])  # the same draws, only the targets differ
    known = ~np.isin(np.arange(len(CATEGORIES)), [*range(11)])  # tags, not special / rating / score / unknown
    for index, sequence in enumerate(sequences_of(own)):
        shown = sorted(int(t) for t in sequence if known[t])
        targets = sorted(own["readback_ids"][own["readback_sequence"] == index].tolist())
        assert targets == shown
    assert len(whole["readback_ids"]) > len(own["readback_ids"])  # the post's tags: hidden and dropped ones too


def test_full_post_view_shows_every_tag_and_the_second_view_a_part(posts):
    config = TrainingConfig(seed=4, view_keep_min=0.3, view_keep_max=0.5, view_drop_category_probability=1.0)
    assert config.full_post_view  # the default
    seqs = sequences_of(PretrainingCollator(INFO, config)(posts))
    b = len(posts)
    tags = lambda sequence: sorted(int(t) for t in sequence if CATEGORIES[t] >= 3)  # tags, unknown ones included
    for p, post in enumerate(posts):
        assert tags(seqs[b + p]) == tags(post["input_ids"])  # view a: the whole post
        assert len(tags(seqs[2 * b + p])) < len(tags(post["input_ids"]))  # view b: a part, its character dropped
    off = sequences_of(PretrainingCollator(INFO, TrainingConfig(seed=4, full_post_view=False))(posts))
    assert any(len(tags(off[b + p])) < len(tags(post["input_ids"])) for p, post in enumerate(posts))


def test_batch_layout_and_mask_targets(posts):
    config = TrainingConfig(metadata_mask_probability=0.5, metadata_drop_probability=0.0, readback_target="post")
    batch = PretrainingCollator(INFO, config)(posts)
    b = len(posts)
    seqs = sequences_of(batch)
    assert len(seqs) == 3 * b and batch["cu_seqlens"][0] == 0 and batch["cu_seqlens"].dtype == torch.int32
    assert all(s[0] == INFO.cls_token_id for s in seqs)
    assert batch["max_seqlen"] == max(len(s) for s in seqs)
    assert int(batch["num_tokens"]) == sum(len(s) for s in seqs)
    # only the masked posts (first block) hold <mask> tokens: one per group, row-major
    assert int(batch["mlm_positions"].sum()) == len(batch["mlm_group_kind"])
    assert all((s == INFO.mask_token_id).sum() == 0 for s in seqs[b:])
    weights = torch.zeros(len(batch["mlm_group_kind"])).index_add_(0, batch["mlm_target_group"], batch["mlm_target_weights"])
    torch.testing.assert_close(weights, torch.ones_like(weights))
    group = 0
    for p, post in enumerate(posts):
        full = Post.from_encoded(post["input_ids"], post["category_ids"])
        seq = seqs[p]
        visible = set(seq[(seq > 9)].tolist())
        for kind, token in ((1, full.rating), (2, full.score)):
            if token is not None and token not in seq:
                assert batch["mlm_group_kind"][group] == kind
                assert batch["mlm_target_ids"][batch["mlm_target_group"] == group].tolist() == [token]
                group += 1
        hidden = batch["mlm_target_ids"][batch["mlm_target_group"] == group].tolist()
        assert batch["mlm_group_kind"][group] == 0 and seq[-1] == INFO.mask_token_id
        assert hidden and 10 not in hidden, "unknown-tag tokens are never hidden"
        assert set(hidden) | visible == set(full.tags.tolist()) and not set(hidden) & visible
        excluded = batch["mlm_exclude_ids"][batch["mlm_exclude_group"] == group].tolist()
        assert set(excluded) == visible
        group += 1
        for view in (seqs[b + p], seqs[2 * b + p]):
            assert set(view[view > 9].tolist()) <= set(full.tags.tolist()) and (view > 9).sum() >= 1
        readback = batch["readback_ids"][batch["readback_sequence"] == p].tolist()
        assert sorted(readback) == sorted(set(full.tags.tolist()) - {10})
        assert batch["readback_ids"][batch["readback_sequence"] == 2 * b + p].tolist() == readback
    assert group == len(batch["mlm_group_kind"])


def test_rating_and_score_labels_only_where_hidden(posts):
    batch = PretrainingCollator(INFO, TrainingConfig())(posts)
    seqs = sequences_of(batch)
    for s, seq in enumerate(seqs):
        post = posts[s % len(posts)]
        rating = next((t for t in post["input_ids"] if 3 <= t <= 6), None)
        expected = IGNORE_INDEX if rating is None or rating in seq else INFO.rating_token_ids.index(rating)
        assert batch["rating_labels"][s] == expected
        score = next((t for t in post["input_ids"] if 7 <= t <= 9), None)
        expected = IGNORE_INDEX if score is None or score in seq else INFO.score_token_ids.index(score)
        assert batch["score_labels"][s] == expected
    assert (batch["rating_labels"] != IGNORE_INDEX).any() and (batch["score_labels"] != IGNORE_INDEX).any()


def test_dropped_metadata_is_absent_and_predicted_by_the_heads(posts):
    config = TrainingConfig(metadata_drop_probability=1.0)
    batch = PretrainingCollator(INFO, config)(posts)
    masked = sequences_of(batch)[: len(posts)]
    assert all(not ((s >= 3) & (s <= 9)).any() for s in masked)
    assert set(batch["mlm_group_kind"].tolist()) == {0}
    has_rating = [any(3 <= t <= 6 for t in p["input_ids"]) for p in posts]
    assert [int(label) != IGNORE_INDEX for label in batch["rating_labels"][: len(posts)]] == has_rating


def test_masks_are_reproducible_per_epoch_and_fresh_across_epochs(posts):
    collator = PretrainingCollator(INFO, TrainingConfig(seed=3))
    first = collator(posts)
    again = PretrainingCollator(INFO, TrainingConfig(seed=3))(posts)
    assert torch.equal(first["input_ids"], again["input_ids"])
    collator.set_epoch(1)
    assert not torch.equal(collator(posts)["input_ids"], first["input_ids"])


def test_padded_layout_holds_the_same_sequences(posts):
    config = TrainingConfig()
    packed = PretrainingCollator(INFO, config, packed=True)(posts)
    padded = PretrainingCollator(INFO, config, packed=False)(posts)
    rows = [r[m.bool()].numpy() for r, m in zip(padded["input_ids"], padded["attention_mask"])]
    assert all(np.array_equal(a, b) for a, b in zip(rows, sequences_of(packed)))
    assert torch.equal(padded["mlm_positions"].sum(), packed["mlm_positions"].sum())
    assert torch.equal(padded["mlm_target_ids"], packed["mlm_target_ids"])


def test_max_tags_keeps_a_subset():
    rng = np.random.default_rng(0)
    post = make_post(1, rng)
    batch = PretrainingCollator(INFO, TrainingConfig(max_tags=3))([post, make_post(2, rng)])
    assert all((s > 9).sum() <= 3 for s in sequences_of(batch))


def test_sampler_orders_are_seeded_permutations():
    sampler = EpochBatchSampler(103, 10, seed=5)
    first = [i for b in sampler for i in b]
    assert len(sampler) == 10 and len(first) == 100 == len(set(first))
    assert first == [i for b in EpochBatchSampler(103, 10, seed=5) for i in b]
    sampler.set_epoch(1)
    assert first != [i for b in sampler for i in b]


def test_sampler_length_buckets_reduce_padding():
    lengths = np.random.default_rng(0).integers(1, 100, size=2000)
    def padding(sampler: EpochBatchSampler) -> int:
        return sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in sampler)
    bucketed = EpochBatchSampler(2000, 20, lengths=lengths, bucket_batches=10)
    assert sorted(i for b in bucketed for i in b) == list(range(2000))
    assert padding(bucketed) < padding(EpochBatchSampler(2000, 20)) / 3


def test_rare_subject_weights_follow_the_rarest_character_or_artist():
    # categories: 3 general, 4 artist, 6 character; token 9 is an unknown-tag token
    posts = [
        [(50, 3), (10, 6)],            # character 10: 1 post
        [(11, 6), (20, 4)],            # character 11: 4 posts, artist 20: 2 posts -> rarest is 20
        [(11, 6), (20, 4), (9, 6)],    # the unknown token does not count as a subject
        [(11, 6)], [(11, 6)],
        [(12, 6)] , [(12, 6)], [(12, 6)], [(12, 6)], [(12, 6)], [(12, 6)], [(12, 6)], [(12, 6)],
        [(50, 3)],                     # no subject
    ]
    ids = np.array([t for post in posts for t, _ in post])
    cats = np.array([c for post in posts for _, c in post])
    lengths = np.array([len(post) for post in posts])
    weights = rare_subject_weights(ids, cats, lengths, (4, 6), frozenset({9}), exponent=1.0)
    median = np.median([1, 4, 2, 8])  # posts of the subjects 10, 11, 20, 12
    assert weights[0] == pytest.approx(min(median / 1, 4.0))
    assert weights[1] == weights[2] == pytest.approx(median / 2)
    assert weights[3] == weights[4] == 1.0  # 11 has 4 posts, above the median: drawn once
    assert np.all(weights[5:] == 1.0)
    assert rare_subject_weights(ids, cats, lengths, (4, 6), frozenset({9}), exponent=0.5)[0] == pytest.approx(3 ** 0.5)


def test_sampler_draws_weighted_posts_the_same_number_of_times_every_epoch():
    weights = np.where(np.arange(100) < 20, 2.5, 1.0)
    sampler = EpochBatchSampler(100, 10, seed=3, weights=weights)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([i for batch in sampler for i in batch])
    counts = [np.bincount(drawn, minlength=100) for drawn in epochs]
    assert len(sampler) == len(sampler.items) // 10 and 120 < len(sampler.items) < 140
    assert np.all(np.isin(np.bincount(sampler.items)[:20], (2, 3))) and np.all(np.bincount(sampler.items)[20:] == 1)
    assert epochs[0] != epochs[1] and sum(counts[0]) == sum(counts[1]) == 10 * len(sampler)
    # draws of one post have one length: bucketed by length, they must still not share a batch
    lengths = np.random.default_rng(0).integers(1, 4, size=100)
    bucketed = EpochBatchSampler(100, 10, seed=3, lengths=lengths, bucket_batches=20, weights=np.full(100, 3.0))
    assert all(len(set(batch)) == len(batch) for batch in bucketed) and len(bucketed) == 30
    # the extra draws (round 1) are not all left to the end of the epoch
    rare_twice = EpochBatchSampler(100, 10, seed=3, weights=np.where(np.arange(100) < 50, 2.0, 1.0))
    assert len(rare_twice) == 15 and any(i >= 50 for batch in list(rare_twice)[-5:] for i in batch)
    unweighted = EpochBatchSampler(100, 10, seed=3)
    assert [i for b in unweighted for i in b] == [i for b in EpochBatchSampler(100, 10, seed=3, weights=np.ones(100)) for i in b]


def test_config_rejects_bad_values_and_unknown_keys(tmp_path):
    from booru_embed.errors import UsageError

    with pytest.raises(UsageError, match="mask_fraction"):
        TrainingConfig(mask_fraction_min=0.9, mask_fraction_max=0.1)
    with pytest.raises(UsageError, match="unknown training option"):
        TrainingConfig.from_dict({"learning_rte": 1.0})
    path = tmp_path / "tiny.json"
    path.write_text('{"hidden_size": 8, "training": {"batch_size": 7, "learning_rate": 0.5}}')
    config = TrainingConfig.from_sources(str(path), learning_rate=0.25, seed=None)
    assert (config.batch_size, config.learning_rate, config.seed) == (7, 0.25, 0)


def test_collator_works_with_namespace_config(posts):
    config = SimpleNamespace(**TrainingConfig().to_dict())
    assert PretrainingCollator(INFO, config)(posts[:2])["num_posts"] == 2


def test_views_can_drop_whole_categories_and_batches_carry_each_posts_subjects(posts):
    never = PretrainingCollator(INFO, TrainingConfig(full_post_view=False))(posts)
    always = PretrainingCollator(INFO, TrainingConfig(view_drop_category_probability=1.0, full_post_view=False))(posts)
    b = len(posts)
    characters = set(range(41, 46))
    for batch, dropped in ((never, False), (always, True)):
        seqs = sequences_of(batch)
        views_with_character = sum(bool(set(seqs[s].tolist()) & characters) for s in range(b, 3 * b))
        assert (views_with_character == 0) == dropped
        for p, post in enumerate(posts):  # the character (41-45) of every post, then -1
            own = [t for t in post["input_ids"] if t in characters]
            assert batch["contrastive_subjects"][p].tolist() == own + [-1] * (8 - len(own))
    # with a character-only post, a view keeps that post's tags rather than coming out empty
    lone = {"id": 99, "input_ids": [1, 42], "category_ids": CATEGORIES[[1, 42]].tolist()}
    config = TrainingConfig(view_drop_category_probability=1.0, full_post_view=False)
    seqs = sequences_of(PretrainingCollator(INFO, config)([lone, *posts]))
    assert 42 in seqs[len(posts) + 1].tolist()


def test_subject_pair_batches_give_every_drawn_post_a_partner_of_its_rarest_subject():
    # posts 0-5: character 41 (6 posts), posts 6-7: character 42 (2 posts), post 8: 42 and 41, post 9: none
    tags = [[41], [41], [41], [41], [41], [41], [42], [42], [41, 42], [11]]
    ids = np.concatenate([np.array(t) for t in tags])
    lengths = np.array([len(t) for t in tags])
    group, members, starts = rarest_subject_groups(ids, CATEGORIES[ids], lengths, (6,), frozenset({10}))
    of = {int(g): set(members[starts[g]:starts[g + 1]].tolist()) for g in range(len(starts) - 1)}
    assert of[group[0]] == {0, 1, 2, 3, 4, 5} and of[group[6]] == {6, 7, 8} and group[9] == -1
    sampler = EpochBatchSampler(10, 4, seed=1, partners=(group, members, starts))
    batches = list(sampler)
    assert len(sampler) == len(batches) == 5  # 10 posts, 2 drawn per batch
    drawn = []
    for batch in batches:
        assert len(batch) == 4
        for post, partner in zip(batch[:2], batch[2:]):
            drawn.append(post)
            if group[post] >= 0:
                assert partner != post and group[partner] == group[post]
    assert sorted(drawn) == list(range(10))


def messy_post(post_id: int, rng: np.random.Generator) -> dict:
    """A post with repeated known tags, several unknown-tag tokens, or no tags, rating or score at all."""
    tags = rng.integers(10, 46, size=rng.integers(0, 40)).tolist()  # 10 is <unk_general>; repeats on purpose
    rating = [int(rng.integers(3, 7))] if rng.random() < 0.8 else []
    score = [int(rng.integers(7, 10))] if rng.random() < 0.8 else []
    ids = [1] + rating + score + tags
    return {"id": post_id, "input_ids": ids, "category_ids": CATEGORIES[ids].tolist()}


@pytest.mark.parametrize("options", [
    {}, {"max_tags": 5}, {"metadata_drop_probability": 0.0, "metadata_mask_probability": 1.0},
    {"metadata_drop_probability": 1.0, "view_metadata_probability": 1.0, "packed": False},
    {"mask_fraction_min": 1.0, "mask_fraction_max": 1.0, "view_keep_min": 1.0, "view_keep_max": 1.0},
    {"view_drop_category_probability": 0.5}, {"view_drop_category_probability": 1.0, "max_tags": 5},
    {"full_post_view": False}, {"full_post_view": False, "view_drop_category_probability": 0.5},
])
def test_batch_wide_collator_gives_the_batches_of_the_per_post_one(options):
    from collator_reference import ReferenceCollator

    rng = np.random.default_rng(7)
    config = TrainingConfig(seed=11, readback_target="post", **options)  # the oracle reads back to the post
    for epoch in range(3):
        examples = [messy_post(int(i), rng) for i in rng.choice(10_000, size=int(rng.integers(1, 40)), replace=False)]
        fast, reference = PretrainingCollator(INFO, config), ReferenceCollator(INFO, config)
        fast.set_epoch(epoch)
        reference.set_epoch(epoch)
        got, expected = fast(examples), reference(examples)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            else:
                assert got[key] == value, key
