"""The search representations in evaluate: BM25 (against bm25s), the SVD of TF-IDF, and a hybrid that must beat both parts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import sparse

from booru_embed.evaluation import Evaluator, retrieval_recall_at_k
from booru_embed.evaluation.hybrid_retrieval import bm25_sides, choose_fusion_weight, lexical_and_hybrid_retrieval
from booru_embed.sequences import Post, TokenInfo
from booru_embed.sparse_vectors import EXPANSION_TERMS, hybrid_rows

CATEGORIES = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3] + [3] * 10 + [6] * 8 + [4] * 8 + [3] * 4)  # 20..27 characters, 28..35 artists
INFO = TokenInfo(CATEGORIES, (3, 4, 5, 6), (7, 8), frozenset({9}))


def pair_and_parity_corpus(n: int, seed: int) -> tuple[np.ndarray, sparse.csr_matrix, list[set[int]]]:
    """8 characters: the sparse side sees which PAIR a post's character is in, the dense side its PARITY.

    Each side alone confuses a character with others (1 of 2, or 1 of 4); only together do they name it.
    """
    rng = np.random.default_rng(seed)
    characters = rng.integers(8, size=n)
    dense = np.stack([np.cos(np.pi * (characters % 2)), np.sin(np.pi * (characters % 2))], axis=1)
    dense = np.hstack([dense, 0.3 * rng.standard_normal((n, 6))])
    lexical = np.zeros((n, 40), dtype=np.float32)
    lexical[np.arange(n), characters // 2] = 3.0  # the pair's tag
    for row in range(n):
        lexical[row, 4 + rng.choice(36, size=4, replace=False)] = 1.0  # unrelated tags
    return dense, sparse.csr_matrix(lexical), [{int(c)} for c in characters]


def test_the_hybrid_beats_each_part_alone_at_the_weight_chosen_on_other_posts() -> None:
    dense, lexical, labels = pair_and_parity_corpus(400, seed=0)
    weight, means = choose_fusion_weight([dense], [lexical], [labels])  # the "training" slice
    assert 0.0 < weight < 1.0 and means[weight] == max(means.values())
    dense, lexical, labels = pair_and_parity_corpus(400, seed=1)  # the "test" posts
    alone = max(retrieval_recall_at_k(dense, labels)[0], retrieval_recall_at_k(lexical, labels)[0])
    hybrid = retrieval_recall_at_k(hybrid_rows(dense, lexical, weight), labels)[0]
    assert alone < 0.6 and hybrid > alone + 0.3


def test_bm25_with_term_frequency_one_scores_as_bm25s() -> None:
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(0)
    posts = [np.sort(rng.choice(np.arange(10, 40), size=int(rng.integers(2, 9)), replace=False)) for _ in range(60)]
    incidence = sparse.csr_matrix((np.ones(sum(map(len, posts)), np.float32),
                                   (np.repeat(np.arange(60), [len(p) for p in posts]), np.concatenate(posts))),
                                  shape=(60, 40))
    evaluator = SimpleNamespace(baseline=SimpleNamespace(incidence=incidence, counts=np.asarray(incidence.sum(0)).ravel()),
                                info=INFO)
    for b in (0.0, 0.75):
        queries, documents = bm25_sides(evaluator, posts, b)
        ours = (queries @ documents.T).toarray()
        reference = bm25s.BM25(k1=1.5, b=b, method="lucene")
        reference.index([[str(t) for t in p] for p in posts], show_progress=False)
        for row in (0, 7, 33):
            theirs = reference.get_scores([str(t) for t in posts[row]])
            np.testing.assert_allclose(ours[row], theirs, rtol=1e-4, atol=1e-5)


def clustered(n: int, seed: int) -> list[Post]:
    """Character 20 + c with general tags 10 + 2c, 11 + 2c and an artist 28 + c % 4."""
    rng = np.random.default_rng(seed)
    posts = []
    for _ in range(n):
        c = int(rng.integers(4))
        tags = np.array([20 + c, 10 + 2 * c, 11 + 2 * c, int(rng.integers(18, 20)), 28 + int(rng.integers(4))])
        posts.append(Post(rating=3, score=7, tags=tags, tag_categories=CATEGORIES[tags]))
    return posts


class UniformRunner:
    """A stand-in model: embeddings that know nothing, masked-tag logits that prefer nothing."""

    model = SimpleNamespace(config=SimpleNamespace(nested_dims=[2], embedding_dim=4))

    def run(self, sequences, *want):
        rng = np.random.default_rng(len(sequences))
        out = {"embeddings": rng.standard_normal((len(sequences), 4)).astype(np.float32)}
        if "mlm" in want:
            out["mlm"] = np.zeros((len(sequences), len(CATEGORIES)), dtype=np.float32)
        return out


def test_evaluate_reports_every_search_side_and_the_counting_baselines_agree() -> None:
    evaluator = Evaluator(INFO, clustered(400, 0), clustered(120, 1), {}.get, max_posts=100)
    out: dict[str, float] = {}
    lexical_and_hybrid_retrieval(evaluator, UniformRunner(), out, width=4)
    tfidf: dict[str, float] = {}
    evaluator.retrieval(None, tfidf, 6, "character")
    for side in ("bm25", "lift", "svd", "sparse", "hybrid"):
        assert 0.0 <= out[f"{side}.retrieval.character.recall@10"] <= 1.0
    assert out["lift.retrieval.character.recall@10"] == 1.0  # the lift keeps the tags that name the character
    # the general tags name the character: every counting side finds it, so must the sparse vector
    assert tfidf["baseline.retrieval.character.recall@10"] == 1.0 == out["bm25.retrieval.character.recall@10"]
    assert out["sparse.retrieval.character.recall@10"] == 1.0
    assert 0.0 < out["hybrid.fusion_weight"] <= 1.0  # random embeddings: the sparse side must carry the weight
    assert out["hybrid.expansion_terms"] in (0, EXPANSION_TERMS)  # chosen with the idf power
    # 4 visible tags + the chosen expansion
    assert out["sparse.retrieval.character.nonzeros_per_post"] == 4 + out["hybrid.expansion_terms"]



def noisy(n: int, seed: int) -> list[Post]:
    """Character 20 + c with ONE of its traits 10 + 2c, 11 + 2c, two random general tags and a random artist."""
    rng = np.random.default_rng(seed)
    posts = []
    for _ in range(n):
        c = int(rng.integers(4))
        noise = rng.choice(np.arange(10, 20), size=2, replace=False)
        tags = np.unique([20 + c, 10 + 2 * c + int(rng.integers(2)), *noise.tolist(), 28 + int(rng.integers(4))])
        posts.append(Post(rating=3, score=7, tags=tags, tag_categories=CATEGORIES[tags]))
    return posts


class RecordingRunner(UniformRunner):
    """``UniformRunner`` that keeps the sequences it is given."""

    def __init__(self) -> None:
        self.sequences: list = []

    def run(self, sequences, *want):
        self.sequences.extend(sequences)
        return super().run(sequences, *want)


def test_the_held_out_slice_offers_tf_idf_itself_and_sees_rating_and_score() -> None:
    from booru_embed.evaluation.hybrid_retrieval import search_settings, setting_name
    from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS
    from booru_embed.sparse_vectors import SPARSE_SETTINGS, unit_rows

    evaluator = Evaluator(INFO, noisy(400, 0), noisy(120, 1), {}.get, max_posts=100, validation_posts=noisy(200, 2))
    runner, out = RecordingRunner(), {}
    setting, weight = search_settings(evaluator, runner, out)
    assert setting in SPARSE_SETTINGS and out["validation.held_out"] == 1.0
    # the candidate without expansion at weight 1 ranks exactly as TF-IDF does on the same cases
    tfidf = []
    for name in ("character", "artist"):
        posts, labels = evaluator.retrieval_cases(CATEGORY_IDS[name], evaluator.validation)
        visible = [tags[evaluator.candidates[tags]] for _, tags in posts]
        tfidf.append(retrieval_recall_at_k(unit_rows(evaluator.baseline.tfidf(visible)), labels)[0])
    assert 0.0 < np.mean(tfidf) < 1.0  # the noise leaves something to find
    assert out[f"validation.hybrid.{setting_name(1.0, 0, 1.0, 0.0, 1.0)}.recall@10"] == pytest.approx(np.mean(tfidf))
    assert max(v for k, v in out.items() if k.startswith("validation.hybrid.")) >= np.mean(tfidf)
    # the slice's queries are built like the test cases: the post's rating (3) and score (7) are in the input
    assert runner.sequences and all({3, 7} <= set(np.asarray(ids).tolist()) for ids, _ in runner.sequences)


def test_the_subject_lift_is_counted_without_the_held_out_posts() -> None:
    from booru_embed.cooccurrence import incidence_matrix
    from booru_embed.sequences import flat_posts
    from booru_embed.sparse_vectors import subject_lift_weights
    from test_evaluation import encoded_table

    train = noisy(400, 0)
    table = encoded_table(train)
    table = table.append_column("id", __import__("pyarrow").array(np.arange(1000, 1400)))
    held_out = np.arange(1000, 1400, 3)  # every third post's id
    evaluator = Evaluator(INFO, table, noisy(120, 1), {}.get, max_posts=100, held_out_ids=held_out)
    kept = table.filter(~np.isin(table["id"].to_numpy(), held_out))  # the held-out posts dropped before counting
    ids, _, lengths = flat_posts(kept)
    expected = subject_lift_weights(incidence_matrix(ids, lengths, len(CATEGORIES), counted=INFO.tag_candidates()[ids]),
                                    CATEGORIES)
    np.testing.assert_allclose(evaluator.lift_weights, expected)
    everything = Evaluator(INFO, table, noisy(120, 1), {}.get, max_posts=100).lift_weights
    assert not np.allclose(everything, expected)
    # a character's own traits tell it apart: each trait's lift weight is above every noise-only tag's floor
    lift = evaluator.lift_weights
    assert lift[10:18].min() > np.sqrt(0.1) and lift[20:24].min() > lift[10:18].max()
