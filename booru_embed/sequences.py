"""What a post is after tokenization, and how posts become padded or packed model inputs.

An encoded post is ``[<cls>] [rating] [score] tags...`` (token ids with parallel category ids, as
``data.bulk_encoding.encode_dataset`` writes them). ``Post`` splits it into its parts, ``build_sequence``
puts parts back together (optionally with ``<mask>`` tokens), ``padded_inputs`` and ``pack_sequences``
turn a list of sequences into the model's inputs, ``flat_posts`` reads a whole encoded Arrow table at
once. Training (the collator), evaluation and the embedder build their inputs here.

Only numpy is imported at module level: the embedder's ONNX path uses ``padded_inputs`` without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .modeling.categories_booru_embed import CATEGORY_IDS, RATINGS

if TYPE_CHECKING:
    import torch

SPECIAL, RATING, SCORE = CATEGORY_IDS["special"], CATEGORY_IDS["rating"], CATEGORY_IDS["score"]
FIRST_TAG_CATEGORY = CATEGORY_IDS["general"]
MODEL_INPUT_KEYS = ("input_ids", "category_ids", "attention_mask", "cu_seqlens", "max_seqlen", "mlm_positions")


@dataclass(frozen=True)
class TokenInfo:
    """What the collator, objectives, evaluation and the embedder need to know about the vocabulary."""

    token_categories: np.ndarray  # (vocab,) category id of every token
    rating_token_ids: tuple[int, ...]  # class order of the rating head (g, s, q, e)
    score_token_ids: tuple[int, ...]  # class order of the score head (bucket order)
    unk_token_ids: frozenset[int]
    pad_token_id: int = 0
    cls_token_id: int = 1
    mask_token_id: int = 2

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenInfo:
        """Read the attributes of a ``BooruEmbedTokenizer``."""
        ratings = tokenizer.rating_token_ids
        return cls(
            token_categories=np.asarray(tokenizer.token_categories, dtype=np.int64),
            rating_token_ids=tuple(int(ratings[r]) for r in RATINGS if r in ratings),
            score_token_ids=tuple(int(i) for i in tokenizer.score_token_ids),
            unk_token_ids=frozenset(int(i) for i in tokenizer.unk_token_ids.values()),
            pad_token_id=int(tokenizer.pad_token_id),
            cls_token_id=int(tokenizer.cls_token_id),
            mask_token_id=int(tokenizer.mask_token_id),
        )

    @property
    def vocab_size(self) -> int:
        """Rows of the vocabulary (including padding rows)."""
        return len(self.token_categories)

    def tag_candidates(self) -> np.ndarray:
        """(vocab,) bool: tokens that can be a predicted tag (a tag category, not an unknown-tag token)."""
        candidates = self.token_categories >= FIRST_TAG_CATEGORY
        candidates[list(self.unk_token_ids)] = False
        return candidates

    def candidates_by_group(self) -> torch.Tensor:
        """(3, vocab) bool: candidates of a ``<mask>`` with category 0 (tags), 1 (rating), 2 (score)."""
        import torch

        table = torch.zeros(3, self.vocab_size, dtype=torch.bool)
        table[SPECIAL] = torch.from_numpy(self.tag_candidates())
        table[RATING, list(self.rating_token_ids)] = True
        table[SCORE, list(self.score_token_ids)] = True
        return table


@dataclass
class Post:
    """One encoded post split into its parts (token ids; ``tag_categories`` parallel to ``tags``)."""

    rating: int | None
    score: int | None
    tags: np.ndarray
    tag_categories: np.ndarray

    @classmethod
    def from_encoded(cls, input_ids: Sequence[int], category_ids: Sequence[int]) -> Post:
        """Split ``[<cls>] [rating] [score] tags...`` by category."""
        ids = np.asarray(input_ids, dtype=np.int64)
        cats = np.asarray(category_ids, dtype=np.int64)
        rating = ids[cats == RATING]
        score = ids[cats == SCORE]
        is_tag = cats >= FIRST_TAG_CATEGORY
        return cls(
            rating=int(rating[0]) if len(rating) else None,
            score=int(score[0]) if len(score) else None,
            tags=ids[is_tag],
            tag_categories=cats[is_tag],
        )


def build_sequence(
    info: TokenInfo,
    rating: int | None,
    score: int | None,
    tags: np.ndarray,
    tag_categories: np.ndarray,
    mask_rating: bool = False,
    mask_score: bool = False,
    mask_tags: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Token and category ids of ``[<cls>] [rating|<mask>] [score|<mask>] tags [<mask>]``."""
    ids, cats = [info.cls_token_id], [SPECIAL]
    if rating is not None:
        ids.append(info.mask_token_id if mask_rating else rating)
        cats.append(RATING)
    if score is not None:
        ids.append(info.mask_token_id if mask_score else score)
        cats.append(SCORE)
    ids.extend(tags.tolist())
    cats.extend(tag_categories.tolist())
    if mask_tags:
        ids.append(info.mask_token_id)
        cats.append(SPECIAL)
    return np.asarray(ids, dtype=np.int64), np.asarray(cats, dtype=np.int64)


def padded_inputs(sequences: Sequence[tuple[np.ndarray, np.ndarray]], pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Right-padded int64 numpy model inputs of (input_ids, category_ids) sequences, in their order.

    ``input_ids`` (n, longest) filled with ``pad_token_id``, ``category_ids`` (n, longest) with 0 (special)
    after the end, ``attention_mask`` (n, longest) 1 on real tokens.
    """
    lengths = np.array([len(ids) for ids, _ in sequences], dtype=np.int64)
    width = int(lengths.max())
    ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)  # (n, longest)
    cats = np.full((len(sequences), width), SPECIAL, dtype=np.int64)
    for row, (seq_ids, seq_cats) in enumerate(sequences):
        ids[row, : len(seq_ids)] = seq_ids
        cats[row, : len(seq_cats)] = seq_cats
    attention = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "category_ids": cats, "attention_mask": attention}


def pack_sequences(
    sequences: Sequence[tuple[np.ndarray, np.ndarray]], packed: bool = True, pad_token_id: int = 0
) -> dict[str, Any]:
    """Model inputs (torch tensors) for a list of (input_ids, category_ids) sequences.

    Packed: ``input_ids``/``category_ids`` (1, total), ``cu_seqlens`` (n+1,) int32 from 0, ``max_seqlen``.
    Padded: ``padded_inputs`` as tensors, (n, longest) with ``attention_mask``. Sequences keep their
    order in both layouts.
    """
    import torch

    if not packed:
        return {name: torch.from_numpy(value) for name, value in padded_inputs(sequences, pad_token_id).items()}
    lengths = np.array([len(ids) for ids, _ in sequences], dtype=np.int64)
    return pack_flat(np.concatenate([s[0] for s in sequences]), np.concatenate([s[1] for s in sequences]), lengths)


def pack_flat(
    ids: np.ndarray, categories: np.ndarray, lengths: np.ndarray, packed: bool = True, pad_token_id: int = 0
) -> dict[str, Any]:
    """``pack_sequences`` of sequences given flat: int64 ``ids``/``categories`` back to back, ``lengths`` each."""
    import torch

    if not packed:
        bounds = np.cumsum(lengths)[:-1]
        sequences = list(zip(np.split(ids, bounds), np.split(categories, bounds)))
        return pack_sequences(sequences, packed=False, pad_token_id=pad_token_id)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.from_numpy(np.cumsum(lengths)).to(torch.int32)
    return {
        "input_ids": torch.from_numpy(ids)[None],  # (1, total)
        "category_ids": torch.from_numpy(categories)[None],  # (1, total)
        "cu_seqlens": cu,
        "max_seqlen": int(np.max(lengths)),
    }


def mark_masks(batch: dict[str, Any], mask_token_id: int) -> torch.Tensor:
    """(same shape as input_ids) bool: the ``<mask>`` tokens, in the row-major order the model returns."""
    return batch["input_ids"] == mask_token_id


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of a batch that the model's forward takes."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def flat_posts(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The posts of an encoded Arrow table, flat: ``ids``, ``categories``, ``lengths``.

    ``ids`` and ``categories`` hold all the posts' tokens, one post after the other; ``lengths`` the
    tokens of each post. One pass over the columns, no per-post copy.
    """
    import pyarrow.compute as pc

    return (
        pc.list_flatten(table.column("input_ids")).to_numpy(),
        pc.list_flatten(table.column("category_ids")).to_numpy(),
        pc.list_value_length(table.column("input_ids")).to_numpy(),
    )
