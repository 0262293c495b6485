"""export-onnx and BooruEmbedder(backend="onnx"): parity with PyTorch, dynamic shapes, int8, no torch at inference."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
pytest.importorskip("onnxscript", reason="onnxscript (the onnx extra, used by torch.onnx.export) is not installed")

from booru_embed.cli import main  # noqa: E402
from booru_embed.embedder import BooruEmbedder  # noqa: E402
from booru_embed.errors import UsageError  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

POSTS = ["1girl solo smile", "skirt", "1girl long_hair blue_hair cat_ears usada_pekora hololive rating:g",
         "smile", "hatsune_miku vocaloid 1girl open_mouth :d ^_^ null highres score:12", "artist_3 skirt"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with onnx/model.onnx, readback.onnx and model_quantized.onnx (through the command)."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["export-onnx", str(folder), "--quantize", "int8"]) == 0
    lines = out.getvalue().splitlines()
    assert [Path(line.split()[1]).name for line in lines] == ["model.onnx", "readback.onnx", "model_quantized.onnx"]
    assert "vs PyTorch: pooler_max_abs_diff" in lines[0]
    return folder


@pytest.fixture(scope="module")
def torch_embedder(model_dir: Path) -> BooruEmbedder:
    return BooruEmbedder.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def onnx_embedder(model_dir: Path) -> BooruEmbedder:
    return BooruEmbedder.from_pretrained(model_dir, backend="onnx")


def test_the_shipped_pooling_exports_with_the_same_embeddings(tmp_path: Path) -> None:
    """Attention pooling and the normalised bag-of-tags path (`pooler_input_skip`), as the shipped configs have."""
    import torch

    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    folder = build_tiny_model(tmp_path / "tiny", pooling="attention", pooler_input_skip=True)
    model = BooruEmbedForPreTraining.from_pretrained(folder)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.model.pooling_score.weight, std=1.0)  # a learned, non-uniform weighting
    torch.nn.init.uniform_(model.model.input_norm.weight, 0.5, 1.5)  # and a learned norm of the bag
    model.save_pretrained(folder)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["export-onnx", str(folder)]) == 0
    torch_side = BooruEmbedder.from_pretrained(folder, device="cpu").embed(POSTS)
    onnx_side = BooruEmbedder.from_pretrained(folder, backend="onnx").embed(POSTS)
    np.testing.assert_allclose(onnx_side, torch_side, atol=1e-4)


def test_layout_and_dynamic_shapes(model_dir: Path) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "category_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["pooler_output", "mask_logits"]
    assert all(isinstance(size, str) for i in session.get_inputs() for size in i.shape)  # batch and tokens symbolic
    for batch, tokens in ((1, 1), (7, 2), (2, 40)):  # the export example was 3 x 6
        ids = np.ones((batch, tokens), dtype=np.int64)
        pooled, logits = session.run(None, {"input_ids": ids, "category_ids": np.zeros_like(ids), "attention_mask": ids})
        assert pooled.shape == (batch, 48) and logits.shape[0] == batch


def test_embeddings_match_pytorch(torch_embedder: BooruEmbedder, onnx_embedder: BooruEmbedder) -> None:
    assert onnx_embedder.backend == "onnx" and torch_embedder.backend == "torch"
    for batch_size in (1, 4, 64):  # ragged batches of several widths
        expected = torch_embedder.embed(POSTS, batch_size=batch_size)
        np.testing.assert_allclose(onnx_embedder.embed(POSTS, batch_size=batch_size), expected, atol=1e-4, rtol=0)
    for dim in (16, 32):
        np.testing.assert_allclose(onnx_embedder.embed(POSTS, dim=dim), torch_embedder.embed(POSTS, dim=dim), atol=1e-4)


def test_suggestions_match_pytorch(torch_embedder: BooruEmbedder, onnx_embedder: BooruEmbedder) -> None:
    for tags in ("1girl smile", "cat_ears", POSTS[4]):
        for options in ({}, {"distinctive": True}, {"categories": ["general"]}, {"expand_implications": False}):
            expected = torch_embedder.suggest(tags, top_k=8, **options)
            got = onnx_embedder.suggest(tags, top_k=8, **options)
            assert [tag for tag, _ in got] == [tag for tag, _ in expected]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
    logits = onnx_embedder._mask_logits_batch([[1, 5], [1, 7, 9, 11]])
    np.testing.assert_allclose(logits, torch_embedder._mask_logits_batch([[1, 5], [1, 7, 9, 11]]), atol=1e-4)


def test_decode_matches_pytorch(torch_embedder: BooruEmbedder, onnx_embedder: BooruEmbedder) -> None:
    vectors = torch_embedder.embed(POSTS)
    for dim in (16, 32, 48):
        part = vectors[:, :dim]
        assert onnx_embedder.decode(part, top_k=5) == torch_embedder.decode(part, top_k=5)
        assert onnx_embedder.decode(part) == torch_embedder.decode(part)
    with pytest.raises(ValueError, match="shape"):
        onnx_embedder.decode(vectors[:, :20])


def test_int8_agrees_roughly(model_dir: Path, torch_embedder: BooruEmbedder) -> None:
    assert (model_dir / "onnx" / "model_quantized.onnx").stat().st_size < (model_dir / "onnx" / "model.onnx").stat().st_size
    quantized = BooruEmbedder.from_pretrained(model_dir, backend="onnx", onnx_file="model_quantized.onnx")
    cosine = (quantized.embed(POSTS) * torch_embedder.embed(POSTS)).sum(axis=1)
    assert cosine.min() > 0.99
    expected = [tag for tag, _ in torch_embedder.suggest("1girl smile", top_k=3, expand_implications=False)]
    got = [tag for tag, _ in quantized.suggest("1girl smile", top_k=10, expand_implications=False)]
    assert set(expected) <= set(got)


def test_onnx_backend_never_imports_torch(model_dir: Path) -> None:
    # torch made unfindable, as where it is not installed; the tokenizer (remote code) and ONNX Runtime must do
    script = textwrap.dedent(f"""
        import importlib.machinery, sys
        find = importlib.machinery.PathFinder.find_spec.__func__
        def hidden(cls, name, path=None, target=None):
            return None if name.split(".")[0] in ("torch", "torchvision", "torchaudio") else find(cls, name, path, target)
        importlib.machinery.PathFinder.find_spec = classmethod(hidden)
        from booru_embed import BooruEmbedder
        e = BooruEmbedder.from_pretrained({str(model_dir)!r}, backend="onnx")
        vectors = e.embed(["1girl solo", "skirt smile"])
        print(vectors.shape, len(e.suggest("1girl", top_k=3)), e.decode(vectors, top_k=2))
        assert "torch" not in sys.modules, "torch was imported"
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("(2, 48)")


def test_missing_export_says_to_run_export_onnx(model_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(UsageError, match=r"no ONNX model onnx/model.onnx in .*run `booru-embed export-onnx"):
        BooruEmbedder.from_pretrained(bare, backend="onnx")
    with pytest.raises(UsageError, match="--quantize int8"):
        BooruEmbedder.from_pretrained(bare, backend="onnx", onnx_file="model_quantized.onnx")
    with pytest.raises(UsageError, match="backend must be one of torch, onnx"):
        BooruEmbedder.from_pretrained(model_dir, backend="tensorrt")
    with pytest.raises(UsageError, match="device and dtype are for backend='torch'"):
        BooruEmbedder.from_pretrained(model_dir, backend="onnx", dtype="bfloat16")


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "not a model folder"),
    (["{model}", "--opset", "9"], "--opset must be from 18"),
])
def test_export_command_bad_input(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                  argv: list[str], message: str) -> None:
    argv = [a.format(missing=tmp_path / "nope", model=model_dir) for a in argv]
    assert main(["export-onnx", *argv, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
