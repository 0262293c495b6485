"""BooruEmbedder.embed_sparse and the sparse-vector maths: present tags at their idf, expansion, edge cases, ONNX parity."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from booru_embed.embedder import BooruEmbedder
from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS
from booru_embed.sparse_vectors import (LIFT_FLOOR, column_weighted, fuse, hybrid_rows, idf_weights, sparse_rows,
                                        subject_column_weights, subject_lift_weights, unit_rows)
from tiny_model import build_tiny_model

POSTS = ["1girl solo smile", "skirt", "1girl long_hair blue_hair cat_ears usada_pekora hololive rating:g",
         "hatsune_miku vocaloid 1girl open_mouth :d ^_^ null highres score:12", "artist_3 skirt"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> BooruEmbedder:
    return BooruEmbedder.from_pretrained(model_dir, device="cpu")


def present_ids(embedder: BooruEmbedder, tagset: str) -> set[int]:
    return {embedder.tokenizer.tag_to_id(tag) for tag in tagset.split() if embedder.tokenizer.tag_to_id(tag) is not None}


def test_idf_matches_the_tfidf_baseline_formula() -> None:
    idf = idf_weights([0, 9, 99], 99)
    np.testing.assert_allclose(idf, np.log(100 / np.array([1, 10, 100])) + 1, rtol=1e-6)


def test_present_tags_get_their_idf_and_rarer_tags_weigh_more(embedder: BooruEmbedder) -> None:
    vectors = embedder.embed_sparse(POSTS, terms=0, power=1.0)
    assert sparse.isspmatrix_csr(vectors) and vectors.dtype == np.float32
    assert vectors.shape == (len(POSTS), len(embedder.tokenizer))
    for row, tagset in enumerate(POSTS):
        ids = sorted(present_ids(embedder, tagset))
        assert vectors[row].indices.tolist() == ids  # terms=0: the TF-IDF vector, rating and score left out
        np.testing.assert_allclose(vectors[row].data, embedder.idf[ids])
    counts = np.asarray(embedder.tokenizer.token_counts)
    one, solo = embedder.tokenizer.tag_to_id("1girl"), embedder.tokenizer.tag_to_id("artist_3")
    assert counts[one] > counts[solo] and embedder.idf[one] < embedder.idf[solo]
    binary = embedder.embed_sparse(POSTS, terms=0, power=0.0)  # power 0: the plain tag set
    assert binary.indices.tolist() == vectors.indices.tolist() and np.all(binary.data == 1.0)
    root = embedder.embed_sparse(POSTS, terms=0)  # the default power 0.5
    np.testing.assert_allclose(root.data, np.sqrt(vectors.data), rtol=1e-6)


def test_expansion_adds_absent_tags_at_most_idf_and_never_a_present_one(embedder: BooruEmbedder) -> None:
    vectors = embedder.embed_sparse(POSTS, terms=5, scale=4.0, power=1.0)
    plain = embedder.embed_sparse(POSTS, terms=0, power=1.0)
    assert vectors.min() >= 0
    for row, tagset in enumerate(POSTS):
        ids = present_ids(embedder, tagset)
        columns = vectors[row].indices.tolist()
        assert len(columns) == len(set(columns))  # a tag is never repeated
        added = set(columns) - ids
        assert 0 < len(added) <= 5 and ids <= set(columns)
        assert all(embedder.tokenizer.tag_to_id(embedder.tokenizer.convert_ids_to_tokens(i)) == i for i in added)
        dense = vectors[row].toarray()[0]
        np.testing.assert_allclose(dense[sorted(ids)], plain[row].toarray()[0][sorted(ids)])  # present: idf
        assert np.all(dense[sorted(added)] <= embedder.idf[sorted(added)] + 1e-6)  # expansion: at most idf


def test_expansion_follows_the_masked_head_and_batches_agree(embedder: BooruEmbedder) -> None:
    tagset = POSTS[2]
    row = embedder.embed_sparse(tagset, terms=3, scale=1e6)  # every probable tag saturates at its idf ...
    suggested = {tag for tag, _ in embedder.suggest(tagset, top_k=50, expand_implications=False)}
    added = set(embedder.tokenizer.convert_ids_to_tokens(row.indices.tolist())) - set(tagset.split())
    assert added <= suggested  # ... so the expansion is the heaviest-idf tags among the head's guesses
    alone = sparse.vstack([embedder.embed_sparse(p, terms=4) for p in POSTS]).toarray()
    np.testing.assert_allclose(embedder.embed_sparse(POSTS, terms=4, batch_size=2).toarray(), alone, atol=1e-6)


def test_the_subject_weight_scales_the_character_and_artist_columns_only(embedder: BooruEmbedder) -> None:
    plain = embedder.embed_sparse(POSTS, terms=4)
    halved = embedder.embed_sparse(POSTS, terms=4, subject_weight=0.5)
    categories = np.asarray(embedder.tokenizer.token_categories)
    subjects = np.isin(categories, [CATEGORY_IDS["character"], CATEGORY_IDS["artist"]])
    assert halved.indices.tolist() == plain.indices.tolist()  # the same tags: expansion is picked before weighting
    touched = subjects[plain.indices]
    assert touched.any() and (~touched).any()  # usada_pekora, hatsune_miku, artist_3 and plain tags
    np.testing.assert_allclose(halved.data[touched], 0.5 * plain.data[touched], rtol=1e-6)
    np.testing.assert_array_equal(halved.data[~touched], plain.data[~touched])
    with pytest.raises(ValueError, match="subject weight must be non-negative"):
        embedder.embed_sparse(POSTS, subject_weight=-1.0)


def test_a_lower_subject_weight_lets_shared_traits_outrank_a_shared_artist() -> None:
    """A query without its character: one post shares its rare artist, the other two common traits. The
    idf-weighted cosine ranks the artist's post first; with the artist column halved, the traits' post."""
    categories = np.array([CATEGORY_IDS["general"]] * 3 + [CATEGORY_IDS["artist"]])  # 0, 1, 2 traits; 3 an artist
    idf = np.array([1.0, 1.0, 1.0, 2.0], dtype=np.float32)
    present = [np.array([0, 1, 3]), np.array([2, 3]), np.array([0, 1, 2])]  # query, artist's post, traits' post
    candidates = np.ones(4, dtype=bool)
    for weight, best in ((1.0, 1), (0.5, 2)):
        rows = unit_rows(sparse_rows(present, None, candidates, idf, terms=0, power=1.0,
                                     column_weights=subject_column_weights(categories, weight)))
        scores = (rows[0] @ rows[1:].T).toarray()[0]
        assert 1 + int(np.argmax(scores)) == best


def test_the_subject_lift_counts_pairs_of_posts_that_share_a_subject() -> None:
    general, character = CATEGORY_IDS["general"], CATEGORY_IDS["character"]
    categories = np.array([general] * 4 + [character] * 2)  # 0-3 general tags, 4 and 5 characters
    posts = [[0, 1, 4], [0, 1, 4], [0, 2, 5], [0, 2, 5], [0, 1, 5], [3, 4]]
    incidence = sparse.csr_matrix((np.ones(sum(map(len, posts))), (np.repeat(np.arange(6), [len(p) for p in posts]),
                                                                    np.concatenate(posts))), shape=(6, 6))
    weights = subject_lift_weights(incidence, categories, smoothing=0.0)
    np.testing.assert_allclose(subject_lift_weights(incidence, categories, smoothing=0.0, chunk=1), weights)
    rate = (3 * 2 + 3 * 2) / (6 * 5)  # characters 4 and 5 on three posts each
    lift = {0: (2 * 1 + 3 * 2) / (5 * 4) / rate,  # tag 0: on posts 0-4, two of character 4 and three of 5
            1: 2 * 1 / (3 * 2) / rate, 2: 2 * 1 / (2 * 1) / rate, 3: 1.0, 4: 1 / rate, 5: 1 / rate}
    for tag, value in lift.items():
        assert weights[tag] == pytest.approx(np.sqrt(max(np.log(value), 0.0) + LIFT_FLOOR), rel=1e-5), tag
    # tag 2 always comes with character 5; tag 1 (two posts of 4, one of 5) shares a subject less than posts do
    assert weights[2] > weights[1] == weights[0] == pytest.approx(np.sqrt(LIFT_FLOOR))
    # smoothed, a tag on a single post (3) says nothing: lift 1, the floor
    assert subject_lift_weights(incidence, categories)[3] == pytest.approx(np.sqrt(LIFT_FLOOR))
    # no two posts share a subject: every weight is the floor
    alone = subject_lift_weights(incidence[[0, 2]], categories)
    np.testing.assert_allclose(alone, np.sqrt(LIFT_FLOOR), rtol=1e-6)


def test_the_lift_finds_a_character_by_its_traits_where_idf_follows_rare_incidental_tags() -> None:
    """Characters 0-3 (tokens 40-43), each told by a common trait (tokens 0-3); 30 rare incidental tags
    (4-33), each on two posts of DIFFERENT characters. A query without its character: TF-IDF's heaviest
    tag is the rare incidental one, which leads to the other character; the lift weighs the trait."""
    rng = np.random.default_rng(0)
    categories = np.array([CATEGORY_IDS["general"]] * 40 + [CATEGORY_IDS["character"]] * 4)
    characters = np.repeat(np.arange(4), 30)
    rng.shuffle(characters)
    tags = [[int(c), 40 + int(c)] for c in characters]
    for incidental in range(4, 34):  # on one post of character a and one of character b != a
        a, b = rng.choice(4, size=2, replace=False)
        for c in (a, b):
            tags[int(rng.choice(np.flatnonzero(characters == c)))].append(incidental)
    rows = np.repeat(np.arange(len(tags)), [len(t) for t in tags])
    incidence = sparse.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(tags))), shape=(len(tags), 44))
    visible = [np.array([t for t in post if t < 40]) for post in tags]
    queries = [i for i, post in enumerate(visible) if len(post) > 1]  # those with an incidental tag
    idf = idf_weights(np.asarray(incidence.sum(axis=0)).ravel(), len(tags))
    candidates = np.ones(44, dtype=bool)
    plain = sparse_rows(visible, None, candidates, idf, terms=0, power=1.0)
    lifted = column_weighted({(1.0, 0): plain}, categories, subject_lift_weights(incidence, categories),
                             [(1.0, 0, 1.0, 1.0)])[(1.0, 0, 1.0, 1.0)]

    def nearest_is_same(vectors: sparse.csr_matrix) -> float:
        scores = (unit_rows(vectors) @ unit_rows(vectors).T).toarray()
        np.fill_diagonal(scores, -1)
        return float(np.mean([characters[np.argmax(scores[q])] == characters[q] for q in queries]))

    assert nearest_is_same(plain) < 0.2 and nearest_is_same(lifted) == 1.0
    with pytest.raises(ValueError, match="needs the lift weights"):
        column_weighted({(1.0, 0): plain}, categories, None, [(1.0, 0, 1.0, 1.0)])


def test_lift_weights_scale_the_columns_of_embed_sparse(embedder: BooruEmbedder) -> None:
    plain = embedder.embed_sparse(POSTS, terms=4)
    lift = np.random.default_rng(0).uniform(0.5, 2.0, len(embedder.tokenizer)).astype(np.float32)
    lifted = embedder.embed_sparse(POSTS, terms=4, subject_weight=0.5, lift_weights=lift)
    expected = plain.multiply(subject_column_weights(embedder.tokenizer.token_categories, 0.5) * lift).tocsr()
    np.testing.assert_allclose(lifted.toarray(), expected.toarray(), rtol=1e-6)
    with pytest.raises(ValueError, match="one weight per token"):
        embedder.embed_sparse(POSTS, lift_weights=lift[:-1])


def test_the_embedder_counts_the_subject_lift_of_its_own_posts(embedder: BooruEmbedder) -> None:
    posts = ["usada_pekora long_hair smile"] * 3 + ["hatsune_miku blue_hair smile no_such_tag"] * 3
    lift = embedder.subject_lift(posts)
    token = embedder.tokenizer.tag_to_id
    assert lift.shape == (len(embedder.tokenizer),)
    # smile is on every post: pairs of its posts share a character as often as any pair does (lift 1)
    assert lift[token("smile")] == pytest.approx(np.sqrt(LIFT_FLOOR))
    assert lift[token("long_hair")] > lift[token("smile")] and lift[token("blue_hair")] > lift[token("smile")]
    assert lift[token("usada_pekora")] >= lift[token("long_hair")]  # a character's own tag tells it best


def test_empty_and_unknown_tag_sets(embedder: BooruEmbedder) -> None:
    with pytest.raises(ValueError, match="tag set 1 is empty"):
        embedder.embed_sparse(["1girl", ""])
    vectors = embedder.embed_sparse(["no_such_tag another_unknown_tag", "no_such_tag smile"])
    assert vectors[0].nnz == 0  # nothing in the vocabulary: an all-zero row, only the dense vector finds it
    smile = embedder.tokenizer.tag_to_id("smile")
    assert smile in vectors[1].indices and vectors[1, smile] == pytest.approx(np.sqrt(embedder.idf[smile]))
    assert embedder.embed_sparse([]).shape == (0, len(embedder.tokenizer))


def test_sparse_rows_rejects_negative_settings() -> None:
    for setting in ({"terms": -1}, {"power": -0.5}):
        with pytest.raises(ValueError, match="non-negative"):
            sparse_rows([np.array([1])], None, np.ones(3, bool), np.ones(3, np.float32), **setting)


def test_hybrid_rows_are_the_convex_combination_of_cosines() -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((6, 4)).astype(np.float32)
    lexical = sparse.random(6, 9, density=0.4, random_state=1, dtype=np.float32)
    lexical = sparse.csr_matrix(lexical + sparse.eye(6, 9, dtype=np.float32))  # no empty row
    for weight in (0.0, 0.3, 1.0):
        rows = hybrid_rows(dense, lexical, weight)
        expected = fuse(unit_rows(dense) @ unit_rows(dense).T, (unit_rows(lexical) @ unit_rows(lexical).T).toarray(),
                        weight)
        np.testing.assert_allclose((rows @ rows.T).toarray(), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fuse(np.zeros(1), np.zeros(1), 1.5)


def test_onnx_backend_gives_the_same_sparse_vectors(model_dir: Path, embedder: BooruEmbedder) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
    pytest.importorskip("onnxscript", reason="onnxscript (the onnx extra) is not installed")
    from booru_embed.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["export-onnx", str(model_dir)]) == 0
    onnx_side = BooruEmbedder.from_pretrained(model_dir, backend="onnx").embed_sparse(POSTS, terms=6)
    torch_side = embedder.embed_sparse(POSTS, terms=6)
    assert (onnx_side != 0).toarray().tolist() == (torch_side != 0).toarray().tolist()  # the same expansion tags
    np.testing.assert_allclose(onnx_side.toarray(), torch_side.toarray(), atol=1e-4)
