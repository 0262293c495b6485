"""Evaluation: what the model learned, side by side with a co-occurrence baseline on the same cases.

``booru-embed evaluate MODEL_DIR --dataset DATA_DIR --output METRICS_JSON [--implications FILE]
[--truth FILE] [--max-posts N] [--baseline-posts N]``. Every metric is computed for the model (``model.*``) and, where a
classical method exists, for the baseline (``baseline.*``) on exactly the same cases (same posts, same
hidden tags, drawn with a fixed seed). The keys are documented in README.md (section training).

The baseline is Danbooru's "related tags": from the training split, the cosine of two tags'
post sets, ``cos(a, b) = n(a and b) / sqrt(n(a) n(b))``; missing tags of a post are scored by the sum
of their cosines to the visible tags. Retrieval's baseline is TF-IDF cosine over the visible tags
(IDF from the training split), and a second one (``tagvec.*``) the idf-weighted mean of the visible
tags' co-occurrence SVD rows (``cooccurrence.spectral_rows``); rating / score's is naive Bayes over the
visible tags.

Memory is bounded by settings, not by the split: the baseline counts a seeded sample of
``baseline_posts`` training posts straight from the encoded Arrow columns (``booru_embed/cooccurrence.py``
builds the sparse counts; no Python object per training post), cases are scored ``CASE_BATCH`` at a time
with only each case's top ``TOP_K`` candidates kept, and read-back logits are held for one batch of
posts at a time.

Threshold metrics follow the WD tagger reports: micro F1 at the threshold where precision equals
recall (that is, when as many (post, tag) pairs are predicted as there are true ones, so F1 = the
share of true pairs among the top-scored ones); macro F1 is the mean over tags of F1 at that same
threshold. Candidates outside each case's top ``TOP_K`` are treated as not predicted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cooccurrence import cosine_matrix, incidence_matrix, spectral_rows, tag_counts
from .data.bulk_encoding import encode_dataset
from .errors import UsageError
from .modeling.categories_booru_embed import CATEGORY_IDS, TAG_CATEGORIES

TOP_K = 100  # candidates kept per case; P=R thresholds never reach deeper on tag-set data
CASE_BATCH = 256  # cases scored at once: (cases, vocab) float32 score arrays stay near 150 MB at 150k tags
BASELINE_POSTS = 1_000_000  # training posts the baseline counts by default: ~1 GB of co-counts at Danbooru's vocabulary
ENCODE_ROWS = 100_000  # posts encoded at once when sampling a split (their tag strings are copied)
TAGVEC_DIMS = (64,)  # widths of the tag-vector retrieval baseline, besides the model's hidden size
POPULAR_TAGS = 2000  # "popular" = the 2000 most frequent tags of the training split
HIDE_FRACTION = 0.25  # share of a test post's tags hidden in the masked-tag cases
SEED = 1234


# ---------------------------------------------------------------- metrics on plain arrays


def f1_at_equal_precision_recall(
    scores: np.ndarray, hits: np.ndarray, tags: np.ndarray, positives_per_tag: dict[int, int]
) -> tuple[float, float, float]:
    """(micro F1, macro F1, threshold) at the threshold where precision equals recall.

    ``scores``/``hits``/``tags`` are parallel arrays of scored (case, tag) pairs (``hits`` True when
    the tag is a true answer of its case); ``positives_per_tag`` counts the true pairs of every tag,
    scored or not. Precision equals recall when the number predicted equals the number of positives P,
    so the threshold is the P-th highest score and micro F1 = hits among the top P / P. Macro F1 is the
    mean over tags with a positive of 2 tp / (predicted + positives) at that threshold.
    """
    total = sum(positives_per_tag.values())
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")[:total]
    micro = float(hits[order].sum() / total)
    threshold = float(scores[order[-1]]) if len(order) else float("inf")
    predicted = np.bincount(tags[order], minlength=1)
    true_positive = np.bincount(tags[order][hits[order]], minlength=1)
    f1s = []
    for tag, positives in positives_per_tag.items():
        if positives:
            tp = true_positive[tag] if tag < len(true_positive) else 0
            pred = predicted[tag] if tag < len(predicted) else 0
            f1s.append(2 * tp / (pred + positives))
    return micro, float(np.mean(f1s)), threshold


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    """Mean over cases of |top-k ∩ positives| / min(k, |positives|) (1.0 = as good as possible)."""
    values = [len(set(row[:k].tolist()) & pos) / min(k, len(pos)) for row, pos in zip(ranked, positives) if pos]
    return float(np.mean(values)) if values else float("nan")


def retrieval_recall_at_k(
    vectors: np.ndarray, labels: Sequence[set[int]], k: int = 10, chunk: int = 1024
) -> tuple[float, float]:
    """(recall@k, chance) of finding posts that share a label among the k nearest by cosine.

    For each query with at least one other post sharing a label: (neighbours among its k nearest,
    itself excluded, that share a label) / min(k, posts sharing a label). Chance is the same
    quantity expected from k random neighbours. ``vectors`` is a dense array or a scipy sparse
    matrix (TF-IDF rows: a sparse product is far cheaper than a dense one over the vocabulary).
    """
    n = len(labels)
    if n < 2:
        return float("nan"), float("nan")
    if hasattr(vectors, "tocsr"):
        from scipy import sparse

        vectors = vectors.tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1))).ravel()
        unit = sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ vectors
    else:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    label_to_posts: dict[int, set[int]] = {}
    for i, ls in enumerate(labels):
        for label in ls:
            label_to_posts.setdefault(label, set()).add(i)
    # posts sharing a label, itself excluded: a count for one label, a set union for several
    relevant = np.array([len(label_to_posts[next(iter(ls))]) - 1 if len(ls) == 1
                         else len(set().union(*(label_to_posts[lab] for lab in ls)) - {i}) if ls else 0
                         for i, ls in enumerate(labels)], dtype=np.int64)
    width = max(1, max(len(ls) for ls in labels))
    padded = np.full((n, width), -1, dtype=np.int64)  # each post's labels, -1 padded
    for i, ls in enumerate(labels):
        padded[i, : len(ls)] = sorted(ls)
    k_eff = min(k, n - 1)
    found = np.zeros(n, dtype=np.int64)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        sims = unit[rows] @ unit.T  # (chunk, n)
        sims = sims.toarray() if hasattr(sims, "toarray") else sims
        sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]  # (chunk, k)
        mine = padded[rows][:, None, :, None]  # (chunk, 1, width, 1)
        theirs = padded[top][:, :, None, :]  # (chunk, k, 1, width)
        shares = ((mine == theirs) & (mine >= 0)).any(axis=(2, 3))  # (chunk, k)
        found[rows] = shares.sum(axis=1)
    queries = relevant > 0
    if not queries.any():
        return float("nan"), float("nan")
    best = np.minimum(k, relevant[queries])
    recall = found[queries] / best
    chance = k_eff * relevant[queries] / (n - 1) / best
    return float(recall.mean()), float(chance.mean())


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k highest scores of every row, best first."""
    k = min(k, scores.shape[1])
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


class RankingAccumulator:
    """Collects the scores of many cases, per tag group, for the threshold and recall@k metrics."""

    def __init__(self, groups: dict[str, np.ndarray], ks: Sequence[int] = (1, 5, 10)) -> None:
        self.groups = groups  # name -> (vocab,) bool
        self.columns = {name: np.flatnonzero(members) for name, members in groups.items()}
        self.ks = ks
        self.pairs: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {g: [] for g in groups}
        self.positives: dict[str, dict[int, int]] = {g: {} for g in groups}
        self.ranked: list[np.ndarray] = []
        self.answers: list[set[int]] = []

    def add(self, scores: np.ndarray, answers: Sequence[set[int]]) -> None:
        """Add cases: ``scores`` (cases, vocab) with -inf for non-candidates; ``answers`` the true tags."""
        answer_rows = np.repeat(np.arange(len(answers)), [len(a) for a in answers])
        answer_ids = np.fromiter((t for a in answers for t in a), dtype=np.int64, count=len(answer_rows))
        is_answer = np.zeros(scores.shape, dtype=bool)  # (cases, vocab)
        is_answer[answer_rows, answer_ids] = True
        for name, members in self.groups.items():
            columns = self.columns[name]  # ranking a group's own columns: the groups together cost ~3 x vocab
            if len(columns):
                idx, vals = _top_k(scores[:, columns], TOP_K)
                idx = columns[idx]
            else:
                idx, vals = np.zeros((len(scores), 0), dtype=np.int64), np.zeros((len(scores), 0), dtype=scores.dtype)
            finite = np.isfinite(vals)
            hits = np.take_along_axis(is_answer, idx, axis=1)
            self.pairs[name].append((vals[finite], hits[finite], idx[finite]))
            counts = self.positives[name]
            for t, n in zip(*np.unique(answer_ids[members[answer_ids]], return_counts=True)):
                counts[int(t)] = counts.get(int(t), 0) + int(n)
            if name == "all":
                self.ranked.extend(idx[:, : max(self.ks)])
                self.answers.extend(answers)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``{prefix}.micro_f1``, ``.macro_f1``, per group ``.{group}.micro_f1``, and ``.recall@k``."""
        out: dict[str, float] = {}
        for name in self.groups:
            if not self.pairs[name]:
                continue
            scores, hits, tags = (np.concatenate(parts) for parts in zip(*self.pairs[name]))
            micro, macro, _ = f1_at_equal_precision_recall(scores, hits, tags, self.positives[name])
            key = prefix if name == "all" else f"{prefix}.{name}"
            out[f"{key}.micro_f1"] = micro
            out[f"{key}.macro_f1"] = macro
        ranked = np.array(self.ranked) if self.ranked else np.zeros((0, 1), dtype=np.int64)
        for k in self.ks:
            out[f"{prefix}.recall@{k}"] = recall_at_k(ranked, self.answers, k)
        return out


# ---------------------------------------------------------------- the co-occurrence baseline


class CooccurrenceBaseline:
    """Danbooru's related tags from the training split (see the module docstring).

    ``posts`` is a sequence of tag-id arrays, or the (posts, vocab) CSR incidence matrix
    (``cooccurrence.incidence_matrix``) already built from them; ``ratings`` / ``scores`` the class of
    each post (-1: unknown). The matrix is kept for the tag vectors of the retrieval baseline.
    """

    def __init__(self, posts: Sequence[np.ndarray] | Any, vocab_size: int, ratings: np.ndarray, scores: np.ndarray,
                 num_ratings: int, num_scores: int) -> None:
        if not hasattr(posts, "tocsr"):
            lengths = np.array([len(p) for p in posts], dtype=np.int64)
            ids = np.concatenate(posts) if len(posts) else np.zeros(0, dtype=np.int64)
            posts = incidence_matrix(ids, lengths, vocab_size)
        self.incidence = posts
        self.counts = tag_counts(self.incidence)
        self.cosine = cosine_matrix(self.incidence)
        self.idf = np.log((1 + self.incidence.shape[0]) / (1 + self.counts)).astype(np.float32) + 1.0
        self.rating_log_prob = self._log_conditional(self.incidence, ratings, num_ratings)
        self.score_log_prob = self._log_conditional(self.incidence, scores, num_scores)
        self.vocab_size = vocab_size
        self._tag_vectors: dict[tuple[int, int], np.ndarray] = {}

    def tag_vectors(self, dim: int, seed: int) -> np.ndarray:
        """(vocab, dim) co-occurrence SVD rows of the tags (``cooccurrence.spectral_rows``), computed once."""
        if (dim, seed) not in self._tag_vectors:
            self._tag_vectors[dim, seed] = spectral_rows(self.incidence, dim, seed)[0]
        return self._tag_vectors[dim, seed]

    @staticmethod
    def _log_conditional(incidence: Any, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """(vocab, classes) log P(class | tag) with add-one smoothing; -1 labels are unknown."""
        from scipy import sparse

        known = labels >= 0
        onehot = sparse.csr_matrix(
            (np.ones(known.sum(), dtype=np.float32), (np.flatnonzero(known), labels[known])),
            shape=(incidence.shape[0], num_classes),
        )
        table = np.asarray((incidence.T @ onehot).todense()) + 1.0
        return np.log(table / table.sum(axis=1, keepdims=True)).astype(np.float32)

    def _incidence(self, visible: Sequence[np.ndarray], weights: np.ndarray | None = None) -> Any:
        from scipy import sparse

        rows = np.repeat(np.arange(len(visible)), [len(v) for v in visible])
        cols = np.concatenate(visible) if len(visible) else np.zeros(0, dtype=np.int64)
        data = np.ones(len(cols), dtype=np.float32) if weights is None else weights[cols]
        return sparse.csr_matrix((data, (rows, cols)), shape=(len(visible), self.vocab_size))

    def suggest_scores(self, visible: Sequence[np.ndarray]) -> np.ndarray:
        """(cases, vocab) sum of cosines to the visible tags."""
        return np.asarray((self._incidence(visible) @ self.cosine).todense(), dtype=np.float32)

    def tfidf(self, visible: Sequence[np.ndarray]) -> Any:
        """(cases, vocab) TF-IDF vectors of the visible tags, a sparse CSR matrix."""
        return self._incidence(visible, self.idf)

    def mean_tag_vectors(self, visible: Sequence[np.ndarray], vectors: np.ndarray) -> np.ndarray:
        """(cases, dim) idf-weighted mean of the rows of ``vectors`` of each case's visible tags."""
        weights = self.tfidf(visible)
        total = np.asarray(weights.sum(axis=1))
        return np.asarray(weights @ vectors) / np.maximum(total, 1e-12)

    def classify(self, visible: Sequence[np.ndarray], log_prob: np.ndarray) -> np.ndarray:
        """Naive-Bayes class of each case from its visible tags (sum of log P(class | tag))."""
        return np.asarray(self._incidence(visible) @ log_prob).argmax(axis=1)


# ---------------------------------------------------------------- the model side


class ModelRunner:
    """Runs a ``BooruEmbedForPreTraining`` over lists of sequences in packed batches (no grad).

    Sequences are sorted by length before batching (results come back in the caller's order): the
    packed attention of sdpa/eager on CPU costs posts x longest^2 per batch, so similar lengths matter.
    """

    OUTPUTS = {"mlm": "mlm_logits", "embeddings": "embeddings", "readback": "readback_logits",
               "rating": "rating_logits", "score": "score_logits"}

    def __init__(self, model: Any, info: Any, batch_tokens: int = 4096) -> None:
        self.model = model
        self.info = info
        self.batch_tokens = batch_tokens
        self.device = next(model.parameters()).device

    def _batches(self, order: np.ndarray, lengths: np.ndarray):
        start = 0
        while start < len(order):
            end, tokens = start, 0
            while end < len(order) and (end == start or tokens + lengths[order[end]] <= self.batch_tokens):
                tokens += lengths[order[end]]
                end += 1
            yield order[start:end]
            start = end

    def _forward(self, batch: dict[str, Any], want: Sequence[str]) -> dict[str, Any]:
        """The wanted outputs; without ``readback``, only the heads asked for run (they cost vocab-sized work).

        Through the model's public methods; remote code saved before they existed runs its forward pass.
        """
        if "readback" in want or not hasattr(self.model, "encode"):
            out = self.model(**batch)
            return {name: getattr(out, self.OUTPUTS[name]) for name in want}
        positions = batch.pop("mlm_positions", None)
        encoded = self.model.encode(**batch)
        pooled = encoded.pooler_output
        heads = {
            "embeddings": lambda: pooled,
            "rating": lambda: self.model.rating_and_score_logits(pooled)[0],
            "score": lambda: self.model.rating_and_score_logits(pooled)[1],
            "mlm": lambda: self.model.masked_tag_logits(encoded.last_hidden_state, positions),
        }
        return {name: heads[name]() for name in want}

    def run(self, sequences: Sequence[tuple[np.ndarray, np.ndarray]], *want: str) -> dict[str, np.ndarray]:
        """The outputs named in ``want`` over all sequences: ``mlm`` (logits at the single ``<mask>`` of
        each), ``embeddings``, ``readback`` (sizes, n, vocab), ``rating``, ``score`` (logits)."""
        import torch

        from .sequences import mark_masks, model_inputs, pack_sequences

        lengths = np.array([len(ids) for ids, _ in sequences])
        order = np.argsort(lengths, kind="stable")
        result: dict[str, np.ndarray] = {}
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for chunk in self._batches(order, lengths):
                batch = pack_sequences([sequences[i] for i in chunk], packed=True, pad_token_id=self.info.pad_token_id)
                if "mlm" in want:
                    batch["mlm_positions"] = mark_masks(batch, self.info.mask_token_id)
                batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in model_inputs(batch).items()}
                for name, value in self._forward(batch, want).items():
                    value = value.float().cpu().numpy()
                    if name == "readback":  # (sizes, posts, vocab)
                        if name not in result:
                            result[name] = np.empty((value.shape[0], len(sequences), *value.shape[2:]), dtype=np.float32)
                        result[name][:, chunk] = value
                    else:
                        if name not in result:
                            result[name] = np.empty((len(sequences), *value.shape[1:]), dtype=np.float32)
                        result[name][chunk] = value
        self.model.train(was_training)
        return result


def _log_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    masked = np.where(allowed, logits, -np.inf)
    peak = masked.max(axis=1, keepdims=True)
    return masked - peak - np.log(np.exp(masked - peak).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- the evaluation


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
    drew them first (recorded in the metrics).
    """

    def __init__(self, info: Any, train_posts: Sequence[Any] | Any, test_posts: Sequence[Any] | Any,
                 tag_to_id: Callable[[str], int | None], max_posts: int | None = None, seed: int = SEED,
                 baseline_posts: int | None = None, train_total: int | None = None) -> None:
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

    def _known(self, post: Any) -> np.ndarray:
        return np.unique(post.tags[self.candidates[post.tags]])

    def _sequence(self, post: Any | None, tags: np.ndarray, rating: bool = True, mask: bool = False):
        """Model input of ``tags`` (+ the post's rating and score when ``rating``; + ``<mask>`` when ``mask``)."""
        from .sequences import build_sequence

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
                    scores = _log_softmax(logits, allowed)
                else:
                    scores = np.where(allowed, self.baseline.suggest_scores(visible), -np.inf)
                acc.add(scores, [c[2] for c in chunk])
            out.update(acc.metrics(f"{who}.{prefix}"))

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

    def retrieval(self, runner: ModelRunner | None, out: dict[str, float], category: int, name: str,
                  tagvec_dims: Sequence[int] = TAGVEC_DIMS) -> None:
        """recall@10 of finding posts sharing the removed character (artist) tags among neighbours.

        Three sides: the model's embeddings, TF-IDF (``baseline.``), and the idf-weighted mean of the
        visible tags' co-occurrence SVD rows (``tagvec.``, the rows the co-occurrence initialisation
        starts the embeddings from): at the largest of ``tagvec_dims``, and at each as ``.dim{d}``.
        """
        cats = self.info.token_categories
        posts, labels = [], []
        for post in self.test:
            known = self._known(post)
            removed = known[cats[known] == category]
            if len(removed):
                posts.append((post, post.tags[~np.isin(post.tags, removed)]))
                labels.append(set(removed.tolist()))
        if len(posts) < 2:
            return
        if runner is not None:
            vectors = runner.run([self._sequence(p, tags) for p, tags in posts], "embeddings")["embeddings"]
            out[f"model.retrieval.{name}.recall@10"], chance = retrieval_recall_at_k(vectors, labels)
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
        from the embedding, F1 (P=R) per nested size; rating and score-bucket accuracy."""
        posts = [p for p in self.test if len(self._known(p))]
        outputs: dict[str, list[np.ndarray]] = {"rating": [], "score": []}
        if runner is not None:
            accumulators = [RankingAccumulator({"all": self.candidates}, ks=(1,)) for _ in dims]
            for start in range(0, len(posts), CASE_BATCH):  # (sizes, batch, vocab) read-back logits at a time
                chunk = posts[start : start + CASE_BATCH]
                batch = runner.run([self._sequence(p, p.tags, rating=False) for p in chunk], "readback", "rating", "score")
                answers = [set(self._known(p).tolist()) for p in chunk]
                for size, acc in enumerate(accumulators):
                    acc.add(np.where(self.candidates[None], batch["readback"][size], -np.inf), answers)
                outputs["rating"].append(batch["rating"])
                outputs["score"].append(batch["score"])
            for d, acc in zip(dims, accumulators):
                out[f"model.readback.dim{d}.micro_f1"] = acc.metrics("x")["x.micro_f1"]
        for name, classes, log_prob, token in (
            ("rating", self.rating_class, self.baseline.rating_log_prob, lambda p: p.rating),
            ("score", self.score_class, self.baseline.score_log_prob, lambda p: p.score),
        ):
            known = np.array([token(p) in classes for p in posts], dtype=bool)
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
        for who in ("model", "baseline"):
            if who == "model" and runner is None:
                continue
            allowed = np.repeat(general[None], len(cases), axis=0)
            for row, (_, vis, _) in enumerate(cases):
                allowed[row, vis] = False
            if who == "model":
                sequences = [self._sequence(p, vis, rating=False, mask=True) for p, vis, _ in cases]
                sequences.append(self._sequence(None, np.zeros(0, dtype=np.int64), rating=False, mask=True))
                logits = runner.run(sequences, "mlm")["mlm"]
                plain = _log_softmax(logits[:-1], allowed)
                prior = _log_softmax(logits[-1:], general[None])
                self._rank_traits(plain, cases, "model.traits_plain", out)
                with np.errstate(invalid="ignore"):  # -inf - -inf outside the candidates, masked next
                    normalised = np.where(allowed, plain - 0.5 * prior, -np.inf)
                self._rank_traits(normalised, cases, "model.traits", out)
            else:
                scores = np.where(allowed, self.baseline.suggest_scores([vis for _, vis, _ in cases]), -np.inf)
                self._rank_traits(scores, cases, "baseline.traits", out)
        out["count.traits.characters"] = float(len(cases))

    @staticmethod
    def _rank_traits(scores: np.ndarray, cases: list[tuple[Any, np.ndarray, set[int]]], prefix: str,
                     out: dict[str, float]) -> None:
        """R-precision and recall@10 of each case's traits among its best-scored tags."""
        ranked, _ = _top_k(scores, TOP_K)
        answers = [t for _, _, t in cases]
        out[f"{prefix}.r_precision"] = float(np.mean([len(set(row[: len(t)].tolist()) & t) / len(t)
                                                      for row, t in zip(ranked, answers)]))
        out[f"{prefix}.recall@10"] = recall_at_k(ranked, answers, 10)

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


def peak_memory_mb() -> float:
    """The process's peak resident memory so far, in MB (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:  # no `resource` module on Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------- loading and the command


def _arrow_table(encoded: Any) -> Any:
    """The ``input_ids`` and ``category_ids`` columns of an encoded split (Arrow table or ``datasets.Dataset``)."""
    import pyarrow as pa

    table = encoded if isinstance(encoded, pa.Table) else encoded.with_format("arrow")[:]
    return table.select(["input_ids", "category_ids"])


def posts_from_encoded(encoded: Any) -> list[Any]:
    """``sequences.Post`` objects of a split encoded by ``data.bulk_encoding.encode_dataset`` (for test posts: the
    training split is only ever counted, see ``Evaluator``)."""
    from .sequences import Post, flat_posts

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


def _flat(posts: Sequence[Any] | Any, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ``ids``, ``categories``, ``lengths`` (``sequences.flat_posts``) of ``rows`` of a list of ``Post``
    or of an encoded split; from a split, straight from its Arrow columns."""
    from .sequences import flat_posts

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


def evaluate(model_dir: str | Path, data_dir: str | Path, output_json: str | Path | None = None,
             implications: str | Path | None = None, max_posts: int | None = None,
             truth: str | Path | None = None, baseline_posts: int | None = BASELINE_POSTS) -> dict[str, float]:
    """Evaluate MODEL_DIR on DATA_DIR's test split vs the baseline; write METRICS_JSON and
    ``MODEL_DIR/eval_metrics.json``; return the flat metrics.

    Only the sampled posts are encoded: ``max_posts`` of the test split and ``baseline_posts`` of the
    training split (seeded; None or 0 keeps all), so the memory is set by those two numbers.
    """
    import datasets
    from transformers import AutoModelForPreTraining

    from .modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from .sequences import TokenInfo

    started = time.perf_counter()
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    if baseline_posts is not None and baseline_posts < 0:
        raise UsageError(f"--baseline-posts must be positive (0 counts the whole training split), got {baseline_posts}")
    if max_posts is not None and max_posts < 0:
        raise UsageError(f"--max-posts must be positive, got {max_posts}")
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"not a model folder (no config.json): {model_dir}")
    try:
        splits = datasets.load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"cannot read dataset {data_dir}: {error}") from None
    if not {"train", "test"} <= set(splits):
        raise UsageError(f"{data_dir} needs splits `train` and `test`")
    from .data.tag_tables import read_pair_table

    pairs = read_pair_table(implications, "implication") if implications else []
    truth_table = None
    if truth:
        if not Path(truth).is_file():
            raise UsageError(f"ground-truth file not found: {truth}")
        truth_table = json.loads(Path(truth).read_text())
    # The package's tokenizer class, not the folder's copy: the bulk encoder needs its current API, and
    # it reads folders saved by earlier versions the same way (tests/test_saved_folder.py).
    tokenizer = BooruEmbedTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForPreTraining.from_pretrained(str(model_dir), trust_remote_code=True)
    info = TokenInfo.from_tokenizer(tokenizer)
    if not pairs:
        pairs = [(a, c) for a, consequents in tokenizer.implications.items() for c in consequents]
    if not pairs and truth_table:
        pairs = [(a, c) for a, c in truth_table.get("implications", [])]
    loaded = {"time.load.seconds": time.perf_counter() - started, "memory.load.peak_mb": peak_memory_mb()}
    started = time.perf_counter()
    evaluator = Evaluator(
        info,
        encode_sample(tokenizer, splits["train"], baseline_posts, "train"),
        encode_sample(tokenizer, splits["test"], max_posts, "test"),
        tokenizer.tag_to_id,
        max_posts=max_posts,
        baseline_posts=baseline_posts,
        train_total=len(splits["train"]),
    )
    loaded["time.encode.seconds"] = time.perf_counter() - started - evaluator.recorded["time.baseline.seconds"]
    loaded["memory.encode.peak_mb"] = peak_memory_mb()
    metrics = dict(sorted({**evaluator.run(model, pairs, truth_table), **loaded}.items()))
    text = json.dumps(metrics, indent=2) + "\n"
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(text)
    (model_dir / "eval_metrics.json").write_text(text)
    return metrics


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed evaluate``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder written by training")
    parser.add_argument("--dataset", required=True, metavar="DATA_DIR", help="dataset folder (train for the baseline, test for the cases)")
    parser.add_argument("--output", required=True, metavar="METRICS_JSON", help="where to write the flat metrics")
    parser.add_argument("--implications", metavar="FILE", help="implications TSV (antecedent, consequent) for the implication metrics")
    parser.add_argument("--truth", metavar="FILE", help="ground-truth JSON of a generated corpus, for character-trait recovery")
    parser.add_argument("--max-posts", type=int, metavar="N", help="evaluate on a seeded sample of N test posts")
    parser.add_argument("--baseline-posts", type=int, default=BASELINE_POSTS, metavar="N",
                        help=f"count the baseline on a seeded sample of N training posts (default {BASELINE_POSTS:,}; 0: all)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``booru-embed evaluate``; print the model vs baseline table."""
    metrics = evaluate(args.model_dir, args.dataset, args.output, args.implications, args.max_posts, args.truth,
                       args.baseline_posts)
    print(format_metrics(metrics))
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    """A model | baseline | tagvec table of the metrics (a side without the metric shows ``-``)."""
    sides = ("model", "baseline", "tagvec")
    names = sorted({k.split(".", 1)[1] for k in metrics if k.startswith(tuple(f"{who}." for who in sides))})
    rows = [f"{'metric':<40} {'model':>8} {'baseline':>8} {'tagvec':>8}"]
    for name in names:
        cells = [metrics.get(f"{who}.{name}") for who in sides]
        rows.append(f"{name:<40} " + " ".join(f"{c:>8.4f}" if c is not None else f"{'-':>8}" for c in cells))
    return "\n".join(rows)
