"""Whole-tag tokenizer for Danbooru tag sets: one tag, one token, and every token knows its category.

Remote code: this file is copied next to the weights and loaded with
``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)``, so it imports only the standard
library, numpy, public transformers APIs and its sibling files.

An encoded post is ``<cls> [rating] [score bucket] tags...`` in canonical order: character, copyright,
artist, general, meta; inside a category rarer tags come first and the category's unknown token last.
That order is also the truncation priority, so truncating keeps a prefix and never drops the post.

Files of a tokenizer folder:
- ``vocab.json``: the vocabulary rows and score bucket boundaries; ``vocabulary_booru_embed`` owns the
  format, the rows layout and the canonical order.
- ``aliases.json`` (antecedent -> canonical tag) and ``implications.json`` (antecedent -> consequents).

``tokenizer.normalize(tagset, implications="keep" | "minimal" | "complete")`` applies those tables to
tag strings rather than ids (unknown tags kept by name); its rules are in ``normalization_booru_embed``.
A whole ``datasets`` split is encoded by the package's bulk path (``booru_embed.data.bulk_encoding``).

What importing this file does besides defining classes: it checks the transformers release
(``versions_booru_embed``). It registers nothing. Its one ``import torch`` (for ``return_tensors="pt"``)
sits under ``is_torch_available()`` inside ``__call__``: transformers' remote-code import check skips
imports under such a test, so the tokenizer also loads where torch is not installed (ONNX Runtime
serving); nothing is hidden beyond that optional import.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .versions_booru_embed import require_transformers

require_transformers()  # first: on an older transformers, one line naming the release needed

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import PaddingStrategy, is_torch_available

from .categories_booru_embed import CATEGORY_NAMES, TAG_CATEGORIES
from .normalization_booru_embed import (
    NormalizedTags,
    TagNormalizer,
    normalize_tag,
    parse_rating,
    read_tag_text,
)
from .vocabulary_booru_embed import (
    CLS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    UNK_TOKENS,
    Vocabulary,
    read_json_file,
    write_table_file,
)


class BooruEmbedTokenizer(PreTrainedTokenizer):
    """Maps Danbooru tag sets to one token per tag, with the category of every token.

    Input forms (one post): a Danbooru tag string (``"1girl solo rating:g"``), a front end's prompt
    (``"1girl, (long hair:1.2), hatsune miku \\(vocaloid\\)"``: emphasis and weights read and left out
    of the ids, LoRA and embeddings ignored; ``normalization_booru_embed.read_tag_text``), a list of tags (pass
    ``is_split_into_words=True`` for a single list; a list of lists is a batch), or a dict by category
    (``{"general": [...], "artist": [...], "rating": "g", "score": 12}``). A list of strings without
    ``is_split_into_words`` is a batch of tag strings, as in transformers.

    Built from a tokenizer folder's files (``vocab_file``, optional ``aliases_file`` and
    ``implications_file``), or with ``from_vocabulary`` from a ``Vocabulary`` and tables in memory.
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
        vocabulary: Vocabulary | None = None,
        aliases: Mapping[str, str] | None = None,
        implications: Mapping[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        if vocabulary is None:
            if vocab_file is None:
                raise ValueError("BooruEmbedTokenizer needs a vocab_file (vocab.json written by `booru-embed build-tokenizer`)")
            vocabulary = Vocabulary.read(vocab_file)
        self.vocabulary = vocabulary
        self._aliases: dict[str, str] = dict(aliases if aliases is not None else read_json_file(aliases_file, {}))
        self._lookup = vocabulary.tag_lookup(self._aliases)
        table = implications if implications is not None else read_json_file(implications_file, {})
        self._implications: dict[str, list[str]] = {k: list(v) for k, v in table.items()}
        self._normalizer: TagNormalizer | None = None
        kwargs.setdefault("extra_special_tokens", [UNK_TOKENS[c] for c in TAG_CATEGORIES if UNK_TOKENS[c] != unk_token])
        super().__init__(pad_token=pad_token, cls_token=cls_token, mask_token=mask_token, unk_token=unk_token, **kwargs)

    @classmethod
    def from_vocabulary(
        cls, vocabulary: Vocabulary, aliases: Mapping[str, str] | None = None, implications: Mapping[str, list[str]] | None = None
    ) -> BooruEmbedTokenizer:
        """A tokenizer over an in-memory ``Vocabulary`` and tables; ``save_pretrained`` writes its files."""
        return cls(vocabulary=vocabulary, aliases=dict(aliases or {}), implications=dict(implications or {}))

    # ----------------------------------------------------------------------------------------------
    # Vocabulary
    # ----------------------------------------------------------------------------------------------
    @property
    def token_categories(self) -> list[int]:
        """Category id of every token, in id order."""
        return self.vocabulary.categories

    @property
    def token_counts(self) -> list[int]:
        """Training count of every token, in id order (0 for special and padding rows)."""
        return self.vocabulary.counts

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary rows, padding rows included (a multiple of 64)."""
        return len(self.vocabulary.tokens)

    def __len__(self) -> int:
        return len(self.vocabulary.tokens)

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id. Where a tag is spelled like a special token, the special token wins here."""
        vocab = dict(self.vocabulary.tag_ids)
        vocab.update(self.vocabulary.other_ids)
        return vocab

    @property
    def rating_token_ids(self) -> dict[str, int]:
        """Rating letter (g, s, q, e) -> token id."""
        return dict(self.vocabulary.rating_ids)

    @property
    def score_token_ids(self) -> list[int]:
        """Token id of each score bucket, lowest bucket first."""
        return list(self.vocabulary.score_ids)

    @property
    def score_boundaries(self) -> list[int]:
        """Lower bounds of score buckets 1..n-1 (bucket 0 is everything below the first)."""
        return list(self.vocabulary.score_boundaries)

    @property
    def unk_token_ids(self) -> dict[str, int]:
        """Category name (general, artist, copyright, character, meta) -> id of its unknown-tag token."""
        return dict(self.vocabulary.unk_ids)

    @property
    def tag_token_ids(self) -> list[int]:
        """Ids of the real tags (no special, rating, score, unknown or padding rows), in id order."""
        return list(self.vocabulary.tag_token_ids)

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
        return self.vocabulary.score_bucket(int(score))

    def _convert_token_to_id(self, token: str) -> int:
        found = self.vocabulary.other_ids.get(token)
        if found is None:
            found = self.vocabulary.tag_ids.get(token, self.vocabulary.unk_ids["general"])
        return found

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < len(self.vocabulary.tokens):
            raise ValueError(f"token id {index} is outside the vocabulary of size {len(self.vocabulary.tokens)}")
        return self.vocabulary.tokens[index]

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
        self.vocabulary.write(vocab_path)
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
    @property
    def tag_lookup(self) -> Mapping[str, int]:
        """Read-only spelling -> id of every vocabulary tag and alias antecedent (normalised spellings)."""
        return MappingProxyType(self._lookup)

    def resolve_tag(self, tag: Any, category: str = "general") -> int | None:
        """Id of one tag of ``category``: normalised and alias-resolved, else the category's unknown token; None if empty."""
        if tag is None:
            return None
        if not isinstance(tag, str):
            raise ValueError(f"tags must be strings, got {type(tag).__name__} {tag!r}")
        tag = normalize_tag(tag)
        if not tag:
            return None
        found = self._lookup.get(tag)
        return self.vocabulary.unk_ids[category] if found is None else found

    def _rating_id(self, rating: Any) -> int | None:
        key = parse_rating(rating)
        return None if key is None else self.vocabulary.rating_ids[key]

    def _score_id(self, score: Any) -> int | None:
        if score is None or (isinstance(score, float) and score != score):
            return None
        if isinstance(score, bool):
            raise ValueError(f"score must be an integer, got {score!r}")
        try:
            value = int(score)
        except (TypeError, ValueError):
            raise ValueError(f"score must be an integer, got {score!r}") from None
        return self.vocabulary.score_ids[self.vocabulary.score_bucket(value)]

    def _metatag_id(self, tag: str) -> int | None:
        """Id of a ``rating:x`` or ``score:...`` metatag (None when ``tag`` is an ordinary tag)."""
        if tag.startswith("rating:"):
            return self._rating_id(tag[len("rating:"):])
        if tag.startswith("score:"):
            found = self.vocabulary.other_ids.get(tag)
            if found is not None and found in self.vocabulary.score_ids:
                return found
            return self._score_id(tag[len("score:"):])
        return None

    def _tag_list_ids(self, items: list[Any]) -> set[int]:
        ids: set[int] = set()
        unk = self.vocabulary.unk_ids["general"]
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
        vocabulary = self.vocabulary
        for key, values in post.items():
            if key in vocabulary.unk_ids:
                if values:
                    ids.update(map(lookup_get, values.split() if isinstance(values, str) else values))
            elif key == "rating":
                rating = vocabulary.rating_ids.get(values) if isinstance(values, str) else None
                if rating is None:
                    rating = self._rating_id(values)
                if rating is not None:
                    ids.add(rating)
            elif key == "score":
                if type(values) is int:
                    ids.add(vocabulary.score_ids[vocabulary.score_bucket(values)])
                elif (score := self._score_id(values)) is not None:
                    ids.add(score)
            elif key != "id":
                raise ValueError(f"unknown key {key!r} in a tag dict: expected {', '.join(TAG_CATEGORIES)}, rating, score (or id)")
        if None in ids:  # some tags missed the exact lookup: resolve those one by one with their category
            for category in TAG_CATEGORIES:
                values = post.get(category)
                if values:
                    values = values.split() if isinstance(values, str) else values
                    ids.update(self.resolve_tag(v, category) for v in values if lookup_get(v) is None)
            ids.discard(None)
        return ids

    def _post_ids(self, post: Any) -> list[int]:
        """Canonically ordered, duplicate-free ids of one post, starting with ``<cls>``."""
        if isinstance(post, str):
            ids = self._tag_list_ids(read_tag_text(post, self._lookup).tags)
        elif isinstance(post, Mapping):
            ids = self._dict_ids(post)
        elif isinstance(post, (list, tuple)):
            ids = self._tag_list_ids(list(post))
        else:
            raise ValueError(f"a tag set must be a string, a list of tags or a dict by category, got {type(post).__name__}")
        ids.add(self.vocabulary.cls_id)
        return sorted(ids) if self.vocabulary.rank_is_identity else sorted(ids, key=self.vocabulary.rank.__getitem__)

    def normalize(self, tagset: Any, implications: str = "keep") -> NormalizedTags:
        """One tag set normalised: spelling as this tokenizer reads it, aliases resolved, duplicates removed.

        ``implications``: ``keep``, ``minimal`` (drop every tag implied by another tag of the set) or
        ``complete`` (add every implied tag), transitively and safe on cycles. Unknown tags are kept and
        listed in ``unknown``. Returns ``NormalizedTags`` (tags by category in canonical order, rating,
        score, what changed; ``.to_string("tags" | "prompt")``). Rules: ``normalization_booru_embed``.
        """
        if self._normalizer is None:
            vocabulary = {self.vocabulary.tokens[i]: (CATEGORY_NAMES[self.vocabulary.categories[i]], self.vocabulary.rank[i]) for i in self.vocabulary.tag_token_ids}
            self._normalizer = TagNormalizer(vocabulary, self._aliases, self._implications)
        return self._normalizer.normalize(tagset, implications)

    def _shuffle_within_categories(self, ids: list[int], rng: random.Random) -> list[int]:
        out: list[int] = []
        for _, run in itertools.groupby(ids, key=self.vocabulary.group.__getitem__):
            run = list(run)
            rng.shuffle(run)
            out += run
        return out

    def tokenize(self, text: Any, pair: Any = None, add_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """Token strings of one tag set in canonical order (``<cls>`` only with ``add_special_tokens``)."""
        if pair is not None:
            raise ValueError("tag sets have no pairs")
        ids = self._post_ids(text)
        return [self.vocabulary.tokens[i] for i in (ids if add_special_tokens else ids[1:])]

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
                "category_ids": [[self.vocabulary.categories[i] for i in s] for s in sequences],
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
            out = {"input_ids": input_ids, "category_ids": self.vocabulary.categories_np[input_ids].astype(np.int64)}
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
        kept = sorted({i for i in ids if i not in skip}, key=self.vocabulary.rank.__getitem__)
        return " ".join(self.vocabulary.tokens[i] for i in kept)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens the Danbooru way, with spaces."""
        return " ".join(tokens)


BooruEmbedTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = ["BooruEmbedTokenizer"]
