"""The field checks of ``build-dataset``, vectorised over a whole block: every row gets its first
reject reason (``missing_field``, ``nul_byte``, ``bad_id``, ``bad_score``, ``bad_rating``,
``too_many_tags``) or passes; and the split of space-separated tag strings into tag lists. A source
without any rating or score (``Block.absent``) gives posts with a null rating and a null score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..modeling.categories_booru_embed import RATING_ALIASES, RATINGS
from .blocks import INPUT_COLUMNS, TAG_COLUMNS, Block

DEFAULT_MAX_TAGS = 2000  # Danbooru's most heavily tagged posts have several hundred tags


def _offsets(array: pa.Array) -> np.ndarray:
    """The int32 offsets of a string or list array, as numpy (zero-copy)."""
    return np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)


def tag_lists(strings: pa.Array) -> tuple[pa.ListArray, np.ndarray]:
    """Space-separated tag strings -> lists without empty strings or repeats (first order kept),
    and the number of tags each string had.

    Empty strings are marked null for the split, so they give no token instead of one "" (Danbooru
    posts often have no artist, copyright or character). Danbooru's tag strings are sorted,
    single-spaced and without repeats: then one comparison of neighbouring tokens proves it and the
    split lists are used as they are. Otherwise empty tokens and repeats are removed and the lists
    rebuilt.
    """
    rows = len(strings)
    strings = pc.fill_null(strings, "") if strings.null_count else strings
    present = np.diff(_offsets(strings)) > 0
    if not present.all():
        validity = np.packbits(np.concatenate([np.ones(strings.offset, dtype=bool), present]), bitorder="little")
        strings = pa.StringArray.from_buffers(rows, strings.buffers()[1], strings.buffers()[2],
                                              pa.py_buffer(validity), offset=strings.offset)
    lists = pc.split_pattern(strings, " ")
    flat = pc.list_flatten(lists)
    row_starts = _offsets(lists) - _offsets(lists)[0]  # a null (empty) row has no token
    value_offsets = _offsets(flat)
    nonempty = value_offsets[1:] != value_offsets[:-1]  # double or edge spaces leave "" tokens
    counts = np.diff(row_starts)
    if len(flat) > 1:
        # in order when every neighbour pair that is not increasing straddles two rows (counted on
        # Arrow's bit-packed booleans: converting them to numpy would cost 4x the comparison)
        increasing = pc.less(flat.slice(0, len(flat) - 1), flat.slice(1))
        boundaries = row_starts[1:-1][(row_starts[1:-1] > 0) & (row_starts[1:-1] < len(flat))]
        boundaries = boundaries[np.concatenate([[True], boundaries[1:] != boundaries[:-1]])[: len(boundaries)]] - 1
        not_increasing = len(increasing) - (pc.sum(increasing).as_py() or 0)
        not_increasing_between_rows = len(boundaries) - (pc.sum(increasing.take(pa.array(boundaries))).as_py() or 0)
        in_order = not_increasing == not_increasing_between_rows
    else:
        in_order = True
    if in_order and nonempty.all():
        return pa.ListArray.from_arrays(pa.array(row_starts), flat), counts
    parents = np.repeat(np.arange(rows), counts)
    flat, parents = flat.filter(pa.array(nonempty)), parents[nonempty]
    counts = np.bincount(parents, minlength=rows)
    if not in_order and len(flat) > 1:
        codes = pc.dictionary_encode(flat).indices.to_numpy().astype(np.int64)
        _, first = np.unique(parents * (int(codes.max()) + 1) + codes, return_index=True)
        first.sort()
        flat, parents = flat.take(pa.array(first)), parents[first]
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat), counts


def _tag_counts(columns: dict[str, pa.Array], max_tags: int) -> np.ndarray:
    """Non-empty tags per row over all categories, exact wherever the total could exceed ``max_tags``
    (k tags need at least 2k - 1 characters, so shorter rows are not split here)."""
    bound = np.zeros(len(columns["id"]), dtype=np.int64)
    for name in TAG_COLUMNS:
        bound += (np.diff(_offsets(columns[f"tag_string_{name}"])) + 1) // 2
    suspects = np.flatnonzero(bound > max_tags)
    if len(suspects):
        bound[suspects] = 0
        for name in TAG_COLUMNS:
            bound[suspects] += tag_lists(columns[f"tag_string_{name}"].take(pa.array(suspects)))[1]
    return bound


def _rating_letters(ratings: pa.Array) -> pa.Array:
    """Danbooru's rating words (``general``, ``sensitive``, ... as metadata dumps write them) -> its letters."""
    index = pc.index_in(ratings, value_set=pa.array(list(RATING_ALIASES)))
    if index.null_count == len(index):
        return ratings
    return pc.coalesce(pa.array(list(RATING_ALIASES.values())).take(index), ratings)


@dataclass
class CheckedRows:
    """A block's rows after the field checks, still as strings (filtering strings is cheaper than lists)."""

    good: np.ndarray  # bool: the row passes every check
    ids: np.ndarray  # int64 post id of every passing row (0 for the others)
    score: np.ndarray  # int64 score of every row (0 where the field is no number)
    has_score: np.ndarray  # bool: the row has a score (False where its source has no score column)
    columns: dict[str, pa.Array]  # ``rating`` as Danbooru's letters, ``tag_string_*`` without nulls
    rejects: list[tuple[int, str, str, str]]  # (line, reason, detail, raw) of every rejected row


def check_rows(block: Block, max_tags: int, default_rating: str | None = None) -> CheckedRows:
    """Check every field of every row of ``block`` (its ``columns`` are updated in place); a row's
    reject reason is the first check it fails, its detail the offending field where there is one.

    Where the block's source has no rating or score at all (``block.absent``), a null rating is an
    unknown rating (``default_rating`` when given, a letter) and a null score no score: neither is a
    missing field.
    """
    columns = block.columns
    rows = len(block.lines)
    reason = np.zeros(rows, dtype=np.int8)  # 0: passes, else 1 + index in codes
    codes: list[str] = []
    detail_of: dict[int, str] = {}

    def flag(mask: np.ndarray, code: str, column: str | None) -> None:
        new = np.flatnonzero(mask & (reason == 0))
        codes.append(code)
        reason[new] = len(codes)
        if column is not None:
            for i in new.tolist():
                detail_of[i] = f"{column}={columns[column][i].as_py()!r}"[:120]

    def as_numpy(array: pa.Array) -> np.ndarray:
        return array.to_numpy(zero_copy_only=False)

    def matches(array: pa.Array, pattern: str) -> np.ndarray:
        found = pc.match_substring_regex(array, pattern)
        return as_numpy(pc.fill_null(found, False) if found.null_count else found)

    missing = np.zeros(rows, dtype=bool)
    nul = np.zeros(rows, dtype=bool)
    for name in INPUT_COLUMNS:
        if columns[name].null_count and name in ("id", "rating", "score") and name not in block.absent:
            # a null tag string has no tags; a rating or score the source does not have is unknown
            missing |= as_numpy(columns[name].is_null())
        if block.may_have_nul:
            nul |= as_numpy(pc.fill_null(pc.match_substring(columns[name], "\x00"), False))
    flag(missing, "missing_field", None)
    flag(nul, "nul_byte", None)
    flag(~matches(columns["id"], r"^[0-9]{1,18}$"), "bad_id", "id")
    score_ok = matches(columns["score"], r"^-?[0-9]{1,10}$")
    score = np.zeros(rows, dtype=np.int64)
    score[score_ok] = as_numpy(pc.cast(columns["score"].filter(pa.array(score_ok)), pa.int64()))
    score_ok &= (score >= -(2**31)) & (score < 2**31)
    has_score = score_ok.copy()
    if "score" in block.absent:
        score_ok |= as_numpy(columns["score"].is_null())
    flag(~score_ok, "bad_score", "score")
    if "rating" in block.absent and default_rating is not None:
        columns["rating"] = pc.fill_null(columns["rating"], default_rating)
    columns["rating"] = _rating_letters(columns["rating"])
    rating_ok = as_numpy(pc.fill_null(pc.is_in(columns["rating"], pa.array(RATINGS)), False))
    if "rating" in block.absent:
        rating_ok |= as_numpy(columns["rating"].is_null())
    flag(~rating_ok, "bad_rating", "rating")
    for name in TAG_COLUMNS:
        if columns[f"tag_string_{name}"].null_count:
            columns[f"tag_string_{name}"] = pc.fill_null(columns[f"tag_string_{name}"], "")
    total = _tag_counts(columns, max_tags)
    flag(total > max_tags, "too_many_tags", None)
    for i in np.flatnonzero(total > max_tags).tolist():
        detail_of.setdefault(i, f"{int(total[i])} tags, at most {max_tags} allowed")

    good = reason == 0
    ids = np.zeros(rows, dtype=np.int64)
    ids[good] = as_numpy(pc.cast(columns["id"].filter(pa.array(good)), pa.int64()))
    rejects = []
    for i in np.flatnonzero(~good).tolist():
        code = codes[reason[i] - 1]
        rejects.append((int(block.lines[i]), code, detail_of.get(i, code.replace("_", " ")), block.raw(i)))
    return CheckedRows(good, ids, score, has_score, columns, rejects)
