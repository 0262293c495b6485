"""Encoded posts and model inputs (booru_embed.sequences), on plain id arrays (no tokenizer needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from booru_embed.sequences import (
    Post,
    TokenInfo,
    build_sequence,
    mark_masks,
    model_inputs,
    pack_sequences,
    padded_inputs,
)

# vocabulary: 0 pad, 1 cls, 2 mask, 3-6 ratings g s q e, 7-9 score buckets, 10 <unk_general>, 11-20 general tags
CATEGORIES = np.array([0, 0, 0] + [1] * 4 + [2] * 3 + [3] * 11)
INFO = TokenInfo(
    token_categories=CATEGORIES, rating_token_ids=(3, 4, 5, 6), score_token_ids=(7, 8, 9), unk_token_ids=frozenset({10})
)


def test_post_round_trips_through_build_sequence():
    ids = [1, 5, 8, 12, 10, 17]
    post = Post.from_encoded(ids, CATEGORIES[ids])
    assert (post.rating, post.score, post.tags.tolist()) == (5, 8, [12, 10, 17])
    rebuilt, cats = build_sequence(INFO, post.rating, post.score, post.tags, post.tag_categories)
    assert rebuilt.tolist() == ids and cats.tolist() == CATEGORIES[ids].tolist()
    masked, masked_cats = build_sequence(INFO, post.rating, None, post.tags[:1], post.tag_categories[:1],
                                         mask_rating=True, mask_tags=True)
    assert masked.tolist() == [1, 2, 12, 2] and masked_cats.tolist() == [0, 1, 3, 0]


def test_padded_and_packed_inputs_hold_the_same_sequences():
    sequences = [build_sequence(INFO, 4, 7, np.array(t), CATEGORIES[t], mask_tags=True) for t in ([11, 12, 13], [14], [])]
    padded = padded_inputs(sequences, pad_token_id=0)
    assert all(value.dtype == np.int64 for value in padded.values())
    assert padded["input_ids"].shape == (3, 7) and padded["attention_mask"].sum(axis=1).tolist() == [7, 5, 4]
    packed = pack_sequences(sequences, packed=True)
    assert packed["cu_seqlens"].tolist() == [0, 7, 12, 16] and packed["max_seqlen"] == 7
    for row, (ids, cats) in enumerate(sequences):
        real = padded["attention_mask"][row] == 1
        assert padded["input_ids"][row, real].tolist() == ids.tolist()
        assert padded["category_ids"][row, real].tolist() == cats.tolist()
        assert (padded["input_ids"][row, ~real] == 0).all() and (padded["category_ids"][row, ~real] == 0).all()
        span = slice(int(packed["cu_seqlens"][row]), int(packed["cu_seqlens"][row + 1]))
        assert packed["input_ids"][0, span].tolist() == ids.tolist()
    as_tensors = pack_sequences(sequences, packed=False)
    assert all(torch.equal(as_tensors[k], torch.from_numpy(v)) for k, v in padded.items())
    as_tensors["mlm_positions"] = mark_masks(as_tensors, INFO.mask_token_id)
    assert as_tensors["mlm_positions"].sum().item() == 3
    assert set(model_inputs({**as_tensors, "num_posts": 3})) == {"input_ids", "category_ids", "attention_mask", "mlm_positions"}


def test_token_info_candidates():
    assert np.flatnonzero(INFO.tag_candidates()).tolist() == list(range(11, 21))
    table = INFO.candidates_by_group()
    assert table.shape == (3, 21) and table[1].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert table[2].nonzero().flatten().tolist() == [7, 8, 9]


def test_importing_sequences_does_not_import_torch():
    code = "import sys, booru_embed.sequences; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
