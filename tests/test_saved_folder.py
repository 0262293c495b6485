"""A model folder saved by an earlier version (tests/fixtures/model_v0_1.tar.gz, commit 6e6ad5d) keeps working.

The folder holds random weights of a tiny config, the remote code of that time, and the outputs that
code gave for three posts (``expected.npz``, ``posts.json``). Reshaping the package must not change
what such a folder means: the package's current tokenizer and model classes read it and give the same
ids and outputs, and so does the folder's own remote code through the Auto classes. (The folder is
kept as an archive so its copy of the remote code is data, not a second source tree.)
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ARCHIVE = Path(__file__).resolve().parent / "fixtures" / "model_v0_1.tar.gz"
OUTPUTS = ("last_hidden_state", "readback_logits", "rating_logits", "score_logits")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The saved model folder, unpacked."""
    target = tmp_path_factory.mktemp("saved")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(target, filter="data")
    return target / "model_v0_1"


def _expected(folder: Path) -> tuple[list, dict[str, np.ndarray]]:
    with np.load(folder / "expected.npz", allow_pickle=False) as stored:
        expected = {name: stored[name] for name in stored.files}
    return json.loads((folder / "posts.json").read_text()), expected


def _check(folder: Path, tokenizer, model) -> None:
    posts, expected = _expected(folder)
    batch = tokenizer(posts, padding=True, return_tensors="pt")
    for name in ("input_ids", "category_ids", "attention_mask"):
        assert np.array_equal(batch[name].numpy(), expected[name]), name
    with torch.no_grad():
        output = model.eval()(**batch)
    np.testing.assert_allclose(output.embeddings.numpy(), expected["pooler_output"], atol=1e-5, rtol=1e-5)
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(output, name).numpy(), expected[name], atol=1e-5, rtol=1e-5, err_msg=name)


def test_current_classes_read_an_old_folder_with_the_same_outputs(folder: Path) -> None:
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer

    _check(folder, BooruEmbedTokenizer.from_pretrained(folder), BooruEmbedForPreTraining.from_pretrained(folder))


def test_old_folder_loads_through_its_own_remote_code(folder: Path) -> None:
    from transformers import AutoModelForPreTraining, AutoTokenizer

    _check(folder, AutoTokenizer.from_pretrained(folder, trust_remote_code=True),
           AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True))


def test_embedder_reads_an_old_folder(folder: Path) -> None:
    from booru_embed import BooruEmbedder

    posts, expected = _expected(folder)
    embedder = BooruEmbedder.from_pretrained(folder, device="cpu")
    pooled = expected["pooler_output"]
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(posts), unit, atol=1e-5)
    assert embedder.suggest(posts[0], top_k=3)
