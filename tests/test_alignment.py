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
from booru_embed.alignment.tag_path import THRESHOLDS, choose_threshold, predicted_tags
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
    code, _, err = run_cli(["align", str(model_dir), "--pairs", str(pairs), "--dataset", str(root / "data"),
                            "--name", "img-mlp", "--arch", "mlp", *FAST])
    assert code == 0, err
    return {"root": root, "model": model_dir, "data": root / "data", "pairs": pairs}


ALIGNERS = ("img", "img-mlp")  # the default tags aligner and a map


def test_aligner_folder_holds_weights_config_metrics_and_absent_ids(tiny: dict[str, Path]) -> None:
    folder = tiny["model"] / "aligners" / "img"
    assert {"config.json", "model.safetensors", "metrics.json", "absent_ids.txt"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert (config["input_dim"], config["output_dim"], config["arch"]) == (24, 48, "tags")
    mlp_config = json.loads((tiny["model"] / "aligners" / "img-mlp" / "config.json").read_text())
    assert (mlp_config["arch"], mlp_config["hidden_dim"]) == ("mlp", 32) and "token_ids" not in mlp_config
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
    assert config["threshold"] == metrics["training.threshold"] in THRESHOLDS
    assert metrics[f"training.threshold_cosine.{config['threshold']}"] == max(
        value for key, value in metrics.items() if key.startswith("training.threshold_cosine."))
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


def test_tags_aligner_rows_are_the_tags_of_enough_training_pairs(tiny: dict[str, Path]) -> None:
    from datasets import load_from_disk

    config = json.loads((tiny["model"] / "aligners" / "img" / "config.json").read_text())
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    train = load_from_disk(str(tiny["data"]))["train"]
    counts: dict[int, int] = {}
    for ids in embedder._ids([{c: row[c] for c in ("general", "character", "copyright", "artist", "meta")}
                              for row in train]):
        for token in set(ids):
            counts[token] = counts.get(token, 0) + 1
    held_out = json.loads((tiny["model"] / "aligners" / "img" / "metrics.json").read_text())["count.holdout"]
    kept = set(config["token_ids"])
    assert kept and kept <= set(embedder.tokenizer.tag_token_ids)
    assert len(kept) == len(config["token_ids"])  # each tag once
    # the held-out pairs do not count, so a kept tag has at least min_tag_pairs among all training pairs
    assert all(counts[t] >= config["settings"]["min_tag_pairs"] for t in kept)
    certain = {t for t, n in counts.items() if n >= config["settings"]["min_tag_pairs"] + held_out and embedder._is_tag[t]}
    assert certain and certain <= kept  # enough pairs even if every held-out pair had the tag


def test_tags_aligner_embeds_the_tag_set_it_reads(tiny: dict[str, Path]) -> None:
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    _, embs = read_pairs(tiny["pairs"])
    vectors = embedder.embed_external(embs[:6], aligner="img")
    read = embedder._aligners["img"].tags(embs[:6])
    assert all(1 <= len(tags) == len(set(tags)) for tags in read)
    names = [embedder.tokenizer.convert_ids_to_tokens(tags) for tags in read]
    np.testing.assert_allclose(vectors, embedder.embed(names), atol=1e-5)


@pytest.mark.parametrize("name", ALIGNERS)
def test_embed_external_gives_unit_rows_that_decode_and_truncate(tiny: dict[str, Path], name: str) -> None:
    embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    ids, embs = read_pairs(tiny["pairs"])
    vectors = embedder.embed_external(embs[:5], aligner=name)
    assert vectors.shape == (5, 48) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    short = embedder.embed_external(embs[:5], aligner=name, dim=16)
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
    _, embs = read_pairs(tiny["pairs"])
    torch_embedder = BooruEmbedder.from_pretrained(tiny["model"], device="cpu")
    onnx_embedder = BooruEmbedder.from_pretrained(tiny["model"], backend="onnx")
    for name in ALIGNERS:
        assert f"aligners/{name}.onnx" in out and (tiny["model"] / "onnx" / "aligners" / f"{name}.onnx").is_file()
        torch_vectors = torch_embedder.embed_external(embs[:40], aligner=name)
        onnx_vectors = onnx_embedder.embed_external(embs[:40], aligner=name)
        np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-5)
    assert onnx_embedder._aligners["img"].tags(embs[:40]) == torch_embedder._aligners["img"].tags(embs[:40])


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


def test_predicted_tags_keep_the_likely_ones_each_once_and_never_none() -> None:
    token_ids = np.asarray([40, 41, 42, 43])
    logits = np.log(np.asarray([[0.9, 0.1, 0.6, 0.4],     # two above 0.5, most likely first
                                [0.1, 0.2, 0.3, 0.05],    # none above: the most likely alone
                                [0.8, 0.9, 0.7, 0.95]]))  # all above, capped at 2
    logits = logits - np.log1p(-np.exp(logits))
    assert predicted_tags(logits, token_ids, 0.5, max_tags=2) == [[40, 42], [42], [43, 41]]
    assert predicted_tags(logits, token_ids, 0.35)[0] == [40, 42, 43]
    with pytest.raises(ValueError, match="between 0 and 1"):
        predicted_tags(logits, token_ids, 1.0)


def test_choose_threshold_picks_the_sets_that_embed_nearest_to_their_posts() -> None:
    token_ids = np.arange(3)
    probabilities = np.asarray([[0.9, 0.45, 0.1], [0.1, 0.45, 0.9]])
    logits = np.log(probabilities) - np.log1p(-probabilities)

    def encode(rows: list[list[int]]) -> np.ndarray:  # a tag set embeds as its multi-hot vector
        out = np.zeros((len(rows), 3))
        for i, tags in enumerate(rows):
            out[i, tags] = 1.0
        return out

    # each post's own embedding is its likely tag plus the middling tag 1: only a threshold below 0.45 finds both
    targets = np.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    threshold, cosines = choose_threshold(logits, token_ids, targets, encode, thresholds=(0.3, 0.4, 0.5))
    assert threshold == 0.3 and cosines[0.3] == pytest.approx(1.0) and cosines[0.5] < 0.8
    targets = np.asarray([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # now the likely tag alone: 0.5 wins
    assert choose_threshold(logits, token_ids, targets, encode, thresholds=(0.3, 0.4, 0.5))[0] == 0.5
