"""The index's sparse half and hybrid search: round trip, --mode on the command line, old folders without it."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.data.splits import open_split
from booru_embed.errors import UsageError
from booru_embed.evaluation.hybrid_retrieval import setting_name
from booru_embed.index import PostIndex, post_tags
from booru_embed.sparse_index import training_lift
from booru_embed.sparse_vectors import SPARSE_SETTINGS, fuse, unit_rows
from tiny_model import build_tiny_model, tiny_posts

pytest.importorskip("faiss", reason="faiss-cpu (the index extra) is not installed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def build(model_dir: Path, name: str, *flags: str) -> Path:
    output = model_dir.parent / name
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["index", str(model_dir), "--dataset", str(model_dir.parent / "data"), "--output", str(output),
                     "--shard-size", "50", *flags]) == 0
    return output


@pytest.fixture(scope="module")
def exact_dir(model_dir: Path) -> Path:
    return build(model_dir, "exact", "--kind", "exact")


def test_the_index_holds_both_parts_and_reads_them_back(exact_dir: Path) -> None:
    info = json.loads((exact_dir / "index_info.json").read_text())
    sparse_info = info["sparse"]
    chosen = (sparse_info["idf_power"], sparse_info["terms"], sparse_info["subject_weight"], sparse_info["lift"])
    assert chosen in SPARSE_SETTINGS and sparse_info["lift_file"] == "subject_lift.npy"
    # the tiny model has no held-out slice: seeded training posts choose the vector's settings, the weight stays fixed
    assert sparse_info["validation"] == "training" and sparse_info["validation_posts"] == len(tiny_posts())
    assert set(sparse_info["validation_recall@10"]) == {setting_name(*setting, 0.9) for setting in SPARSE_SETTINGS}
    assert info["fusion_weight"] == 0.9 and sparse_info["nonzeros_per_post"] > 1
    index = PostIndex.load(exact_dir)
    assert index.default_mode == "hybrid" and index.fusion_weight == info["fusion_weight"]
    stored = index.postings.matrix.tocsr()
    # the stored lift is the training posts' (the seeded validation posts left out), applied where it was chosen
    lift = np.load(exact_dir / "subject_lift.npy")
    training = open_split(Path(index.model_dir).parent / "data", "train")
    assert lift.shape == (len(index.embedder.tokenizer),)
    assert lift.max() > lift.min()  # the subjects told some tags apart
    np.testing.assert_allclose(lift, training_lift(index.embedder.tokenizer, training, np.zeros(0, dtype=np.int64)))
    expected = unit_rows(index.embedder.embed_sparse([post_tags(p) for p in tiny_posts()], terms=sparse_info["terms"],
                                                     scale=sparse_info["scale"], power=sparse_info["idf_power"],
                                                     subject_weight=sparse_info["subject_weight"],
                                                     lift_weights=lift if sparse_info["lift"] else None))
    np.testing.assert_allclose(stored.toarray(), expected.toarray(), atol=1e-5)
    np.testing.assert_allclose(index.sparse_queries([post_tags(p) for p in tiny_posts()]).toarray(),
                               expected.toarray(), atol=1e-5)
    assert stored.shape[0] == 120 and np.allclose(np.sqrt(stored.multiply(stored).sum(axis=1)), 1.0, atol=1e-5)


def test_an_index_without_its_subject_lift_file_is_a_usage_error(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(build(model_dir, "lifted", "--kind", "exact"), folder)
    info = json.loads((folder / "index_info.json").read_text())
    info["sparse"]["lift"] = 1.0  # as if the validation posts had chosen the lift
    (folder / "index_info.json").write_text(json.dumps(info))
    (folder / "subject_lift.npy").unlink()
    with pytest.raises(UsageError, match="lacks subject_lift.npy"):
        PostIndex.load(folder)


def test_each_mode_ranks_by_its_own_score(exact_dir: Path) -> None:
    index = PostIndex.load(exact_dir)
    posts = tiny_posts()
    queries = [post_tags(posts[i]) for i in (3, 50, 118)]
    dense = index.embedder.embed(queries)
    lexical = index.sparse_queries(queries)
    vectors = np.concatenate(index._shard_vectors())
    stored = index.postings.matrix.tocsr()
    for mode in ("dense", "sparse", "hybrid"):
        results = index.search(queries, top_k=7, mode=mode)
        for row, hits in enumerate(results):
            dense_scores = vectors @ dense[row]
            sparse_scores = (stored @ lexical[row].T).toarray().ravel()
            expected = {"dense": dense_scores, "sparse": sparse_scores,
                        "hybrid": fuse(dense_scores, sparse_scores, index.fusion_weight)}[mode]
            np.testing.assert_allclose([h.score for h in hits], np.sort(expected)[::-1][:7], atol=1e-5)
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)  # the post itself, whatever the mode
    assert [h.id for h in index.search(queries[0], top_k=7)[0]] == [h.id for h in index.search(queries[0], 7, "hybrid")[0]]
    assert index.search("no_such_tag", top_k=5, mode="sparse") == [[]]  # no vocabulary tag: nothing shares a tag
    assert len(index.search("no_such_tag", top_k=5, mode="hybrid")[0]) == 5  # the dense side still answers
    with pytest.raises(ValueError, match="mode must be one of"):
        index.search(queries, mode="lexical")


def test_an_approximate_kind_fuses_the_same_hits_as_exact_on_a_small_index(model_dir: Path, exact_dir: Path) -> None:
    ivf = PostIndex.load(build(model_dir, "ivf", "--kind", "ivf", "--nlist", "4", "--nprobe", "4"))
    exact = PostIndex.load(exact_dir)
    queries = [post_tags(p) for p in tiny_posts()[:6]]
    for got, want in zip(ivf.search(queries, top_k=10), exact.search(queries, top_k=10)):
        assert [h.id for h in got] == [h.id for h in want]  # 200 candidates a side cover all 120 posts


def test_the_seismic_engine_finds_what_exact_scoring_finds_on_a_small_index(
        model_dir: Path, exact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("seismic", reason="pyseismic-lsr (the index extra) is not installed")
    from booru_embed import sparse_index
    from booru_embed.sparse_index import SeismicPostings, seismic_path

    monkeypatch.setattr(sparse_index, "SEISMIC_PART_POSTS", 50)  # 120 posts: three parts of 40
    folder = build(model_dir, "seismic", "--kind", "ivf", "--nlist", "4", "--nprobe", "4", "--sparse-engine", "seismic")
    info = json.loads((folder / "index_info.json").read_text())
    assert info["sparse"]["engine"] == "seismic" and info["sparse"]["seismic"]["parts"] == 3
    assert all(seismic_path(folder, part).is_file() for part in range(3))
    seismic, exact = PostIndex.load(folder), PostIndex.load(exact_dir)
    assert isinstance(seismic.postings, SeismicPostings) and len(seismic.postings) == 120
    assert len(seismic.postings.indexes) == 3 and sparse_index.seismic_parts(120) == [(0, 40), (40, 80), (80, 120)]
    queries = [post_tags(p) for p in tiny_posts()[:8]] + ["no_such_tag"]
    for mode in ("sparse", "hybrid"):
        for got, want in zip(seismic.search(queries, top_k=10, mode=mode), exact.search(queries, top_k=10, mode=mode)):
            # 200 candidates cover all 120 posts, each scored exactly: the same hits and scores
            assert [h.id for h in got] == [h.id for h in want], mode
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def test_the_sparse_engine_is_chosen_by_size_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from booru_embed import sparse_index

    monkeypatch.setattr(sparse_index, "_seismic", lambda: object())
    assert sparse_index.choose_engine("auto", sparse_index.SEISMIC_MIN_POSTS) == "exact"
    assert sparse_index.choose_engine("auto", sparse_index.SEISMIC_MIN_POSTS + 1) == "seismic"
    with pytest.raises(UsageError, match="--sparse-engine must be one of auto, exact, seismic"):
        sparse_index.choose_engine("wand", 10)
    monkeypatch.setattr(sparse_index, "_seismic", lambda: None)
    assert sparse_index.choose_engine("auto", 10**8) == "exact"  # not installed: exact scoring at any size
    with pytest.raises(UsageError, match="needs pyseismic-lsr"):
        sparse_index.choose_engine("seismic", 10)


def test_the_fusion_weight_is_a_flag_of_index(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = build(model_dir, "weighted", "--kind", "exact", "--fusion-weight", "0.5")
    info = json.loads((folder / "index_info.json").read_text())
    assert info["fusion_weight"] == 0.5 and set(info["sparse"]["validation_recall@10"]) == {
        setting_name(*setting, 0.5) for setting in SPARSE_SETTINGS}
    assert PostIndex.load(folder).fusion_weight == 0.5
    assert main(["index", str(model_dir), "--dataset", str(model_dir.parent / "data"), "--output",
                 str(model_dir.parent / "bad"), "--fusion-weight", "1.5"]) == 2
    assert "--fusion-weight: the fusion weight must lie in [0, 1], got 1.5" in capsys.readouterr().err


def test_a_held_out_slice_chooses_the_fusion_weight_on_its_posts(tmp_path: Path) -> None:
    from booru_embed.data.validation_slice import write_validation_ids
    from booru_embed.sparse_vectors import FUSION_WEIGHTS

    model_dir = build_tiny_model(tmp_path)
    held_out = np.arange(0, 120, 4)  # post ids of the train split; 999 is in none and is passed over
    write_validation_ids(model_dir, np.append(held_out, 999), seed=0)
    info = json.loads((build(model_dir, "chosen", "--kind", "exact") / "index_info.json").read_text())
    sparse_info = info["sparse"]
    assert sparse_info["validation"] == "held-out" and sparse_info["validation_posts"] == len(held_out)
    # the held-out posts' subjects stay out of the lift the settings are chosen with
    training = open_split(model_dir.parent / "data", "train")
    tokenizer = PostIndex.load(model_dir.parent / "chosen").embedder.tokenizer
    stored = np.load(model_dir.parent / "chosen" / "subject_lift.npy")
    np.testing.assert_allclose(stored, training_lift(tokenizer, training, held_out))
    assert not np.allclose(stored, training_lift(tokenizer, training, held_out[:0]))
    recalls = sparse_info["validation_recall@10"]
    assert {setting_name(*setting, w) for setting in SPARSE_SETTINGS for w in FUSION_WEIGHTS} == set(recalls)
    chosen = setting_name(sparse_info["idf_power"], sparse_info["terms"], sparse_info["subject_weight"],
                          sparse_info["lift"], info["fusion_weight"])
    assert recalls[chosen] == max(recalls.values())


def test_qdrant_holds_both_vectors_and_searches_like_the_index(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    from booru_embed.qdrant_store import open_client, search_qdrant

    folder = build(model_dir, "with-qdrant", "--kind", "exact", "--qdrant", str(tmp_path / "qdrant"),
                   "--qdrant-collection", "posts")
    info = json.loads((folder / "index_info.json").read_text())
    assert info["qdrant"] == {"target": str(tmp_path / "qdrant"), "collection": "posts", "points": len(tiny_posts())}
    index = PostIndex.load(folder)
    queries = [post_tags(p) for p in tiny_posts()[3:6]]
    lexical = index.sparse_queries(queries)
    dense = index.embedder.embed(queries, dim=index.dim)
    client = open_client(str(tmp_path / "qdrant"))
    try:
        stored = client.retrieve("posts", [7], with_vectors=True)[0]  # post id 7 is row 7 of the index
        assert stored.payload["tags"] == post_tags(tiny_posts()[7])
        np.testing.assert_allclose(stored.vector["dense"], index._shard_vectors()[0][7], atol=1e-6)
        row = index.postings.matrix.tocsr()[7]
        assert stored.vector["sparse"].indices == row.indices.tolist()
        np.testing.assert_allclose(stored.vector["sparse"].values, row.data, atol=1e-6)
        for mode in ("dense", "sparse", "hybrid"):
            for row, hits in enumerate(index.search(queries, top_k=5, mode=mode)):
                got = search_qdrant(client, "posts", dense[row], lexical[row], index.fusion_weight, top_k=5, mode=mode)
                # the same scores in the same order (posts with equal scores may swap places), each with its own tags
                np.testing.assert_allclose([score for _, score, _ in got], [h.score for h in hits], atol=1e-4)
                by_id = {h.id: h.tags for h in index.search(queries, top_k=len(index), mode="dense")[row]}
                assert all(by_id[post_id] == tags for post_id, _, tags in got)
    finally:
        client.close()
    # a rerun upserts the same points
    build(model_dir, "with-qdrant", "--kind", "exact", "--resume", "--qdrant", str(tmp_path / "qdrant"),
          "--qdrant-collection", "posts")
    assert json.loads((folder / "index_info.json").read_text())["qdrant"]["points"] == len(tiny_posts())


def test_search_mode_on_the_command_line(exact_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = post_tags(tiny_posts()[9])
    for mode in ("dense", "sparse", "hybrid"):
        assert main(["search", str(exact_dir), query, "--mode", mode, "--top-k", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert hits[0]["id"] == 9 and len(hits) == 3
    with pytest.raises(SystemExit) as error:
        main(["search", str(exact_dir), query, "--mode", "lexical"])
    assert error.value.code == 2


def test_an_index_without_sparse_vectors_searches_dense_and_says_so(model_dir: Path, exact_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    old = build(model_dir, "old", "--kind", "exact")
    info = json.loads((old / "index_info.json").read_text())
    for key in ("sparse", "fusion_weight"):
        info.pop(key)
    (old / "index_info.json").write_text(json.dumps(info))
    (old / "sparse.npz").unlink()
    index = PostIndex.load(old)
    query = post_tags(tiny_posts()[4])
    assert index.default_mode == "dense"
    assert [h.id for h in index.search(query, top_k=5)[0]] == [h.id for h in PostIndex.load(exact_dir).search(query, 5, "dense")[0]]
    with pytest.raises(UsageError, match="built without sparse vectors"):
        index.search(query, mode="hybrid")
    assert main(["search", str(old), query, "--mode", "sparse"]) == 2
    assert "only --mode dense works" in capsys.readouterr().err
