"""A synthetic Danbooru corpus with a hidden structure a model can learn and a test can check.

``generate_corpus`` writes posts in the BigQuery CSV layout (the input of ``build-dataset``) and the
ground truth beside it (``<stem>.truth.json``):

- copyrights with their characters; each character has 3-6 stable appearance traits (hair and eye
  colour, hair style, ears, accessories), each drawn with ``trait_probability`` when it appears;
- artists with stable style tags (general tags drawn with ``style_probability``) and favourite
  copyrights; an artist's posts share a score level;
- general tags with Zipf-like popularity, tags that go with questionable/explicit ratings, meta tags;
- a heavy-tailed score and realistic lengths (about 30 tags a post, a long tail past 150);
- tag implications applied transitively (if ``A`` implies ``B``, every post with ``A`` has ``B``).

With the real tag tables (``tags.csv``, ``implications.tsv`` of ``../shared/data/danbooru-2025-05``)
tag names are drawn from the real ones of each category, weighted by post count, and the real
implications among the drawn tags are used; without them, names are made up. Same seed, same corpus.

The sizes and probabilities are the knobs of ``CorpusSpec``; ``synthetic_settings.SETTINGS`` names
combinations (``--setting``), among them ``danbooru-scale``, whose universe is every real tag with its
real post count, drawn and written in chunks so that millions of posts fit in a few hundred MB.
"""

from __future__ import annotations

import argparse
import csv
import json
from bisect import bisect_right
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..modeling.categories_booru_embed import RATINGS
from .corpus_rows import CSV_HEADER, independent_tags, implication_closures, post_runs, quote_field
from .pair_table import default_tag_data
from .synthetic_settings import SETTINGS, CorpusSpec, describe_settings, setting

# Appearance traits: real Danbooru general tags, so the same names work with and without tag tables.
_COLOURS = ("black", "brown", "blonde", "red", "blue", "pink", "purple", "white", "grey", "green", "orange", "aqua")
HAIR_COLOURS = tuple(f"{c}_hair" for c in _COLOURS)
EYE_COLOURS = tuple(f"{c}_eyes" for c in _COLOURS if c not in ("blonde", "white", "grey"))
HAIR_STYLES = ("long_hair", "short_hair", "very_long_hair", "twintails", "ponytail", "braid", "bob_cut",
               "ahoge", "side_ponytail", "hair_bun", "medium_hair")
EARS = ("cat_ears", "fox_ears", "rabbit_ears", "wolf_ears", "dog_ears", "pointy_ears", "horns")
ACCESSORIES = ("hair_ornament", "hair_ribbon", "hairband", "hat", "glasses", "hair_bow", "halo", "earrings",
               "choker", "scarf", "headphones", "beret", "hairclip", "hair_flower", "necktie", "gloves")
TRAIT_TAGS = HAIR_COLOURS + EYE_COLOURS + HAIR_STYLES + EARS + ACCESSORIES + ("animal_ears",)

# Used when there are no tag tables; real meta tag names (they are generic).
MADE_UP_META = ("highres", "absurdres", "commentary_request", "translated", "official_art", "commission",
                "english_commentary", "lowres", "traditional_media", "scan", "animated", "bad_id",
                "bad_pixiv_id", "partial_commentary", "skeb_commission", "artist_name", "signature",
                "check_translation", "variant_set", "game_cg")
MADE_UP_IMPLICATIONS = (("cat_ears", "animal_ears"), ("fox_ears", "animal_ears"), ("rabbit_ears", "animal_ears"),
                        ("wolf_ears", "animal_ears"), ("dog_ears", "animal_ears"), ("very_long_hair", "long_hair"))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _read_tag_table(tag_data: Path) -> dict[int, tuple[list[str], np.ndarray]]:
    """Real tags by Danbooru category number: names and post counts."""
    names: dict[int, list[str]] = {}
    counts: dict[int, list[int]] = {}
    with open(tag_data / "tags.csv", encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            category = int(row[1])
            names.setdefault(category, []).append(row[0])
            counts.setdefault(category, []).append(int(row[2]))
    return {c: (names[c], np.asarray(counts[c], dtype=np.float64)) for c in names}


def _read_implications(tag_data: Path) -> list[tuple[str, str]]:
    """The (antecedent, consequent) pairs of ``implications.tsv``."""
    with open(tag_data / "implications.tsv", encoding="utf-8", newline="") as handle:
        return [(row["antecedent"], row["consequent"]) for row in csv.DictReader(handle, delimiter="\t")]


def _weighted_sample(rng: np.random.Generator, names: list[str], counts: np.ndarray, k: int,
                     exclude: set[str] = frozenset()) -> list[str]:
    """``k`` distinct names drawn with probability proportional to ``counts``, most popular first."""
    keep = np.array([name not in exclude for name in names])
    pool = np.flatnonzero(keep)
    if len(pool) < k:
        raise UsageError(f"tag table has only {len(pool)} usable tags, {k} needed")
    chosen = rng.choice(pool, size=k, replace=False, p=counts[pool] / counts[pool].sum())
    chosen = chosen[np.argsort(-counts[chosen], kind="stable")]
    return [names[i] for i in chosen]


class _Universe:
    """The drawn tag names by category, the copyright of each character, and the implications."""

    def __init__(self, spec: CorpusSpec, rng: np.random.Generator, tag_data: Path | None):
        self.source = "made-up" if tag_data is None else str(tag_data)
        self.counts: dict[str, np.ndarray] | None = None  # real post counts by category (universe "danbooru")
        if spec.universe == "danbooru":
            if tag_data is None:
                raise UsageError(f"corpus setting {spec.name!r} needs the real tag tables (--tag-data DIR with tags.csv)")
            self._danbooru(rng, tag_data)
        elif tag_data is None:
            self._made_up(spec, rng)
        else:
            self._real(spec, rng, tag_data)

    def _made_up(self, spec: CorpusSpec, rng: np.random.Generator) -> None:
        self.general = [f"general_{i:04d}" for i in range(spec.num_general)]
        self.meta = list(MADE_UP_META[: spec.num_meta])
        self.artists = [f"artist_{i:03d}" for i in range(spec.num_artists)]
        self.copyrights = [f"series_{i:02d}" for i in range(spec.num_copyrights)]
        shares = _zipf_weights(spec.num_copyrights, spec.subject_zipf)
        owner = rng.choice(spec.num_copyrights, size=spec.num_characters, p=shares)
        owner[: spec.num_copyrights] = np.arange(spec.num_copyrights)  # every copyright has a character
        self.characters = [f"chara_{i:03d}_({self.copyrights[o]})" for i, o in enumerate(owner)]
        self.character_copyright = {c: self.copyrights[o] for c, o in zip(self.characters, owner)}
        pairs = list(MADE_UP_IMPLICATIONS)
        # general chains rare -> medium -> popular, so transitivity matters
        n = spec.num_general
        for _ in range(max(1, n // 100)):
            top, mid, rare = sorted(rng.choice(np.arange(20, n), size=3, replace=False))
            pairs += [(self.general[rare], self.general[mid]), (self.general[mid], self.general[top])]
        for character in self.characters[::3]:
            pairs.append((character, self.character_copyright[character]))
        self.implications = sorted(set(pairs))

    def _real(self, spec: CorpusSpec, rng: np.random.Generator, tag_data: Path) -> None:
        table = _read_tag_table(tag_data)
        self.general = _weighted_sample(rng, *table[0], spec.num_general, exclude=set(TRAIT_TAGS))
        self.meta = _weighted_sample(rng, *table[5], spec.num_meta)
        self.artists = _weighted_sample(rng, *table[1], spec.num_artists)
        self.copyrights = _weighted_sample(rng, *table[3], spec.num_copyrights, exclude={"original"})
        char_names, char_counts = table[4]
        by_qualifier: dict[str, list[int]] = {}
        for i, name in enumerate(char_names):
            if name.endswith(")") and "_(" in name:
                by_qualifier.setdefault(name[name.rindex("_(") + 2: -1], []).append(i)
        # characters without a "_(series)" qualifier fill copyrights that have too few of their own
        unqualified = np.array([i for i, n in enumerate(char_names) if not n.endswith(")")], dtype=np.int64)
        unqualified_p = char_counts[unqualified] / char_counts[unqualified].sum()
        wanted = np.bincount(rng.choice(spec.num_copyrights, size=spec.num_characters - spec.num_copyrights,
                                        p=_zipf_weights(spec.num_copyrights, spec.subject_zipf)),
                             minlength=spec.num_copyrights) + 1
        taken: set[int] = set()
        self.character_copyright = {}
        for copyright, k in zip(self.copyrights, wanted):
            own = np.array([i for i in by_qualifier.get(copyright, []) if i not in taken], dtype=np.int64)
            if len(own):
                pick = rng.choice(own, size=min(k, len(own)), replace=False, p=char_counts[own] / char_counts[own].sum())
            else:
                pick = np.array([], dtype=np.int64)
            others = np.array([i for i in rng.choice(unqualified, size=4 * k + 16, replace=False, p=unqualified_p)
                               if i not in taken and i not in set(pick.tolist())], dtype=np.int64)
            pick = np.concatenate([pick, others[: k - len(pick)]])
            for i in pick.tolist():
                taken.add(i)
                self.character_copyright[char_names[i]] = copyright
        self.characters = list(self.character_copyright)
        self._real_implications(tag_data)

    def _danbooru(self, rng: np.random.Generator, tag_data: Path) -> None:
        """Every real tag of every category, most popular first, with its post count."""
        table = _read_tag_table(tag_data)

        def category(number: int, exclude: set[str]) -> tuple[list[str], np.ndarray]:
            names, counts = table[number]
            keep = [i for i, name in enumerate(names) if name not in exclude]
            order = sorted(keep, key=lambda i: -counts[i])
            return [names[i] for i in order], counts[order]

        self.general, general_counts = category(0, set(TRAIT_TAGS))
        self.meta, meta_counts = category(5, set())
        self.artists, artist_counts = category(1, set())
        self.copyrights, copyright_counts = category(3, {"original"})
        self.characters, character_counts = category(4, set())
        self.counts = {"general": general_counts, "meta": meta_counts, "artist": artist_counts,
                       "copyright": copyright_counts, "character": character_counts}
        # a character's copyright: its "_(qualifier)", else what it implies, else one drawn by popularity
        known = set(self.copyrights)
        implied: dict[str, str] = {}
        for antecedent, consequent in _read_implications(tag_data):
            if consequent in known:
                implied.setdefault(antecedent, consequent)
        fallback = rng.choice(len(self.copyrights), size=len(self.characters), p=copyright_counts / copyright_counts.sum())
        self.character_copyright = {}
        for name, drawn in zip(self.characters, fallback.tolist()):
            qualifier = name[name.rindex("_(") + 2: -1] if name.endswith(")") and "_(" in name else ""
            self.character_copyright[name] = (qualifier if qualifier in known
                                              else implied.get(name, self.copyrights[drawn]))
        self._real_implications(tag_data)

    def _real_implications(self, tag_data: Path) -> None:
        universe = set(self.general) | set(TRAIT_TAGS) | set(self.meta) | set(self.artists) | set(self.copyrights)
        universe |= set(self.characters) | {"original"}
        pairs = [(a, c) for a, c in _read_implications(tag_data) if a in universe and c in universe]
        self.implications = sorted(set(pairs))

    def closures(self) -> dict[str, tuple[str, ...]]:
        """Every tag with implications -> all tags it implies, directly or through a chain."""
        return implication_closures(self.implications)


class _World:
    """The hidden structure: who has which traits, styles and preferences, and how popular everything is."""

    def __init__(self, spec: CorpusSpec, rng: np.random.Generator, universe: _Universe):
        self.universe = universe
        counts = universe.counts
        if counts is None:
            n = len(universe.characters)
            self.char_popularity = _zipf_weights(n, spec.subject_zipf)[rng.permutation(n)]
            self.artist_popularity = _zipf_weights(len(universe.artists), spec.subject_zipf)
            self.copyright_popularity = _zipf_weights(len(universe.copyrights), spec.subject_zipf)
            self.general_popularity = _zipf_weights(len(universe.general), spec.general_zipf)
            self.meta_probability = 0.7 * (1.0 / np.arange(1, len(universe.meta) + 1)) ** 1.2
        else:
            self.char_popularity = counts["character"] / counts["character"].sum()
            self.artist_popularity = counts["artist"] / counts["artist"].sum()
            self.copyright_popularity = counts["copyright"] / counts["copyright"].sum()
            self.general_probability = np.minimum(1.0, counts["general"] / spec.danbooru_posts)
            self.meta_probability = np.minimum(1.0, counts["meta"] / spec.danbooru_posts)
        mid = universe.general[30: min(len(universe.general), 1000)]
        fewest, most = spec.style_tags
        if counts is None:
            self.traits = {c: self._traits(rng, spec.max_traits) for c in universe.characters}
            self.styles = {a: [mid[i] for i in rng.choice(len(mid), size=int(rng.integers(fewest, most + 1)),
                                                          replace=False)]
                           for a in universe.artists}
        else:  # tens of thousands of characters and artists: the same distributions, drawn in bulk
            self.traits = dict(zip(universe.characters, _bulk_traits(rng, len(universe.characters), spec.max_traits)))
            sizes = rng.integers(fewest, most + 1, size=len(universe.artists)).tolist()
            picks = rng.integers(0, len(mid), size=(len(universe.artists), 2 * most)).tolist()
            self.styles = {a: [mid[i] for i in list(dict.fromkeys(row))[:k]]
                           for a, row, k in zip(universe.artists, picks, sizes)}
        self.favourites = self._favourites(rng, counts is not None)
        self.artist_score = rng.normal(2.3, 0.6, size=len(universe.artists))
        rating_pool = universe.general[100: min(len(universe.general), 700)]
        chosen = rng.choice(len(rating_pool), size=min(60, len(rating_pool)), replace=False)
        half = len(chosen) // 2
        self.rating_tags = {"q": [rating_pool[i] for i in chosen[:half]], "e": [rating_pool[i] for i in chosen[half:]]}
        self.characters_of: dict[str, list[str]] = {c: [] for c in universe.copyrights}
        for character, copyright in universe.character_copyright.items():
            self.characters_of[copyright].append(character)
        # real counts: a copyright's characters are picked by popularity (cumulative shares), else uniformly
        self.character_cum: dict[str, list[float]] | None = None
        self.copyright_cum: list[float] | None = None
        if counts is not None:
            count_of = dict(zip(universe.characters, counts["character"].tolist()))
            self.character_cum = {}
            for copyright, members in self.characters_of.items():
                cum = np.cumsum([count_of[m] for m in members])
                self.character_cum[copyright] = (cum / cum[-1]).tolist() if len(members) else []
            self.copyright_cum = np.cumsum(self.copyright_popularity).tolist()

    def _favourites(self, rng: np.random.Generator, vectorised: bool) -> dict[str, list[str]]:
        """1-2 favourite copyrights an artist, drawn by copyright popularity (among those with characters)."""
        copyrights = self.universe.copyrights
        if not vectorised:
            return {a: [copyrights[i] for i in rng.choice(len(copyrights), size=int(rng.integers(1, 3)),
                                                           replace=False, p=self.copyright_popularity)]
                    for a in self.universe.artists}
        with_characters = {c for c in self.universe.character_copyright.values()}
        p = self.copyright_popularity * np.array([c in with_characters for c in copyrights])
        picks = rng.choice(len(copyrights), size=(len(self.universe.artists), 2), p=p / p.sum())
        sizes = rng.integers(1, 3, size=len(self.universe.artists))
        return {a: list(dict.fromkeys(copyrights[i] for i in row[:k]))
                for a, row, k in zip(self.universe.artists, picks.tolist(), sizes.tolist())}

    @staticmethod
    def _traits(rng: np.random.Generator, max_traits: int) -> list[str]:
        traits = [str(rng.choice(HAIR_COLOURS)), str(rng.choice(EYE_COLOURS))]
        if rng.random() < 0.8:
            traits.append(str(rng.choice(HAIR_STYLES)))
        if rng.random() < 0.35:
            traits.append(str(rng.choice(EARS)))
        extra = int(rng.integers(0 if len(traits) > 2 else 1, 7 - len(traits)))
        traits += [str(t) for t in rng.choice(ACCESSORIES, size=min(extra, 2), replace=False)]
        return traits[:max_traits]

    def pick_character(self, copyright: str, u: float) -> str | None:
        """The character of ``copyright`` at uniform draw ``u`` (by popularity with real counts), or None."""
        pool = self.characters_of[copyright]
        if not pool:
            return None
        if self.character_cum is None:
            return pool[int(u * len(pool))]
        return pool[min(bisect_right(self.character_cum[copyright], u), len(pool) - 1)]

    def pick_copyright(self, u: float) -> str:
        """A copyright at uniform draw ``u`` (by popularity with real counts, else uniformly)."""
        copyrights = self.universe.copyrights
        if self.copyright_cum is None:
            return copyrights[int(u * len(copyrights))]
        return copyrights[min(bisect_right(self.copyright_cum, u), len(copyrights) - 1)]


def _bulk_traits(rng: np.random.Generator, n: int, max_traits: int) -> list[list[str]]:
    """``n`` trait lists drawn like ``_World._traits`` (hair, eyes, maybe a style and ears, 0-2 accessories)."""
    hair = rng.integers(0, len(HAIR_COLOURS), size=n).tolist()
    eyes = rng.integers(0, len(EYE_COLOURS), size=n).tolist()
    style = np.where(rng.random(n) < 0.8, rng.integers(0, len(HAIR_STYLES), size=n), -1).tolist()
    ears = np.where(rng.random(n) < 0.35, rng.integers(0, len(EARS), size=n), -1).tolist()
    extra = rng.random(n).tolist()
    first = rng.integers(0, len(ACCESSORIES), size=n)
    second = rng.integers(0, len(ACCESSORIES) - 1, size=n)
    second = (second + (second >= first)).tolist()  # distinct from the first
    lists = []
    for h, e, s, a, x, f, g in zip(hair, eyes, style, ears, extra, first.tolist(), second):
        traits = [HAIR_COLOURS[h], EYE_COLOURS[e]] + ([HAIR_STYLES[s]] if s >= 0 else []) + ([EARS[a]] if a >= 0 else [])
        room = 7 - len(traits) - (0 if len(traits) > 2 else 1)  # extra accessories uniform in [low, 7 - len)
        count = min(2, (0 if len(traits) > 2 else 1) + int(x * room))
        lists.append((traits + [ACCESSORIES[f], ACCESSORIES[g]][:count])[:max_traits])
    return lists


@dataclass
class _Draws:
    """The random draws of a run of posts (one chunk), in the order they are drawn."""

    ids: np.ndarray
    general: tuple[np.ndarray, np.ndarray]  # background general tags, as ``post_runs``
    num_chars: np.ndarray
    num_artists: np.ndarray
    first_chars: np.ndarray
    post_artists: np.ndarray
    ratings: np.ndarray
    meta: tuple[np.ndarray, np.ndarray]
    noise: np.ndarray
    uniform: np.ndarray
    coins: np.ndarray
    noise_tags: tuple[np.ndarray, np.ndarray] | None


def _draw(spec: CorpusSpec, rng: np.random.Generator, world: _World, n: int, first_id: int) -> _Draws:
    """Every random number that ``n`` posts need (the original stream when the universe is sampled)."""
    universe = world.universe
    ids = first_id + np.cumsum(rng.integers(1, 20, size=n))
    if universe.counts is None:
        lengths = np.clip(np.rint(rng.lognormal(np.log(spec.general_median), spec.general_sigma, n)),
                          1, spec.max_general).astype(np.int64)
        background = rng.choice(len(universe.general), size=int(lengths.sum()), p=world.general_popularity)
        general = (np.concatenate([[0], np.cumsum(lengths)]), background)
    else:
        richness = rng.lognormal(-spec.general_sigma ** 2 / 2, spec.general_sigma, n)  # mean 1
        general = independent_tags(rng, world.general_probability, richness)
    slots = len(spec.characters_per_post)
    num_chars = rng.choice(slots, size=n, p=spec.characters_per_post)
    num_artists = rng.choice(len(spec.artists_per_post), size=n, p=spec.artists_per_post)
    first_chars = rng.choice(len(universe.characters), size=(n, slots - 1), p=world.char_popularity)
    post_artists = rng.choice(len(universe.artists), size=(n, len(spec.artists_per_post) - 1), p=world.artist_popularity)
    ratings = rng.choice(4, size=n, p=[0.42, 0.33, 0.12, 0.13])
    if universe.counts is None:
        meta_posts, meta_ids = np.nonzero(rng.random((n, len(universe.meta))) < world.meta_probability)
        meta = post_runs(meta_posts, meta_ids, n)
    else:
        meta = independent_tags(rng, world.meta_probability, np.ones(n))
    noise = rng.normal(0.0, 1.1, size=n)
    uniform = rng.random((n, 8 + 2 * max(0, slots - 6)))  # two more draws a character slot past the sixth
    # one pool of uniform draws for the per-tag coin flips (traits, styles), consumed in order
    coins = rng.random(n * 16 + 64)
    noise_tags = None
    if spec.noise_tags > 0:
        per_post = rng.poisson(spec.noise_tags, size=n)
        noise_tags = (np.concatenate([[0], np.cumsum(per_post)]),
                      rng.integers(0, len(universe.general), size=int(per_post.sum())))
    return _Draws(ids, general, num_chars, num_artists, first_chars, post_artists, ratings, meta, noise, uniform,
                  coins, noise_tags)


def _slot_columns(slots: int) -> tuple[list[int], list[int]]:
    """Columns of ``_Draws.uniform`` a character slot reads: (same-copyright coin, pick within the copyright)."""
    coin = [0] + [2 + s if s <= 4 else 8 + 2 * (s - 5) for s in range(1, slots)]
    pick = [1] + [1 + s if s <= 4 else 9 + 2 * (s - 5) for s in range(1, slots)]
    return coin, pick


class _PostWriter:
    """Turns draws into CSV lines: structure on top of the background tags, then implications."""

    def __init__(self, spec: CorpusSpec, world: _World):
        universe = world.universe
        self.spec, self.world, self.universe = spec, world, universe
        self.closures = universe.closures()
        self.category_of = {t: "general" for t in universe.general + list(TRAIT_TAGS)}
        self.category_of.update({t: "meta" for t in universe.meta})
        self.category_of.update({t: "artist" for t in universe.artists})
        self.category_of.update({t: "copyright" for t in universe.copyrights + ["original"]})
        self.category_of.update({t: "character" for t in universe.characters})
        self.general = np.array(universe.general, dtype=object)
        self.meta = np.array(universe.meta, dtype=object)
        self.coin_column, self.pick_column = _slot_columns(len(spec.characters_per_post))

    def lines(self, d: _Draws) -> list[str]:
        """The CSV lines of one chunk of draws."""
        spec, world, universe = self.spec, self.world, self.universe
        characters, artists, closures, category_of = universe.characters, universe.artists, self.closures, self.category_of
        coins, coin_at = d.coins, 0
        levels = np.where(d.num_artists > 0, world.artist_score[d.post_artists[:, 0]], 1.5)
        with np.errstate(over="ignore"):
            scores = np.where(d.uniform[:, 6] > 0.02, np.expm1(levels + d.noise).astype(np.int64),
                              -(d.uniform[:, 6] * 250).astype(np.int64))
        style_p, trait_p = spec.style_probability, spec.trait_probability
        general_starts, background = d.general
        meta_starts, meta_ids = d.meta
        noise_starts, noise_ids = d.noise_tags if d.noise_tags is not None else (None, None)
        lines = []
        for chunk in range(0, len(d.ids), 50_000):  # Python lists are faster to index than numpy, per post
            part = slice(chunk, min(len(d.ids), chunk + 50_000))
            rows = zip(range(part.start, part.stop), d.ids[part].tolist(), d.ratings[part].tolist(),
                       scores[part].tolist(), d.num_chars[part].tolist(), d.num_artists[part].tolist(),
                       d.post_artists[part].tolist(), d.first_chars[part].tolist(), d.uniform[part].tolist(),
                       general_starts[part].tolist(), general_starts[1:][part].tolist())
            for index, post_id, rating_index, score, num_char, num_artist, artist_ids, first_char, u, begin, end in rows:
                tags = {"meta": self.meta[meta_ids[meta_starts[index]: meta_starts[index + 1]]].tolist(),
                        "general": self.general[background[begin:end]].tolist(),
                        "artist": [], "copyright": [], "character": []}
                if noise_starts is not None:
                    tags["general"] += self.general[noise_ids[noise_starts[index]: noise_starts[index + 1]]].tolist()
                post_artist_ids = artist_ids[:num_artist]
                for a in post_artist_ids:
                    artist = artists[a]
                    tags["artist"].append(artist)
                    style = world.styles[artist]
                    flips = coins[coin_at: coin_at + len(style)].tolist()
                    coin_at = (coin_at + len(style)) % (len(coins) - 16)
                    tags["general"] += [t for t, f in zip(style, flips) if f < style_p]
                chosen: list[str] = []
                for slot in range(num_char):
                    picked = None
                    if slot == 0 and post_artist_ids and u[0] < 0.5:
                        picked = world.pick_character(world.favourites[artists[post_artist_ids[0]]][0], u[1])
                    elif slot > 0 and u[self.coin_column[slot]] < 0.7:
                        picked = world.pick_character(universe.character_copyright[chosen[0]], u[self.pick_column[slot]])
                    chosen.append(picked or characters[first_char[slot]])
                for character in dict.fromkeys(chosen):
                    tags["character"].append(character)
                    tags["copyright"].append(universe.character_copyright[character])
                    traits = world.traits[character]
                    flips = coins[coin_at: coin_at + len(traits)].tolist()
                    coin_at = (coin_at + len(traits)) % (len(coins) - 16)
                    tags["general"] += [t for t, f in zip(traits, flips) if f < trait_p]
                if not chosen:
                    if u[0] < 0.4:
                        tags["copyright"].append("original")
                    elif u[0] < 0.7:
                        tags["copyright"].append(world.pick_copyright(u[1]))
                    if u[7] < 0.8:  # an unnamed character still has hair and eyes
                        tags["general"] += [HAIR_COLOURS[int(u[2] * len(HAIR_COLOURS))],
                                            EYE_COLOURS[int(u[3] * len(EYE_COLOURS))]]
                rating = RATINGS[rating_index]
                if rating in world.rating_tags:
                    pool = world.rating_tags[rating]
                    start = int(u[5] * len(pool))
                    tags["general"] += [pool[(start + 7 * i) % len(pool)] for i in range(2 + int(u[4] * 5))]
                for category in ("general", "character", "copyright", "meta", "artist"):
                    for tag in list(tags[category]):
                        for implied in closures.get(tag, ()):
                            tags[category_of[implied]].append(implied)
                fields = [" ".join(sorted(set(tags[c]))) for c in ("meta", "general", "artist", "copyright", "character")]
                lines.append(f"{post_id},{rating},{score}," + ",".join(quote_field(f) for f in fields) + "\n")
        return lines


def _write_posts(handle, spec: CorpusSpec, rng: np.random.Generator, world: _World, num_posts: int) -> None:
    from tqdm.auto import tqdm

    writer = _PostWriter(spec, world)
    chunk = spec.chunk_posts or num_posts
    last_id = 1000
    with tqdm(total=num_posts, unit="post", desc="generate", disable=num_posts < 200_000) as progress:
        for begin in range(0, num_posts, chunk):
            draws = _draw(spec, rng, world, min(chunk, num_posts - begin), last_id)
            last_id = int(draws.ids[-1])
            handle.writelines(writer.lines(draws))
            progress.update(len(draws.ids))


def generate_corpus(output_csv: Path, num_posts: int, seed: int = 0, tag_data: Path | None = None,
                    spec: CorpusSpec | None = None, pairs: Path | None = None) -> Path:
    """Write ``num_posts`` synthetic posts to ``output_csv`` (BigQuery CSV layout).

    Returns the path of the ground truth written beside it (``<stem>.truth.json``): seed, setting and
    knobs (``setting``, ``spec``), copyrights with their characters, characters with copyright and
    traits, artists with style tags, rating-linked tags, the implications among the drawn tags, and
    the tag universe by category. ``tag_data`` is a folder with Danbooru's ``tags.csv`` and
    ``implications.tsv`` (real names) or None (made-up names); pass ``default_tag_data()`` to use the
    shared tables when present. ``spec`` defaults to the ``default`` setting (see ``SETTINGS``).
    A ``universe="pairs"`` spec (``danbooru-pairs``) draws from the pair table of ``pairs`` (a folder
    with ``cooccurrence.parquet``, read with ``tag_data``, or a derivative), by default the shared
    table when both it and ``tag_data`` are there, else the copy shipped in the package.
    """
    if num_posts < 1:
        raise UsageError(f"--posts must be at least 1, got {num_posts}")
    if tag_data is not None and not (Path(tag_data) / "tags.csv").is_file():
        raise UsageError(f"no tags.csv in tag data folder {tag_data}")
    spec = spec or CorpusSpec()
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    if spec.universe == "pairs":
        from .danbooru_pairs import generate_pairs_corpus
        from .pair_table import load_pair_table

        table = load_pair_table(pairs, None if tag_data is None else Path(tag_data))
        return generate_pairs_corpus(output_csv, num_posts, seed, spec, table)
    rng = np.random.default_rng(seed)
    universe = _Universe(spec, rng, None if tag_data is None else Path(tag_data))
    world = _World(spec, rng, universe)
    with open(output_csv, "w", encoding="utf-8", newline="") as handle:
        handle.write(CSV_HEADER + "\n")
        _write_posts(handle, spec, rng, world, num_posts)
    truth = {
        "seed": seed,
        "num_posts": num_posts,
        "source": universe.source,
        "setting": spec.name,
        "spec": asdict(spec),
        "copyrights": {c: {"characters": world.characters_of[c]} for c in universe.copyrights},
        "characters": {c: {"copyright": universe.character_copyright[c], "traits": world.traits[c],
                           "trait_probability": spec.trait_probability} for c in universe.characters},
        "artists": {a: {"style": world.styles[a], "style_probability": spec.style_probability,
                        "favourite_copyrights": world.favourites[a]} for a in universe.artists},
        "rating_tags": world.rating_tags,
        "implications": [list(pair) for pair in universe.implications],
        "tags": {"general": universe.general, "traits": list(TRAIT_TAGS), "meta": universe.meta,
                 "artist": universe.artists, "copyright": universe.copyrights + ["original"],
                 "character": universe.characters},
    }
    truth_path = output_csv.with_name(output_csv.stem + ".truth.json")
    indent = 1 if universe.counts is None else None  # the indented encoder is pure Python: slow on 150k tags
    truth_path.write_text(json.dumps(truth, indent=indent, ensure_ascii=False), encoding="utf-8")
    return truth_path


def _probabilities(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated probabilities, got {text!r}") from None


# override flags: (flag, CorpusSpec field, type, help)
_KNOB_FLAGS = (
    ("--characters", "num_characters", int, "distinct characters (sampled universe)"),
    ("--copyrights", "num_copyrights", int, "distinct copyrights (sampled universe)"),
    ("--artists", "num_artists", int, "distinct artists (sampled universe)"),
    ("--general-tags", "num_general", int, "distinct background general tags (sampled universe)"),
    ("--characters-per-post", "characters_per_post", _probabilities, "probabilities of 0,1,2,... characters a post"),
    ("--max-traits", "max_traits", int, "most appearance traits a character (3-6)"),
    ("--trait-probability", "trait_probability", float, "chance each trait is tagged when its character appears"),
    ("--style-probability", "style_probability", float, "artist style strength: chance each style tag is tagged"),
    ("--general-median", "general_median", float, "median background general tags a post (sampled universe)"),
    ("--noise-tags", "noise_tags", float, "mean structure-free general tags a post"),
    ("--general-zipf", "general_zipf", float, "Zipf exponent of general-tag popularity (sampled universe)"),
    ("--subject-zipf", "subject_zipf", float, "Zipf exponent of character/artist/copyright popularity (sampled universe)"),
)
_SAMPLED_ONLY = ("num_characters", "num_copyrights", "num_artists", "num_general", "general_median",
                 "general_zipf", "subject_zipf")
# the real associations fix the traits too: only the subjects' count and the made-up styles can change
_NOT_PAIRS = _SAMPLED_ONLY + ("max_traits", "trait_probability", "noise_tags")


def add_generate_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed generate-corpus``."""
    parser.add_argument("--output", type=Path, default=None, help="CSV file to write (truth JSON goes beside it)")
    parser.add_argument("--posts", type=int, default=20_000, help="number of posts (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--setting", default="default", choices=list(SETTINGS),
                        help="named corpus setting (default: the original corpus); see --list-settings")
    parser.add_argument("--list-settings", action="store_true", help="print the named settings and their knobs, then exit")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tag-data", type=Path, default=None,
                        help="folder with Danbooru tags.csv and implications.tsv (default: ../shared/data/danbooru-2025-05 if present)")
    source.add_argument("--no-tag-data", action="store_true", help="use made-up tag names")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="danbooru-pairs only: folder with cooccurrence.parquet (read with --tag-data) or a "
                             "derivative of it (default: ../shared/data/danbooru-cooccurrence if present, else "
                             "the copy shipped in the package)")
    knobs = parser.add_argument_group("knobs (override the setting)")
    for flag, field, kind, text in _KNOB_FLAGS:
        knobs.add_argument(flag, dest=field, type=kind, default=None, help=text)


def run_generate_corpus(args: argparse.Namespace) -> int:
    """Run ``booru-embed generate-corpus``."""
    if args.list_settings:
        print(describe_settings())
        return 0
    if args.output is None:
        raise UsageError("--output is required")
    overrides = {field: getattr(args, field) for _, field, _, _ in _KNOB_FLAGS}
    universe = SETTINGS[args.setting].universe
    if universe != "sample":
        fixed = _SAMPLED_ONLY if universe == "danbooru" else _NOT_PAIRS
        unused = [flag for flag, field, _, _ in _KNOB_FLAGS if field in fixed and overrides[field] is not None]
        if unused:
            raise UsageError(f"{', '.join(unused)} cannot change setting {args.setting!r}: its tags and popularity are the real ones")
    if args.pairs is not None and universe != "pairs":
        raise UsageError(f"--pairs is for the danbooru-pairs setting, not {args.setting!r}")
    spec = setting(args.setting, **overrides)
    tag_data = None if args.no_tag_data else (args.tag_data or default_tag_data())
    truth = generate_corpus(args.output, args.posts, seed=args.seed, tag_data=tag_data, spec=spec, pairs=args.pairs)
    print(f"wrote {args.posts} posts to {args.output} (setting {spec.name}, tag names: {tag_data or 'made-up'}); "
          f"ground truth: {truth}")
    return 0
