"""Spectral initialisation of the token embeddings from tag co-counts."""

from __future__ import annotations

import datasets
import numpy as np
import torch

from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
import scipy.sparse as sp

from booru_embed.cooccurrence import cooccurrence_embeddings, top_eigenpairs
from booru_embed.training.cooccurrence_init import initialise_from_cooccurrence

VOCAB = 20
# tokens: 1 cls (category 0), 3 a rating token (category 1), 10-15 tags (category 3); 16-19 never seen
CATEGORY_OF = {1: 0, 3: 1, **{t: 3 for t in range(10, 16)}}
# tags 10 and 11 always go together, as do 12 and 13; 14 goes with both pairs; 15 is alone
POSTS = [[1, 3, 10, 11], [1, 3, 10, 11, 14], [1, 12, 13], [1, 12, 13, 14], [1, 3, 10, 11, 12, 13, 14], [1, 15, 15]]


def flat(posts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids``, ``categories`` and ``lengths`` of posts given as token lists."""
    ids = np.array([t for post in posts for t in post])
    return ids, np.array([CATEGORY_OF[t] for t in ids]), np.array([len(p) for p in posts])


def cosine_of_cocounts(posts: list[list[int]], tokens: list[int]) -> np.ndarray:
    """n(a, b) / sqrt(n(a) n(b)) over posts, straight from the definition."""
    has = np.array([[t in set(post) for t in tokens] for post in posts], dtype=float)
    together = has.T @ has
    counts = np.diag(together)
    return together / np.sqrt(np.outer(counts, counts))


def test_embedding_dot_products_are_the_cosine_of_co_counts():
    rows, seen = cooccurrence_embeddings(*flat(POSTS), vocab_size=VOCAB, dim=8, seed=0)
    tokens = [3, 10, 11, 12, 13, 14, 15]
    assert rows.shape == (VOCAB, 8) and rows.dtype == np.float32
    assert np.flatnonzero(seen).tolist() == tokens  # cls (special) and never-seen tokens are left out
    assert not rows[~seen].any()
    # 5 distinct column patterns among 7 tokens, and 6 posts allow rank 5: the match is exact
    np.testing.assert_allclose(rows[tokens] @ rows[tokens].T, cosine_of_cocounts(POSTS, tokens), atol=1e-5)


def test_a_repeated_token_counts_once_per_post_and_low_rank_keeps_the_strongest_structure():
    rows, _ = cooccurrence_embeddings(*flat(POSTS), vocab_size=VOCAB, dim=2, seed=0)
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    assert unit[10] @ unit[11] > 0.99 and unit[12] @ unit[13] > 0.99  # partners stay together at rank 2
    assert unit[10] @ unit[12] < 0.9
    full, _ = cooccurrence_embeddings(*flat(POSTS), vocab_size=VOCAB, dim=8, seed=0)
    assert abs(full[15] @ full[15] - 1.0) < 1e-5  # cosine of 15 with itself: [15, 15] is one post, not two


def test_the_gram_products_split_over_threads_give_the_one_thread_eigenpairs():
    rng = np.random.default_rng(0)
    matrix = sp.random(700, 40, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    gram = (matrix.T @ matrix).toarray()
    exact = np.sort(np.linalg.eigvalsh(gram))[::-1]
    # at full rank (40 columns) the range finder is exact; 700 rows in chunks of 64 are 11 chunks,
    # split over 1, 3 and more threads than chunks (a lost or doubled chunk changes the Gram matrix)
    for threads in (1, 3, 16):
        values, vectors = top_eigenpairs(matrix, 40, seed=0, chunk_rows=64, threads=threads)
        np.testing.assert_allclose(values, exact, rtol=1e-4)
        np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, gram, atol=1e-4 * np.abs(gram).max())


def test_posts_without_tags_leave_every_row_zero():
    rows, seen = cooccurrence_embeddings(*flat([[1], [1]]), vocab_size=VOCAB, dim=4, seed=0)
    assert not seen.any() and not rows.any()


def test_initialise_sets_the_seen_rows_of_both_matrices_at_the_random_rows_scale():
    config = BooruEmbedConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, embedding_dim=16, nested_dims=[8], tie_output_embeddings=False)
    torch.manual_seed(0)
    model = BooruEmbedForPreTraining(config)
    before_input = model.get_input_embeddings().weight.detach().clone()
    before_output = model.output_embeddings.weight.detach().clone()
    ids, categories, lengths = flat(POSTS)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    posts = datasets.Dataset.from_dict({
        "input_ids": [ids[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])],
        "category_ids": [categories[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])],
    })
    assert initialise_from_cooccurrence(model, posts, seed=0) == 7
    seen = [3, 10, 11, 12, 13, 14, 15]
    unseen = [i for i in range(VOCAB) if i not in seen]
    expected, _ = cooccurrence_embeddings(ids, categories, lengths, VOCAB, 16, seed=0)
    for matrix, before in ((model.get_input_embeddings().weight, before_input),
                           (model.output_embeddings.weight, before_output)):
        torch.testing.assert_close(matrix[unseen], before[unseen])
        assert torch.allclose(matrix[seen].norm(dim=1).mean(), before[seen].norm(dim=1).mean(), rtol=1e-4)
        cosine = torch.nn.functional.cosine_similarity(matrix[seen], torch.from_numpy(expected[seen]), dim=1)
        assert cosine.min() > 0.9999  # the co-occurrence rows, rescaled


def test_initialise_counts_a_sample_of_at_most_max_posts():
    config = BooruEmbedConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, embedding_dim=16, nested_dims=[8])
    model = BooruEmbedForPreTraining(config)
    categories = [[CATEGORY_OF[t] for t in post] for post in POSTS]
    posts = datasets.Dataset.from_dict({"input_ids": POSTS, "category_ids": categories})
    assert initialise_from_cooccurrence(model, posts, seed=0, max_posts=1) < 7  # no post has all 7 tokens
    assert initialise_from_cooccurrence(model, posts, seed=0, max_posts=len(POSTS)) == 7


def test_lift_rows_give_each_post_its_lift_weighted_tf_idf_code():
    """At full rank a post's summed rows, over the norm of its weighted vector, are an isometric code of its
    unit lift-weighted TF-IDF vector: the codes' inner products are those vectors' cosines."""
    from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS
    from booru_embed.sparse_vectors import idf_weights, subject_lift_weights, unit_rows
    from booru_embed.training.cooccurrence_init import lift_rows

    character = CATEGORY_IDS["character"]
    category_of = {**CATEGORY_OF, 16: character, 17: character}
    posts = [[1, 3, 10, 11, 16], [1, 10, 11, 16], [1, 12, 13, 17], [1, 12, 13, 14, 17], [1, 10, 14, 16], [1, 15, 17]]
    ids = np.array([t for post in posts for t in post])
    categories = np.array([category_of[t] for t in ids])
    lengths = np.array([len(p) for p in posts])
    rows, seen = lift_rows(ids, categories, lengths, VOCAB, dim=16, seed=0)
    assert np.flatnonzero(seen).tolist() == [3, 10, 11, 12, 13, 14, 15, 16, 17] and not rows[~seen].any()
    incidence = sp.csr_matrix(np.array([[t in set(post) and t != 1 for t in range(VOCAB)] for post in posts], dtype=np.float32))
    token_categories = np.zeros(VOCAB, dtype=np.int64)
    token_categories[ids] = categories
    counts = np.asarray(incidence.sum(axis=0)).ravel()
    weights = idf_weights(counts, len(posts)) * subject_lift_weights(incidence, token_categories)
    weighted = incidence.toarray() * weights
    codes = incidence.toarray() @ rows / np.linalg.norm(weighted, axis=1, keepdims=True)
    unit = np.asarray(unit_rows(weighted))
    np.testing.assert_allclose(codes @ codes.T, unit @ unit.T, atol=1e-4)
    assert weights[10] > weights[14]  # 10 comes with character 16 alone, 14 with both characters
