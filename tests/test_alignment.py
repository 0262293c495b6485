"""booru-embed align and its outputs: pair files, the saved aligner, embed_external on both backends,
decode and search from the command line, resume, publish, and one-line errors. Tiny untrained model:
these tests check the plumbing; tests/test_alignment_quality.py checks what a trained model reaches."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from booru_embed.alignment.command import align
from booru_embed.alignment.fit import FitSettings, Phase
from booru_embed.alignment.pairs import read_pairs
from booru_embed.alignment.synthetic import write_synthetic_pairs
from booru_embed.cli import main
from booru_embed.embedder import BooruEmbedder
from booru_embed.errors import UsageError
from tiny_model import build_tiny_model

ABSENT = (10**9, 10**9 + 7)
FAST = ["--epochs", "3", "--hidden-dim", "32", "--batch-size", "32", "--negatives", "16", "--eval-posts", "50"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model, its DATA_DIR, a synthetic pair file (with two absent ids) and aligner ``img`` trained on it."""
    root = tmp_path_factory.mktemp("align")
    model_dir = build_tiny_model(root)
    pairs = write_synthetic_pairs(root / "data", root / "pairs.npz", dim=24, extra_ids=ABSENT)
    code, out, err = run_cli(["align", str(model_dir), "--pairs", str(pairs), "--dataset", str(root / "data"),
                              "--name", "img", *FAST])
    assert code == 0, err
    assert "2 of 122 post ids are in no split" in err and str(ABSENT[0]) in err
    assert "tag F1 at P=R on the test split: ceiling" in out
    return {"root": root, "model": model_dir, "data": root / "data", "pairs": pairs}


def test_aligner_folder_holds_weights_config_metrics_and_absent_ids(tiny: dict[str, Path]) -> None:
    folder = tiny["model"] / "aligners" / "img"
    assert {"config.json", "model.safetensors", "metrics.json", "absent_ids.txt"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert (config["input_dim"], config["output_dim"], config["arch"]) == (24, 48, "mlp")
    assert [int(line) for line in (folder / "absent_ids.txt").read_text().split()] == list(ABSENT)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["count.absent"] == 2 and metrics["count.train"] == 120 and metrics["count.test"] == 24
    assert metrics["count.train_used"] + metrics["count.holdout"] == 120
    for source in ("ceiling", "aligned", "probe"):
        for key in ("f1", "f1.general", "f1.artist", "f1.character", "f1.rare"):
            assert 0 <= metrics[f"{source}.{key}"] <= 1, (source, key)
    for key in ("cosine", "norm_diff", "bce_tags", "bce_readback", "mse_readback", "hit@10"):
        assert np.isfinite(metrics[f"aligned.{key}"]), key
    assert metrics["tagset.hit@10"] == 1.0  # the own tag set always finds its own post
    assert metrics["seconds.train"] > 0 and metrics["peak_memory_mb"] > 0


def test_pair_file_layouts_read_alike(tiny: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    ids, embs = read_pairs(tiny["pairs"])
    save_file({"ids": ids, "embs": embs}, str(tmp_path / "p.safetensors"))
    pq.write_table(pa.table({"id": ids, "embedding": list(embs)}), tmp_path / "p.parquet")
    for name in ("p.safetensors", "p.parquet"):
        got_ids, got_embs = read_pairs(tmp_path / name)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_embs, embs)


def test_embed_external_gives_unit_rows_that_decode_and_truncate(tiny: dict[str, Path]) -> None:
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    ids, embs = read_pairs(tiny["pairs"])
    vectors = embedder.embed_external(embs[:5], aligner="img")
    assert vectors.shape == (5, 48) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    short = embedder.embed_external(embs[:5], aligner="img", dim=16)
    np.testing.assert_allclose(short, vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True), atol=1e-6)
    assert len(embedder.decode(vectors, top_k=3)) == 5 and len(embedder.decode(short, top_k=3)[0]) == 3


def test_decode_command_reads_an_embedding_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    _, embs = read_pairs(tiny["pairs"])
    np.save(tmp_path / "img.npy", embs[:3])
    code, out, err = run_cli(["decode", str(tiny["model"]), "--embedding", str(tmp_path / "img.npy"),
                              "--aligner", "img", "--top-k", "4", "--json"])
    assert code == 0, err
    rows = json.loads(out)
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    assert rows == embedder.decode(embedder.embed_external(embs[:3], aligner="img"), top_k=4)
    np.save(tmp_path / "own.npy", embedder.embed(["1girl solo", "skirt"]))
    code, out, _ = run_cli(["decode", str(tiny["model"]), "--embedding", str(tmp_path / "own.npy"), "--top-k", "2"])
    assert code == 0 and len(out.splitlines()) == 2


def test_search_command_takes_image_embeddings(tiny: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from booru_embed.index import PostIndex, build_index

    build_index(tiny["model"], tiny["data"], tmp_path / "index", dim=32, device="cpu")
    ids, embs = read_pairs(tiny["pairs"])
    np.save(tmp_path / "img.npy", embs[:2])
    code, out, err = run_cli(["search", str(tmp_path / "index"), "--embedding", str(tmp_path / "img.npy"),
                              "--aligner", "img", "--top-k", "3", "--json"])
    assert code == 0, err
    lists = json.loads(out)
    index = PostIndex.load(tmp_path / "index", device="cpu")
    expected = index.search_embeddings(index.embedder.embed_external(embs[:2], aligner="img", dim=32), top_k=3)
    assert [[hit["id"] for hit in hits] for hits in lists] == [[hit.id for hit in hits] for hits in expected]
    code, _, err = run_cli(["search", str(tmp_path / "index"), "--aligner", "img"])
    assert code == 2 and "--aligner needs --embedding" in err


def test_resume_continues_to_the_same_weights(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load_file

    settings = FitSettings(epochs=3, hidden_dim=16, batch_size=32, negatives=16, checkpoint_every=2, probe=False)
    common = dict(model_dir=tiny["model"], pairs=tiny["pairs"], data_dir=tiny["data"], settings=settings, eval_posts=20)
    align(name="whole", **common)
    original = Phase._end_epoch

    def stop_after_first_epoch(self: Phase, bar: object) -> None:
        original(self, bar)
        raise KeyboardInterrupt

    monkeypatch.setattr(Phase, "_end_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        align(name="cut", **common)
    monkeypatch.setattr(Phase, "_end_epoch", original)
    with pytest.raises(UsageError, match="pass --resume"):
        align(name="cut", **common)
    align(name="cut", resume=True, **common)
    whole = load_file(str(tiny["model"] / "aligners" / "whole" / "model.safetensors"))
    cut = load_file(str(tiny["model"] / "aligners" / "cut" / "model.safetensors"))
    for key in whole:
        np.testing.assert_array_equal(whole[key], cut[key], err_msg=key)


def test_onnx_backend_matches_torch(tiny: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    code, out, err = run_cli(["export-onnx", str(tiny["model"])])
    assert code == 0, err
    assert "aligners/img.onnx" in out and (tiny["model"] / "onnx" / "aligners" / "img.onnx").is_file()
    _, embs = read_pairs(tiny["pairs"])
    torch_vectors = BooruEmbedder.from_pretrained(tiny["model"], device="cpu").embed_external(embs[:40], aligner="img")
    onnx_vectors = BooruEmbedder.from_pretrained(tiny["model"], backend="onnx").embed_external(embs[:40], aligner="img")
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-5)


LOAD_FROM_HUB = """
import sys, numpy as np
from booru_embed.embedder import BooruEmbedder
vectors = np.load(sys.argv[2])
out = {backend: BooruEmbedder.from_pretrained(sys.argv[1], backend=backend).embed_external(vectors, aligner="img")
       for backend in ("torch", "onnx")}
np.savez(sys.argv[3], **out)
"""


def test_publish_round_trip_through_the_hub(tiny: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    import huggingface_hub.constants

    from booru_embed.publish import publish
    from fake_hub import FakeHub

    if not (tiny["model"] / "onnx" / "aligners" / "img.onnx").is_file():
        assert run_cli(["export-onnx", str(tiny["model"])])[0] == 0
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    _, embs = read_pairs(tiny["pairs"])
    np.save(tmp_path / "img.npy", embs[:6])
    local = BooruEmbedder.from_pretrained(tiny["model"], device="cpu").embed_external(embs[:6], aligner="img")
    with FakeHub() as hub:
        publish(tiny["model"], "someone/aligned", token=hub.token, endpoint=hub.endpoint)
        files = set(hub.repos["someone/aligned"].files)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "fresh-hf-home")}
        result = subprocess.run([sys.executable, "-c", LOAD_FROM_HUB, "someone/aligned", str(tmp_path / "img.npy"),
                                 str(tmp_path / "out.npz")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"aligners/img/config.json", "aligners/img/model.safetensors", "aligners/img/metrics.json",
            "onnx/aligners/img.onnx"} <= files
    assert not any("checkpoints" in name for name in files)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["torch"], local, atol=1e-5)
    np.testing.assert_allclose(out["onnx"], local, atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("nan", "row(s) hold NaN or infinite values"),
    ("duplicate", "occur more than once"),
    ("empty_join", "none of the 3 post ids of --pairs is in"),
    ("other_dim", "the pairs hold 8-d vectors but aligner 'img' maps 24-d ones"),
    ("exists", "already exists"),
    ("bad_name", "aligner name must be"),
    ("suffix", "--pairs must end in"),
])
def test_align_bad_input_is_one_line(tiny: dict[str, Path], tmp_path: Path, case: str, message: str) -> None:
    ids, embs = read_pairs(tiny["pairs"])
    name, path = "img" if case in ("other_dim", "exists") else "fresh", tmp_path / "p.npz"
    if case == "nan":
        embs[3, 1] = np.nan
    elif case == "duplicate":
        ids[1] = ids[0]
    elif case == "empty_join":
        ids, embs = np.asarray([-1, -2, -3]), embs[:3]
    elif case == "other_dim":
        embs = embs[:, :8]
    elif case == "bad_name":
        name = "../up"
    elif case == "suffix":
        path = tmp_path / "p.csv"
        path.write_text("id,embedding\n")
    if path.suffix == ".npz":
        np.savez(path, ids=ids, embs=embs)
    code, _, err = run_cli(["align", str(tiny["model"]), "--pairs", str(path), "--dataset", str(tiny["data"]),
                            "--name", name, *FAST])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_missing_aligner_and_bad_vectors(tiny: dict[str, Path], tmp_path: Path) -> None:
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    with pytest.raises(UsageError, match="no aligner 'nope' in .*aligners there: .*img"):
        embedder.embed_external(np.zeros((1, 24)), aligner="nope")
    with pytest.raises(ValueError, match="maps vectors of width 24"):
        embedder.embed_external(np.zeros((2, 7)), aligner="img")
    with pytest.raises(ValueError, match="NaN or infinite"):
        embedder.embed_external(np.full((2, 24), np.inf), aligner="img")
    np.save(tmp_path / "x.npy", np.zeros((2, 24), np.float32))
    code, _, err = run_cli(["decode", str(tiny["model"]), "--embedding", str(tmp_path / "x.npy"), "--aligner", "nope"])
    assert code == 2 and "no aligner 'nope'" in err and len(err.strip().splitlines()) == 1
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    code, _, err = run_cli(["decode", str(tiny["model"]), "--embedding", str(tmp_path / "bad.npy"), "--aligner", "img"])
    assert code == 2 and "width 24" in err


def test_nearest_hits_count_the_own_post_or_a_shared_character() -> None:
    from booru_embed.alignment.metrics import nearest_hits

    index = np.eye(4, dtype=np.float32)
    characters = [frozenset({"a"}), frozenset({"a"}), frozenset({"b"}), frozenset()]
    # query 0 lands on post 1 (same character), query 2 on post 3 (no shared character), query 3 on itself
    queries = index[[1, 3, 3]]
    hit, character_hit = nearest_hits(queries, np.asarray([0, 2, 3]), index, characters, k=1)
    assert hit == pytest.approx(2 / 3)
    # own post left out: query 0 still finds post 1; query 2 (character b) finds nothing with b
    assert character_hit == pytest.approx(1 / 2)
