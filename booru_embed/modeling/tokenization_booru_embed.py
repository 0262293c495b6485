"""Whole-tag tokenizer for Danbooru tag sets: one tag, one token, and every token knows its category.

Remote code: this file is copied next to the weights and loaded with
``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)``, so it imports only the standard
library, numpy, pyarrow and public transformers APIs (``datasets`` only inside ``encode_dataset``).

An encoded post is ``<cls> [rating] [score bucket] tags...`` in canonical order: character, copyright,
artist, general, meta; inside a category rarer tags come first and the category's unknown token last.
That order is also the truncation priority, so truncating keeps a prefix and never drops the post.

Files of a tokenizer folder:
- ``vocab.json``: every vocabulary row in id order as ``[token, kind, category, count]`` (kind is
  ``special``, ``rating``, ``score``, ``tag`` or ``unused``) and the score bucket boundaries. Tags and
  the other kinds are separate namespaces: a tag literally named ``<pad>`` is a tag, never padding.
- ``aliases.json`` (antecedent -> canonical tag) and ``implications.json`` (antecedent -> consequents).

``tokenizer.normalize(tagset, implications="keep" | "minimal" | "complete")`` applies those tables to
tag strings rather than ids (unknown tags kept by name); its rules are in ``normalization_booru_embed``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, is_torch_available

from .categories_booru_embed import CATEGORY_IDS, CATEGORY_NAMES, PRIORITY_ORDER, RATING_ALIASES, RATINGS, TAG_CATEGORIES
from .normalization_booru_embed import (
    NormalizedTags,
    TagNormalizer,
    normalize_tag,
    parse_rating,
    resolve_alias,
    split_tag_string,
)

PAD_TOKEN, CLS_TOKEN, MASK_TOKEN = "<pad>", "<cls>", "<mask>"
UNK_TOKENS = {category: f"<unk_{category}>" for category in TAG_CATEGORIES}
VOCAB_FORMAT = 1
BULK_BATCH_ROWS = 65_536  # rows per Arrow batch of encode_dataset; batches run on parallel threads


def rating_token(rating: str) -> str:
    """The vocabulary token of a rating letter (``g`` -> ``rating:g``)."""
    return f"rating:{rating}"


def score_token_names(boundaries: list[int]) -> list[str]:
    """Token names of the score buckets cut at ``boundaries``, in Danbooru's search syntax."""
    if not boundaries:
        return ["score:any"]
    names = [f"score:<{boundaries[0]}"]
    for low, high in zip(boundaries, boundaries[1:]):
        names.append(f"score:{low}" if high == low + 1 else f"score:{low}..{high - 1}")
    names.append(f"score:>={boundaries[-1]}")
    return names


def write_vocab_file(path: str | os.PathLike, rows: list[tuple[str, str, int, int]], score_boundaries: list[int]) -> None:
    """Write ``vocab.json``: rows ``(token, kind, category, count)`` in id order (one per line) and the score boundaries."""
    header = f'{{"format": {VOCAB_FORMAT}, "score_boundaries": {json.dumps([int(b) for b in score_boundaries])}, "tokens": [\n'
    body = ",\n".join(json.dumps([str(t), str(k), int(c), int(n)], ensure_ascii=False) for t, k, c, n in rows)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header + body + "\n]}\n")


def write_table_file(path: str | os.PathLike, table: Mapping[str, Any]) -> None:
    """Write an alias or implication table as a JSON object, one sorted key per line."""
    body = ",\n".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(table[k], ensure_ascii=False)}" for k in sorted(table))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("{\n" + body + "\n}\n")


def _read_json(path: str | os.PathLike | None, default: Any) -> Any:
    if path is None:
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class BooruEmbedTokenizer(PreTrainedTokenizer):
    """Maps Danbooru tag sets to one token per tag, with the category of every token.

    Input forms (one post): a Danbooru tag string (``"1girl solo rating:g"``), a prompt-style comma
    list (``"1girl, long hair, hatsune miku \\(vocaloid\\)"``), a list of tags (pass
    ``is_split_into_words=True`` for a single list; a list of lists is a batch), or a dict by category
    (``{"general": [...], "artist": [...], "rating": "g", "score": 12}``). A list of strings without
    ``is_split_into_words`` is a batch of tag strings, as in transformers.
    """

    vocab_files_names = {"vocab_file": "vocab.json", "aliases_file": "aliases.json", "implications_file": "implications.json"}
    model_input_names = ["input_ids", "category_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        aliases_file: str | None = None,
        implications_file: str | None = None,
        pad_token: str = PAD_TOKEN,
        cls_token: str = CLS_TOKEN,
        mask_token: str = MASK_TOKEN,
        unk_token: str = UNK_TOKENS["general"],
        **kwargs: Any,
    ) -> None:
        if vocab_file is None:
            raise ValueError("BooruEmbedTokenizer needs a vocab_file (vocab.json written by `booru-embed build-tokenizer`)")
        vocab = _read_json(vocab_file, None)
        if vocab.get("format") != VOCAB_FORMAT:
            raise ValueError(f"{vocab_file}: unsupported vocabulary format {vocab.get('format')!r}")
        self._load_vocabulary(vocab["tokens"], [int(b) for b in vocab["score_boundaries"]])
        self._load_aliases(_read_json(aliases_file, {}))
        self._implications: dict[str, list[str]] = {k: list(v) for k, v in _read_json(implications_file, {}).items()}
        self._normalizer: TagNormalizer | None = None
        kwargs.setdefault("extra_special_tokens", [UNK_TOKENS[c] for c in TAG_CATEGORIES if UNK_TOKENS[c] != unk_token])
        super().__init__(pad_token=pad_token, cls_token=cls_token, mask_token=mask_token, unk_token=unk_token, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Vocabulary
    # ----------------------------------------------------------------------------------------------
    def _load_vocabulary(self, rows: list[list[Any]], score_boundaries: list[int]) -> None:
        self._tokens: list[str] = [str(r[0]) for r in rows]
        self._kinds: list[str] = [str(r[1]) for r in rows]
        self.token_categories: list[int] = [int(r[2]) for r in rows]
        self.token_counts: list[int] = [int(r[3]) for r in rows]
        self._score_boundaries = score_boundaries
        self._tag_ids: dict[str, int] = {}
        self._other_ids: dict[str, int] = {}
        for index, (token, kind) in enumerate(zip(self._tokens, self._kinds)):
            (self._tag_ids if kind == "tag" else self._other_ids)[token] = index
        for token, expected in ((PAD_TOKEN, 0), (CLS_TOKEN, 1), (MASK_TOKEN, 2)):
            if self._other_ids.get(token) != expected:
                raise ValueError(f"vocabulary must have {token} at id {expected}")
        self._unk_ids = {c: self._other_ids[UNK_TOKENS[c]] for c in TAG_CATEGORIES}
        self._rating_ids = {r: self._other_ids[rating_token(r)] for r in RATINGS}
        self._score_ids = [self._other_ids[name] for name in score_token_names(score_boundaries)]
        self._tag_token_ids = [i for i, kind in enumerate(self._kinds) if kind == "tag"]
        self._rank, self._group = self._canonical_ranks()
        self._rank_to_id = np.argsort(self._rank).astype(np.int32)
        # True for vocabularies written by build-tokenizer: then sorting ids is canonical ordering.
        self._rank_is_identity = all(rank == index for index, rank in enumerate(self._rank))
        self._cls_id = self._other_ids[CLS_TOKEN]
        self._categories_np = np.asarray(self.token_categories, dtype=np.int8)

    def _canonical_ranks(self) -> tuple[list[int], list[int]]:
        """Rank and shuffle group of every id.

        Canonical order: ``<cls>``, ratings, score buckets, then each category of ``PRIORITY_ORDER`` with
        its tags rarer first and its unknown token last. Those tokens take the ranks of their own id set
        in that order (so a vocabulary laid out canonically has rank == id); other rows keep rank == id.
        """
        order = [self._other_ids[CLS_TOKEN], *self._rating_ids.values(), *self._score_ids]
        groups = [0] + [1] * len(self._rating_ids) + [2] * len(self._score_ids)
        for group, category in enumerate(PRIORITY_ORDER, start=3):
            category_id = CATEGORY_IDS[category]
            tags = [i for i in self._tag_token_ids if self.token_categories[i] == category_id]
            tags.sort(key=lambda i: (self.token_counts[i], self._tokens[i]))
            order += [*tags, self._unk_ids[category]]
            groups += [group] * (len(tags) + 1)
        rank = list(range(len(self._tokens)))
        group_of = [len(PRIORITY_ORDER) + 3] * len(self._tokens)
        for slot, index, group in zip(sorted(order), order, groups):
            rank[index], group_of[index] = slot, group
        return rank, group_of

    def _load_aliases(self, aliases: Mapping[str, str]) -> None:
        self._aliases: dict[str, str] = dict(aliases)
        self._lookup: dict[str, int] = {}
        for antecedent in self._aliases:
            canonical = resolve_alias(antecedent, self._aliases)
            if canonical in self._tag_ids:
                self._lookup[antecedent] = self._tag_ids[canonical]
        self._lookup.update({tag: i for tag, i in self._tag_ids.items() if tag not in self._aliases})
        self._lookup_arrow: tuple[pa.Array, np.ndarray] | None = None

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary rows, padding rows included (a multiple of 64)."""
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id. Where a tag is spelled like a special token, the special token wins here."""
        vocab = dict(self._tag_ids)
        vocab.update(self._other_ids)
        return vocab

    @property
    def rating_token_ids(self) -> dict[str, int]:
        """Rating letter (g, s, q, e) -> token id."""
        return dict(self._rating_ids)

    @property
    def score_token_ids(self) -> list[int]:
        """Token id of each score bucket, lowest bucket first."""
        return list(self._score_ids)

    @property
    def score_boundaries(self) -> list[int]:
        """Lower bounds of score buckets 1..n-1 (bucket 0 is everything below the first)."""
        return list(self._score_boundaries)

    @property
    def unk_token_ids(self) -> dict[str, int]:
        """Category name (general, artist, copyright, character, meta) -> id of its unknown-tag token."""
        return dict(self._unk_ids)

    @property
    def tag_token_ids(self) -> list[int]:
        """Ids of the real tags (no special, rating, score, unknown or padding rows), in id order."""
        return list(self._tag_token_ids)

    @property
    def aliases(self) -> dict[str, str]:
        """The alias table given at build time (antecedent -> canonical tag)."""
        return dict(self._aliases)

    @property
    def implications(self) -> dict[str, list[str]]:
        """Implication table given at build time: antecedent -> consequents (aliases resolved)."""
        return {k: list(v) for k, v in self._implications.items()}

    def tag_to_id(self, tag: str) -> int | None:
        """Id of a tag (normalised, aliases resolved), or None when the tag is not in the vocabulary."""
        found = self._lookup.get(tag)
        return found if found is not None else self._lookup.get(normalize_tag(tag))

    def score_bucket(self, score: int) -> int:
        """Index of the score bucket that ``score`` falls into."""
        return bisect.bisect_right(self._score_boundaries, int(score))

    def _convert_token_to_id(self, token: str) -> int:
        found = self._other_ids.get(token)
        if found is None:
            found = self._tag_ids.get(token, self._unk_ids["general"])
        return found

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < len(self._tokens):
            raise ValueError(f"token id {index} is outside the vocabulary of size {len(self._tokens)}")
        return self._tokens[index]

    def _add_tokens(self, new_tokens: list[Any], special_tokens: bool = False) -> int:
        vocab = self.get_vocab()
        missing = [str(t) for t in new_tokens or [] if str(t) not in vocab]
        if missing:
            raise ValueError(f"the whole-tag vocabulary is fixed at build time; rebuild it to add {missing[:3]}")
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write vocab.json, and aliases.json / implications.json when the tables are not empty."""
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_path = os.path.join(save_directory, prefix + self.vocab_files_names["vocab_file"])
        rows = list(zip(self._tokens, self._kinds, self.token_categories, self.token_counts))
        write_vocab_file(vocab_path, rows, self._score_boundaries)
        saved = [vocab_path]
        for key, table in (("aliases_file", self._aliases), ("implications_file", self._implications)):
            if table:
                path = os.path.join(save_directory, prefix + self.vocab_files_names[key])
                write_table_file(path, table)
                saved.append(path)
        return tuple(saved)

    # ----------------------------------------------------------------------------------------------
    # One post -> ids
    # ----------------------------------------------------------------------------------------------
    def _resolve(self, tag: Any, unk_id: int) -> int | None:
        """Id of one tag that missed the exact lookup: normalise, resolve aliases, else the unknown token."""
        if tag is None:
            return None
        if not isinstance(tag, str):
            raise ValueError(f"tags must be strings, got {type(tag).__name__} {tag!r}")
        tag = normalize_tag(tag)
        if not tag:
            return None
        found = self._lookup.get(tag)
        return unk_id if found is None else found

    def _rating_id(self, rating: Any) -> int | None:
        key = parse_rating(rating)
        return None if key is None else self._rating_ids[key]

    def _score_id(self, score: Any) -> int | None:
        if score is None or (isinstance(score, float) and score != score):
            return None
        if isinstance(score, bool):
            raise ValueError(f"score must be an integer, got {score!r}")
        try:
            value = int(score)
        except (TypeError, ValueError):
            raise ValueError(f"score must be an integer, got {score!r}") from None
        return self._score_ids[bisect.bisect_right(self._score_boundaries, value)]

    def _metatag_id(self, tag: str) -> int | None:
        """Id of a ``rating:x`` or ``score:...`` metatag (None when ``tag`` is an ordinary tag)."""
        if tag.startswith("rating:"):
            return self._rating_id(tag[len("rating:"):])
        if tag.startswith("score:"):
            found = self._other_ids.get(tag)
            if found is not None and found in self._score_ids:
                return found
            return self._score_id(tag[len("score:"):])
        return None

    def _tag_list_ids(self, items: list[Any]) -> set[int]:
        ids: set[int] = set()
        unk = self._unk_ids["general"]
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"tags must be strings, got {type(item).__name__} {item!r}")
            found = self._lookup.get(item)
            if found is None:
                tag = normalize_tag(item)
                if not tag:
                    continue
                found = self._metatag_id(tag) if ":" in tag else None
                if found is None:
                    found = self._lookup.get(tag, unk)
            ids.add(found)
        return ids

    def _dict_ids(self, post: Mapping[str, Any]) -> set[int]:
        ids: set[Any] = set()
        lookup_get = self._lookup.get
        for key, values in post.items():
            if key in self._unk_ids:
                if values:
                    ids.update(map(lookup_get, values.split() if isinstance(values, str) else values))
            elif key == "rating":
                rating = self._rating_ids.get(values) if isinstance(values, str) else None
                if rating is None:
                    rating = self._rating_id(values)
                if rating is not None:
                    ids.add(rating)
            elif key == "score":
                if type(values) is int:
                    ids.add(self._score_ids[bisect.bisect_right(self._score_boundaries, values)])
                elif (score := self._score_id(values)) is not None:
                    ids.add(score)
            elif key != "id":
                raise ValueError(f"unknown key {key!r} in a tag dict: expected {', '.join(TAG_CATEGORIES)}, rating, score (or id)")
        if None in ids:  # some tags missed the exact lookup: resolve those one by one with their category
            for category, unk in self._unk_ids.items():
                values = post.get(category)
                if values:
                    values = values.split() if isinstance(values, str) else values
                    ids.update(self._resolve(v, unk) for v in values if lookup_get(v) is None)
            ids.discard(None)
        return ids

    def _post_ids(self, post: Any) -> list[int]:
        """Canonically ordered, duplicate-free ids of one post, starting with ``<cls>``."""
        if isinstance(post, str):
            ids = self._tag_list_ids(split_tag_string(post))
        elif isinstance(post, Mapping):
            ids = self._dict_ids(post)
        elif isinstance(post, (list, tuple)):
            ids = self._tag_list_ids(list(post))
        else:
            raise ValueError(f"a tag set must be a string, a list of tags or a dict by category, got {type(post).__name__}")
        ids.add(self._cls_id)
        return sorted(ids) if self._rank_is_identity else sorted(ids, key=self._rank.__getitem__)

    def normalize(self, tagset: Any, implications: str = "keep") -> NormalizedTags:
        """One tag set normalised: spelling as this tokenizer reads it, aliases resolved, duplicates removed.

        ``implications``: ``keep``, ``minimal`` (drop every tag implied by another tag of the set) or
        ``complete`` (add every implied tag), transitively and safe on cycles. Unknown tags are kept and
        listed in ``unknown``. Returns ``NormalizedTags`` (tags by category in canonical order, rating,
        score, what changed; ``.to_string("tags" | "prompt")``). Rules: ``normalization_booru_embed``.
        """
        if self._normalizer is None:
            vocabulary = {self._tokens[i]: (CATEGORY_NAMES[self.token_categories[i]], self._rank[i]) for i in self._tag_token_ids}
            self._normalizer = TagNormalizer(vocabulary, self._aliases, self._implications)
        return self._normalizer.normalize(tagset, implications)

    def _shuffle_within_categories(self, ids: list[int], rng: random.Random) -> list[int]:
        out: list[int] = []
        for _, run in itertools.groupby(ids, key=self._group.__getitem__):
            run = list(run)
            rng.shuffle(run)
            out += run
        return out

    def tokenize(self, text: Any, pair: Any = None, add_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Token strings of one tag set in canonical order (``<cls>`` only with ``add_special_tokens``)."""
        if pair is not None:
            raise ValueError("tag sets have no pairs")
        ids = self._post_ids(text)
        return [self._tokens[i] for i in (ids if add_special_tokens else ids[1:])]

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.tokenize(text)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """Prefix the pooling token: ``[<cls>] + ids`` (tag sets have no pairs)."""
        if token_ids_1 is not None:
            raise ValueError("tag sets have no pairs")
        return [self.cls_token_id, *token_ids_0]

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 for special tokens (pad, cls, mask, unknowns), 0 for tags, ratings and score buckets."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        if token_ids_1 is not None:
            raise ValueError("tag sets have no pairs")
        return [1] + [0] * len(token_ids_0)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """One: the pooling token."""
        return 1

    # ----------------------------------------------------------------------------------------------
    # transformers entry points: __call__ / encode -> _encode_plus, pad -> _pad, decode -> _decode
    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def _as_batch(text: Any, is_split_into_words: bool) -> tuple[list[Any], bool]:
        if isinstance(text, (str, Mapping)):
            return [text], False
        if isinstance(text, (list, tuple)):
            if is_split_into_words and all(isinstance(t, str) for t in text):
                return [text], False
            return list(text), True
        raise ValueError(f"a tag set must be a string, a list of tags or a dict by category, got {type(text).__name__}")

    def _encode_plus(
        self,
        text: Any,
        text_pair: Any = None,
        add_special_tokens: bool = True,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        truncation_strategy: TruncationStrategy = TruncationStrategy.DO_NOT_TRUNCATE,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: Any = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        split_special_tokens: bool = False,
        shuffle_within_categories: bool = False,
        seed: int | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        if kwargs:
            raise TypeError(f"unexpected tokenizer arguments: {', '.join(sorted(kwargs))}")
        if text_pair is not None:
            raise ValueError("tag sets have no pairs: pass text_pair=None")
        if return_overflowing_tokens or return_offsets_mapping or stride:
            raise ValueError("overflowing tokens, offsets and stride do not apply to tag sets")
        posts, batched = self._as_batch(text, is_split_into_words)
        limit = None
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None:
            if max_length < 1:
                raise ValueError(f"max_length must be at least 1 (the <cls> token), got {max_length}")
            limit = max_length
        rng = random.Random(seed) if shuffle_within_categories else None
        sequences = []
        for post in posts:
            ids = self._post_ids(post)
            if not add_special_tokens:
                ids = ids[1:]
            if limit is not None:
                ids = ids[:limit]
            if rng is not None:
                ids = self._shuffle_within_categories(ids, rng)
            sequences.append(ids)
        return self._batch_encoding(
            sequences,
            batched=batched,
            padding_strategy=padding_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side or self.padding_side,
            return_tensors=return_tensors,
            return_attention_mask=return_attention_mask is not False,
            return_token_type_ids=bool(return_token_type_ids),
            return_special_tokens_mask=return_special_tokens_mask,
            return_length=return_length,
        )

    def _batch_encoding(
        self,
        sequences: list[list[int]],
        batched: bool,
        padding_strategy: PaddingStrategy,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str,
        return_tensors: Any,
        return_attention_mask: bool,
        return_token_type_ids: bool,
        return_special_tokens_mask: bool,
        return_length: bool,
    ) -> BatchEncoding:
        """Pad with numpy (one scatter for the whole batch) and convert to the requested tensors."""
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        longest = int(lengths.max()) if len(sequences) else 0
        width = None
        if padding_strategy == PaddingStrategy.LONGEST:
            width = longest
        elif padding_strategy == PaddingStrategy.MAX_LENGTH:
            width = max(max_length or 0, longest) if max_length is not None else longest
        if width is not None and pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        if width is None and len(set(lengths.tolist())) <= 1 and return_tensors is not None:
            width = longest
        special = set(self.all_special_ids) if return_special_tokens_mask else set()
        if width is None:
            out: dict[str, Any] = {
                "input_ids": sequences,
                "category_ids": [[self.token_categories[i] for i in s] for s in sequences],
            }
            if return_attention_mask:
                out["attention_mask"] = [[1] * len(s) for s in sequences]
            if return_token_type_ids:
                out["token_type_ids"] = [[0] * len(s) for s in sequences]
            if return_special_tokens_mask:
                out["special_tokens_mask"] = [[int(i in special) for i in s] for s in sequences]
        else:
            rows = np.repeat(np.arange(len(sequences)), lengths)
            starts = np.cumsum(lengths) - lengths
            cols = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
            if padding_side == "left":
                cols += np.repeat(width - lengths, lengths)
            input_ids = np.full((len(sequences), width), self.pad_token_id, dtype=np.int64)
            input_ids[rows, cols] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=len(rows))
            mask = np.zeros((len(sequences), width), dtype=np.int64)
            mask[rows, cols] = 1
            out = {"input_ids": input_ids, "category_ids": self._categories_np[input_ids].astype(np.int64)}
            if return_attention_mask:
                out["attention_mask"] = mask
            if return_token_type_ids:
                out["token_type_ids"] = np.zeros_like(input_ids)
            if return_special_tokens_mask:
                out["special_tokens_mask"] = np.isin(input_ids, list(special)).astype(np.int64)
            if return_tensors is None:
                out = {key: value.tolist() for key, value in out.items()}
        if return_length:
            out["length"] = lengths if width is not None and return_tensors is not None else lengths.tolist()
        if not batched and return_tensors is None:
            out = {key: value[0] for key, value in out.items()}
        if width is not None and return_tensors is not None:
            # an `is_*_available()` test: transformers' remote-code import check skips the import under it,
            # so the tokenizer loads where torch is not installed (ONNX Runtime serving)
            if str(return_tensors) == "pt" and is_torch_available():
                import torch

                out = {key: torch.from_numpy(value) for key, value in out.items()}
                return BatchEncoding(out)
            return BatchEncoding(out, tensor_type=return_tensors)
        return BatchEncoding(out, tensor_type=return_tensors)

    def _pad(
        self,
        encoded_inputs: dict[str, Any] | BatchEncoding,
        max_length: int | None = None,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict:
        """transformers' padding, extended to pad ``category_ids`` with the special category 0."""
        categories = encoded_inputs.pop("category_ids", None)
        padded = super()._pad(encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, padding_side, return_attention_mask)
        if categories is not None:
            missing = len(padded["input_ids"]) - len(categories)
            side = padding_side or self.padding_side
            categories = list(categories)
            padded["category_ids"] = categories + [0] * missing if side == "right" else [0] * missing + categories
        return padded

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """The canonical tag string: duplicate-free, canonical order, space separated (Danbooru style)."""
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        for index in ids:
            self._convert_id_to_token(index)
        kept = sorted({i for i in ids if i not in skip}, key=self._rank.__getitem__)
        return " ".join(self._tokens[i] for i in kept)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens the Danbooru way, with spaces."""
        return " ".join(tokens)

    # ----------------------------------------------------------------------------------------------
    # Bulk path: a whole datasets split with Arrow compute and numpy
    # ----------------------------------------------------------------------------------------------
    def encode_dataset(
        self,
        split: Any,
        shuffle_within_categories: bool = False,
        seed: int | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> Any:
        """Encode a split with the DATA_DIR columns into ``id``, ``input_ids``, ``category_ids``, ``length``.

        Same ids and order as ``__call__`` on every row (no padding); ``max_length`` truncates by the same
        priority. Vectorised: tags are looked up with ``pyarrow.compute.index_in`` and each batch of posts
        is ordered by one sort of ``(row, rank)`` keys packed in uint32; only tags that miss the exact
        lookup (unknown or oddly spelled) go through Python, once per distinct string.
        """
        import datasets

        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be at least 1 (the <cls> token), got {max_length}")
        rows_per_batch = 1 << (32 - self._rank_bits)  # row and rank share one uint32 sort key
        batch_size = min(batch_size or BULK_BATCH_ROWS, rows_per_batch)
        arrow = split.with_format("arrow")
        batches = list(arrow.iter(batch_size=batch_size)) or [arrow[:0]]
        # One generator per batch, spawned from the seed: the result does not depend on thread timing.
        generators = (
            [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(batches))]
            if shuffle_within_categories
            else [None] * len(batches)
        )
        self._arrow_lookup()
        workers = min(len(batches), os.cpu_count() or 1)
        if workers > 1:  # Arrow compute and numpy sorts release the GIL
            with ThreadPoolExecutor(workers) as pool:
                tables = list(pool.map(self._encode_table, batches, itertools.repeat(max_length), generators))
        else:
            tables = [self._encode_table(b, max_length, g) for b, g in zip(batches, generators)]
        source = getattr(split, "_fingerprint", None)
        if source is None or (shuffle_within_categories and seed is None):
            fingerprint = datasets.fingerprint.generate_random_fingerprint()
        else:
            options = (source, self._vocabulary_digest(), shuffle_within_categories, seed, max_length)
            fingerprint = hashlib.sha256(repr(options).encode()).hexdigest()[:32]
        return datasets.Dataset(datasets.table.InMemoryTable(pa.concat_tables(tables)), fingerprint=fingerprint)

    def _vocabulary_digest(self) -> str:
        digest = hashlib.sha256("\n".join(self._tokens).encode())
        digest.update(repr(sorted(self._aliases.items())).encode())
        return digest.hexdigest()

    @property
    def _rank_bits(self) -> int:
        return max(1, (len(self._tokens) - 1).bit_length())

    def _arrow_lookup(self) -> tuple[pa.Array, np.ndarray]:
        """Lookup value set for ``index_in`` and the ranks of its alias entries.

        Entry ``r`` (for ``r`` below the vocabulary size) is the tag of rank ``r``, null for rows that are
        not tags (nulls never match), so a match's position is its rank; alias antecedents follow.
        """
        if self._lookup_arrow is None:
            values: list[str | None] = [None] * len(self._tokens)
            for tag, index in self._tag_ids.items():
                if tag not in self._aliases:
                    values[self._rank[index]] = tag
            alias_keys = [key for key in self._lookup if key in self._aliases]
            alias_ranks = np.fromiter((self._rank[self._lookup[k]] for k in alias_keys), np.uint32, len(alias_keys))
            self._lookup_arrow = (pa.array(values + alias_keys, type=pa.string()), alias_ranks)
        return self._lookup_arrow

    def _column_keys(self, column: pa.ChunkedArray, category: str) -> np.ndarray:
        """Sort key ``row << rank_bits | rank`` of every tag in one list<string> column."""
        lists = column.combine_chunks()
        values = lists.flatten()
        if values.type != pa.string():
            values = values.cast(pa.string())
        if lists.null_count:
            keys = pc.list_parent_indices(lists).to_numpy().astype(np.uint32)
        else:
            keys = np.repeat(np.arange(len(lists), dtype=np.uint32), np.diff(lists.offsets.to_numpy()))
        keys <<= np.uint32(self._rank_bits)
        value_set, alias_ranks = self._arrow_lookup()
        position = pc.index_in(values, value_set=value_set, skip_nulls=True)
        ranks = position.fill_null(0).to_numpy().astype(np.uint32)
        if len(alias_ranks):
            alias = ranks >= len(self._tokens)
            if alias.any():
                ranks[alias] = alias_ranks[ranks[alias] - len(self._tokens)]
        if position.null_count == 0:
            keys |= ranks
            return keys
        missing = position.is_null()
        missed = values.filter(missing)
        unique = pc.unique(missed)
        unk = self._unk_ids[category]
        dropped = np.iinfo(np.uint32).max  # empty or null tags: not tags at all
        resolved = [self._resolve(tag, unk) for tag in unique.to_pylist()]
        resolved_ranks = np.array([dropped if r is None else self._rank[r] for r in resolved], dtype=np.uint32)
        ranks[missing.to_numpy(zero_copy_only=False)] = resolved_ranks[pc.index_in(missed, value_set=unique).to_numpy()]
        keys |= ranks
        return keys[ranks != dropped]

    def _metadata_keys(self, table: pa.Table) -> list[np.ndarray]:
        """Sort keys of the rating and score-bucket tokens (rows with a null rating or score have none)."""
        rows, ranks = [], []
        rank = np.asarray(self._rank, dtype=np.uint32)
        if "rating" in table.column_names:
            ratings = pc.cast(table["rating"].combine_chunks(), pa.string())
            keys = [*RATINGS, *RATING_ALIASES]
            key_ids = np.array([self._rating_ids[RATING_ALIASES.get(k, k)] for k in keys], dtype=np.int64)
            position = pc.index_in(ratings, value_set=pa.array(keys))
            if position.null_count != ratings.null_count:  # not all plain: normalise like __call__
                ratings = pc.utf8_lower(pc.utf8_trim_whitespace(ratings))
                position = pc.index_in(ratings, value_set=pa.array(keys))
                bad = pc.and_(position.is_null(), pc.not_equal(ratings, ""))
                if pc.any(bad).as_py():
                    self._rating_id(ratings.filter(bad)[0].as_py())
            valid = position.is_valid()
            rows.append(np.flatnonzero(valid.to_numpy(zero_copy_only=False)).astype(np.uint32))
            ranks.append(rank[key_ids[position.filter(valid).to_numpy()]])
        if "score" in table.column_names:
            scores = table["score"]
            valid = pc.is_valid(scores).to_numpy(zero_copy_only=False)
            values = scores.fill_null(0).to_numpy().astype(np.int64)
            buckets = np.searchsorted(np.asarray(self._score_boundaries, dtype=np.int64), values, side="right")
            rows.append(np.flatnonzero(valid).astype(np.uint32))
            ranks.append(rank[np.asarray(self._score_ids, dtype=np.int64)[buckets[valid]]])
        return [(r << np.uint32(self._rank_bits)) | k for r, k in zip(rows, ranks)]

    def _encode_table(self, table: pa.Table, max_length: int | None, rng: np.random.Generator | None) -> pa.Table:
        num_rows = table.num_rows
        bits = np.uint32(self._rank_bits)
        parts = [(np.arange(num_rows, dtype=np.uint32) << bits) | np.uint32(self._rank[self._cls_id])]
        parts += self._metadata_keys(table)
        parts += [self._column_keys(table[c], c) for c in TAG_CATEGORIES if c in table.column_names]
        # One sort of (row, rank) keys orders every post canonically; equal neighbours are duplicates.
        keys = np.sort(np.concatenate(parts))
        duplicate = keys[1:] == keys[:-1]
        if duplicate.any():
            keys = keys[np.concatenate(([True], ~duplicate))]
        ranks = keys & np.uint32((1 << self._rank_bits) - 1)
        token_ids = ranks.view(np.int32) if self._rank_is_identity else self._rank_to_id[ranks]
        starts = np.searchsorted(keys, np.arange(num_rows, dtype=np.uint32) << bits)
        counts = np.diff(np.append(starts, len(keys)))
        if max_length is not None:
            token_ids = token_ids[np.arange(len(token_ids)) - np.repeat(starts, counts) < max_length]
            counts = np.minimum(counts, max_length)
        if rng is not None:
            token_ids = self._shuffle_sorted(np.repeat(np.arange(num_rows, dtype=np.int64), counts), token_ids, rng)
        offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
        columns = {}
        if "id" in table.column_names:
            columns["id"] = table["id"]
        columns["input_ids"] = pa.ListArray.from_arrays(offsets, pa.array(token_ids))
        columns["category_ids"] = pa.ListArray.from_arrays(offsets, pa.array(self._categories_np[token_ids]))
        columns["length"] = pa.array(counts.astype(np.int32))
        return pa.table(columns)

    def _shuffle_sorted(self, post: np.ndarray, token_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shuffle canonically ordered tokens within each (post, shuffle group) block: sort by random keys."""
        rank = np.asarray(self._rank, dtype=np.int64)[token_ids]
        group = np.asarray(self._group, dtype=np.int64)[token_ids]
        noise = rng.integers(0, 1 << 16, size=len(token_ids), dtype=np.int64)
        # (row, group, noise, rank) in int64: rows take at most 32 - rank_bits bits, groups 4, noise 16.
        keys = np.sort((((post << 4 | group) << 16 | noise) << self._rank_bits) | rank)
        return self._rank_to_id[keys & ((1 << self._rank_bits) - 1)]


BooruEmbedTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["BooruEmbedTokenizer"]
