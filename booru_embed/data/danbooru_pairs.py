"""The ``danbooru-pairs`` corpus: posts drawn from Danbooru's real tag associations (``pair_table``).

A post is built in the order a tagger thinks of it:

1. **Subjects.** ``characters_per_post`` gives the number of leading characters (0 or more), each drawn by
   its real post count (a costume such as ``usada_pekora_(1st_costume)`` only comes with its
   character, whose count includes it, and brings no partners of its own). A character brings the characters it really appears with, each at the table's
   conditional rate ``count / post_count`` (so some posts have two or three characters that go
   together), and every character brings its copyright. A post without a character is tagged
   ``original`` (at the rate that makes ``original`` as common as on Danbooru), else half the time a
   copyright drawn by post count.
2. **Their partners.** Each character and copyright brings each of its general and copyright partners
   independently at its conditional rate: ``usada_pekora`` brings ``rabbit_ears`` on 7,867 / 9,612 of
   its posts.
3. **Background.** Every general tag is also drawn on its own, at the rate that makes its expected
   share of posts ``post_count / danbooru_posts`` once the subjects' and the pairs' contributions are
   counted (solved in ``_background_rates``), times the post's richness (log-normal, mean 1) so that
   lengths spread as on Danbooru, times ``BACKGROUND_SCALE`` (see there).
4. **General pairs.** Every general tag of step 3 brings its general partners at their conditional
   rates (one step: what they bring brings nothing more; the subjects' partners of step 2 bring none,
   so a character's partners come at its own rates, not pushed up by each other).
5. **Artists, meta, rating.** Artists by post count (``artists_per_post``) and meta tags at
   ``post_count / danbooru_posts``, from ``tags.csv``. The pair table has no artist, so an artist's
   style (2-4 general tags at ``style_probability``) is made up, as in the other settings. Then the
   real implications among the tags, applied transitively (the background rates of step 3 leave room
   for them: a tag's post count includes the posts its antecedents imply it on). Last the rating, from
   the content: a post with an explicit tag (``RATING_TAGS``) is mostly ``e``, one with a
   questionable tag often ``q``, the others mostly ``g`` or ``s``.

The truth file names, for each character, its copyright (its ``_(qualifier)``, else the copyright it
implies, else its most frequent copyright partner when that is on ``COPYRIGHT_RATE`` of its posts,
else the copyright its partners vote for), its general partners with their rates (``partners``) and
those on at least ``TRAIT_RATE`` of its posts (``traits``, what ``evaluate --truth`` scores).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import asdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..modeling.categories_booru_embed import RATINGS
from .pair_table import CATEGORY_NUMBERS, PairTable
from .corpus_rows import CSV_HEADER, implication_closures, independent_tags, post_runs, quote_field
from .synthetic_settings import CorpusSpec

TRAIT_RATE = 0.15  # a general partner on at least 15% of a character's posts is one of its traits
COPYRIGHT_RATE = 0.3  # a copyright partner on at least 30% of a character's posts is its copyright
# why: general-general pairs under 1% are left out of step 4: they are mostly a common tag's many weak
# partners (`long_hair` has 6,330), whose share of posts the background rates already give
CASCADE_MIN_RATE = 0.01
# The rating follows the content: real tags that mark explicit and questionable posts, and the shares of
# g, s, q, e for posts with an explicit tag, with a questionable one, and with neither.
RATING_TAGS = {"e": ("pussy", "sex", "penis", "cum", "anus", "fellatio", "vaginal"),
               "q": ("nipples", "cleavage", "panties", "underwear", "ass", "swimsuit", "bikini", "nude")}
RATING_SHARES = {"e": (0.0, 0.0, 0.1, 0.9), "q": (0.05, 0.45, 0.4, 0.1), "": (0.5, 0.42, 0.05, 0.03)}
# why: drawn independently, the many tags that imply a common one (`large_breasts`, `cleavage`, ... ->
# `breasts`) come together less often than on Danbooru, so their implied tags pile up: at full rates a
# post has 39 general tags, not Danbooru's 29. Scaling the background rates by 0.65 restores 29 (measured
# on 5,000 posts), at the cost of background tags drawn 35% less often than their post counts say.
BACKGROUND_SCALE = 0.65
NO_CHARACTER_COPYRIGHT = 0.5  # a post without a character or `original` carries a copyright half the time


def _csr(source: np.ndarray, partner: np.ndarray, rate: np.ndarray, size: int) -> sp.csr_matrix:
    """(tag, partner) -> rate as a sparse matrix; rows are the partner lists."""
    return sp.csr_matrix((rate, (source, partner)), shape=(size, size))


def _bring(rng: np.random.Generator, posts: np.ndarray, sources: np.ndarray, rates: sp.csr_matrix,
           with_entry: bool = False) -> tuple[np.ndarray, ...]:
    """Each (post, source) entry brings each partner of ``source`` with its rate: the (post, partner) entries
    drawn, and with ``with_entry`` the entry (index into ``posts``) that brought each."""
    starts, ends = rates.indptr[sources], rates.indptr[sources + 1]
    lengths = ends - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    keep = rng.random(len(offsets)) < rates.data[offsets]
    drawn = (np.repeat(posts, lengths)[keep], rates.indices[offsets][keep])
    return (*drawn, np.repeat(np.arange(len(sources)), lengths)[keep]) if with_entry else drawn


class PairsWorld:
    """What every post draws from: popularity, partner rates, each character's copyright, artist styles."""

    def __init__(self, spec: CorpusSpec, rng: np.random.Generator, table: PairTable):
        self.spec, self.table = spec, table
        names, categories, counts = table.names, table.categories, table.post_counts.astype(np.float64)
        size = len(names)
        source, partner, rate = table.rates()
        cat_source, cat_partner = categories[source], categories[partner]
        general, artist = CATEGORY_NUMBERS["general"], CATEGORY_NUMBERS["artist"]
        copyright, character, meta = CATEGORY_NUMBERS["copyright"], CATEGORY_NUMBERS["character"], CATEGORY_NUMBERS["meta"]
        subject = np.isin(cat_source, (copyright, character))
        self.subject_rates = _csr(*(x[subject & np.isin(cat_partner, (general, copyright))] for x in (source, partner, rate)), size)
        self.closures = implication_closures(table.implications.tolist())
        self.subject_rates = self._net_of_implications(self.subject_rates)
        self.subject_keys = np.sort(source[subject].astype(np.int64) * size + partner[subject])
        self.cocharacter_rates = _csr(*(x[(cat_source == character) & (cat_partner == character)] for x in (source, partner, rate)), size)
        cascade = (cat_source == general) & (cat_partner == general) & (rate >= CASCADE_MIN_RATE)
        self.general_rates = _csr(*(x[cascade] for x in (source, partner, rate)), size)
        index = table.index()
        self.original = index.get("original", -1)
        self.characters = np.flatnonzero(categories == character)
        self.copyrights = np.flatnonzero((categories == copyright) & (np.arange(size) != self.original))
        self.general = np.flatnonzero(categories == general)
        self.artists = np.flatnonzero(categories == artist)
        self.meta = np.flatnonzero(categories == meta)
        # a costume (a character that implies another) only comes with its character, at its real rate:
        # the character's post count already counts the costume's posts
        character_set = set(self.characters.tolist())
        costume = np.array([not character_set.isdisjoint(self.closures.get(c, ())) for c in self.characters.tolist()])
        self.character_p = np.where(costume, 0.0, counts[self.characters]) / counts[self.characters][~costume].sum()
        self.copyright_p = counts[self.copyrights] / counts[self.copyrights].sum()
        self.artist_p = counts[self.artists] / counts[self.artists].sum()
        self.meta_probability = np.minimum(1.0, counts[self.meta] / spec.danbooru_posts)
        self.copyright_of = self._copyrights_of_characters(_csr(source, partner, rate, size), index)
        no_character = spec.characters_per_post[0]
        original_share = counts[self.original] / spec.danbooru_posts if self.original >= 0 else 0.0
        self.original_probability = min(1.0, original_share / no_character) if no_character > 0 else 0.0
        self.background = BACKGROUND_SCALE * self._background_rates(counts)
        fewest, most = spec.style_tags
        middle = self.general[np.argsort(-counts[self.general], kind="stable")][30:1000]
        sizes = rng.integers(fewest, most + 1, size=len(self.artists))
        picks = rng.integers(0, len(middle), size=(len(self.artists), 2 * most))
        self.styles = [list(dict.fromkeys(middle[row].tolist()))[:k] for row, k in zip(picks, sizes.tolist())]
        self.artist_score = rng.normal(2.3, 0.6, size=len(self.artists))
        self.rating_tags = {r: {index[t] for t in tags if t in index} for r, tags in RATING_TAGS.items()}

    def _net_of_implications(self, rates: sp.csr_matrix) -> sp.csr_matrix:
        """``rates`` with each partner's rate lowered by what the subject's partners that imply it already bring.

        ``usada_pekora`` comes with ``carrot_hair_ornament`` (0.46) and ``food-themed_hair_ornament`` (0.48),
        which it implies; drawn independently the implied tag would be on 0.46 + 0.54 * 0.48 = 0.72 of
        her posts. Drawing it at ``(r - a) / (1 - a)``, ``a`` the (summed) rate of its antecedents, keeps 0.48.
        """
        pairs = [(a, c) for a, implied in self.closures.items() for c in implied]
        size = rates.shape[0]
        implies = sp.csr_matrix((np.ones(len(pairs)), tuple(np.array(pairs, dtype=np.int64).reshape(-1, 2).T)),
                                shape=(size, size))
        rates = rates.tocsr(copy=True)
        rates.sort_indices()
        # (subject, partner) -> summed rate of the partner's antecedents, on the sparsity of ``rates``
        before = (rates @ implies).multiply(rates > 0).tocsr() + rates.multiply(0.0)
        before.sort_indices()
        covered = np.asarray(before[rates.nonzero()]).ravel()
        covered = np.minimum(covered, 0.99)
        rates.data = np.clip((rates.data - covered) / (1.0 - covered), 0.0, 1.0)
        return rates

    def _copyrights_of_characters(self, rates: sp.csr_matrix, index: dict[str, int]) -> np.ndarray:
        """Each tag's copyright row for characters (see the module docstring), -1 for none and for other tags."""
        names = self.table.names
        out = np.full(len(names), -1, dtype=np.int64)
        copyright_set = set(self.copyrights.tolist())
        direct = rates[self.characters][:, self.copyrights].tocsr()
        votes = (rates[self.characters] @ rates[:, self.copyrights]).tocsr()

        def best(matrix: sp.csr_matrix, row: int, floor: float) -> int:
            """The copyright of the row's largest entry when it is at least ``floor``, else -1."""
            low, high = matrix.indptr[row], matrix.indptr[row + 1]
            if high == low:
                return -1
            top = low + int(np.argmax(matrix.data[low:high]))
            return int(self.copyrights[matrix.indices[top]]) if matrix.data[top] >= floor else -1

        for row, c in enumerate(self.characters.tolist()):
            name = names[c]
            qualifier = name[name.rindex("_(") + 2: -1] if name.endswith(")") and "_(" in name else ""
            implied = [t for t in self.closures.get(c, ()) if t in copyright_set]
            if qualifier in index and index[qualifier] in copyright_set:
                out[c] = index[qualifier]
            elif implied:
                out[c] = implied[0]
            else:
                chosen = best(direct, row, COPYRIGHT_RATE)
                out[c] = chosen if chosen >= 0 else best(votes, row, 0.0)
        return out

    def _background_rates(self, counts: np.ndarray, rounds: int = 12) -> np.ndarray:
        """Each general tag's own rate, so that with the subjects', the pairs' and the implications'
        contributions its expected share of posts is ``post_count / danbooru_posts`` (first order).

        Drawn independently, the partners of a tag that many tags bring (``panties``: ``pantyshot``,
        ``panty_pull``, ...) would bring it far more often than on Danbooru, where they come together.
        So where the pairs' expected contributions exceed what the tag's post count leaves room for, the
        rates into that tag are scaled down to fit (``general_rates`` is rescaled here, once).
        """
        spec = self.spec
        size = len(counts)
        present = np.zeros(size)  # expected share of posts with each subject (step 1)
        leading = sum(k * p for k, p in enumerate(spec.characters_per_post))
        present[self.characters] = leading * self.character_p
        present += self.cocharacter_rates.T @ present
        owned = self.copyright_of[self.characters] >= 0
        np.add.at(present, self.copyright_of[self.characters][owned], present[self.characters][owned])
        no_character = spec.characters_per_post[0]
        if self.original >= 0:
            present[self.original] += no_character * self.original_probability
        present[self.copyrights] += no_character * (1 - self.original_probability) * NO_CHARACTER_COPYRIGHT * self.copyright_p
        from_subjects = self.subject_rates.T @ present
        target = np.zeros(size)
        target[self.general] = np.minimum(1.0, counts[self.general] / spec.danbooru_posts)
        direct = self.table.implications
        implies = sp.csr_matrix((np.ones(len(direct)), (direct[:, 0], direct[:, 1])), shape=(size, size))
        own, scale = target.copy(), np.ones(size)
        for _ in range(rounds):
            brought = self.general_rates.T @ own
            total = own + from_subjects + brought * scale
            with_implied = total.copy()
            for _ in range(6):  # implication chains are short
                with_implied = total + implies.T @ np.minimum(with_implied, 1.0)
            room = np.clip(target - from_subjects - (with_implied - total), 0.0, 1.0)
            scale = np.where(brought > room, room / np.maximum(brought, 1e-12), 1.0)
            own = np.clip(room - brought * scale, 0.0, 1.0)
        self.general_rates = (self.general_rates @ sp.diags(scale)).tocsr()
        return own[self.general]

    def draw(self, rng: np.random.Generator, n: int, first_id: int) -> list[str]:
        """The CSV lines of ``n`` posts with ids after ``first_id``."""
        spec = self.spec
        ids = first_id + np.cumsum(rng.integers(1, 20, size=n))
        slots = len(spec.characters_per_post)
        leading = rng.choice(slots, size=n, p=spec.characters_per_post)
        picks = self.characters[rng.choice(len(self.characters), size=(n, max(1, slots - 1)), p=self.character_p)]
        post_index = np.arange(n)
        taken = np.arange(picks.shape[1])[None, :] < leading[:, None]
        char_posts, chars = np.broadcast_to(post_index[:, None], picks.shape)[taken], picks[taken]
        co_posts, co_chars, co_entry = _bring(rng, char_posts, chars, self.cocharacter_rates, with_entry=True)
        co_of = chars[co_entry]
        # a costume of its leading character (`usada_pekora_(1st_costume)` implies `usada_pekora`) brings no
        # partners: the leading character's rates already count the posts with the costume
        costume = np.array([c in self.closures.get(s, ()) for s, c in zip(co_chars.tolist(), co_of.tolist())], dtype=bool)
        bringing = np.concatenate([np.ones(len(chars), dtype=bool), ~costume])
        leaders = np.concatenate([chars, co_of])
        char_posts, chars = np.concatenate([char_posts, co_posts]), np.concatenate([chars, co_chars])
        owned = self.copyright_of[chars] >= 0
        u = rng.random((n, 2))
        alone = leading == 0
        original = alone & (u[:, 0] < self.original_probability) if self.original >= 0 else np.zeros(n, dtype=bool)
        drawn = alone & ~original & (u[:, 1] < NO_CHARACTER_COPYRIGHT)
        drawn_copyrights = self.copyrights[rng.choice(len(self.copyrights), size=int(drawn.sum()), p=self.copyright_p)]
        subject_posts = np.concatenate([char_posts, char_posts[owned], np.flatnonzero(original), np.flatnonzero(drawn)])
        subjects = np.concatenate([chars, self.copyright_of[chars[owned]], np.full(int(original.sum()), self.original),
                                   drawn_copyrights]).astype(np.int64)
        free = len(subjects) - len(chars) - int(owned.sum())
        bringing = np.concatenate([bringing, bringing[: len(chars)][owned], np.ones(free, dtype=bool)])
        leaders = np.concatenate([leaders, leaders[owned], np.full(free, -1)])
        partner_posts, partners, entry = _bring(rng, subject_posts[bringing], subjects[bringing], self.subject_rates,
                                                with_entry=True)
        # a co-character or a copyright brings only what its leading character does not: the leading
        # character's rates already count the posts with them (`don-chan_(usada_pekora)`'s carrot)
        leader, source = leaders[bringing][entry], subjects[bringing][entry]
        derived = (leader >= 0) & (leader != source)
        keys = np.where(derived, leader, 0) * len(self.table.names) + partners
        keep = ~(derived & np.isin(keys, self.subject_keys, assume_unique=False))
        partner_posts, partners = partner_posts[keep], partners[keep]
        richness = rng.lognormal(-spec.general_sigma ** 2 / 2, spec.general_sigma, n)  # mean 1
        starts, columns = independent_tags(rng, self.background, richness)
        own_posts = np.repeat(post_index, np.diff(starts))
        own = self.general[columns]
        pair_posts, pair_tags = _bring(rng, own_posts, own, self.general_rates)
        general_posts, general_tags = np.concatenate([own_posts, partner_posts]), np.concatenate([own, partners])
        num_artists = rng.choice(len(spec.artists_per_post), size=n, p=spec.artists_per_post)
        artist_rows = rng.choice(len(self.artists), size=(n, max(1, len(spec.artists_per_post) - 1)), p=self.artist_p)
        meta_starts, meta_columns = independent_tags(rng, self.meta_probability, np.ones(n))
        # per post: the rating draw, the score draw, then each artist slot's style coin flips
        noise, coins = rng.normal(0.0, 1.1, size=n), rng.random((n, 8 + artist_rows.shape[1] * spec.style_tags[1]))
        posts = np.concatenate([subject_posts, general_posts, pair_posts, np.repeat(post_index, np.diff(meta_starts))])
        tags = np.concatenate([subjects, general_tags, pair_tags, self.meta[meta_columns]])
        order_starts, grouped = post_runs(posts, tags, n)
        return self._lines(ids, grouped, order_starts, num_artists, artist_rows, noise, coins)

    def _lines(self, ids: np.ndarray, grouped: np.ndarray, starts: np.ndarray, num_artists: np.ndarray,
               artist_rows: np.ndarray, noise: np.ndarray, coins: np.ndarray) -> list[str]:
        """Artists, styles and implications on top of each post's drawn tags, then the rating; the CSV lines."""
        names, categories = self.table.names, self.table.categories.tolist()
        closures, style_p, most = self.closures, self.spec.style_probability, self.spec.style_tags[1]
        field_of = {CATEGORY_NUMBERS[c]: i for i, c in enumerate(("meta", "general", "artist", "copyright", "character"))}
        cumulative = {kind: np.cumsum(shares).tolist() for kind, shares in RATING_SHARES.items()}
        lines = []
        for i, post_id in enumerate(ids.tolist()):
            tags = set(grouped[starts[i]: starts[i + 1]].tolist())
            row_coins = coins[i].tolist()
            for slot, a in enumerate(artist_rows[i, : num_artists[i]].tolist()):
                tags.add(int(self.artists[a]))
                flips = row_coins[8 + slot * most:]
                tags.update(t for t, f in zip(self.styles[a], flips) if f < style_p)
            for tag in list(tags):
                tags.update(closures.get(tag, ()))
            kind = next((k for k in ("e", "q") if not tags.isdisjoint(self.rating_tags[k])), "")
            rating = RATINGS[min(bisect_right(cumulative[kind], row_coins[0]), 3)]
            fields = [[] for _ in range(5)]
            for tag in tags:
                fields[field_of[categories[tag]]].append(names[tag])
            level = self.artist_score[artist_rows[i, 0]] if num_artists[i] else 1.5
            score = int(np.expm1(min(level + noise[i], 12.0))) if row_coins[6] > 0.02 else -int(row_coins[6] * 250)
            lines.append(f"{post_id},{rating},{score}," + ",".join(quote_field(" ".join(sorted(f))) for f in fields) + "\n")
        return lines

    def truth(self, seed: int, num_posts: int) -> dict:
        """The ground truth of a corpus drawn from this world (see the module docstring)."""
        names, categories = self.table.names, self.table.categories
        source, partner, rate = self.table.rates()
        general = categories[partner] == CATEGORY_NUMBERS["general"]
        partners: dict[int, list[tuple[float, str]]] = {}
        for s, p, r in zip(source[general].tolist(), partner[general].tolist(), rate[general].tolist()):
            if categories[s] == CATEGORY_NUMBERS["character"]:
                partners.setdefault(s, []).append((r, names[p]))
        characters = {}
        members: dict[str, list[str]] = {names[c]: [] for c in self.copyrights.tolist()}
        for c in self.characters.tolist():
            ranked = sorted(partners.get(c, []), key=lambda item: (-item[0], item[1]))
            traits = [(r, t) for r, t in ranked if r >= TRAIT_RATE]
            owner = names[self.copyright_of[c]] if self.copyright_of[c] >= 0 else None
            if owner in members:
                members[owner].append(names[c])
            characters[names[c]] = {
                "copyright": owner, "traits": [t for _, t in traits],
                "trait_probability": round(float(np.mean([r for r, _ in traits])), 4) if traits else 0.0,
                "partners": {t: round(r, 4) for r, t in ranked}, "posts": int(self.table.post_counts[c]),
            }
        return {
            "seed": seed, "num_posts": num_posts, "source": self.table.source, "setting": self.spec.name,
            "spec": asdict(self.spec),
            "copyrights": {c: {"characters": m} for c, m in members.items()},
            "characters": characters,
            "artists": {names[a]: {"style": [names[t] for t in style], "style_probability": self.spec.style_probability,
                                   "style_made_up": True}
                        for a, style in zip(self.artists.tolist(), self.styles)},
            "rating_tags": {r: sorted(names[t] for t in tags) for r, tags in self.rating_tags.items()},
            "implications": [[names[a], names[c]] for a, c in self.table.implications.tolist()],
            "tags": {category: [names[t] for t in np.flatnonzero(categories == number).tolist()]
                     for category, number in CATEGORY_NUMBERS.items()},
        }


def generate_pairs_corpus(output_csv: Path, num_posts: int, seed: int, spec: CorpusSpec, table: PairTable) -> Path:
    """Write ``num_posts`` posts drawn from ``table`` to ``output_csv``; return the truth file's path.

    Same seed, same table, same corpus: every draw comes from one generator seeded with ``seed``.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    world = PairsWorld(spec, rng, table)
    chunk = spec.chunk_posts or num_posts
    last_id = 1000
    with open(output_csv, "w", encoding="utf-8", newline="") as handle, \
            tqdm(total=num_posts, unit="post", desc="generate", disable=num_posts < 200_000) as progress:
        handle.write(CSV_HEADER + "\n")
        for begin in range(0, num_posts, chunk):
            size = min(chunk, num_posts - begin)
            lines = world.draw(rng, size, last_id)
            last_id = int(lines[-1].split(",", 1)[0])
            handle.writelines(lines)
            progress.update(size)
    truth_path = output_csv.with_name(output_csv.stem + ".truth.json")
    truth_path.write_text(json.dumps(world.truth(seed, num_posts), ensure_ascii=False), encoding="utf-8")
    return truth_path


__all__ = ["PairsWorld", "generate_pairs_corpus"]
