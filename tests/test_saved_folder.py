"""A model folder saved by an earlier version (tests/fixtures/model_v0_1, commit 6e6ad5d) keeps working.

The folder holds random weights of a tiny config, the remote code of that time, and the outputs that
code gave for three posts (``expected.npz``, ``posts.json``). Reshaping the package must not change
what such a folder means: the package's current tokenizer and model classes read it and give the same
ids and outputs, and so does the folder's own remote code through the Auto classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "model_v0_1"
OUTPUTS = ("last_hidden_state", "readback_logits", "rating_logits", "score_logits")


def _expected() -> tuple[list, dict[str, np.ndarray]]:
    with np.load(FIXTURE / "expected.npz", allow_pickle=False) as stored:
        expected = {name: stored[name] for name in stored.files}
    return json.loads((FIXTURE / "posts.json").read_text()), expected


def _check(tokenizer, model) -> None:
    posts, expected = _expected()
    batch = tokenizer(posts, padding=True, return_tensors="pt")
    for name in ("input_ids", "category_ids", "attention_mask"):
        assert np.array_equal(batch[name].numpy(), expected[name]), name
    with torch.no_grad():
        output = model.eval()(**batch)
    np.testing.assert_allclose(output.embeddings.numpy(), expected["pooler_output"], atol=1e-5, rtol=1e-5)
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(output, name).numpy(), expected[name], atol=1e-5, rtol=1e-5, err_msg=name)


def test_current_classes_read_an_old_folder_with_the_same_outputs() -> None:
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer

    _check(BooruEmbedTokenizer.from_pretrained(FIXTURE), BooruEmbedForPreTraining.from_pretrained(FIXTURE))


def test_old_folder_loads_through_its_own_remote_code() -> None:
    from transformers import AutoModelForPreTraining, AutoTokenizer

    _check(AutoTokenizer.from_pretrained(FIXTURE, trust_remote_code=True),
           AutoModelForPreTraining.from_pretrained(FIXTURE, trust_remote_code=True))


def test_embedder_reads_an_old_folder() -> None:
    from booru_embed import BooruEmbedder

    posts, expected = _expected()
    embedder = BooruEmbedder.from_pretrained(FIXTURE, device="cpu")
    pooled = expected["pooler_output"]
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(posts), unit, atol=1e-5)
    assert embedder.suggest(posts[0], top_k=3)
