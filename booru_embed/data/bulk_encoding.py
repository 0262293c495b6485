"""Encode a whole ``datasets`` split of DATA_DIR posts with Arrow compute and numpy: the bulk path.

``encode_dataset(tokenizer, split)`` gives every post the ids ``tokenizer(post)`` gives it, without a
Python loop over posts. Tags are looked up with ``pyarrow.compute.index_in`` against the tokenizer's
tag lookup; each batch of posts is then put in canonical order by ONE sort of ``row << rank_bits | rank``
keys packed in uint32 (equal neighbours are duplicates). Only strings that miss the exact lookup
(unknown or oddly spelled tags) and the few distinct rating strings go through the tokenizer's own
rules (``resolve_tag``, ``parse_rating``), once per distinct string, so both paths share one definition.

It is a data-pipeline tool of the package, not remote code: Hub readers of a model folder never need it.
"""

from __future__ import annotations

import functools
import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..modeling.categories_booru_embed import TAG_CATEGORIES
from ..modeling.normalization_booru_embed import parse_rating

if TYPE_CHECKING:
    import datasets

    from ..modeling.tokenization_booru_embed import BooruEmbedTokenizer

BULK_BATCH_ROWS = 65_536  # rows per Arrow batch; batches run on parallel threads
NOISE_BITS = 16  # random key bits per token when shuffling within categories
GROUP_BITS = 4  # shuffle groups: <cls>, ratings, scores, five categories, the rest (9 < 16)
DROPPED = np.iinfo(np.uint32).max  # rank of an empty or null tag: not a tag at all


class _Tables:
    """numpy / Arrow views of one tokenizer's vocabulary, built once per ``encode_dataset`` call."""

    def __init__(self, tokenizer: BooruEmbedTokenizer) -> None:
        vocabulary = tokenizer.vocabulary
        self.tokenizer = tokenizer
        self.size = len(vocabulary)
        self.rank_bits = max(1, (self.size - 1).bit_length())
        self.rank = np.asarray(vocabulary.rank, dtype=np.uint32)
        self.group = np.asarray(vocabulary.group, dtype=np.int64)
        self.rank_to_id = vocabulary.rank_to_id
        self.rank_is_identity = vocabulary.rank_is_identity
        self.categories = vocabulary.categories_np
        self.cls_rank = np.uint32(vocabulary.rank[vocabulary.cls_id])
        self.rating_ids = vocabulary.rating_ids
        self.score_boundaries = np.asarray(vocabulary.score_boundaries, dtype=np.int64)
        self.score_ranks = self.rank[np.asarray(vocabulary.score_ids, dtype=np.int64)]
        lookup = tokenizer.tag_lookup
        self.value_set = pa.array(list(lookup), type=pa.string())
        # rank of each value-set entry, then a placeholder for misses (overwritten once resolved)
        self.value_ranks = np.append(self.rank[np.fromiter(lookup.values(), np.int64, len(lookup))], DROPPED).astype(np.uint32)


def encode_dataset(
    tokenizer: BooruEmbedTokenizer,
    split: datasets.Dataset,
    shuffle_within_categories: bool = False,
    seed: int | None = None,
    max_length: int | None = None,
    batch_size: int | None = None,
) -> datasets.Dataset:
    """Encode a split with the DATA_DIR columns into ``id``, ``input_ids``, ``category_ids``, ``length``.

    Same ids and order as ``tokenizer(post)`` on every row (no padding); ``max_length`` truncates by the
    same priority. ``shuffle_within_categories`` permutes tokens inside each shuffle group (the
    vocabulary's ``group``), reproducibly for a given ``seed`` whatever the thread timing.
    """
    import datasets

    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1 (the <cls> token), got {max_length}")
    tables = _Tables(tokenizer)
    rows_per_batch = 1 << (32 - tables.rank_bits)  # row and rank share one uint32 sort key
    batch_size = min(batch_size or BULK_BATCH_ROWS, rows_per_batch)
    arrow = split.with_format("arrow")
    batches = list(arrow.iter(batch_size=batch_size)) or [arrow[:0]]
    # One generator per batch, spawned from the seed: the result does not depend on thread timing.
    generators = (
        [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(batches))]
        if shuffle_within_categories
        else [None] * len(batches)
    )
    encode = functools.partial(_encode_table, tables, max_length)
    workers = min(len(batches), os.cpu_count() or 1)
    if workers > 1:  # Arrow compute and numpy sorts release the GIL
        with ThreadPoolExecutor(workers) as pool:
            encoded = list(pool.map(encode, batches, generators))
    else:
        encoded = list(itertools.starmap(encode, zip(batches, generators)))
    return datasets.Dataset(pa.concat_tables(encoded), fingerprint=uuid.uuid4().hex)


def _column_keys(tables: _Tables, column: pa.ChunkedArray, category: str) -> np.ndarray:
    """Sort key ``row << rank_bits | rank`` of every tag in one list<string> column (empty tags dropped)."""
    lists = column.combine_chunks()
    values = lists.flatten()
    if values.type != pa.string():
        values = values.cast(pa.string())
    if lists.null_count:
        keys = pc.list_parent_indices(lists).to_numpy().astype(np.uint32)
    else:
        keys = np.repeat(np.arange(len(lists), dtype=np.uint32), np.diff(lists.offsets.to_numpy()))
    keys <<= np.uint32(tables.rank_bits)
    position = pc.index_in(values, value_set=tables.value_set, skip_nulls=True)
    ranks = tables.value_ranks[position.fill_null(len(tables.value_set)).to_numpy()]
    if position.null_count == 0:
        return keys | ranks
    missing = position.is_null()
    missed = values.filter(missing)
    unique = pc.unique(missed)
    resolved = [tables.tokenizer.resolve_tag(tag, category) for tag in unique.to_pylist()]
    resolved_ranks = np.array([DROPPED if r is None else tables.rank[r] for r in resolved], dtype=np.uint32)
    ranks[missing.to_numpy(zero_copy_only=False)] = resolved_ranks[pc.index_in(missed, value_set=unique).to_numpy()]
    keys |= ranks
    return keys[ranks != DROPPED]


def _metadata_keys(tables: _Tables, table: pa.Table) -> list[np.ndarray]:
    """Sort keys of the rating and score-bucket tokens (rows with a null or empty rating, or a null score, have none)."""
    rows, ranks = [], []
    if "rating" in table.column_names:
        ratings = pc.cast(table["rating"].combine_chunks(), pa.string())
        unique = pc.unique(ratings)
        letters = [parse_rating(value) for value in unique.to_pylist()]  # the tokenizer's rule, per distinct string
        unique_ranks = np.array([0 if r is None else tables.rank[tables.rating_ids[r]] for r in letters], dtype=np.uint32)
        has_rating = np.array([r is not None for r in letters], dtype=bool)
        position = pc.index_in(ratings, value_set=unique, skip_nulls=True).fill_null(0).to_numpy()
        valid = ratings.is_valid().to_numpy(zero_copy_only=False) & has_rating[position]
        rows.append(np.flatnonzero(valid).astype(np.uint32))
        ranks.append(unique_ranks[position[valid]])
    if "score" in table.column_names:
        scores = table["score"]
        valid = pc.is_valid(scores).to_numpy(zero_copy_only=False)
        values = scores.fill_null(0).to_numpy().astype(np.int64)
        buckets = np.searchsorted(tables.score_boundaries, values, side="right")  # Vocabulary.score_bucket
        rows.append(np.flatnonzero(valid).astype(np.uint32))
        ranks.append(tables.score_ranks[buckets[valid]])
    return [(r << np.uint32(tables.rank_bits)) | k for r, k in zip(rows, ranks)]


def _encode_table(tables: _Tables, max_length: int | None, table: pa.Table, rng: np.random.Generator | None) -> pa.Table:
    """One Arrow batch of posts -> ``id``, ``input_ids`` (int32), ``category_ids`` (int8), ``length``."""
    num_rows = table.num_rows
    bits = np.uint32(tables.rank_bits)
    parts = [(np.arange(num_rows, dtype=np.uint32) << bits) | tables.cls_rank]
    parts += _metadata_keys(tables, table)
    parts += [_column_keys(tables, table[c], c) for c in TAG_CATEGORIES if c in table.column_names]
    # One sort of (row, rank) keys orders every post canonically; equal neighbours are duplicates.
    keys = np.sort(np.concatenate(parts))
    duplicate = keys[1:] == keys[:-1]
    if duplicate.any():
        keys = keys[np.concatenate(([True], ~duplicate))]
    ranks = keys & np.uint32((1 << tables.rank_bits) - 1)
    token_ids = ranks.view(np.int32) if tables.rank_is_identity else tables.rank_to_id[ranks]
    starts = np.searchsorted(keys, np.arange(num_rows, dtype=np.uint32) << bits)
    counts = np.diff(np.append(starts, len(keys)))
    if max_length is not None:
        token_ids = token_ids[np.arange(len(token_ids)) - np.repeat(starts, counts) < max_length]
        counts = np.minimum(counts, max_length)
    if rng is not None:
        token_ids = _shuffle_sorted(tables, np.repeat(np.arange(num_rows, dtype=np.int64), counts), token_ids, rng)
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    columns = {}
    if "id" in table.column_names:
        columns["id"] = table["id"]
    columns["input_ids"] = pa.ListArray.from_arrays(offsets, pa.array(token_ids))
    columns["category_ids"] = pa.ListArray.from_arrays(offsets, pa.array(tables.categories[token_ids]))
    columns["length"] = pa.array(counts.astype(np.int32))
    return pa.table(columns)


def _shuffle_sorted(tables: _Tables, post: np.ndarray, token_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle canonically ordered tokens within each (post, shuffle group) block: sort by random keys."""
    rank = tables.rank.astype(np.int64)[token_ids]
    group = tables.group[token_ids]
    noise = rng.integers(0, 1 << NOISE_BITS, size=len(token_ids), dtype=np.int64)
    # (row, group, noise, rank) in int64: rows take at most 32 - rank_bits bits.
    keys = np.sort((((post << GROUP_BITS | group) << NOISE_BITS | noise) << tables.rank_bits) | rank)
    return tables.rank_to_id[keys & ((1 << tables.rank_bits) - 1)]


__all__ = ["BULK_BATCH_ROWS", "encode_dataset"]
