"""The knobs of the synthetic corpus and its named settings (``generate-corpus --setting NAME``).

A real tag corpus differs from another in a few ways that matter to a tag model: how many characters,
copyrights and artists there are and how skewed their popularity is; how reliably a character's traits
and an artist's style are tagged; how many characters share a post; how many tags a post has and how
many of them are noise; and how many distinct tags there are at all, which sets the vocabulary. Each is
a field of ``CorpusSpec``; ``SETTINGS`` names combinations that differ materially.

``universe="danbooru"`` takes the whole tag universe from Danbooru's ``tags.csv``: every tag with its
real category and post count. A background tag is then present in a post with probability
``post_count / danbooru_posts`` (times the post's richness, a log-normal factor of mean 1 that spreads
the lengths), so a tag's expected count in N posts is what it would be in N real posts, and the
vocabulary grows with N as on Danbooru. Characters, artists and copyrights are drawn by their real post
counts too, with the generator's structure (traits, styles, favourite copyrights, implications) on top.

``universe="pairs"`` (the ``danbooru-pairs`` setting) draws posts from Danbooru's real pair counts
(``data/danbooru_pairs.py``): the associations are the real ones, not the generator's; only the
artists' styles are made up. ``characters_per_post`` is then the number of leading characters (the
characters they really appear with come on top).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..errors import UsageError


@dataclass(frozen=True)
class CorpusSpec:
    """Sizes and probabilities of the hidden structure (defaults: the original corpus, learnable in CPU minutes).

    Attributes:
        name: the setting this spec came from (recorded in the truth file).
        universe: ``"sample"`` (``num_*`` tags per category: real names drawn by post count, or made up),
            ``"danbooru"`` (every tag of ``tags.csv`` with its real post count; needs the tag tables) or
            ``"pairs"`` (posts drawn from Danbooru's real pair counts; see ``data/danbooru_pairs.py``).
        num_copyrights / num_characters / num_artists / num_general / num_meta: distinct tags per
            category (``universe="sample"`` only).
        characters_per_post: probabilities of 0, 1, 2, ... characters in a post.
        artists_per_post: probabilities of 0, 1, 2, ... artists in a post.
        max_traits: a character has 3 to ``max_traits`` appearance traits (at most 6; fewer = sparser).
        trait_probability: chance that each of a character's traits is tagged when it appears.
        style_probability: an artist's style strength: chance that each style tag is tagged.
        style_tags: (fewest, most) style tags an artist has.
        general_median / general_sigma / max_general: background general tags a post (log-normal
            median, spread, cap); with ``universe="danbooru"`` the rates come from the real counts and
            ``general_sigma`` is the spread of a post's richness.
        noise_tags: mean number of structure-free tags a post, drawn uniformly from the general tags.
        general_zipf / subject_zipf: Zipf exponent of general-tag / character, artist and copyright
            popularity (``universe="sample"``; higher = more skewed).
        danbooru_posts: posts that the real post counts refer to (``universe="danbooru"``).
        chunk_posts: posts drawn and written at a time; 0 draws all at once (the original random
            stream, memory grows with the post count).
    """

    name: str = "default"
    universe: str = "sample"
    num_copyrights: int = 30
    num_characters: int = 300
    num_artists: int = 300
    num_general: int = 3000
    num_meta: int = 20
    characters_per_post: tuple[float, ...] = (0.25, 0.55, 0.13, 0.04, 0.02, 0.01)
    artists_per_post: tuple[float, ...] = (0.05, 0.92, 0.03)
    max_traits: int = 6
    trait_probability: float = 0.9
    style_probability: float = 0.8
    style_tags: tuple[int, int] = (2, 4)
    general_median: float = 14.0  # median number of background general tags a post
    general_sigma: float = 0.75  # log-normal spread: p99.9 of the post length lands past 150
    max_general: int = 600
    noise_tags: float = 0.0
    general_zipf: float = 0.9
    subject_zipf: float = 0.8
    danbooru_posts: float = 9.5e6  # why: reproduces the expected per-category vocabulary of real 1M-post samples
    chunk_posts: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.universe in ("sample", "danbooru", "pairs"),
             f"universe must be 'sample', 'danbooru' or 'pairs', got {self.universe!r}"),
            (min(self.num_copyrights, self.num_artists, self.num_general, self.num_meta) >= 1,
             "every num_* must be at least 1"),
            (self.num_characters >= self.num_copyrights, "num_characters must be >= num_copyrights"),
            (len(self.characters_per_post) >= 2 and _is_distribution(self.characters_per_post),
             "characters_per_post must be >= 2 probabilities summing to 1"),
            (len(self.artists_per_post) >= 2 and _is_distribution(self.artists_per_post),
             "artists_per_post must be >= 2 probabilities summing to 1"),
            (3 <= self.max_traits <= 6, "max_traits must be between 3 and 6"),
            (0.0 <= self.trait_probability <= 1.0, "trait_probability must be in [0, 1]"),
            (0.0 <= self.style_probability <= 1.0, "style_probability must be in [0, 1]"),
            (1 <= self.style_tags[0] <= self.style_tags[1] <= 20, "style_tags must be (fewest, most) with 1 <= fewest <= most <= 20"),
            (self.general_median > 0 and self.general_sigma >= 0 and self.max_general >= 1, "bad general length knobs"),
            (self.noise_tags >= 0, "noise_tags must be >= 0"),
            (self.general_zipf >= 0 and self.subject_zipf >= 0, "Zipf exponents must be >= 0"),
            (self.danbooru_posts >= 1, "danbooru_posts must be >= 1"),
            (self.chunk_posts >= 0, "chunk_posts must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(f"corpus setting {self.name!r}: {message}")


def _is_distribution(values: tuple[float, ...]) -> bool:
    return all(v >= 0 for v in values) and abs(sum(values) - 1.0) < 1e-6


SETTINGS: dict[str, CorpusSpec] = {
    "default": CorpusSpec(),
    # traits and styles tagged half the time, few traits, noise: structure is harder to see
    "sparse-traits": CorpusSpec(name="sparse-traits", max_traits=3, trait_probability=0.5, style_probability=0.4,
                                noise_tags=4.0),
    # a big cast in group pictures, flatter popularity and many distinct tags: a 20k+ vocabulary at 50k posts
    "many-characters": CorpusSpec(name="many-characters", num_copyrights=600, num_characters=8000,
                                  num_artists=9000, num_general=16000,
                                  characters_per_post=(0.15, 0.40, 0.20, 0.10, 0.06, 0.04, 0.02, 0.015, 0.015),
                                  general_zipf=0.7, subject_zipf=0.5, noise_tags=2.0, chunk_posts=50_000),
    # every real tag by its real post count: the vocabulary grows with the posts as on Danbooru
    "danbooru-scale": CorpusSpec(name="danbooru-scale", universe="danbooru",
                                 characters_per_post=(0.28, 0.45, 0.14, 0.06, 0.03, 0.02, 0.01, 0.01),
                                 artists_per_post=(0.25, 0.73, 0.02), general_sigma=0.45, chunk_posts=20_000),
    # Danbooru's real associations: subjects by real popularity bring their real partners at real rates
    "danbooru-pairs": CorpusSpec(name="danbooru-pairs", universe="pairs", characters_per_post=(0.3, 0.7),
                                 artists_per_post=(0.25, 0.73, 0.02), general_sigma=0.45, chunk_posts=20_000),
}


def setting(name: str, **overrides: object) -> CorpusSpec:
    """The named setting with ``overrides`` (field=value; None values are ignored) applied."""
    if name not in SETTINGS:
        raise UsageError(f"unknown corpus setting {name!r} (known: {', '.join(SETTINGS)})")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in fields(CorpusSpec)}
    if unknown:
        raise UsageError(f"unknown corpus knob(s): {', '.join(sorted(unknown))}")
    return replace(SETTINGS[name], **changes)


def describe_settings() -> str:
    """One line per named setting with the knobs it changes from ``default``."""
    base = SETTINGS["default"]
    lines = []
    for name, spec in SETTINGS.items():
        changed = [f"{f.name}={getattr(spec, f.name)}" for f in fields(CorpusSpec)
                   if f.name != "name" and getattr(spec, f.name) != getattr(base, f.name)]
        lines.append(f"{name}: {', '.join(changed) or 'the original corpus'}")
    return "\n".join(lines)
