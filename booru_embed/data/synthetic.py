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
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..modeling.categories_booru_embed import RATINGS

CSV_HEADER = (
    "id,rating,score,tag_string_meta,tag_string_general,tag_string_artist,"
    "tag_string_copyright,tag_string_character"
)

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


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes and probabilities of the hidden structure (defaults: learnable in CPU minutes)."""

    num_copyrights: int = 30
    num_characters: int = 300
    num_artists: int = 300
    num_general: int = 3000
    num_meta: int = 20
    trait_probability: float = 0.9
    style_probability: float = 0.8
    general_median: float = 14.0  # median number of background general tags a post
    general_sigma: float = 0.75  # log-normal spread: p99.9 of the post length lands past 150
    max_general: int = 600


def default_tag_data() -> Path | None:
    """The real tag tables in ``../shared/data/danbooru-2025-05`` next to the repository, or None."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "danbooru-2025-05"
    return path if (path / "tags.csv").is_file() else None


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
        if tag_data is None:
            self._made_up(spec, rng)
        else:
            self._real(spec, rng, tag_data)

    def _made_up(self, spec: CorpusSpec, rng: np.random.Generator) -> None:
        self.general = [f"general_{i:04d}" for i in range(spec.num_general)]
        self.meta = list(MADE_UP_META[: spec.num_meta])
        self.artists = [f"artist_{i:03d}" for i in range(spec.num_artists)]
        self.copyrights = [f"series_{i:02d}" for i in range(spec.num_copyrights)]
        shares = _zipf_weights(spec.num_copyrights, 0.8)
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
                                        p=_zipf_weights(spec.num_copyrights, 0.8)),
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
        universe = set(self.general) | set(TRAIT_TAGS) | set(self.meta) | set(self.artists) | set(self.copyrights)
        universe |= set(self.characters) | {"original"}
        pairs = []
        with open(tag_data / "implications.tsv", encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row["antecedent"] in universe and row["consequent"] in universe:
                    pairs.append((row["antecedent"], row["consequent"]))
        self.implications = sorted(set(pairs))

    def closures(self) -> dict[str, tuple[str, ...]]:
        """Every tag with implications -> all tags it implies, directly or through a chain."""
        direct: dict[str, list[str]] = {}
        for antecedent, consequent in self.implications:
            direct.setdefault(antecedent, []).append(consequent)
        closed: dict[str, tuple[str, ...]] = {}
        for start in direct:
            seen: list[str] = []
            stack = list(direct[start])
            while stack:
                tag = stack.pop()
                if tag != start and tag not in seen:
                    seen.append(tag)
                    stack.extend(direct.get(tag, ()))
            closed[start] = tuple(seen)
        return closed


class _World:
    """The hidden structure: who has which traits, styles and preferences."""

    def __init__(self, spec: CorpusSpec, rng: np.random.Generator, universe: _Universe):
        self.universe = universe
        self.char_popularity = _zipf_weights(spec.num_characters, 0.8)[rng.permutation(spec.num_characters)]
        self.artist_popularity = _zipf_weights(spec.num_artists, 0.8)
        self.copyright_popularity = _zipf_weights(len(universe.copyrights), 0.8)
        self.general_popularity = _zipf_weights(len(universe.general), 0.9)
        self.meta_probability = 0.7 * (1.0 / np.arange(1, len(universe.meta) + 1)) ** 1.2
        self.traits = {c: self._traits(rng) for c in universe.characters}
        mid = universe.general[30: min(len(universe.general), 1000)]
        self.styles = {a: [mid[i] for i in rng.choice(len(mid), size=int(rng.integers(2, 5)), replace=False)]
                       for a in universe.artists}
        self.favourites = {a: [universe.copyrights[i] for i in rng.choice(len(universe.copyrights),
                                                                          size=int(rng.integers(1, 3)),
                                                                          replace=False,
                                                                          p=self.copyright_popularity)]
                           for a in universe.artists}
        self.artist_score = rng.normal(2.3, 0.6, size=len(universe.artists))
        rating_pool = universe.general[100: min(len(universe.general), 700)]
        chosen = rng.choice(len(rating_pool), size=min(60, len(rating_pool)), replace=False)
        half = len(chosen) // 2
        self.rating_tags = {"q": [rating_pool[i] for i in chosen[:half]], "e": [rating_pool[i] for i in chosen[half:]]}
        self.characters_of = {c: [] for c in universe.copyrights}
        for character, copyright in universe.character_copyright.items():
            self.characters_of[copyright].append(character)

    @staticmethod
    def _traits(rng: np.random.Generator) -> list[str]:
        traits = [str(rng.choice(HAIR_COLOURS)), str(rng.choice(EYE_COLOURS))]
        if rng.random() < 0.8:
            traits.append(str(rng.choice(HAIR_STYLES)))
        if rng.random() < 0.35:
            traits.append(str(rng.choice(EARS)))
        extra = int(rng.integers(0 if len(traits) > 2 else 1, 7 - len(traits)))
        traits += [str(t) for t in rng.choice(ACCESSORIES, size=min(extra, 2), replace=False)]
        return traits


def _quote(field: str) -> str:
    """A CSV field as BigQuery writes it: empty as ``""``, quoted when it has a quote or comma."""
    if not field:
        return '""'
    if '"' in field or "," in field or "\n" in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def _write_posts(handle, spec: CorpusSpec, rng: np.random.Generator, world: _World, num_posts: int) -> None:
    universe = world.universe
    closures = universe.closures()
    category_of = {t: "general" for t in universe.general + list(TRAIT_TAGS)}
    category_of.update({t: "meta" for t in universe.meta})
    category_of.update({t: "artist" for t in universe.artists})
    category_of.update({t: "copyright" for t in universe.copyrights + ["original"]})
    category_of.update({t: "character" for t in universe.characters})
    general = np.array(universe.general, dtype=object)
    characters, artists = universe.characters, universe.artists

    ids = 1000 + np.cumsum(rng.integers(1, 20, size=num_posts))
    lengths = np.clip(np.rint(rng.lognormal(np.log(spec.general_median), spec.general_sigma, num_posts)),
                      1, spec.max_general).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    background = rng.choice(len(general), size=int(starts[-1]), p=world.general_popularity)
    num_chars = rng.choice(6, size=num_posts, p=[0.25, 0.55, 0.13, 0.04, 0.02, 0.01])
    num_artists = rng.choice(3, size=num_posts, p=[0.05, 0.92, 0.03])
    first_chars = rng.choice(len(characters), size=(num_posts, 5), p=world.char_popularity)
    post_artists = rng.choice(len(artists), size=(num_posts, 2), p=world.artist_popularity)
    ratings = rng.choice(4, size=num_posts, p=[0.42, 0.33, 0.12, 0.13])
    meta_draws = rng.random((num_posts, len(universe.meta))) < world.meta_probability
    noise = rng.normal(0.0, 1.1, size=num_posts)
    uniform = rng.random((num_posts, 8))
    # one pool of uniform draws for the per-tag coin flips (traits, styles), consumed in order
    coins = rng.random(num_posts * 16 + 64)
    coin_at = 0

    first_artist = post_artists[:, 0]
    levels = np.where(num_artists > 0, world.artist_score[first_artist], 1.5)
    with np.errstate(over="ignore"):
        scores = np.where(uniform[:, 6] > 0.02, np.expm1(levels + noise).astype(np.int64),
                          -(uniform[:, 6] * 250).astype(np.int64))
    style_p, trait_p = spec.style_probability, spec.trait_probability
    for chunk in range(0, num_posts, 50_000):  # Python lists are faster to index than numpy, per post
        part = slice(chunk, min(num_posts, chunk + 50_000))
        rows = zip(ids[part].tolist(), ratings[part].tolist(), scores[part].tolist(), num_chars[part].tolist(),
                   num_artists[part].tolist(), post_artists[part].tolist(), first_chars[part].tolist(),
                   uniform[part].tolist(), meta_draws[part].tolist(), starts[part].tolist(), starts[1:][part].tolist())
        lines = []
        for post_id, rating_index, score, num_char, num_artist, artist_ids, first_char, u, meta_on, begin, end in rows:
            tags = {"meta": [m for m, on in zip(universe.meta, meta_on) if on],
                    "general": general[background[begin:end]].tolist(),
                    "artist": [], "copyright": [], "character": []}
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
                if slot == 0 and post_artist_ids and u[0] < 0.5:
                    pool = world.characters_of[world.favourites[artists[post_artist_ids[0]]][0]]
                    chosen.append(pool[int(u[1] * len(pool))])
                elif slot > 0 and u[2 + slot] < 0.7:
                    pool = world.characters_of[universe.character_copyright[chosen[0]]]
                    chosen.append(pool[int(u[1 + slot] * len(pool))])
                else:
                    chosen.append(characters[first_char[slot]])
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
                    tags["copyright"].append(universe.copyrights[int(u[1] * len(universe.copyrights))])
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
            lines.append(f"{post_id},{rating},{score}," + ",".join(_quote(f) for f in fields) + "\n")
        handle.writelines(lines)


def generate_corpus(output_csv: Path, num_posts: int, seed: int = 0, tag_data: Path | None = None,
                    spec: CorpusSpec | None = None) -> Path:
    """Write ``num_posts`` synthetic posts to ``output_csv`` (BigQuery CSV layout).

    Returns the path of the ground truth written beside it (``<stem>.truth.json``): seed,
    copyrights with their characters, characters with copyright and traits, artists with style
    tags, rating-linked tags, the implications among the drawn tags, and the tag universe by
    category. ``tag_data`` is a folder with Danbooru's ``tags.csv`` and ``implications.tsv`` (real
    names) or None (made-up names); pass ``default_tag_data()`` to use the shared tables when present.
    """
    if num_posts < 1:
        raise UsageError(f"--posts must be at least 1, got {num_posts}")
    if tag_data is not None and not (Path(tag_data) / "tags.csv").is_file():
        raise UsageError(f"no tags.csv in tag data folder {tag_data}")
    spec = spec or CorpusSpec()
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
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
    truth_path.write_text(json.dumps(truth, indent=1, ensure_ascii=False), encoding="utf-8")
    return truth_path


def add_generate_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed generate-corpus``."""
    parser.add_argument("--output", type=Path, required=True, help="CSV file to write (truth JSON goes beside it)")
    parser.add_argument("--posts", type=int, default=20_000, help="number of posts (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tag-data", type=Path, default=None,
                        help="folder with Danbooru tags.csv and implications.tsv (default: ../shared/data/danbooru-2025-05 if present)")
    source.add_argument("--no-tag-data", action="store_true", help="use made-up tag names")


def run_generate_corpus(args: argparse.Namespace) -> int:
    """Run ``booru-embed generate-corpus``."""
    tag_data = None if args.no_tag_data else (args.tag_data or default_tag_data())
    truth = generate_corpus(args.output, args.posts, seed=args.seed, tag_data=tag_data)
    print(f"wrote {args.posts} posts to {args.output} (tag names: {tag_data or 'made-up'}); ground truth: {truth}")
    return 0
