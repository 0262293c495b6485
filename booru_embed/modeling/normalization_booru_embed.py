"""Normalising a tag set: spelling, aliases, duplicates, implications and canonical order.

Remote code: copied next to the weights with the tokenizer (``BooruEmbedTokenizer.normalize`` uses it),
so it imports only the standard library and its sibling ``categories_booru_embed``.

Reading a text (``read_tag_text``; the tokenizer, the embedder, the CLI and the app all read this way):
- A Danbooru tag string is words, each a tag, exactly as Danbooru writes them. A text is read as a
  prompt instead when it holds what no Danbooru tag string holds (``is_prompt``): a comma, a newline,
  ``BREAK`` or ``AND``, an escaped bracket, or a word starting with ``(``, ``[`` or ``{``.
- In a prompt, commas, newlines, ``BREAK`` and ``AND`` separate items; an item's words are one tag
  (``long hair`` is ``long_hair``), unless that is no known tag but its words spell tags, each a known
  tag or one word with underscores (``1girl solo takamachi_nanoha``: the fewest such tags).
  ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\{`` ``\\}`` are the brackets themselves; any other backslash is itself.
- Emphasis, kept as a weight beside the tag, never in it: ``(x)`` x1.1, ``[x]`` /1.1 (a1111), ``{x}``
  x1.05 (NovelAI), ``(x:1.3)`` 1.3; nested groups multiply; a group may hold a comma list; a group
  left open weights the rest of the text. a1111's prompt editing ``[from:to:0.5]`` holds both tags.
  A bracket opens a group only at the start of a word
  (``foo_(bar)`` is a name). A known tag always wins: where a known tag (or alias) is written, its
  brackets and colons are its own (``(9)``, ``>:)``, ``(:3)``, ``(7:08)`` hold the tags ``(9)``, ``>:)``,
  ``:3``, ``7:08``).
- Set aside and listed in ``ignored`` with the reason: ``<lora:...>`` ``<lyco:...>`` (any network),
  ``embedding:name``, a weight that is not a number after a known tag (``(long hair:big)``), a closing
  bracket without its opening one, the step of prompt editing. Quality words (``masterpiece``, ``best quality``) are unknown tags.

Rules, in the order they apply:
- Spelling as the tokenizer reads it: trimmed, lower case, inner whitespace as one underscore.
  ``rating:x`` and ``score:N`` in a string or list are the post's rating and score. A list's items are
  tags as written (no prompt syntax), as are a dict's.
- Aliases resolved to their canonical tag, then duplicates removed (first spelling wins, with its weight).
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
from collections.abc import Container, Iterable, Mapping
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


# what prompt_tag escapes: every bracket (a backslash before one, as in \(^o^)/, then reads as itself)
_PROMPT_ESCAPE = re.compile(r"[()\[\]{}]")


def prompt_tag(tag: str) -> str:
    """A tag written prompt style: spaces for underscores, brackets escaped (``\\(``, ``\\[``, ``\\{``).

    Underscores stay where spaces would change the tag when read back: in tags without a letter
    (kaomoji such as ``^_^`` or ``>_<``) and at either end of a tag.
    """
    if any(c.isalpha() for c in tag) and tag.strip("_") == tag:
        tag = tag.replace("_", " ")
    return _PROMPT_ESCAPE.sub(r"\\\g<0>", tag)


# ----------------------------------------------------------------------------------------------
# Reading tag-set text: Danbooru tag strings and the prompts of Stable Diffusion front ends
# ----------------------------------------------------------------------------------------------
# Emphasis of one bracket pair: a1111 multiplies by 1.1 per ( ) and divides by 1.1 per [ ];
# NovelAI multiplies by 1.05 per { }.
EMPHASIS = {"(": 1.1, "[": 1 / 1.1, "{": 1.05}
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_CLOSER_OF = {opener: closer for closer, opener in _CLOSERS.items()}
_ESCAPABLE = frozenset("()[]{}")  # what a backslash escapes (a1111 also reads \\ as one: not here, see below)
_ESCAPED = re.compile(r"\\([()\[\]{}])")
# An escape only a prompt holds: no Danbooru tag has \) \[ \] \{ \}, and \( only at a word's start (\(^o^)/)
_ESCAPE_MARK = re.compile(r"\\[)\[\]{}]|(?<=[^\s\\])\\\(")
_SPACE = re.compile(r"\s")
_RUN = re.compile(r"[^,()\[\]{}\\\s]+|\s+|.", re.DOTALL)  # plain characters, whitespace, or one other
_STRUCTURE = frozenset("()[]{}\\:")  # characters a known tag may hold that the reader would otherwise act on
WEIGHT_DIGITS = 4  # weights are kept rounded to this many decimals, so writing one back reads back the same
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# a1111's chunk break and composition keywords: separators, like commas and newlines
_KEYWORD = re.compile(r"(?<!\S)(?:BREAK|AND)(?!\S)")
_SEPARATORS = re.compile(rf"{_KEYWORD.pattern}|\n")
_IGNORED = (
    (re.compile(r"<\s*(?:lora|lyco|lycoris|locon|hypernet)\s*:[^<>]*>", re.IGNORECASE), "LoRA or network, not a tag"),
    (re.compile(rf"(?<![^\s,(\[{{])embedding:[^\s,:()\[\]{{}}<>]+(?::\s*{_NUMBER})?", re.IGNORECASE),
     "textual-inversion embedding, not a tag"),
)
_WEIGHT = re.compile(rf"(.*?)\s*:\s*({_NUMBER})\s*", re.DOTALL)  # the text and weight of "(text:1.2)"
_TRAILING_WEIGHT = re.compile(rf":\s*{_NUMBER}\s*$")
_LABEL = re.compile(r"(.*\S)\s*:\s*([^:]*\S)\s*", re.DOTALL)  # "(text:label)": a weight that is not a number


@dataclass
class TextReading:
    """What ``read_tag_text`` found in a text: tags with their weights, and what it set aside.

    ``tags``: tag spellings in reading order (repeats kept; ``normalize_tag`` gives the Danbooru
    spelling). ``weights``: the emphasis weight of each (1.0 when none). ``ignored``: ``(text, reason)``
    of every piece that is not a tag (LoRA, embeddings, a weight that is not a number, a stray bracket).
    """

    tags: list[str]
    weights: list[float]
    ignored: list[tuple[str, str]] = field(default_factory=list)


def is_prompt(text: str, known: Container[str] | None = None) -> bool:
    """Whether ``text`` is read as a prompt (comma list, brackets, ``BREAK``) rather than a Danbooru tag string.

    A prompt holds what no Danbooru tag string does: a comma, a newline, ``BREAK`` or ``AND``, an escaped
    bracket (``\\(`` inside a word, ``\\)`` ``\\[`` ``\\]`` ``\\{`` ``\\}``; no tag has a comma, a capital or
    those: checked on every name of Danbooru's tag list), or a word starting with a bracket, which no tag
    of that list does (a known one, a vocabulary's ``(9)``, stays a tag).
    """
    text = text.strip()  # plain substring tests first: this runs on every tag string the tokenizer reads
    if "," in text or "\n" in text or ("\\" in text and _ESCAPE_MARK.search(text)):
        return True
    if ("BREAK" in text or "AND" in text) and _KEYWORD.search(text):
        return True
    if not (text[:1] in EMPHASIS or " (" in text or " [" in text or " {" in text or "\t" in text):
        return False
    return any(word[0] in EMPHASIS and (known is None or normalize_tag(word) not in known) for word in text.split())


def read_tag_text(text: str, known: Container[str] | None = None) -> TextReading:
    """The tags of one tag-set text, a Danbooru tag string or a front end's prompt (rules: module docstring).

    ``known``: the normalised spellings of known tags and aliases (a vocabulary); with it a known tag
    always wins over reading its brackets or colons as syntax, and a comma item of several words that
    is no known tag but whose words are known tags is read as those tags.
    """
    prompt = is_prompt(text, known)
    patterns = _IGNORED if "<" in text or "mbedding:" in text or "MBEDDING:" in text else ()
    found = sorted((match.start(), match.group(0), reason) for pattern, reason in patterns for match in pattern.finditer(text))
    ignored = [(piece, reason) for _, piece, reason in found]  # in input order
    for pattern, _ in patterns:
        text = pattern.sub("," if prompt else " ", text)
    if not prompt:
        words = text.split()
        return TextReading(words, [1.0] * len(words), ignored)
    reader = _PromptReader(_SEPARATORS.sub(",", text), known, ignored)
    return reader.read()


def unescape(text: str) -> str:
    r"""``text`` with its escaped brackets (``\(`` ``\)`` ``\[`` ``\]`` ``\{`` ``\}``) read as the brackets.

    a1111 also reads ``\\`` as one backslash; here a backslash before anything but a bracket is itself, so
    tags such as ``\\//`` and ``\m/`` read the same in a prompt and in a tag string.
    """
    return _ESCAPED.sub(_escaped_character, text) if "\\" in text else text


def _escaped_character(match: re.Match) -> str:
    return match.group(1)


def _weight_text(weight: float) -> str:
    return f"{weight:.{WEIGHT_DIGITS}f}".rstrip("0").rstrip(".")


def emphasized(text: str, weight: float) -> str:
    """``text`` with ``weight`` written in a front end's syntax: ``(x)`` 1.1, ``((x))`` 1.21, ``[x]`` 1/1.1,
    ``{x}`` 1.05, else (or when ``x`` ends in neither letter nor digit) ``(x:1.3)``; unchanged at 1.
    ``read_tag_text`` reads it back to the same weight."""
    if weight == 1.0:
        return text
    # Brackets alone only after a letter or digit: "(:)" would read as the tag ":)", "(7:08)" as weight 8
    # and "[7:08]" as a prompt-editing step
    plain_end = text[-1:].isalnum() and _TRAILING_WEIGHT.search(text) is None
    for opener, step in EMPHASIS.items():
        for depth in range(1, 4):
            if round(step**depth, WEIGHT_DIGITS) == weight and plain_end:
                return f"{opener * depth}{text}{_CLOSER_OF[opener] * depth}"
    return f"({text}:{_weight_text(weight)})"


class _PromptReader:
    """One pass over a prompt: items between commas, bracket groups weighting the items inside them.

    A bracket opens a group only at the start of a word (``foo_(bar)`` is a name); a group's ends are
    item ends, so ``1girl (smile) solo`` is three items. At each word start the reader first asks
    ``known`` whether a known tag starts there (up to the item's end or the word's end, outer closers
    peeled off); if so, its characters are taken as they stand.
    """

    def __init__(self, text: str, known: Container[str] | None, ignored: list[tuple[str, str]]) -> None:
        self.text, self.known, self.ignored = text, known, ignored
        self.pieces: list[list[Any]] = []  # [item text, weight]
        self.groups: list[tuple[str, int]] = []  # open groups: (opener, index of their first piece)
        self.buffer: list[str] = []  # characters of the item being read
        self.fixed = 0  # buffer[:fixed] is name for sure (escaped or a known tag): no weight is read from it
        self.names: dict[str, int] = {}  # brackets opened inside a word (part of a name), by opener

    def read(self) -> TextReading:
        """Read the whole text: tags, weights and what was ignored."""
        position = 0
        while position < len(self.text):
            position = self._read_at(position)
        self._flush()
        for opener, first in self.groups:  # left open: weights the rest of the text, as a1111 does
            self._weigh(first, EMPHASIS[opener])
        tags: list[str] = []
        weights: list[float] = []
        for item, weight in self.pieces:
            for tag in _item_tags(item, self.known):
                tags.append(tag)
                weights.append(round(weight, WEIGHT_DIGITS))
        return TextReading(tags, weights, self.ignored)

    def _read_at(self, position: int) -> int:
        """Read what starts at ``position``; return the position after it."""
        text, char = self.text, self.text[position]
        if not self.buffer and char != "," and char not in _STRUCTURE:
            end = text.find(",", position)
            end = len(text) if end < 0 else end
            if _STRUCTURE.isdisjoint(text[position:end]):  # an item without brackets, escapes or colons
                self.buffer += text[position:end]
                return end
        at_word_start = not self.buffer or self.buffer[-1].isspace()
        if at_word_start and self.known is not None and not char.isspace() and char != ",":
            span = self._known_span(position)
            if span is not None:
                end, spelling = span
                self.buffer += spelling
                self.fixed = len(self.buffer)
                return end
        if char == "\\" and text[position + 1: position + 2] in _ESCAPABLE:
            self.buffer.append(text[position + 1])
            self.fixed = len(self.buffer)
            return position + 2
        if char == ",":
            self._flush()
        elif char in EMPHASIS and at_word_start:
            self._flush()
            self.groups.append((char, len(self.pieces)))
        elif char in EMPHASIS:
            self.names[char] = self.names.get(char, 0) + 1
            self.buffer.append(char)
        elif char in _CLOSERS:
            self._close(char, text[position + 1: position + 2])
        else:  # a run of plain characters, or of whitespace, at once
            end = _RUN.match(text, position).end()
            self.buffer += text[position:end]
            return end
        return position + 1

    def _known_span(self, start: int) -> tuple[int, str] | None:
        """End and spelling of a known tag written from ``start``: to the item's or the word's end, with
        closers and ``:weight`` peeled off its end one at a time (``(7:08)`` holds the tag ``7:08``)."""
        text = self.text
        item_end = text.find(",", start)
        item_end = len(text) if item_end < 0 else item_end
        if _STRUCTURE.isdisjoint(text[start:item_end]):
            return None
        space = _SPACE.search(text, start, item_end)
        for end in (item_end,) if space is None else (item_end, space.start()):
            candidate = text[start:end].rstrip()
            while candidate and _STRUCTURE.intersection(candidate):
                for spelling in dict.fromkeys((candidate, unescape(candidate))):
                    if normalize_tag(spelling) in self.known:
                        return start + len(candidate), spelling
                if candidate[-1] in _CLOSERS:
                    candidate = candidate[:-1].rstrip()
                elif (weight := _TRAILING_WEIGHT.search(candidate)) is not None:
                    candidate = candidate[: weight.start()]
                else:
                    break
        return None

    def _close(self, closer: str, after: str) -> None:
        """A closing bracket (``after``: the character after it): part of a name, the end of the last open
        group of its kind, or a stray one: inside a word a character (``\\(^o^)/``), at a word's end ignored."""
        opener = _CLOSERS[closer]
        if self.names.get(opener):
            self.names[opener] -= 1
            self.buffer.append(closer)
            return
        index = next((i for i in range(len(self.groups) - 1, -1, -1) if self.groups[i][0] == opener), None)
        if index is None and after and not after.isspace() and after != "," and after not in _CLOSERS:
            self.buffer.append(closer)
            return
        if index is None:
            self._flush()
            self.ignored.append((closer, "closing bracket without an opening one"))
            return
        factor = EMPHASIS[opener]
        if opener == "(":
            factor = self._read_weight(factor)
        elif opener == "[" and self._read_edit_step():
            factor = 1.0
        self._flush()
        self._weigh(self.groups.pop(index)[1], factor)

    def _tail_weight(self) -> re.Match | None:
        """``text:number`` at the end of the item (not inside a known tag's own characters), or None."""
        weighted = _WEIGHT.fullmatch("".join(self.buffer[self.fixed:]))
        return weighted if weighted and (weighted.group(1).strip() or self.fixed) else None  # "(:3)" is the tag :3

    def _read_weight(self, factor: float) -> float:
        """The weight of a ``(text:1.2)`` group being closed (``factor`` when it has none), taken off the item."""
        weighted = self._tail_weight()
        if weighted:
            del self.buffer[self.fixed:]
            self.buffer += weighted.group(1)
            return float(weighted.group(2))
        labelled = _LABEL.fullmatch("".join(self.buffer[self.fixed:]))
        if labelled and self.known is not None and self._is_label(labelled.group(1)):
            self.ignored.append((f":{labelled.group(2)}", "weight is not a number"))
            del self.buffer[self.fixed:]
            self.buffer += labelled.group(1)
        return factor

    def _read_edit_step(self) -> bool:
        """a1111's prompt editing ``[from:to:step]`` / ``[to:step]`` in a ``[`` group being closed: both tags
        stay (no emphasis), the step is ignored. False when the group is plain de-emphasis."""
        edited = self._tail_weight()
        if edited is None:
            return False
        self.ignored.append((f":{edited.group(2)}", "prompt-editing step, not a weight"))
        head = edited.group(1)
        del self.buffer[self.fixed:]
        whole = normalize_tag("".join(self.buffer) + head)
        if ":" in head and (self.known is None or whole not in self.known):
            before, after = head.rsplit(":", 1)
            self.buffer += before
            self._flush()
            head = after
        self.buffer += head
        return True

    def _is_label(self, head: str) -> bool:
        """Whether ``(head:label)`` is a known tag with a weight that is not a number (not a tag with a colon)."""
        whole = normalize_tag("".join(self.buffer))
        if whole in self.known:
            return False
        tags = _item_tags("".join(self.buffer[: self.fixed]) + head, self.known)
        return all(tag in self.known for tag in tags)

    def _weigh(self, first: int, factor: float) -> None:
        for piece in self.pieces[first:]:
            piece[1] *= factor

    def _flush(self) -> None:
        item = "".join(self.buffer).strip()
        self.buffer.clear()
        self.fixed = 0
        self.names.clear()
        if item:
            self.pieces.append([item, 1.0])


def _item_tags(item: str, known: Container[str] | None) -> list[str]:
    """The tags of one comma item: its own spelling when that is known (or nothing is), else the fewest tags
    its space-separated words spell, each known or written with underscores as one tag; else its spelling."""
    tag = normalize_tag(item)
    if known is None or not tag or tag in known:
        return [tag] if tag else []
    return _word_tags(item, known) or [tag]


def _word_tags(item: str, known: Container[str]) -> list[str] | None:
    """The fewest tags that ``item``'s words (two or more) spell, each a known tag, a metatag or one word written
    with underscores (``1girl solo takamachi_nanoha``); None when the words spell none that way."""
    words = [normalize_tag(word) for word in item.split()]
    if len(words) < 2:
        return None
    best: list[list[str] | None] = [[]] + [None] * len(words)  # best[j]: fewest tags spelling words[:j]
    for end in range(1, len(words) + 1):
        for start in range(end):
            head = best[start]
            piece = "_".join(words[start:end])
            is_tag = piece in known or piece.startswith(("rating:", "score:")) or (end - start == 1 and "_" in piece)
            if head is not None and is_tag and (best[end] is None or len(head) + 1 < len(best[end])):
                best[end] = [*head, piece]
    return best[-1]


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


@dataclass
class ParsedTagSet:
    """One tag set as read, before the vocabulary's tables apply (``parse_tagset``).

    ``items``: ``(tag, given category, weight)``, spelling normalised, in input order, repeats kept;
    the category is None except for a dict input, the weight 1.0 except for emphasis in a prompt.
    ``from_dict``: whether the input was a dict. ``ignored``: ``(text, reason)`` of what was not read as a tag.
    """

    items: list[tuple[str, str | None, float]]
    rating: str | None = None
    score: int | str | None = None
    from_dict: bool = False
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        """The tags read, in input order, each once."""
        return list(dict.fromkeys(tag for tag, _, _ in self.items))


def parse_tagset(tagset: Any, known: Container[str] | None = None) -> ParsedTagSet:
    """Read one tag set in any input form (``known``: as in ``read_tag_text``).

    Forms: a Danbooru tag string or a front end's prompt (``read_tag_text``), a list of tags (each item
    one tag, as written), or a dict by category (the five tag categories and ``unknown``, values a list
    or a space-separated string) with optional ``rating``, ``score`` and ``id`` (ignored). ``rating:x``
    and ``score:N`` in a string or list are the post's rating and score. Empty items are skipped.
    """
    if isinstance(tagset, Mapping):
        return _parse_dict(tagset)
    ignored: list[tuple[str, str]] = []
    if isinstance(tagset, str):
        reading = read_tag_text(tagset, known)
        raw, weights, ignored = reading.tags, reading.weights, reading.ignored
    elif isinstance(tagset, (list, tuple)):
        raw, weights = list(tagset), [1.0] * len(tagset)
    else:
        raise ValueError(f"a tag set must be a string, a list of tags or a dict by category, got {type(tagset).__name__}")
    parsed = ParsedTagSet([], ignored=ignored)
    for item, weight in zip(raw, weights):
        if not isinstance(item, str):
            raise ValueError(f"tags must be strings, got {type(item).__name__} {item!r}")
        tag = normalize_tag(item)
        if tag.startswith("rating:"):
            found = parse_rating(tag[len("rating:"):])
            if parsed.rating is not None and found != parsed.rating:
                raise ValueError(f"two ratings in one tag set: rating:{parsed.rating} and {tag}")
            parsed.rating = found
        elif tag.startswith("score:"):
            parsed.score = parse_score(tag[len("score:"):])
        elif tag:
            parsed.items.append((tag, None, weight))
    return parsed


def _parse_dict(tagset: Mapping[str, Any]) -> ParsedTagSet:
    """``parse_tagset`` of a dict by category (tags as written: no prompt syntax)."""
    parsed = ParsedTagSet([], from_dict=True)
    for key, values in tagset.items():
        if key in TAG_CATEGORIES or key == UNKNOWN_CATEGORY:
            for tag in (values.split() if isinstance(values, str) else values or []):
                if tag is None:
                    continue
                if not isinstance(tag, str):
                    raise ValueError(f"tags must be strings, got {type(tag).__name__} {tag!r}")
                if tag := normalize_tag(tag):
                    parsed.items.append((tag, key, 1.0))
        elif key == "rating":
            parsed.rating = parse_rating(values)
        elif key == "score":
            parsed.score = parse_score(values)
        elif key != "id":
            raise ValueError(f"unknown key {key!r} in a tag dict: expected {', '.join(TAG_CATEGORIES)}, rating, score (or id)")
    return parsed


@dataclass
class NormalizedTags:
    """A normalised tag set: tags by category in canonical order, and what normalising changed.

    ``tags`` has every category of ``OUTPUT_CATEGORIES`` (five tag categories, then ``unknown``).
    ``unknown``: tags outside the vocabulary (kept). ``added``/``removed``: implied tags added by
    ``complete`` or removed by ``minimal``. ``aliases``: input tag -> canonical tag for every alias
    resolved. ``duplicates``: input tags dropped as repeats (after spelling and aliases). ``weights``:
    tag -> emphasis weight of a prompt, for the tags that had one (not 1). ``ignored``: ``(text, reason)``
    of each piece of the input that is not a tag (LoRA, embeddings, ...), in input order.
    """

    tags: dict[str, list[str]]
    rating: str | None = None
    score: int | str | None = None
    unknown: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    weights: dict[str, float] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def all_tags(self, order: Iterable[str] | None = None) -> list[str]:
        """Every tag, categories in ``order`` (default canonical; categories not named follow in canonical order)."""
        return [tag for category in category_order(order) for tag in self.tags.get(category, [])]

    def to_string(self, style: str = "tags", order: Iterable[str] | None = None, separator: str | None = None,
                  metadata: bool = True, weights: bool = True) -> str:
        """The tag set as one string that normalises back to itself.

        ``style="tags"``: Danbooru tags joined by spaces; ``"prompt"``: prompt style (``prompt_tag``) joined
        by ``", "``, each weighted tag in the front end's syntax (``emphasized``) unless ``weights`` is
        False. ``separator`` overrides the join. ``metadata`` puts ``rating:x`` and ``score:N`` first.
        """
        if style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
        words = []
        if metadata and self.rating is not None:
            words.append(f"rating:{self.rating}")
        if metadata and self.score is not None:
            words.append(f"score:{self.score}")
        tags = self.all_tags(order)
        if style == "prompt":
            words += [emphasized(prompt_tag(t), self.weights.get(t, 1.0) if weights else 1.0) for t in tags]
        else:
            words += tags
        return (separator if separator is not None else (", " if style == "prompt" else " ")).join(words)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``tags`` by category, ``rating``, ``score``, the change lists, weights and ignored pieces."""
        return {"tags": {c: list(self.tags.get(c, [])) for c in OUTPUT_CATEGORIES}, "rating": self.rating,
                "score": self.score, "unknown": list(self.unknown), "added": list(self.added),
                "removed": list(self.removed), "aliases": dict(self.aliases), "duplicates": self.duplicates,
                "weights": dict(self.weights), "ignored": [{"text": t, "reason": r} for t, r in self.ignored]}


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
        # Spellings a prompt's reading treats as tags (a known tag wins over reading its brackets).
        self.known: frozenset[str] | None = None
        if self.vocabulary is not None or self.aliases:
            self.known = frozenset(self.vocabulary or ()) | frozenset(self.aliases)

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
        parsed = parse_tagset(tagset, self.known)
        from_dict = parsed.from_dict
        placed: dict[str, str] = {}  # canonical tag -> category, first spelling wins
        weights: dict[str, float] = {}
        unknown: set[str] = set()
        aliased: dict[str, str] = {}
        duplicates = 0
        for tag, given, weight in parsed.items:
            canonical = resolve_alias(tag, self.aliases) if tag in self.aliases else tag
            if canonical != tag:
                aliased[tag] = canonical
            if canonical in placed:
                duplicates += 1
                continue
            if weight != 1.0:
                weights[canonical] = weight
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
            weights = {tag: weight for tag, weight in weights.items() if tag not in removed}
        by_category: dict[str, list[str]] = {c: [] for c in OUTPUT_CATEGORIES}
        for tag in self._ordered(placed):
            by_category[placed[tag]].append(tag)
        return NormalizedTags(
            tags=by_category, rating=parsed.rating, score=parsed.score,
            unknown=self._ordered({t: placed[t] for t in unknown}), added=self._ordered(added),
            removed=self._ordered(removed), aliases=aliased, duplicates=duplicates,
            weights={t: weights[t] for t in self._ordered({t: placed[t] for t in weights})}, ignored=list(parsed.ignored),
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
    "EMPHASIS", "IMPLICATION_MODES", "NormalizedTags", "OUTPUT_CATEGORIES", "ParsedTagSet", "STYLES", "TagNormalizer",
    "TextReading", "UNKNOWN_CATEGORY", "category_order", "emphasized", "is_prompt", "normalize_tag", "parse_rating",
    "parse_score", "parse_tagset", "prompt_tag", "read_tag_text", "resolve_alias", "unescape",
]
