"""score_tags (leave-one-out fit of each present tag) and the `booru-embed audit` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from booru_embed.cli import main
from booru_embed.embedder import BooruEmbedder
from tiny_model import build_tiny_model

POST = "1girl solo long_hair blue_hair cat_ears smile hatsune_miku vocaloid rating:g"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BooruEmbedder]:
    """A tiny untrained MODEL_DIR (its DATA_DIR beside it) and its embedder."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-audit"))
    return folder, BooruEmbedder.from_pretrained(folder, device="cpu")


@pytest.fixture
def embedder(tiny: tuple[Path, BooruEmbedder]) -> BooruEmbedder:
    return tiny[1]


@pytest.fixture
def model_dir(tiny: tuple[Path, BooruEmbedder]) -> Path:
    return tiny[0]


class AffinityEmbedder(BooruEmbedder):
    """Test double: the masked-tag logits of a sequence are the summed affinities of its tokens.

    With affinities inside groups of tags and none across, a tag from another group than the rest of
    the post is the one the rest predicts least, so the right answer of score_tags is known.
    """

    def __init__(self, model, tokenizer, groups: list[list[str]]) -> None:
        super().__init__(model, tokenizer)
        self.affinity = np.zeros((len(self._is_tag), len(self._is_tag)), dtype=np.float32)
        for group in groups:
            ids = [tokenizer.tag_to_id(tag) for tag in group]
            for a in ids:
                self.affinity[a, ids] = 3.0
        self.calls: list[int] = []

    def _mask_logits_batch(self, sequences: list[list[int]]) -> np.ndarray:
        self.calls.append(len(sequences))
        return np.stack([self.affinity[ids].sum(axis=0) for ids in sequences])


def test_scores_every_present_known_tag_once_as_a_probability(embedder: BooruEmbedder) -> None:
    scores = embedder.score_tags(POST)
    tags = ["1girl", "solo", "long_hair", "blue_hair", "cat_ears", "smile", "hatsune_miku", "vocaloid"]
    assert sorted(scores) == sorted(tags)  # the rating is context, never scored
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert embedder.score_tags("long hair, hatsune miku (vocaloid), 1girl").keys() >= {"long_hair", "1girl"}


def test_unknown_tags_score_none_and_empty_sets_are_refused(embedder: BooruEmbedder) -> None:
    scores = embedder.score_tags(["1girl", "smile", "not_a_real_tag", "null"])
    assert scores["not_a_real_tag"] is None
    assert isinstance(scores["1girl"], float) and isinstance(scores["null"], float)
    assert set(scores) == {"1girl", "smile", "not_a_real_tag", "null"}
    for empty in ("", [], "rating:g", {"general": []}):
        with pytest.raises(ValueError, match="no tags"):
            embedder.score_tags(empty)
    with pytest.raises(ValueError, match="batch_size"):
        embedder.score_tags(POST, batch_size=0)


def test_batched_scores_equal_one_sequence_at_a_time(embedder: BooruEmbedder) -> None:
    ids = embedder._ids([POST])[0]
    is_tag = np.asarray(embedder._is_tag)
    expected = {}
    for position, token in enumerate(ids):
        if not is_tag[token]:
            continue
        rest = ids[:position] + ids[position + 1 :]
        allowed = is_tag.copy()
        allowed[rest] = False
        logits = torch.as_tensor(np.asarray(embedder._mask_logits(rest))).masked_fill(~torch.as_tensor(allowed), float("-inf"))
        expected[embedder.tokenizer.convert_ids_to_tokens(token)] = float(torch.softmax(logits, dim=-1)[token])
    for batch_size in (1, 3, 256):
        scores = embedder.score_tags(POST, batch_size=batch_size)
        assert scores.keys() == expected.keys()
        for tag, value in expected.items():
            assert math.isclose(scores[tag], value, rel_tol=1e-4, abs_tol=1e-7), (batch_size, tag)
    distinctive = embedder.score_tags(POST, distinctive=True)
    prior = np.asarray(embedder._log_prior())
    for tag, value in expected.items():
        index = embedder.tokenizer.tag_to_id(tag)
        assert math.isclose(distinctive[tag], value / math.exp(0.5 * float(prior[index])), rel_tol=1e-4)


def test_the_tag_that_does_not_fit_ranks_lowest(embedder: BooruEmbedder) -> None:
    double = AffinityEmbedder(embedder.model, embedder.tokenizer,
                              [["hatsune_miku", "vocaloid", "blue_hair", "long_hair", "smile"],
                               ["usada_pekora", "hololive", "rabbit_ears", "skirt"]])
    scores = double.score_tags(["hatsune_miku", "vocaloid", "blue_hair", "long_hair", "rabbit_ears"], batch_size=2)
    assert min(scores, key=scores.get) == "rabbit_ears"
    assert double.calls == [2, 2, 1]  # five leave-one-out sequences in chunks of two
    # a second, contradicting trait (the other group's ears) is flagged whichever group it joins
    scores = double.score_tags(["usada_pekora", "hololive", "skirt", "rabbit_ears", "blue_hair"])
    assert min(scores, key=scores.get) == "blue_hair"


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_audit_writes_a_row_per_post_and_a_report(model_dir: Path, tmp_path: Path, capsys) -> None:
    data = model_dir.parent / "data"
    code, _ = _run(["audit", str(model_dir), "--dataset", str(data), "--output", str(tmp_path / "r"),
                    "--max-posts", "7", "--top-k", "3"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "audit.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and len({row["id"] for row in rows}) == 7
    for row in rows:
        assert 1 <= len(row["suspicious"]) <= 3 and len(row["missing"]) == 3
        fits = [score for _, score in row["suspicious"]]
        assert fits == sorted(fits)
        present = {tag for tag, _ in row["suspicious"]}
        assert not present & {tag for tag, _ in row["missing"]}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Posts audited: 7" in report and "seed 0" in report
    flagged = {tag for row in rows for tag, _ in row["suspicious"]}
    assert any(f"`{tag}`" in report for tag in flagged)
    again = tmp_path / "again"
    assert main(["audit", str(model_dir), "--dataset", str(data), "--output", str(again), "--max-posts", "7",
                 "--top-k", "3"]) == 0
    assert (again / "audit.jsonl").read_text() == (tmp_path / "r" / "audit.jsonl").read_text()


@pytest.mark.parametrize("case, message", [
    ("model", "not a model folder"), ("split", "--split 'dev' is not in"), ("posts", "--max-posts must be at least 1"),
    ("dataset", "not a DATA_DIR"),
])
def test_audit_bad_input_is_one_line_exit_2(model_dir: Path, tmp_path: Path, capsys, case: str, message: str) -> None:
    data = model_dir.parent / "data"
    argv = {"model": [str(tmp_path / "nothing"), "--dataset", str(data)],
            "split": [str(model_dir), "--dataset", str(data), "--split", "dev"],
            "posts": [str(model_dir), "--dataset", str(data), "--max-posts", "0"],
            "dataset": [str(model_dir), "--dataset", str(tmp_path)]}[case]
    code, err = _run(["audit", *argv, "--output", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
