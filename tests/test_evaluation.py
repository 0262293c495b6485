"""Evaluation metrics and the co-occurrence baseline, on plain arrays (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from booru_embed.evaluation import (
    CooccurrenceBaseline,
    Evaluator,
    RankingAccumulator,
    f1_at_equal_precision_recall,
    format_metrics,
    recall_at_k,
    retrieval_recall_at_k,
)
from booru_embed.data.bulk_encoding import encode_dataset
from booru_embed.sequences import Post, TokenInfo, mark_masks, model_inputs, pack_sequences


def test_f1_at_equal_precision_recall_by_hand():
    # 3 true pairs; the top 3 scores hold 2 hits -> micro F1 = P = R = 2/3 at threshold 0.7
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    hits = np.array([True, False, True, True, False])
    tags = np.array([1, 2, 1, 3, 2])
    micro, macro, threshold = f1_at_equal_precision_recall(scores, hits, tags, {1: 2, 3: 1})
    assert micro == pytest.approx(2 / 3) and threshold == 0.7
    # tag 1: tp 2, predicted 2, positives 2 -> 1.0; tag 3: tp 0, predicted 0, positives 1 -> 0.0
    assert macro == pytest.approx(0.5)
    # a true pair that was never scored still counts as a positive
    micro, _, _ = f1_at_equal_precision_recall(scores, hits, tags, {1: 2, 3: 1, 9: 1})
    assert micro == pytest.approx(3 / 4)


def test_recall_at_k_normalises_by_the_reachable_number():
    ranked = np.array([[5, 6, 7], [1, 2, 3]])
    assert recall_at_k(ranked, [{5}, {9}], 1) == pytest.approx(0.5)
    assert recall_at_k(ranked, [{6, 7}, {1, 2, 3, 4}], 2) == pytest.approx((1 / 2 + 2 / 2) / 2)


def test_retrieval_recall_separates_clusters_and_reports_chance():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16))
    labels = [{i % 5} for i in range(100)]
    clustered = np.stack([centers[i % 5] + 0.05 * rng.normal(size=16) for i in range(100)])
    recall, chance = retrieval_recall_at_k(clustered, labels, k=10)
    assert recall == 1.0 and chance == pytest.approx(10 * 19 / 99 / 10)
    random_recall, _ = retrieval_recall_at_k(rng.normal(size=(100, 16)), labels, k=10)
    assert random_recall < 0.45


def test_baseline_cosine_is_danbooru_related_tags():
    posts = [np.array([3, 4]), np.array([3, 4]), np.array([3, 5]), np.array([4])]
    baseline = CooccurrenceBaseline(posts, 6, np.array([0, 0, 1, -1]), np.array([0, 1, 1, 1]), 2, 2)
    cosine = baseline.cosine.toarray()
    assert cosine[3, 4] == pytest.approx(2 / math.sqrt(3 * 3)) and cosine[3, 5] == pytest.approx(1 / math.sqrt(3))
    assert cosine[3, 3] == 0 and cosine[4, 5] == 0
    scores = baseline.suggest_scores([np.array([4, 5])])
    assert scores[0, 3] == pytest.approx(cosine[4, 3] + cosine[5, 3])
    # naive Bayes: tag 5 appeared only with rating class 1
    assert baseline.classify([np.array([5])], baseline.rating_log_prob)[0] == 1


def test_related_scores_sum_the_cosine_rows_of_dense_and_sparse_rows_alike():
    # tags 0-3 go with most tags (dense cosine rows), tags 4-599 with a few (sparse rows)
    rng = np.random.default_rng(0)
    posts = [np.unique(np.concatenate([rng.choice(4, 2, replace=False), rng.choice(np.arange(4, 600), 3)]))
             for _ in range(400)]
    baseline = CooccurrenceBaseline(posts, 600, np.full(400, -1), np.full(400, -1), 1, 1)
    assert set(baseline.dense_rows.tolist()) == {0, 1, 2, 3}
    cosine = baseline.cosine.toarray()
    visible = [np.array([0, 5, 9]), np.array([7]), np.array([1, 2]), np.array([], dtype=np.int64), np.array([3, 3, 40])]
    expected = np.stack([cosine[v].sum(axis=0) for v in visible])  # a repeated visible tag counts twice
    np.testing.assert_allclose(baseline.suggest_scores(visible), expected, rtol=1e-6, atol=1e-7)


CATEGORIES = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3] + [3] * 10 + [6] * 4 + [4] * 4)
INFO = TokenInfo(CATEGORIES, (3, 4, 5, 6), (7, 8), frozenset({9}))
NAMES = {f"tag{i}": i for i in range(10, 28)}


def clustered_posts(n: int, seed: int) -> list[Post]:
    """Character c (20..23) always comes with general tags 10+2c' and 11+2c'; artist 24..27 random."""
    rng = np.random.default_rng(seed)
    posts = []
    for _ in range(n):
        c = int(rng.integers(4))
        tags = np.array([20 + c, 10 + 2 * c, 11 + 2 * c, int(rng.integers(18, 20)), int(rng.integers(24, 28))])
        posts.append(Post(rating=3 + c % 2, score=7, tags=tags, tag_categories=CATEGORIES[tags]))
    return posts


def test_evaluator_baseline_side_on_structured_data():
    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=100)
    truth = {"characters": {"tag20": {"copyright": None, "traits": ["tag10", "tag11"]}}}
    metrics = evaluator.run(None, implications=[("tag20", "tag10")], truth=truth)
    assert metrics["count.test_posts"] == 100 and not any(k.startswith("model.") for k in metrics)
    # hiding one of the 5 tags: the co-occurrence baseline finds the character's companions
    assert metrics["baseline.masked.micro_f1"] > 0.5
    assert metrics["baseline.implications.recall@1"] == 1.0 and metrics["baseline.traits.r_precision"] == 1.0
    assert metrics["baseline.retrieval.character.recall@10"] > 2 * metrics["chance.retrieval.character.recall@10"]
    assert metrics["baseline.rating.accuracy"] == 1.0
    for key in ("baseline.masked.general.micro_f1", "baseline.masked.character.micro_f1", "baseline.masked.top2000.micro_f1"):
        assert 0 <= metrics[key] <= 1
    # the cases are seeded: a second evaluator sees the same hidden tags
    again = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=100)
    assert [c[2] for c in again.masked_cases()] == [c[2] for c in evaluator.masked_cases()]
    assert "masked.micro_f1" in format_metrics(metrics)


def test_accumulator_never_counts_visible_tags():
    acc = RankingAccumulator({"all": np.ones(6, dtype=bool)}, ks=(1,))
    scores = np.array([[-np.inf, 0.9, 0.5, 0.1, 0.0, -1.0]])
    acc.add(scores, [{2}])
    metrics = acc.metrics("m")
    assert metrics["m.recall@1"] == 0.0 and metrics["m.micro_f1"] == 0.0
    acc.add(np.array([[-np.inf, 0.1, 0.95, 0.0, 0.0, 0.0]]), [{2}])
    assert acc.metrics("m")["m.micro_f1"] == pytest.approx(0.5)


class FixedLogitsRunner:
    """Stands in for ``ModelRunner``: masked-tag logits = log prior, plus ``boost`` on the traits of a
    sequence that holds the character (the empty sequence gets the prior alone)."""

    def __init__(self, log_prior: np.ndarray, character: int, traits: list[int], boost: float) -> None:
        self.log_prior, self.character, self.traits, self.boost = log_prior, character, traits, boost

    def run(self, sequences, *want):
        rows = []
        for ids, _ in sequences:
            row = self.log_prior.copy()
            if self.character in ids:
                row[self.traits] += self.boost
            rows.append(row)
        return {"mlm": np.stack(rows)}


def test_model_traits_are_ranked_by_the_cosine_normalisation():
    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=20)
    truth = {"characters": {"tag20": {"copyright": None, "traits": ["tag10", "tag11"]}}}
    # tags 18 and 19 are common everywhere (prior 0.4 each); the traits are rare (0.01) but 20x as
    # likely with the character: p(trait | character) = 0.2 < p(common) = 0.4, ratio 20 vs 1
    prior = np.full(len(CATEGORIES), 1e-3)
    prior[[18, 19]] = 0.4
    prior[[10, 11]] = 0.01
    runner = FixedLogitsRunner(np.log(prior), character=20, traits=[10, 11], boost=np.log(20.0))
    out: dict[str, float] = {}
    evaluator.traits(runner, truth, out)
    assert out["model.traits_plain.r_precision"] == 0.0  # plain probability: the common tags come first
    assert out["model.traits.r_precision"] == 1.0  # normalised by sqrt(prior): the traits come first
    assert out["count.traits.characters"] == 1.0


@pytest.mark.parametrize("tied", [True, False])
def test_model_runner_head_path_matches_the_full_forward(tied: bool) -> None:
    import torch

    from booru_embed.evaluation import ModelRunner
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    vocab = 40
    torch.manual_seed(0)
    model = BooruEmbedForPreTraining(BooruEmbedConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        embedding_dim=16, nested_dims=[8], tie_output_embeddings=tied,
    ))
    categories = np.full(vocab, 3)
    categories[:3] = 0
    info = TokenInfo(categories, rating_token_ids=(), score_token_ids=(), unk_token_ids=frozenset())
    rng = np.random.default_rng(0)
    sequences = []
    for length in (2, 5, 9):
        ids = np.concatenate([[1], rng.choice(np.arange(3, vocab), length, replace=False), [2]])
        sequences.append((ids, np.where(ids < 3, 0, 3)))
    runner = ModelRunner(model, info)
    heads_only = runner.run(sequences, "mlm", "embeddings")
    batch = pack_sequences(sequences, packed=True, pad_token_id=info.pad_token_id)
    batch["mlm_positions"] = mark_masks(batch, info.mask_token_id)
    with torch.no_grad():
        full = model.eval()(**model_inputs(batch))  # the model's own forward, every head
    np.testing.assert_allclose(heads_only["mlm"], full.mlm_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(heads_only["embeddings"], full.embeddings.numpy(), rtol=1e-5, atol=1e-5)
    for size, width in enumerate(model.readback_dims):
        np.testing.assert_allclose(runner.readback(heads_only["embeddings"][:, :width]),
                                   full.readback_logits[size].numpy(), rtol=1e-5, atol=1e-5)


def encoded_table(posts: list[Post]):
    """The posts as the Arrow columns ``encode_dataset`` writes: ``[<cls>] [rating] [score] tags``."""
    import pyarrow as pa

    ids = [[1, p.rating, p.score, *p.tags.tolist()] for p in posts]
    cats = [[0, 1, 2, *p.tag_categories.tolist()] for p in posts]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "category_ids": pa.array(cats, pa.list_(pa.int32()))})


def test_evaluator_counts_an_encoded_split_without_post_objects(monkeypatch):
    train, test = clustered_posts(400, 0), clustered_posts(120, 1)
    from_lists = Evaluator(INFO, train, test, NAMES.get, max_posts=100).run(None)
    built = []
    original = Post.from_encoded.__func__
    monkeypatch.setattr(Post, "from_encoded", classmethod(lambda cls, *a: built.append(1) or original(cls, *a)))
    from_table = Evaluator(INFO, encoded_table(train), encoded_table(test), NAMES.get, max_posts=100).run(None)
    assert len(built) == 100  # the sampled test posts only: the 400 training posts are counted, never objects
    assert {k: v for k, v in from_table.items() if not k.startswith(("time.", "memory."))} == {
        k: v for k, v in from_lists.items() if not k.startswith(("time.", "memory."))}
    assert from_table["count.baseline.posts"] == 400 and from_table["seed.baseline"] == 1234


def test_baseline_sample_keeps_the_metrics_and_records_itself():
    train, test = encoded_table(clustered_posts(400, 0)), clustered_posts(120, 1)
    full = Evaluator(INFO, train, test, NAMES.get, max_posts=60).run(None)
    sampled = Evaluator(INFO, train, test, NAMES.get, max_posts=60, baseline_posts=150).run(None)
    again = Evaluator(INFO, train, test, NAMES.get, max_posts=60, baseline_posts=150).run(None)
    assert sampled.keys() == full.keys()
    assert sampled["count.baseline.posts"] == 150 and sampled["count.baseline.train_posts"] == 400
    assert full["count.baseline.posts"] == 400
    assert sampled["baseline.masked.micro_f1"] == again["baseline.masked.micro_f1"]  # a seeded sample
    assert sampled["baseline.masked.micro_f1"] > 0.5  # 150 posts still hold the structure
    for side in ("baseline", "tagvec"):
        assert sampled[f"{side}.retrieval.character.recall@10"] > 2 * sampled["chance.retrieval.character.recall@10"]
    assert "tagvec.retrieval.character.dim64.recall@10" in sampled and "retrieval.character.recall@10" in format_metrics(sampled)


def test_baseline_memory_is_set_by_the_sample_not_the_split():
    import tracemalloc

    test = clustered_posts(40, 1)
    peaks = []
    for size in (2_000, 16_000):
        train = encoded_table(clustered_posts(size, 0))
        tracemalloc.start()
        Evaluator(INFO, train, test, NAMES.get, baseline_posts=1_000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 8x the training split: the peak would grow ~8x if anything per training post were kept
    assert peaks[1] < 1.5 * peaks[0]


def test_tag_vector_baseline_is_the_idf_weighted_mean_of_cooccurrence_rows():
    from booru_embed.cooccurrence import spectral_rows

    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get)
    baseline = evaluator.baseline
    rows = baseline.tag_vectors(8, seed=0)
    np.testing.assert_array_equal(rows, spectral_rows(baseline.incidence, 8, 0)[0])
    visible = [np.array([10, 11, 24]), np.array([20])]
    mean = baseline.mean_tag_vectors(visible, rows)
    idf = baseline.idf
    expected = (idf[10] * rows[10] + idf[11] * rows[11] + idf[24] * rows[24]) / (idf[10] + idf[11] + idf[24])
    np.testing.assert_allclose(mean[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean[1], rows[20], rtol=1e-5, atol=1e-6)


def test_evaluate_encodes_only_the_samples_and_records_them(tmp_path):
    import datasets
    import pyarrow as pa
    from tiny_model import build_tiny_model
    from transformers import AutoTokenizer

    from booru_embed.evaluation import encode_sample, evaluate, sample_rows

    model_dir = build_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    train = datasets.load_from_disk(str(tmp_path / "data"))["train"]
    chunked = datasets.Dataset(pa.Table.from_batches(train.data.table.to_batches(max_chunksize=7)))
    sampled = encode_sample(tokenizer, chunked, 50, "train")  # rows taken batch by batch
    expected = encode_dataset(tokenizer, train.select(sample_rows(len(train), 50, "train")))
    assert sampled["input_ids"] == expected["input_ids"] and sampled["category_ids"] == expected["category_ids"]
    metrics = evaluate(model_dir, tmp_path / "data", tmp_path / "metrics.json", max_posts=10, baseline_posts=50)
    assert metrics["count.baseline.posts"] == 50 and metrics["count.baseline.train_posts"] == 120
    assert metrics["count.test_posts"] == 10 and "tagvec.retrieval.character.recall@10" in metrics


def test_traits_report_the_rarest_quarter_of_characters_on_their_own():
    train = clustered_posts(400, 0)
    rare = [p for p in train if 23 in p.tags.tolist()][:5]  # character 23 keeps only 5 training posts
    train = [p for p in train if 23 not in p.tags.tolist()] + rare
    evaluator = Evaluator(INFO, train, clustered_posts(120, 1), NAMES.get, max_posts=20)
    truth = {"characters": {f"tag{20 + c}": {"copyright": None, "traits": [f"tag{10 + 2 * c}", f"tag{11 + 2 * c}"]}
                            for c in range(4)}}
    prior = np.full(len(CATEGORIES), 1e-3)
    prior[10:18] = 0.01
    runner = FixedLogitsRunner(np.log(prior), character=20, traits=[10, 11], boost=np.log(20.0))  # knows tag20 only
    out: dict[str, float] = {}
    evaluator.traits(runner, truth, out)
    assert out["count.traits.rarest_quarter.max_posts"] == 5.0  # the quarter is character 23 alone
    assert out["model.traits.rarest_quarter.r_precision"] == 0.0 < out["model.traits.r_precision"]
    assert out["baseline.traits.rarest_quarter.r_precision"] == 1.0  # counts find its traits from 5 posts
    # the model with the counts: the counts lift the traits the model does not know, the model's knowledge stays
    assert out["with_counts.traits.r_precision"] == 1.0 == out["with_counts.traits.rarest_quarter.r_precision"]


def test_with_counts_averages_the_two_log_scores_and_keeps_excluded_tags_out():
    from booru_embed.ranking import COSINE_FLOOR, with_counts

    distinctive = np.array([[-np.inf, -1.0, -2.0, -3.0]], dtype=np.float32)
    related = np.array([[0.9, 0.0, 0.5, 1.0]], dtype=np.float32)
    fused = with_counts(distinctive, related)
    assert fused.dtype == np.float32 and np.isneginf(fused[0, 0])  # an excluded tag stays excluded
    np.testing.assert_allclose(fused[0, 1:], 0.5 * np.array([-1.0 + np.log(COSINE_FLOOR), -2.0 + np.log(0.5), -3.0]),
                               rtol=1e-6)
    assert np.argsort(-fused[0])[0] == 2  # neither side's favourite wins alone: the mean decides


class PrefixRunner:
    """Stands in for ``ModelRunner``: embeddings whose first 2 dims say the post's trait pair, the rest noise."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.model = SimpleNamespace(config=SimpleNamespace(nested_dims=[2]))
        self.rng = np.random.default_rng(0)

    def run(self, sequences, *outputs):
        vectors = []
        for ids, _ in sequences:
            trait = [t for t in ids.tolist() if 10 <= t < 18][0] // 2  # the character's trait pair, 5..8
            vectors.append(np.concatenate([[np.cos(trait), np.sin(trait)], 3 * self.rng.standard_normal(30)]))
        return {"embeddings": np.array(vectors)}


def test_model_retrieval_is_reported_for_each_nested_prefix():
    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=100)
    out: dict[str, float] = {}
    evaluator.retrieval(PrefixRunner(), out, 6, "character")
    assert out["model.retrieval.character.dim2.recall@10"] == 1.0  # the prefix alone separates the characters
    assert out["model.retrieval.character.recall@10"] < 0.9  # the noisy full width does not
