"""Read-back metrics: the model's read-back beside the linear code of the same width (evaluation/readback.py)."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from booru_embed.evaluation import Evaluator
from booru_embed.evaluation.readback import LinearCode

from test_evaluation import INFO, NAMES, clustered_posts

VOCAB = len(INFO.token_categories)
CANDIDATES = INFO.tag_candidates()


class PlantedRunner:
    """Stands in for ``ModelRunner``: the embedding is the post's binary tag vector (``keep``) or noise, and
    the read-back head reads it back as it is (``keep``) or scores at random."""

    def __init__(self, keep: bool, widths: list[int]) -> None:
        from types import SimpleNamespace

        self.keep = keep
        self.rng = np.random.default_rng(0)
        self.model = SimpleNamespace(config=SimpleNamespace(nested_dims=widths[:-1], embedding_dim=widths[-1]))

    def run(self, sequences, *outputs):
        vectors = np.zeros((len(sequences), VOCAB), dtype=np.float32)
        for row, (ids, _) in enumerate(sequences):
            vectors[row, ids[CANDIDATES[ids]]] = 1.0
        if not self.keep:
            vectors = self.rng.standard_normal(vectors.shape).astype(np.float32)
        return {"embeddings": vectors, "rating": np.zeros((len(sequences), 4)), "score": np.zeros((len(sequences), 2))}

    def readback(self, embeddings):
        scores = np.zeros((len(embeddings), VOCAB), dtype=np.float32)
        scores[:, : embeddings.shape[1]] = embeddings if self.keep else self.rng.random(embeddings.shape)
        return scores


def readback_metrics(keep: bool) -> dict[str, float]:
    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=100)
    out: dict[str, float] = {}
    evaluator.readback_and_classification(PlantedRunner(keep, [14, VOCAB]), out, [14, VOCAB])
    return out


def test_an_embedding_that_keeps_the_post_reads_it_back_whole():
    out = readback_metrics(keep=True)
    assert out["model.readback.dim28.micro_f1"] == 1.0
    assert out["model.readback.dim28.character_share"] == 1.0
    for group in ("general", "artist", "character", "top2000"):
        assert out[f"model.readback.dim28.{group}.micro_f1"] == 1.0
    # the first 14 columns hold none of the tags (10..27) but 10..13: the wider code adds the rest
    assert out["model.readback.dim14.micro_f1"] < 0.5
    assert out["model.readback.dim28.added_micro_f1"] > 0.5
    # the linear code at full rank (18 tags in use <= 28) reconstructs every post exactly
    assert out["linear.readback.dim28.micro_f1"] > 0.999
    assert out["linear.readback.dim28.character_share"] == 1.0


def test_a_random_embedding_reads_back_at_chance():
    out = readback_metrics(keep=False)
    chance = 5 / CANDIDATES.sum()  # 5 tags a post among the 18 candidate tags
    assert abs(out["model.readback.dim28.micro_f1"] - chance) < 0.08
    assert out["model.readback.dim28.character_share"] < 0.6
    assert out["linear.readback.dim28.micro_f1"] > 0.999  # the baseline does not depend on the model


def test_the_baseline_side_alone_reports_the_linear_code_at_the_default_widths():
    evaluator = Evaluator(INFO, clustered_posts(400, 0), clustered_posts(120, 1), NAMES.get, max_posts=100)
    metrics = evaluator.run(None)
    assert not any(k.startswith("model.readback") for k in metrics)
    for width in (32, 64, 128):
        assert metrics[f"linear.readback.dim{width}.micro_f1"] > 0.999
    assert metrics["linear.readback.dim64.added_micro_f1"] == 0.0


def test_linear_code_is_the_truncated_svd_of_the_binary_tag_vectors():
    rng = np.random.default_rng(3)
    dense = (rng.random((300, 40)) < rng.random(40) * 0.3).astype(np.float32)
    dense[:, 35:] = 0  # tags no post holds keep a zero row
    incidence = sparse.csr_matrix(dense * 2)  # counts: the code binarises them
    code = LinearCode(incidence, 6, seed=0)
    _, singular, vt = np.linalg.svd(dense, full_matrices=False)
    for width in (2, 6):
        # the rank-D projection's squared error is within 2% of the optimum (Eckart-Young: the dropped spectrum)
        basis = code.basis[:, :width]
        error = np.square(dense - dense @ basis @ basis.T).sum()
        assert error <= 1.02 * np.square(singular[width:]).sum()
        np.testing.assert_allclose(basis.T @ basis, np.eye(width), atol=1e-4)
    assert not code.basis[35:].any()
    posts = [np.flatnonzero(row) for row in dense[:5]]
    np.testing.assert_allclose(code.scores(posts, 6), dense[:5] @ code.basis @ code.basis.T, atol=1e-5)
    full = LinearCode(incidence, 35, seed=0)  # every column in use: the projection is the identity
    np.testing.assert_allclose(full.scores(posts, 35), dense[:5], atol=1e-4)
