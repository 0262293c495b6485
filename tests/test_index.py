"""The search index (booru-embed index / search, PostIndex) on the tiny model folder and its DATA_DIR."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.embedder import BooruEmbedder
from booru_embed.errors import UsageError
from booru_embed.index import PostIndex, build_faiss_index, index_parameters, post_tags
from tiny_model import build_tiny_model, tiny_posts

pytest.importorskip("faiss", reason="faiss-cpu (the index extra) is not installed")

SHARD = 50  # 120 posts -> shards of 50, 50, 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def data_dir(model_dir: Path) -> Path:
    return model_dir.parent / "data"


@pytest.fixture(scope="module")
def exact_dir(model_dir: Path, data_dir: Path) -> Path:
    output = model_dir.parent / "exact"
    assert main(["index", str(model_dir), "--dataset", str(data_dir), "--output", str(output),
                 "--shard-size", str(SHARD), "--kind", "exact"]) == 0
    return output


def shard_vectors(folder: Path) -> np.ndarray:
    return np.concatenate([np.load(folder / "shards" / f"{n:05d}.npy") for n in range(3)])


def test_index_folder_layout(exact_dir: Path, model_dir: Path) -> None:
    info = json.loads((exact_dir / "index_info.json").read_text())
    assert info["count"] == 120 and info["dim"] == 48 and info["kind"] == "exact" and info["split"] == "train"
    assert info["model_dir"] == str(model_dir.resolve()) and info["shards_embedded_this_run"] == 3
    np.testing.assert_array_equal(np.load(exact_dir / "ids.npy"), np.arange(120))
    vectors = shard_vectors(exact_dir)
    assert vectors.shape == (120, 48)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_post_finds_itself_first_and_results_match_brute_force(exact_dir: Path) -> None:
    posts = tiny_posts()
    index = PostIndex.load(exact_dir)
    chosen = [0, 7, 61, 119]
    results = index.search([post_tags(posts[i]) for i in chosen], top_k=5, mode="dense")
    vectors = shard_vectors(exact_dir)
    for number, hits in zip(chosen, results):
        assert [hit.id for hit in hits][0] == number and hits[0].tags == post_tags(posts[number])
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        brute = vectors @ vectors[number]
        np.testing.assert_allclose(scores, np.sort(brute)[::-1][:5], atol=1e-5)
    # the same query as a dict by category gives the same embedding, so the same hits
    as_dict = {key: value for key, value in posts[7].items() if key != "id"}
    assert [hit.id for hit in index.search(as_dict, top_k=5, mode="dense")[0]] == [hit.id for hit in results[1]]


def test_search_embeddings_caps_top_k_and_checks_shape(exact_dir: Path) -> None:
    index = PostIndex.load(exact_dir)
    hits = index.search_embeddings(shard_vectors(exact_dir)[:2] * 3.0, top_k=500)  # rows normalised first
    assert [len(row) for row in hits] == [120, 120] and [row[0].id for row in hits] == [0, 1]
    assert sorted(hit.id for hit in hits[0]) == list(range(120))
    with pytest.raises(ValueError, match=r"shape \(n, 48\)"):
        index.search_embeddings(np.zeros((1, 16)), top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        index.search_embeddings(shard_vectors(exact_dir)[:1], top_k=0)


def test_search_command_json_and_table(exact_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query = post_tags(tiny_posts()[42])
    assert main(["search", str(exact_dir), query, "--top-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(set(row) == {"id", "score", "tags"} for row in rows)
    assert rows[0]["id"] == 42 and rows[0]["tags"] == query
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    assert main(["search", str(exact_dir), query, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split("  ")[1:] == ["42", query]


def test_resume_after_an_interruption_embeds_only_the_missing_shards(
        exact_dir: Path, model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded: list[int] = []
    original = BooruEmbedder.embed

    def interrupted(self: BooruEmbedder, tagsets: list, **kwargs: object) -> np.ndarray:
        if "batch_size" in kwargs:  # a shard's posts (the fusion weight's validation cases come first, without it)
            if len(embedded) == 1:
                raise KeyboardInterrupt
            embedded.append(len(tagsets))
        return original(self, tagsets, **kwargs)

    output = tmp_path / "index"
    command = ["index", str(model_dir), "--dataset", str(data_dir), "--output", str(output), "--shard-size", str(SHARD)]
    monkeypatch.setattr(BooruEmbedder, "embed", interrupted)
    assert main(command) == 130
    assert (output / "shards" / "00000.npy").is_file() and not (output / "shards" / "00001.npy").exists()
    assert not (output / "index_info.json").exists()
    with pytest.raises(UsageError, match="is not an index folder"):
        PostIndex.load(output)

    def counting(self: BooruEmbedder, tagsets: list, **kwargs: object) -> np.ndarray:
        if "batch_size" in kwargs:
            embedded.append(len(tagsets))
        return original(self, tagsets, **kwargs)

    monkeypatch.setattr(BooruEmbedder, "embed", counting)
    assert main(command) == 2  # an existing folder needs --resume
    assert main([*command, "--resume"]) == 0
    assert embedded == [50, 50, 20]
    np.testing.assert_array_equal(np.load(output / "ids.npy"), np.load(exact_dir / "ids.npy"))
    np.testing.assert_allclose(shard_vectors(output), shard_vectors(exact_dir), atol=1e-6)
    resumed, fresh = PostIndex.load(output), PostIndex.load(exact_dir)
    query = shard_vectors(exact_dir)[:5]
    assert [[h.id for h in row] for row in resumed.search_embeddings(query, 10)] == \
        [[h.id for h in row] for row in fresh.search_embeddings(query, 10)]
    info = json.loads((output / "index_info.json").read_text())
    assert info["shards_embedded_this_run"] == 2
    # a later --resume with another kind re-uses every shard
    assert main([*command, "--resume", "--kind", "hnsw"]) == 0
    assert embedded == [50, 50, 20] and json.loads((output / "index_info.json").read_text())["kind"] == "hnsw"


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // 20, dim))
    points = centres[rng.integers(0, len(centres), count)] + 0.3 * rng.standard_normal((count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_agree_with_exact_search(kind: str) -> None:
    vectors, queries = clustered(3000, 32, seed=0), clustered(100, 32, seed=1)
    chunks = [vectors[:1200], vectors[1200:]]  # built shard by shard, as from disk
    exact = build_faiss_index("exact", chunks, {})
    approximate = build_faiss_index(kind, chunks, index_parameters(kind, len(vectors)))
    _, truth = exact.search(queries, 10)
    _, found = approximate.search(queries, 10)
    np.testing.assert_array_equal(np.sort(truth, axis=1), np.sort(np.argsort(-(queries @ vectors.T), axis=1)[:, :10], axis=1))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.9


@pytest.mark.parametrize("kind, flags, expected", [
    ("hnsw", ["--hnsw-m", "8", "--ef-search", "40"], {"m": 8, "ef_construction": 40, "ef_search": 40}),
    ("ivf", ["--nlist", "3", "--nprobe", "2"], {"nlist": 3, "nprobe": 2, "train_size": 120}),
])
def test_approximate_index_commands(kind: str, flags: list[str], expected: dict, exact_dir: Path, model_dir: Path,
                                    data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / kind
    assert main(["index", str(model_dir), "--dataset", str(data_dir), "--output", str(output), "--kind", kind,
                 *flags]) == 0
    info = json.loads((output / "index_info.json").read_text())
    assert info["kind"] == kind and info["parameters"] == expected
    queries = shard_vectors(exact_dir)[::6]
    found = PostIndex.load(output).search_embeddings(queries, 10)
    truth = PostIndex.load(exact_dir).search_embeddings(queries, 10)
    assert [row[0].id for row in found] == list(range(0, 120, 6))
    recall = np.mean([len({h.id for h in f} & {h.id for h in t}) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.8


def test_bad_inputs_are_one_line_errors(exact_dir: Path, model_dir: Path, data_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1
        return message

    out = str(tmp_path / "new")
    base = ["--dataset", str(data_dir), "--output", out]
    assert "not a model folder" in error("index", str(tmp_path / "no-model"), *base)
    assert "not a DATA_DIR" in error("index", str(model_dir), "--dataset", str(tmp_path), "--output", out)
    assert "--split 'valid' is not in" in error("index", str(model_dir), *base, "--split", "valid")
    assert "--dim: dim must be an integer from 1 to 48" in error("index", str(model_dir), *base, "--dim", "64")
    assert "--nprobe does not apply to a hnsw index" in error("index", str(model_dir), *base, "--kind", "hnsw",
                                                             "--nprobe", "4")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "non-empty folder that holds no index" in error("index", str(model_dir), "--dataset", str(data_dir),
                                                          "--output", str(tmp_path / "other"))
    copy = tmp_path / "copy"
    shutil.copytree(exact_dir, copy)
    assert "built with other settings (dim 48 now 32)" in error(
        "index", str(model_dir), "--dataset", str(data_dir), "--output", str(copy), "--shard-size", str(SHARD),
        "--dim", "32", "--resume")
    assert "is not an index folder" in error("search", str(tmp_path / "other"), "1girl")
    assert "--top-k must be at least 1" in error("search", str(exact_dir), "1girl", "--top-k", "0")
    assert "the tag set is empty" in error("search", str(exact_dir), " , ")
    assert "not a model folder" in error("search", str(exact_dir), "1girl", "--model", str(tmp_path / "no-model"))
    assert not (tmp_path / "new").exists()


def test_missing_faiss_is_a_usage_error(exact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(UsageError, match=r"pip install booru-embed\[index\]"):
        PostIndex.load(exact_dir)


def test_automatic_kind_is_exact_for_small_indexes_and_ivf_for_large() -> None:
    from booru_embed.index import EXACT_MAX_POSTS, choose_kind

    assert choose_kind("auto", 120) == "exact" and choose_kind("auto", EXACT_MAX_POSTS) == "exact"
    assert choose_kind("auto", EXACT_MAX_POSTS + 1) == "ivf" and choose_kind("hnsw", 120) == "hnsw"
    parameters = index_parameters("ivf", 1_000_000)
    assert parameters == {"nlist": 4000, "nprobe": 64, "train_size": 160_000}
    with pytest.raises(UsageError, match="--kind must be one of"):
        choose_kind("flat", 10)
