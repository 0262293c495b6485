"""Normalising a tag set: spelling, aliases, duplicates, implications and canonical order.

Remote code: copied next to the weights with the tokenizer (``BooruEmbedTokenizer.normalize`` uses it),
so it imports only the standard library and its sibling ``categories_booru_embed``.

Rules, in the order they apply:
- Spelling as the tokenizer reads it: trimmed, lower case, inner whitespace as one underscore; in a
  prompt-style comma list ``\\(`` and ``\\)`` are plain parentheses. ``rating:x`` and ``score:N`` in a
  string or list are the post's rating and score.
- Aliases resolved to their canonical tag, then duplicates removed (first spelling wins).
- A tag in the vocabulary takes its vocabulary category. A tag outside it is kept and listed in
  ``unknown``: with a dict input it stays in the category it was given, otherwise it goes to the
  category ``unknown`` (listed after the five tag categories). Without a vocabulary nothing is unknown.
- Implications (``keep`` leaves them alone): ``complete`` adds every tag implied by a tag of the set,
  transitively; ``minimal`` removes every tag implied by another tag of the set, transitively. Cycles
  in the table are walked once. Tags implying each other (one cycle) are equivalent: ``minimal`` keeps
  the one that comes first in canonical order, so it never removes a whole cycle, and ``minimal`` then
  ``complete`` gives the same tags as ``complete`` alone. An implied tag outside the vocabulary takes
  the category of the tag implying it when the input was a dict, else ``unknown``.
- Canonical order: categories as in ``PRIORITY_ORDER`` (the model's order), then ``unknown``; inside a
  category the vocabulary's order (rarer first, as the tokenizer encodes), then unknown tags A-Z.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .categories_booru_embed import PRIORITY_ORDER, RATING_ALIASES, RATINGS, TAG_CATEGORIES

UNKNOWN_CATEGORY = "unknown"
OUTPUT_CATEGORIES = (*PRIORITY_ORDER, UNKNOWN_CATEGORY)
IMPLICATION_MODES = ("keep", "minimal", "complete")
STYLES = ("tags", "prompt")
# Score bucket names as the vocabulary writes them (score:<5, score:5..9, score:>=30, score:any).
_SCORE_BUCKET = re.compile(r"<-?\d+|>=-?\d+|-?\d+\.\.-?\d+|any")


def normalize_tag(tag: str) -> str:
    """A tag as Danbooru writes it: trimmed, lower-case, inner whitespace runs as one underscore."""
    return "_".join(tag.lower().split())


def resolve_alias(tag: str, aliases: Mapping[str, str]) -> str:
    """Follow antecedent -> consequent until a canonical tag (cycles stop where they repeat)."""
    seen = {tag}
    while tag in aliases and aliases[tag] not in seen:
        tag = aliases[tag]
        seen.add(tag)
    return tag


def split_tag_string(text: str) -> list[str]:
    """The items of a tag string: a prompt-style comma list (``\\(`` ``\\)`` unescaped) when it holds a comma, else words."""
    if "," in text:
        return [item.replace("\\(", "(").replace("\\)", ")") for item in text.split(",")]
    return text.split()


def prompt_tag(tag: str) -> str:
    """A tag written prompt style: spaces for underscores, parentheses escaped (``\\(``).

    Underscores stay where spaces would change the tag when read back: in tags without a letter
    (kaomoji such as ``^_^`` or ``>_<``) and at either end of a tag.
    """
    if any(c.isalpha() for c in tag) and tag.strip("_") == tag:
        tag = tag.replace("_", " ")
    return tag.replace("(", "\\(").replace(")", "\\)")


def parse_rating(value: Any) -> str | None:
    """Rating letter (g, s, q, e) of a letter or word in any case; None for None or empty; ValueError otherwise."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if not key:
        return None
    key = RATING_ALIASES.get(key, key)
    if key not in RATINGS:
        raise ValueError(f"unknown rating {value!r}: expected one of g, s, q, e (or general, sensitive, questionable, explicit)")
    return key


def parse_score(value: Any) -> int | str | None:
    """A score as an integer, or a score bucket name (``<5``, ``5..9``, ``>=30``) kept as written."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, bool):
        raise ValueError(f"score must be an integer, got {value!r}")
    if isinstance(value, str) and _SCORE_BUCKET.fullmatch(value.strip()):
        return value.strip()
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"score must be an integer, got {value!r}") from None


def parse_tagset(tagset: Any) -> tuple[list[tuple[str, str | None]], str | None, int | str | None, bool]:
    """``(tag, given category)`` pairs (spelling normalised), rating, score, and whether ``tagset`` was a dict.

    Forms: a Danbooru tag string, a prompt-style comma list, a list of tags, or a dict by category
    (the five tag categories and ``unknown``, values a list or a space-separated string) with optional
    ``rating``, ``score`` and ``id`` (ignored). Empty items are not tags and are skipped.
    """
    items: list[tuple[str, str | None]] = []
    rating: str | None = None
    score: int | str | None = None
    if isinstance(tagset, Mapping):
        for key, values in tagset.items():
            if key in TAG_CATEGORIES or key == UNKNOWN_CATEGORY:
                for tag in (values.split() if isinstance(values, str) else values or []):
                    if tag is None:
                        continue
                    if not isinstance(tag, str):
                        raise ValueError(f"tags must be strings, got {type(tag).__name__} {tag!r}")
                    if tag := normalize_tag(tag):
                        items.append((tag, key))
            elif key == "rating":
                rating = parse_rating(values)
            elif key == "score":
                score = parse_score(values)
            elif key != "id":
                raise ValueError(f"unknown key {key!r} in a tag dict: expected {', '.join(TAG_CATEGORIES)}, rating, score (or id)")
        return items, rating, score, True
    if isinstance(tagset, str):
        raw = split_tag_string(tagset)
    elif isinstance(tagset, (list, tuple)):
        raw = list(tagset)
    else:
        raise ValueError(f"a tag set must be a string, a list of tags or a dict by category, got {type(tagset).__name__}")
    for item in raw:
        if not isinstance(item, str):
            raise ValueError(f"tags must be strings, got {type(item).__name__} {item!r}")
        tag = normalize_tag(item)
        if tag.startswith("rating:"):
            found = parse_rating(tag[len("rating:"):])
            if rating is not None and found != rating:
                raise ValueError(f"two ratings in one tag set: rating:{rating} and {tag}")
            rating = found
        elif tag.startswith("score:"):
            score = parse_score(tag[len("score:"):])
        elif tag:
            items.append((tag, None))
    return items, rating, score, False


@dataclass
class NormalizedTags:
    """A normalised tag set: tags by category in canonical order, and what normalising changed.

    ``tags`` has every category of ``OUTPUT_CATEGORIES`` (five tag categories, then ``unknown``).
    ``unknown``: tags outside the vocabulary (kept). ``added``/``removed``: implied tags added by
    ``complete`` or removed by ``minimal``. ``aliases``: input tag -> canonical tag for every alias
    resolved. ``duplicates``: input tags dropped as repeats (after spelling and aliases).
    """

    tags: dict[str, list[str]]
    rating: str | None = None
    score: int | str | None = None
    unknown: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0

    def all_tags(self, order: Iterable[str] | None = None) -> list[str]:
        """Every tag, categories in ``order`` (default canonical; categories not named follow in canonical order)."""
        return [tag for category in category_order(order) for tag in self.tags.get(category, [])]

    def to_string(self, style: str = "tags", order: Iterable[str] | None = None, separator: str | None = None,
                  metadata: bool = True) -> str:
        """The tag set as one string that normalises back to itself.

        ``style="tags"``: Danbooru tags joined by spaces; ``"prompt"``: prompt style (``prompt_tag``) joined
        by ``", "``. ``separator`` overrides the join. ``metadata`` puts ``rating:x`` and ``score:N`` first.
        """
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
        words = []
        if metadata and self.rating is not None:
            words.append(f"rating:{self.rating}")
        if metadata and self.score is not None:
            words.append(f"score:{self.score}")
        tags = self.all_tags(order)
        words += [prompt_tag(t) for t in tags] if style == "prompt" else tags
        return (separator if separator is not None else (", " if style == "prompt" else " ")).join(words)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``tags`` by category, ``rating``, ``score`` and the change lists."""
        return {"tags": {c: list(self.tags.get(c, [])) for c in OUTPUT_CATEGORIES}, "rating": self.rating,
                "score": self.score, "unknown": list(self.unknown), "added": list(self.added),
                "removed": list(self.removed), "aliases": dict(self.aliases), "duplicates": self.duplicates}


def category_order(order: Iterable[str] | None) -> list[str]:
    """Output categories in ``order`` first, the rest in canonical order; ValueError for a name that is not one."""
    named = list(order or [])
    wrong = [name for name in named if name not in OUTPUT_CATEGORIES]
    if wrong:
        raise ValueError(f"unknown categor{'ies' if len(wrong) > 1 else 'y'} {', '.join(map(repr, wrong))}: "
                         f"expected {', '.join(OUTPUT_CATEGORIES)}")
    return list(dict.fromkeys([*named, *OUTPUT_CATEGORIES]))


class TagNormalizer:
    """Normalises tag sets with a vocabulary (tag -> category and rank), aliases and implications.

    Every table is optional: without any, normalising only fixes spelling, removes duplicates and
    orders the tags (unknown tags A-Z inside their category).
    """

    def __init__(self, vocabulary: Mapping[str, tuple[str, int]] | None = None, aliases: Mapping[str, str] | None = None,
                 implications: Mapping[str, Iterable[str]] | None = None) -> None:
        self.vocabulary = dict(vocabulary) if vocabulary is not None else None
        self.aliases = dict(aliases or {})
        self.implications = {k: list(v) for k, v in (implications or {}).items()}
        self._reach: dict[str, frozenset[str]] = {}
        # Sort keys of the vocabulary's tags, computed once: ordering is most of the work per post.
        self._keys = {tag: (OUTPUT_CATEGORIES.index(category), False, rank, tag)
                      for tag, (category, rank) in (self.vocabulary or {}).items()}

    def implied(self, tag: str) -> frozenset[str]:
        """Every tag implied by ``tag``, transitively (``tag`` itself only when it lies on a cycle)."""
        found = self._reach.get(tag)
        if found is None:
            seen: set[str] = set()
            stack = list(self.implications.get(tag, []))
            while stack:
                consequent = stack.pop()
                if consequent not in seen:
                    seen.add(consequent)
                    stack.extend(self.implications.get(consequent, []))
            found = self._reach[tag] = frozenset(seen)
        return found

    def _sort_key(self, tag: str, category: str) -> tuple[int, bool, int, str]:
        """Canonical position: category, known before unknown, vocabulary rank, name."""
        return self._keys.get(tag) or (OUTPUT_CATEGORIES.index(category), True, 0, tag)

    def _category(self, tag: str, fallback: str | None) -> tuple[str, bool]:
        """Category of a canonical tag and whether it is unknown (outside a given vocabulary)."""
        entry = self.vocabulary.get(tag) if self.vocabulary is not None else None
        if entry is not None:
            return entry[0], False
        return fallback or UNKNOWN_CATEGORY, self.vocabulary is not None

    def normalize(self, tagset: Any, implications: str = "keep") -> NormalizedTags:
        """Normalise one tag set (any input form, see ``parse_tagset``); the module docstring has the rules."""
        if implications not in IMPLICATION_MODES:
            raise ValueError(f"implications must be one of {', '.join(IMPLICATION_MODES)}, got {implications!r}")
        items, rating, score, from_dict = parse_tagset(tagset)
        placed: dict[str, str] = {}  # canonical tag -> category, first spelling wins
        unknown: set[str] = set()
        aliased: dict[str, str] = {}
        duplicates = 0
        for tag, given in items:
            canonical = resolve_alias(tag, self.aliases) if tag in self.aliases else tag
            if canonical != tag:
                aliased[tag] = canonical
            if canonical in placed:
                duplicates += 1
                continue
            placed[canonical], missing = self._category(canonical, given)
            if missing:
                unknown.add(canonical)
        added: dict[str, str] = {}
        removed: dict[str, str] = {}
        if implications == "complete" and self.implications:
            added = self._implied_missing(placed, from_dict)
            placed.update(added)
            unknown.update(t for t in added if self._category(t, None)[1])
        elif implications == "minimal" and self.implications:
            removed = {tag: placed.pop(tag) for tag in self._redundant(placed)}
            unknown.difference_update(removed)
        by_category: dict[str, list[str]] = {c: [] for c in OUTPUT_CATEGORIES}
        for tag in self._ordered(placed):
            by_category[placed[tag]].append(tag)
        return NormalizedTags(
            tags=by_category, rating=rating, score=score,
            unknown=self._ordered({t: placed[t] for t in unknown}), added=self._ordered(added),
            removed=self._ordered(removed), aliases=aliased, duplicates=duplicates,
        )

    def _ordered(self, placed: Mapping[str, str]) -> list[str]:
        """Tags of a tag -> category map in canonical order."""
        return sorted(placed, key=lambda t: self._sort_key(t, placed[t]))

    def _implied_missing(self, placed: Mapping[str, str], from_dict: bool) -> dict[str, str]:
        """Tags implied by ``placed`` that it lacks, with their categories (``complete``)."""
        added: dict[str, str] = {}
        for tag in self._ordered(placed):
            for consequent in sorted(self.implied(tag)):
                if consequent not in placed and consequent not in added:
                    added[consequent] = self._category(consequent, placed[tag] if from_dict else None)[0]
        return added

    def _redundant(self, placed: Mapping[str, str]) -> list[str]:
        """Tags of ``placed`` implied by another of its tags (``minimal``); on a cycle the first in order stays."""
        ordered = self._ordered(placed)
        position = {tag: index for index, tag in enumerate(ordered)}
        redundant: dict[str, None] = {}
        for tag in ordered:
            for other in self.implied(tag) & placed.keys():
                # ``other`` also implying ``tag`` means one cycle: only the later of the two goes.
                if other != tag and (tag not in self.implied(other) or position[tag] < position[other]):
                    redundant[other] = None
        return list(redundant)


__all__ = [
    "IMPLICATION_MODES", "NormalizedTags", "OUTPUT_CATEGORIES", "STYLES", "TagNormalizer", "UNKNOWN_CATEGORY",
    "category_order", "normalize_tag", "parse_rating", "parse_score", "parse_tagset", "prompt_tag", "resolve_alias",
    "split_tag_string",
]
