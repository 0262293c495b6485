"""The ``Evaluator``: every metric of a model and of the baselines on the same seeded cases of a test split.

Memory is bounded by settings, not by the split: the baseline counts a seeded sample of
``baseline_posts`` training posts straight from the encoded Arrow columns (``booru_embed/cooccurrence.py``
builds the sparse counts; no Python object per training post), cases are scored ``CASE_BATCH`` at a time
with only each case's top ``TOP_K`` candidates kept, and read-back logits are held for one batch of
posts at a time. ``sample_rows`` / ``encode_sample`` draw and encode the seeded samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..cooccurrence import in_row_blocks, incidence_matrix
from ..data.bulk_encoding import encode_dataset
from ..modeling.categories_booru_embed import CATEGORY_IDS, TAG_CATEGORIES
from ..ranking import distinctive_scores, masked_log_softmax, with_counts
from ..sequences import Post, build_sequence, flat_posts
from ..sparse_vectors import subject_lift_weights
from .baselines import CooccurrenceBaseline
from .hybrid_retrieval import lexical_and_hybrid_retrieval
from .metrics import TOP_K, RankingAccumulator, peak_memory_mb, recall_at_k, retrieval_recall_at_k, top_k
from .readback import READBACK_WIDTHS, LinearCode, ReadbackReport
from .runner import ModelRunner

CASE_BATCH = 256  # cases scored at once: (cases, vocab) float32 score arrays stay near 150 MB at 150k tags
ENCODE_ROWS = 100_000  # posts encoded at once when sampling a split (their tag strings are copied)
TAGVEC_DIMS = (64,)  # widths of the tag-vector retrieval baseline, besides the model's hidden size
POPULAR_TAGS = 2000  # "popular" = the 2000 most frequent tags of the training split
HIDE_FRACTION = 0.25  # share of a test post's tags hidden in the masked-tag cases
SEED = 1234



SAMPLE_STREAMS = {"test": (), "train": (3,)}  # seed streams of the two draws (the test one predates the other)


def sample_rows(total: int, size: int | None, split: str, seed: int = SEED) -> np.ndarray | None:
    """Sorted indices of the seeded sample of ``size`` of ``total`` rows of ``split`` ("train" for the
    baseline, "test" for the cases); None when all are kept (``size`` None, 0, or at least ``total``)."""
    if not size or size >= total:
        return None
    return np.sort(np.random.default_rng([seed, *SAMPLE_STREAMS[split]]).permutation(total)[:size])


def encode_sample(tokenizer: Any, split: Any, size: int | None, name: str, seed: int = SEED) -> Any:
    """``encode_dataset(tokenizer, ...)`` of only the rows of ``split`` that ``sample_rows`` draws (the
    ``Evaluator`` draws the same ones, so encoding the sample first changes no metric).

    The rows are taken from each record batch of the memory-mapped table in turn (a take over the
    whole chunked column would first copy all of it) and encoded ``ENCODE_ROWS`` at a time, so the tag
    strings of one chunk are in memory at once, never those of the split or of the whole sample.
    """
    import datasets
    import pyarrow as pa

    rows = sample_rows(len(split), size, name, seed)
    if rows is None:
        return encode_dataset(tokenizer, split)
    parts, pieces, offset = [], [], 0
    for batch in split.with_format("arrow")[:].to_batches():
        low, high = np.searchsorted(rows, [offset, offset + batch.num_rows])
        if high > low:
            pieces.append(batch.take(pa.array(rows[low:high] - offset)))
        offset += batch.num_rows
        if sum(p.num_rows for p in pieces) >= ENCODE_ROWS or (offset == len(split) and pieces):
            parts.append(encode_dataset(tokenizer, datasets.Dataset(pa.Table.from_batches(pieces))))
            pieces = []
    return datasets.concatenate_datasets(parts)


class Evaluator:
    """All metrics of a model on a test split, with the baseline built once from the training split.

    ``train_posts``/``test_posts`` are lists of ``sequences.Post`` or encoded splits (an Arrow table or
    a ``datasets.Dataset`` with ``input_ids`` and ``category_ids``, as ``data.bulk_encoding.encode_dataset``
    writes them); ``info`` a ``sequences.TokenInfo``; ``tag_to_id`` maps a tag name to its token id or
    None (implications, ground-truth names). ``max_posts`` test posts and ``baseline_posts`` training
    posts are drawn with the seed (all when there are fewer). The training posts are only counted, from
    the flat Arrow columns into sparse matrices: the memory is set by ``baseline_posts``, never by the
    size of the split. ``train_total`` is the size of the split they were drawn from when the caller
    drew them first (recorded in the metrics). ``validation_posts`` (the model's held-out slice of the
    training split, ``data.validation_slice``) are where the hybrid search's settings are chosen; without
    them, seeded posts of the baseline's sample and a fixed fusion weight (``hybrid_retrieval``).
    ``held_out_ids`` are those posts' ids: the sparse vector's subject lift is counted on the baseline's
    posts without them (an encoded split has the ``id`` column; a list of ``Post`` has no ids, and all count).
    """

    def __init__(self, info: Any, train_posts: Sequence[Any] | Any, test_posts: Sequence[Any] | Any,
                 tag_to_id: Callable[[str], int | None], max_posts: int | None = None, seed: int = SEED,
                 baseline_posts: int | None = None, train_total: int | None = None,
                 validation_posts: Sequence[Any] | Any | None = None, held_out_ids: np.ndarray | None = None) -> None:
        self.info = info
        self.candidates = info.tag_candidates()
        self.tag_to_id = tag_to_id
        self.seed = seed
        self.test = _as_posts(test_posts, sample_rows(len(test_posts), max_posts, "test", seed))
        rating_class = {t: i for i, t in enumerate(info.rating_token_ids)}
        score_class = {t: i for i, t in enumerate(info.score_token_ids)}
        self.rating_class, self.score_class = rating_class, score_class
        started = time.perf_counter()
        train_rows = sample_rows(len(train_posts), baseline_posts, "train", seed)
        ids, categories, lengths = _flat(train_posts, train_rows)
        starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
        self.baseline = CooccurrenceBaseline(
            incidence_matrix(ids, lengths, info.vocab_size, counted=self.candidates[ids]), info.vocab_size,
            _post_classes(ids, categories, starts, CATEGORY_IDS["rating"], rating_class, info.vocab_size),
            _post_classes(ids, categories, starts, CATEGORY_IDS["score"], score_class, info.vocab_size),
            len(info.rating_token_ids), len(info.score_token_ids),
        )
        # the held-out slice's posts (rating and score kept, like the test posts'), or None
        self.validation = _as_posts(validation_posts, None) if validation_posts is not None and len(validation_posts) else None
        self.recorded = {
            "count.baseline.posts": float(len(lengths)),
            "count.baseline.train_posts": float(train_total if train_total is not None else len(train_posts)),
            "seed.baseline": float(seed),
            "time.baseline.seconds": time.perf_counter() - started,
            "memory.baseline.peak_mb": peak_memory_mb(),
        }
        ranked = np.argsort(-np.where(self.candidates, self.baseline.counts, -1), kind="stable")
        popular = np.zeros(info.vocab_size, dtype=bool)
        popular[ranked[:POPULAR_TAGS]] = True
        cats = info.token_categories
        self.groups = {"all": self.candidates}
        self.groups.update({name: self.candidates & (cats == c) for name, c in ((n, CATEGORY_IDS[n]) for n in TAG_CATEGORIES)})
        self.groups["top2000"] = self.candidates & popular
        self.groups["rest"] = self.candidates & ~popular
        self._linear_code: LinearCode | None = None
        self._lift_excluded = _rows_with_ids(train_posts, train_rows, held_out_ids)  # baseline rows the lift skips
        self._lift_weights: np.ndarray | None = None

    def _known(self, post: Any) -> np.ndarray:
        return np.unique(post.tags[self.candidates[post.tags]])

    def _sequence(self, post: Any | None, tags: np.ndarray, rating: bool = True, mask: bool = False):
        """Model input of ``tags`` (+ the post's rating and score when ``rating``; + ``<mask>`` when ``mask``)."""
        keep = rating and post is not None
        return build_sequence(
            self.info, post.rating if keep else None, post.score if keep else None,
            tags, self.info.token_categories[tags], mask_tags=mask,
        )

    def _suggest(self, runner: ModelRunner | None, cases: list[tuple[Any, np.ndarray, set[int]]],
                 prefix: str, out: dict[str, float], with_groups: bool = True, ks: Sequence[int] = (1, 5, 10)) -> None:
        """Score (post, visible tags, hidden tags) cases by model and baseline; add ranking metrics."""
        groups = self.groups if with_groups else {"all": self.groups["all"]}
        for who in ("model", "baseline"):
            if who == "model" and runner is None:
                continue
            acc = RankingAccumulator(groups, ks)
            for start in range(0, len(cases), CASE_BATCH):
                chunk = cases[start : start + CASE_BATCH]
                visible = [c[1] for c in chunk]
                allowed = np.repeat(self.candidates[None], len(chunk), axis=0)
                for row, vis in enumerate(visible):
                    allowed[row, vis] = False
                if who == "model":
                    logits = runner.run([self._sequence(c[0], c[1], mask=True) for c in chunk], "mlm")["mlm"]
                    scores = _masked_log_softmax_in_threads(logits, allowed)
                else:
                    scores = np.where(allowed, self.baseline.suggest_scores(visible), -np.inf)
                acc.add(scores, [c[2] for c in chunk])
            out.update(acc.metrics(f"{who}.{prefix}"))

    def linear_code(self, width: int) -> LinearCode:
        """The linear code of the baseline's training posts up to ``width`` (``readback.LinearCode``), computed once."""
        if self._linear_code is None or self._linear_code.basis.shape[1] < width:
            self._linear_code = LinearCode(self.baseline.incidence, width, self.seed)
        return self._linear_code

    @property
    def lift_weights(self) -> np.ndarray:
        """(vocab,) subject lift weights of the baseline's training posts outside the held-out slice
        (``sparse_vectors.subject_lift_weights``), computed once."""
        if self._lift_weights is None:
            self._lift_weights = subject_lift_weights(self.baseline.incidence, self.info.token_categories,
                                                      exclude_rows=self._lift_excluded)
        return self._lift_weights

    def masked_cases(self) -> list[tuple[Any, np.ndarray, set[int]]]:
        """Each test post with >= 2 known tags hides a seeded random 25% of them (at least one)."""
        rng = np.random.default_rng([self.seed, 1])
        cases = []
        for post in self.test:
            known = self._known(post)
            if len(known) < 2:
                continue
            hide = rng.choice(len(known), size=max(1, round(HIDE_FRACTION * len(known))), replace=False)
            hidden = np.zeros(len(known), dtype=bool)
            hidden[hide] = True
            visible = np.concatenate([known[~hidden], post.tags[~self.candidates[post.tags]]])
            cases.append((post, visible, set(known[hidden].tolist())))
        return cases

    def retrieval_cases(self, category: int, posts_from: Sequence[Any] | None = None,
                        ) -> tuple[list[tuple[Any, np.ndarray]], list[set[int]]]:
        """The retrieval cases of ``category``: (post, its tags without that category's) and the removed tags,
        from the test posts (or ``posts_from``, e.g. the validation slice's)."""
        cats = self.info.token_categories
        posts, labels = [], []
        for post in self.test if posts_from is None else posts_from:
            known = self._known(post)
            removed = known[cats[known] == category]
            if len(removed):
                posts.append((post, post.tags[~np.isin(post.tags, removed)]))
                labels.append(set(removed.tolist()))
        return posts, labels

    def retrieval(self, runner: ModelRunner | None, out: dict[str, float], category: int, name: str,
                  tagvec_dims: Sequence[int] = TAGVEC_DIMS) -> None:
        """recall@10 of finding posts sharing the removed character (artist) tags among neighbours.

        Three sides: the model's embeddings, TF-IDF (``baseline.``), and the idf-weighted mean of the
        visible tags' co-occurrence SVD rows (``tagvec.``, the rows the co-occurrence initialisation
        starts the embeddings from): at the largest of ``tagvec_dims``, and at each as ``.dim{d}``.
        """
        posts, labels = self.retrieval_cases(category)
        if len(posts) < 2:
            return
        if runner is not None:
            vectors = runner.run([self._sequence(p, tags) for p, tags in posts], "embeddings")["embeddings"]
            out[f"model.retrieval.{name}.recall@10"], chance = retrieval_recall_at_k(vectors, labels)
            for d in runner.model.config.nested_dims:  # the Matryoshka prefixes, re-normalised
                out[f"model.retrieval.{name}.dim{d}.recall@10"] = retrieval_recall_at_k(vectors[:, :d], labels)[0]
        visible = [tags[self.candidates[tags]] for _, tags in posts]
        out[f"baseline.retrieval.{name}.recall@10"], chance = retrieval_recall_at_k(self.baseline.tfidf(visible), labels)
        rows = self.baseline.tag_vectors(max(tagvec_dims), self.seed)  # columns by decreasing singular value
        for d in sorted(tagvec_dims):
            recall, _ = retrieval_recall_at_k(self.baseline.mean_tag_vectors(visible, rows[:, :d]), labels)
            out[f"tagvec.retrieval.{name}.dim{d}.recall@10"] = recall
        out[f"tagvec.retrieval.{name}.recall@10"] = recall
        out[f"chance.retrieval.{name}.recall@10"] = chance
        out[f"count.retrieval.{name}.queries"] = float(len(posts))

    def implication_cases(self, implications: Sequence[tuple[str, str]]) -> list[tuple[Any, np.ndarray, set[int]]]:
        """One case per test post holding an (antecedent, consequent) pair: the consequent hidden."""
        pairs: dict[int, list[int]] = {}
        for antecedent, consequent in implications:
            a, c = self.tag_to_id(antecedent), self.tag_to_id(consequent)
            if a is not None and c is not None and self.candidates[a] and self.candidates[c]:
                pairs.setdefault(a, []).append(c)
        rng = np.random.default_rng([self.seed, 2])
        cases = []
        for post in self.test:
            tags = set(post.tags.tolist())
            options = sorted({c for a in tags & pairs.keys() for c in pairs[a] if c in tags})
            if options:
                c = options[int(rng.integers(len(options)))]
                cases.append((post, post.tags[post.tags != c], {c}))
        return cases

    def readback_and_classification(self, runner: ModelRunner | None, out: dict[str, float],
                                    dims: Sequence[int]) -> None:
        """From each test post without its rating and score tokens (one forward pass): its tags read back
        from the embedding per nested size, beside the linear code of each size (``readback.ReadbackReport``);
        rating and score-bucket accuracy."""
        posts = [p for p in self.test if len(self._known(p))]
        outputs: dict[str, list[np.ndarray]] = {"rating": [], "score": []}
        widths = list(dims) or list(READBACK_WIDTHS)
        report = ReadbackReport(self.groups, self.info.token_categories == CATEGORY_IDS["character"], widths,
                                self.linear_code(max(widths)), with_model=runner is not None)
        for start in range(0, len(posts), CASE_BATCH):  # (batch, vocab) read-back scores at a time
            chunk = posts[start : start + CASE_BATCH]
            known = [self._known(p) for p in chunk]
            answers = [set(k.tolist()) for k in known]
            if runner is not None:
                batch = runner.run([self._sequence(p, p.tags, rating=False) for p in chunk], "embeddings", "rating", "score")
                for d in dims:
                    report.add_model(d, runner.readback(batch["embeddings"][:, :d]), answers)
                outputs["rating"].append(batch["rating"])
                outputs["score"].append(batch["score"])
            report.add_linear(known, answers)
        out.update(report.metrics())
        for name, classes, log_prob, token in (
            ("rating", self.rating_class, self.baseline.rating_log_prob, lambda p: p.rating),
            ("score", self.score_class, self.baseline.score_log_prob, lambda p: p.score),
        ):
            known = np.array([token(p) in classes for p in posts], dtype=bool)  # posts without one are left out
            out[f"count.{name}.posts"] = float(known.sum())
            if not known.any():
                continue
            truth = np.array([classes[token(p)] for p, k in zip(posts, known) if k])
            if runner is not None:
                logits = np.concatenate(outputs[name])
                out[f"model.{name}.accuracy"] = float((logits[known].argmax(axis=1) == truth).mean())
            chosen = [p for p, k in zip(posts, known) if k]
            guess = self.baseline.classify([p.tags[self.candidates[p.tags]] for p in chosen], log_prob)
            out[f"baseline.{name}.accuracy"] = float((guess == truth).mean())

    def traits(self, runner: ModelRunner | None, truth: dict[str, Any], out: dict[str, float]) -> None:
        """Recovery of each character's hidden traits from {character, copyright} alone.

        Traits are appearance tags, so both sides rank the general tags only (otherwise the other
        characters, artists and copyrights that co-occur fill the top of the list on both sides).
        A trait is a tag that is typical of the character, not of posts in general, so both sides
        rank by the same normalisation: the baseline's cosine is n(a,b) / sqrt(n(a) n(b)), that is
        P(b | a) / sqrt(P(b)) up to a constant; the model's score is its counterpart,
        log p(b | names) - 1/2 log p(b | no tags), both from the masked-tag head. The model's plain
        log p(b | names) ranking, which favours tags common everywhere, is reported as ``traits_plain``.
        ``with_counts.traits`` ranks by the mean of the two (``ranking.with_counts``): what a tool that
        also keeps the training posts' co-counts could suggest.
        """
        cases = []
        for character, entry in truth.get("characters", {}).items():
            c = self.tag_to_id(character)
            traits = {self.tag_to_id(t) for t in entry.get("traits", [])} - {None}
            if c is None or not traits:
                continue
            copyright_id = self.tag_to_id(entry["copyright"]) if entry.get("copyright") else None
            visible = [c] + ([copyright_id] if copyright_id is not None else [])
            cases.append((None, np.array(visible, dtype=np.int64), traits))
        if not cases:
            return
        general = self.groups["general"]
        posts_of = self.baseline.counts[[int(vis[0]) for _, vis, _ in cases]]  # training posts of each character
        rarest = posts_of <= np.quantile(posts_of, 0.25)
        out["count.traits.rarest_quarter.max_posts"] = float(posts_of[rarest].max())
        allowed = np.repeat(general[None], len(cases), axis=0)
        for row, (_, vis, _) in enumerate(cases):
            allowed[row, vis] = False
        cosine = self.baseline.suggest_scores([vis for _, vis, _ in cases])
        self._rank_traits(np.where(allowed, cosine, -np.inf), cases, "baseline.traits", out, rarest)
        if runner is not None:
            sequences = [self._sequence(p, vis, rating=False, mask=True) for p, vis, _ in cases]
            sequences.append(self._sequence(None, np.zeros(0, dtype=np.int64), rating=False, mask=True))
            logits = runner.run(sequences, "mlm")["mlm"]
            plain = masked_log_softmax(logits[:-1], allowed)
            prior = masked_log_softmax(logits[-1:], general[None])
            self._rank_traits(plain, cases, "model.traits_plain", out, rarest)
            with np.errstate(invalid="ignore"):  # -inf - -inf outside the candidates, masked next
                normalised = np.where(allowed, distinctive_scores(plain, prior), -np.inf)
            self._rank_traits(normalised, cases, "model.traits", out, rarest)
            self._rank_traits(with_counts(normalised, cosine), cases, "with_counts.traits", out, rarest)
        out["count.traits.characters"] = float(len(cases))

    @staticmethod
    def _rank_traits(scores: np.ndarray, cases: list[tuple[Any, np.ndarray, set[int]]], prefix: str,
                     out: dict[str, float], rarest: np.ndarray | None = None) -> None:
        """R-precision and recall@10 of each case's traits among its best-scored tags.

        ``rarest`` (bool per case) marks the cases also reported on their own as ``.rarest_quarter``.
        """
        ranked, _ = top_k(scores, TOP_K)
        answers = [t for _, _, t in cases]
        precision = np.array([len(set(row[: len(t)].tolist()) & t) / len(t) for row, t in zip(ranked, answers)])
        out[f"{prefix}.r_precision"] = float(precision.mean())
        out[f"{prefix}.recall@10"] = recall_at_k(ranked, answers, 10)
        if rarest is not None and rarest.any():
            out[f"{prefix}.rarest_quarter.r_precision"] = float(precision[rarest].mean())
            out[f"{prefix}.rarest_quarter.recall@10"] = recall_at_k(ranked[rarest], [a for a, r in zip(answers, rarest) if r], 10)

    def run(self, model: Any | None, implications: Sequence[tuple[str, str]] = (),
            truth: dict[str, Any] | None = None) -> dict[str, float]:
        """Every metric; ``model=None`` computes the baseline side only."""
        started = time.perf_counter()
        runner = None if model is None else ModelRunner(model, self.info)
        out: dict[str, float] = dict(self.recorded)
        stage_started = [time.perf_counter()]

        def stage_done(name: str) -> None:
            out[f"time.{name}.seconds"] = time.perf_counter() - stage_started[0]
            out[f"memory.{name}.peak_mb"] = peak_memory_mb()
            stage_started[0] = time.perf_counter()

        cases = self.masked_cases()
        out["count.masked.cases"] = float(len(cases))
        out["count.masked.hidden_tags"] = float(sum(len(c[2]) for c in cases))
        self._suggest(runner, cases, "masked", out)
        stage_done("masked")
        dims = [] if model is None else [*model.config.nested_dims, model.config.embedding_dim]
        self.readback_and_classification(runner, out, dims)
        stage_done("readback")
        tagvec_dims = sorted({*TAGVEC_DIMS, *([model.config.hidden_size] if model is not None else [])})
        self.retrieval(runner, out, CATEGORY_IDS["character"], "character", tagvec_dims)
        self.retrieval(runner, out, CATEGORY_IDS["artist"], "artist", tagvec_dims)
        stage_done("retrieval")
        lexical_and_hybrid_retrieval(self, runner, out, model.config.embedding_dim if model is not None else max(TAGVEC_DIMS))
        stage_done("search_retrieval")
        if implications:
            imp_cases = self.implication_cases(implications)
            out["count.implications.cases"] = float(len(imp_cases))
            if imp_cases:
                self._suggest(runner, imp_cases, "implications", out, with_groups=False, ks=(1, 5))
            stage_done("implications")
        if truth:
            self.traits(runner, truth, out)
            stage_done("traits")
        out["count.test_posts"] = float(len(self.test))
        out["time.seconds"] = time.perf_counter() - started
        # a metric without cases (e.g. no tag outside the top 2000) is left out, never written as NaN
        return {k: out[k] for k in sorted(out) if math.isfinite(out[k])}



def _masked_log_softmax_in_threads(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``ranking.masked_log_softmax`` of blocks of rows on threads (``in_row_blocks``; numpy's ufuncs
    release the GIL): the same values, each row computed alone as before."""
    return np.concatenate(in_row_blocks(lambda low, high: masked_log_softmax(logits[low:high], allowed[low:high]),
                                        len(logits)))


def _arrow_table(encoded: Any) -> Any:
    """The ``input_ids`` and ``category_ids`` columns of an encoded split (Arrow table or ``datasets.Dataset``)."""
    import pyarrow as pa

    table = encoded if isinstance(encoded, pa.Table) else encoded.with_format("arrow")[:]
    return table.select(["input_ids", "category_ids"])


def posts_from_encoded(encoded: Any) -> list[Any]:
    """``sequences.Post`` objects of a split encoded by ``data.bulk_encoding.encode_dataset`` (for test posts: the
    training split is only ever counted, see ``Evaluator``)."""
    ids, categories, lengths = flat_posts(_arrow_table(encoded))
    if not len(lengths):
        return []
    cuts = np.cumsum(lengths)[:-1]
    return [Post.from_encoded(i, c) for i, c in zip(np.split(ids, cuts), np.split(categories, cuts))]


def _as_posts(posts: Sequence[Any] | Any, rows: np.ndarray | None) -> list[Any]:
    """``rows`` (all when None) of a list of ``Post`` or of an encoded split, as ``Post`` objects."""
    if isinstance(posts, (list, tuple)):
        return list(posts) if rows is None else [posts[i] for i in rows]
    table = _arrow_table(posts)
    return posts_from_encoded(table if rows is None else table.take(rows))


def _rows_with_ids(posts: Sequence[Any] | Any, rows: np.ndarray | None, ids: np.ndarray | None) -> np.ndarray | None:
    """Positions among ``rows`` (all when None) of an encoded split whose post id is in ``ids``; None without
    ``ids``, for a list of ``Post`` (it has no ids) or a split without the ``id`` column."""
    if ids is None or isinstance(posts, (list, tuple)):
        return None
    import pyarrow as pa

    table = posts if isinstance(posts, pa.Table) else posts.with_format("arrow")[:]
    if "id" not in table.column_names:
        return None
    post_ids = table["id"].to_numpy()
    post_ids = post_ids if rows is None else post_ids[rows]
    return np.flatnonzero(np.isin(post_ids, ids))


def _flat(posts: Sequence[Any] | Any, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ``ids``, ``categories``, ``lengths`` (``sequences.flat_posts``) of ``rows`` of a list of ``Post``
    or of an encoded split; from a split, straight from its Arrow columns."""
    if not isinstance(posts, (list, tuple)):
        table = _arrow_table(posts)
        return flat_posts(table if rows is None else table.take(rows))
    chosen = posts if rows is None else [posts[i] for i in rows]
    parts = []
    for post in chosen:
        slots = [(t, CATEGORY_IDS[c]) for t, c in ((post.rating, "rating"), (post.score, "score")) if t is not None]
        parts.append((np.array([t for t, _ in slots] + post.tags.tolist(), dtype=np.int64),
                      np.array([c for _, c in slots] + post.tag_categories.tolist(), dtype=np.int64)))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (np.concatenate([i for i, _ in parts]), np.concatenate([c for _, c in parts]),
            np.array([len(i) for i, _ in parts], dtype=np.int64))


def _post_classes(ids: np.ndarray, categories: np.ndarray, starts: np.ndarray, category: int,
                  classes: dict[int, int], vocab_size: int) -> np.ndarray:
    """(posts,) class of each flat post's first token of ``category`` (rating or score), -1 when none."""
    table = np.full(vocab_size, -1, dtype=np.int64)
    table[list(classes)] = list(classes.values())
    positions = np.flatnonzero(categories == category)
    post = np.searchsorted(starts, positions, side="right") - 1
    result = np.full(len(starts), -1, dtype=np.int64)
    result[post[::-1]] = table[ids[positions]][::-1]  # the last write wins: reversed, the first token does
    return result

