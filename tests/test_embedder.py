"""BooruEmbedder and the suggest / embed commands, on a tiny untrained model folder (real code, random weights)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from booru_embed.cli import main
from booru_embed.embedder import BooruEmbedder
from booru_embed.errors import UsageError
from tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> BooruEmbedder:
    return BooruEmbedder.from_pretrained(model_dir, device="cpu")


def raw_embeddings(embedder: BooruEmbedder, tag_strings: list[str]) -> torch.Tensor:
    """Pooled embeddings computed directly with the model, one post at a time (no batching, no padding)."""
    rows = []
    for tags in tag_strings:
        batch = embedder.tokenizer(tags, return_tensors="pt")
        with torch.inference_mode():
            rows.append(embedder.model.model(batch["input_ids"], batch["category_ids"]).pooler_output[0])
    return torch.stack(rows)


def test_embed_matches_the_model_and_is_normalised(embedder: BooruEmbedder) -> None:
    posts = ["1girl solo smile", "skirt", "1girl long_hair blue_hair cat_ears usada_pekora hololive rating:g", "smile"]
    vectors = embedder.embed(posts, batch_size=2)
    assert vectors.dtype == np.float32 and vectors.shape == (4, embedder.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = torch.nn.functional.normalize(raw_embeddings(embedder, posts), dim=-1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embed_input_forms_agree(embedder: BooruEmbedder) -> None:
    forms = [
        "1girl solo hatsune_miku",
        "hatsune miku, solo, 1girl",
        ["solo", "hatsune_miku", "1girl", "solo"],
        {"general": ["1girl", "solo"], "character": ["hatsune_miku"]},
    ]
    vectors = embedder.embed(forms)
    for row in vectors[1:]:
        np.testing.assert_allclose(row, vectors[0], atol=1e-6)
    np.testing.assert_allclose(embedder.embed("1girl solo hatsune_miku"), vectors[:1], atol=1e-6)


def test_embed_dim_truncates_then_normalises(embedder: BooruEmbedder) -> None:
    full_raw = raw_embeddings(embedder, ["1girl smile"])
    for dim in (16, 32, 20):
        vector = embedder.embed(["1girl smile"], dim=dim)
        assert vector.shape == (1, dim)
        expected = torch.nn.functional.normalize(full_raw[:, :dim], dim=-1).numpy()
        np.testing.assert_allclose(vector, expected, atol=1e-5)


@pytest.mark.parametrize("dim", [0, 49, -1, 2.5, True])
def test_embed_rejects_a_wrong_dim(embedder: BooruEmbedder, dim: object) -> None:
    with pytest.raises(ValueError, match=r"dim must be an integer from 1 to 48 \(trained sizes: 16, 32, 48\)"):
        embedder.embed(["1girl"], dim=dim)


def test_embed_rejects_an_empty_tag_set(embedder: BooruEmbedder) -> None:
    with pytest.raises(ValueError, match="tag set 1 is empty"):
        embedder.embed(["1girl", "  ", "solo"])


def test_suggest_never_returns_present_special_or_metadata_tokens(embedder: BooruEmbedder) -> None:
    tokenizer = embedder.tokenizer
    real_tags = {tokenizer.convert_ids_to_tokens(i) for i in tokenizer.tag_token_ids}
    present = ["1girl", "solo", "smile", "hololive", "highres"]
    suggestions = embedder.suggest(" ".join(present) + " rating:g", top_k=1000, expand_implications=False)
    tags = [tag for tag, _ in suggestions]
    assert set(tags) == real_tags - set(present)
    scores = [score for _, score in suggestions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5


def test_suggest_top_k_and_categories(embedder: BooruEmbedder) -> None:
    assert len(embedder.suggest("1girl", top_k=3, expand_implications=False)) == 3
    general = embedder.suggest("1girl smile", top_k=50, categories=["general"])
    assert general and all(embedder.category_of(tag) == "general" for tag, _ in general)
    people = embedder.suggest("1girl smile", top_k=50, categories=["character", "copyright"])
    assert {embedder.category_of(tag) for tag, _ in people} == {"character", "copyright"}
    with pytest.raises(ValueError, match="categories must be among"):
        embedder.suggest("1girl", categories=["rating"])


def test_suggest_distinctive_ranks_by_probability_over_sqrt_prior(embedder: BooruEmbedder) -> None:
    present = "1girl smile"
    plain = dict(embedder.suggest(present, top_k=1000, expand_implications=False))
    with torch.inference_mode():  # the prior: the masked-tag head on <cls> <mask>
        batch = embedder._batch([[embedder.tokenizer.cls_token_id]], extra=[embedder.tokenizer.mask_token_id])
        batch = {name: torch.from_numpy(value) for name, value in batch.items()}
        logits = embedder.model(**batch, mlm_positions=batch["input_ids"] == embedder.tokenizer.mask_token_id).mlm_logits[0]
    candidates = torch.from_numpy(embedder._is_tag)
    log_prior = torch.log_softmax(logits.float().masked_fill(~candidates, float("-inf")), dim=-1)
    prior = {tag: float(log_prior[embedder.tokenizer.convert_tokens_to_ids(tag)]) for tag in plain}
    distinctive = embedder.suggest(present, top_k=1000, expand_implications=False, distinctive=True)
    # same tags and the same probabilities, ordered by log p - 1/2 log prior
    assert dict(distinctive) == pytest.approx(plain)
    keys = [math.log(p) - 0.5 * prior[tag] for tag, p in distinctive]
    assert keys == sorted(keys, reverse=True)
    assert [tag for tag, _ in distinctive] != sorted(plain, key=plain.get, reverse=True)


def test_suggest_with_related_counts_averages_the_two_rankings(embedder: BooruEmbedder, model_dir: Path) -> None:
    from scipy import sparse

    from booru_embed.ranking import with_counts
    from booru_embed.related_tags import RelatedTags

    tokenizer = embedder.tokenizer
    present = "1girl smile"
    model_only = embedder.suggest(present, top_k=1000, expand_implications=False, distinctive=True)
    last = model_only[-1][0]  # the model's least likely tag: the counts say it always comes with smile
    size = len(tokenizer.token_categories)
    smile, last_id = tokenizer.convert_tokens_to_ids("smile"), tokenizer.convert_tokens_to_ids(last)
    cosine = sparse.csr_matrix(([1.0], ([smile], [last_id])), shape=(size, size), dtype=np.float32)
    fused = embedder.suggest(present, top_k=1000, expand_implications=False, distinctive=True,
                             related=RelatedTags(cosine))
    assert fused[0][0] == last and dict(fused) == pytest.approx(dict(model_only))  # reordered, same probabilities
    # the rest keep the model's order: their counts are all at the floor
    assert [t for t, _ in fused[1:]] == [t for t, _ in model_only if t != last]
    scores = RelatedTags(cosine).scores(tokenizer(present)["input_ids"])
    assert scores[last_id] == 1.0 and scores.sum() == 1.0 and with_counts(np.zeros(1), scores[[last_id]])[0] == 0.0
    with pytest.raises(ValueError, match="distinctive=True"):
        embedder.suggest(present, related=RelatedTags(cosine))
    counted = RelatedTags.from_split(model_dir.parent / "data", tokenizer)  # the tiny corpus' own counts
    assert counted.cosine.shape == (size, size) and counted.cosine.nnz > 0
    assert embedder.suggest(present, top_k=3, distinctive=True, related=counted)


def test_suggest_expands_implications(embedder: BooruEmbedder) -> None:
    # The tiny model stores cat_ears -> animal_ears -> animal_features and usada_pekora -> rabbit_ears.
    suggestions = embedder.suggest("1girl cat_ears", top_k=5)
    assert suggestions[:2] == [("animal_ears", 1.0), ("animal_features", 1.0)]
    ranked = embedder.suggest("1girl", top_k=30)
    tags = [tag for tag, _ in ranked]
    assert "cat_ears" in tags  # an untrained model ranks every tag within its top 30 of 14 general tags
    for antecedent, consequent in (("cat_ears", "animal_ears"), ("animal_ears", "animal_features")):
        assert dict(ranked)[consequent] >= dict(ranked)[antecedent]  # listed with (or before) what implies it
    unexpanded = [tag for tag, _ in embedder.suggest("1girl", top_k=30, expand_implications=False)]
    assert set(unexpanded) <= set(tags)
    assert len(tags) == len(set(tags))


def test_suggest_many_answers_as_suggest_does_for_each(embedder: BooruEmbedder) -> None:
    tagsets = ["1girl", "1girl smile cat_ears", {"general": ["smile"], "rating": "e"}, "1girl long_hair smile solo"]
    for options in ({}, {"categories": ["general"], "distinctive": True}, {"expand_implications": False}):
        one_by_one = [embedder.suggest(tagset, top_k=5, **options) for tagset in tagsets]
        # batches of 3 and 1: a padded batch (tag sets of 1 to 4 tags) answers as each set alone
        together = embedder.suggest_many(tagsets, top_k=5, batch_size=3, **options)
        assert [[tag for tag, _ in answer] for answer in together] == [[tag for tag, _ in a] for a in one_by_one]
        for answer, alone in zip(together, one_by_one):
            assert [p for _, p in answer] == pytest.approx([p for _, p in alone], rel=1e-4)
    with pytest.raises(ValueError, match="empty"):
        embedder.suggest_many(["1girl", "   "])
    with pytest.raises(ValueError, match="batch_size"):
        embedder.suggest_many(["1girl"], batch_size=0)


def test_suggest_with_unknown_tags_and_bad_input(embedder: BooruEmbedder) -> None:
    assert embedder.unknown_tags("1girl not_a_real_tag") == ["not_a_real_tag"]
    assert embedder.unknown_tags({"character": ["nobody_at_all"], "rating": "g"}) == ["nobody_at_all"]
    suggestions = embedder.suggest("1girl not_a_real_tag", top_k=200)
    assert not any(tag.startswith("<") for tag, _ in suggestions)
    with pytest.raises(ValueError, match="empty"):
        embedder.suggest("   ")
    with pytest.raises(ValueError, match="top_k"):
        embedder.suggest("1girl", top_k=0)


def test_decode_reads_tags_back(embedder: BooruEmbedder) -> None:
    vectors = embedder.embed(["1girl solo", "skirt smile"])
    decoded = embedder.decode(vectors, top_k=4)
    real_tags = {embedder.tokenizer.convert_ids_to_tokens(i) for i in embedder.tokenizer.tag_token_ids}
    assert len(decoded) == 2 and all(len(row) == 4 and set(row) <= real_tags for row in decoded)
    raw = raw_embeddings(embedder, ["1girl solo", "skirt smile"]).numpy()
    assert embedder.decode(raw, top_k=4) == decoded  # the read-back head ignores the scale
    logits = embedder.model.readback(torch.from_numpy(vectors[:, :16]))
    by_threshold = embedder.decode(vectors[:, :16], threshold=0.5)
    for row, row_logits in zip(by_threshold, logits):
        expected = {embedder.tokenizer.convert_ids_to_tokens(i) for i in embedder.tokenizer.tag_token_ids
                    if row_logits[i] > 0}
        assert set(row) == expected
    with pytest.raises(ValueError, match="shape"):
        embedder.decode(vectors[:, :20])


def test_from_pretrained_dtype(model_dir: Path, embedder: BooruEmbedder) -> None:
    half = BooruEmbedder.from_pretrained(model_dir, device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    vectors = half.embed(["1girl solo", "smile skirt"])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder.embed(["1girl solo", "smile skirt"]), atol=0.05)
    with pytest.raises(UsageError, match="unknown dtype 'float8x'"):
        BooruEmbedder.from_pretrained(model_dir, dtype="float8x")


def test_from_pretrained_unknown_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a model folder"):
        BooruEmbedder.from_pretrained(tmp_path / "missing")
    with pytest.raises(UsageError, match="cannot load model"):
        BooruEmbedder.from_pretrained("nobody/not-cached")  # offline (conftest): nothing to download


def test_suggest_command(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["suggest", str(model_dir), "1girl cat_ears mystery_tag", "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["unknown_tags"] == ["mystery_tag"]
    assert [row["tag"] for row in result["suggestions"]][:2] == ["animal_ears", "animal_features"]
    assert main(["suggest", str(model_dir), "1girl", "--top-k", "4", "--categories", "general"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 4 and all(line.endswith("(general)") for line in lines)
    embedder = BooruEmbedder.from_pretrained(model_dir)
    expected = [tag for tag, _ in embedder.suggest("1girl smile", top_k=5, distinctive=True)]
    assert main(["suggest", str(model_dir), "1girl smile", "--top-k", "5", "--distinctive", "--json"]) == 0
    assert [row["tag"] for row in json.loads(capsys.readouterr().out)["suggestions"]] == expected
    from booru_embed.related_tags import RelatedTags

    related = RelatedTags.from_split(model_dir.parent / "data", embedder.tokenizer)
    alone = expected
    expected = [tag for tag, _ in embedder.suggest("1girl smile", top_k=5, distinctive=True, related=related)]
    assert expected != alone  # the tiny corpus' counts reorder the model's list
    assert main(["suggest", str(model_dir), "1girl smile", "--top-k", "5", "--related", str(model_dir.parent / "data"),
                 "--json"]) == 0  # --related implies --distinctive
    assert [row["tag"] for row in json.loads(capsys.readouterr().out)["suggestions"]] == expected


@pytest.mark.parametrize("argv, message", [
    (["", "--top-k", "3"], "tag set is empty"),
    (["1girl", "--categories", "rating"], "--categories"),
    (["1girl", "--top-k", "0"], "--top-k"),
    (["1girl", "--related", "/no/such/data_dir"], "--related"),
])
def test_suggest_command_bad_input(model_dir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(["suggest", str(model_dir), *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_suggest_command_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["suggest", str(tmp_path / "nope"), "1girl"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_embed_command_from_lines_and_data_dir(model_dir: Path, embedder: BooruEmbedder, tmp_path: Path) -> None:
    lines = ["1girl solo", "smile, skirt", "hatsune_miku 1girl"]
    (tmp_path / "posts.txt").write_text("\n".join(lines) + "\n")
    assert main(["embed", str(model_dir), "--input", str(tmp_path / "posts.txt"), "--output",
                 str(tmp_path / "out" / "vectors.npy"), "--dim", "16"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "vectors.npy"), embedder.embed(lines, dim=16), atol=1e-6)

    data_dir = model_dir.parent / "data"
    assert main(["embed", str(model_dir), "--input", str(data_dir), "--output", str(tmp_path / "test.npy")]) == 0
    import datasets

    test = datasets.load_from_disk(str(data_dir))["test"]
    vectors, ids = np.load(tmp_path / "test.npy"), np.load(tmp_path / "test.ids.npy")
    assert vectors.shape == (len(test), 48) and ids.tolist() == test["id"]
    first = {key: test[0][key] for key in ("general", "artist", "copyright", "character", "meta", "rating", "score")}
    np.testing.assert_allclose(vectors[0], embedder.embed(first)[0], atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--dim", "64"], "--dim: dim must be an integer from 1 to 48"),
    (["--split", "validation"], "--split 'validation' is not in"),
])
def test_embed_command_bad_flags(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                 extra: list[str], message: str) -> None:
    data_dir = model_dir.parent / "data"
    assert main(["embed", str(model_dir), "--input", str(data_dir), "--output", str(tmp_path / "x.npy"), *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "x.npy").exists()


def test_embed_command_rejects_empty_lines(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "posts.txt").write_text("1girl\n\nsolo\n")
    assert main(["embed", str(model_dir), "--input", str(tmp_path / "posts.txt"), "--output", str(tmp_path / "x.npy")]) == 2
    assert "posts.txt:2: empty tag set" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_sentence_transformers_and_pipeline(model_dir: Path, embedder: BooruEmbedder, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (dev extra) is not installed")
    from sentence_transformers import SentenceTransformer
    from transformers import pipeline

    from booru_embed.st_compat import write_sentence_transformers_files

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    write_sentence_transformers_files(folder)
    posts = ["1girl solo", "smile, skirt, hatsune miku"]
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(model.encode(posts), embedder.embed(posts), atol=1e-5)

    extractor = pipeline("feature-extraction", model=str(folder), trust_remote_code=True)
    states = np.asarray(extractor("1girl solo"))
    batch = embedder.tokenizer("1girl solo", return_tensors="pt")
    with torch.inference_mode():
        expected = embedder.model.model(batch["input_ids"], batch["category_ids"]).last_hidden_state.numpy()
    np.testing.assert_allclose(states, expected, atol=1e-5)
