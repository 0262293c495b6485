"""The one-command demo: its workdir rules and helpers (fast), and a whole small run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from booru_embed.cli import main
from booru_embed.demo import MARKER, known_answer_posts, write_implications

TRUTH = {
    "characters": {
        "usada_pekora": {"copyright": "hololive", "traits": ["rabbit_ears", "blue_hair", "twin_braids"]},
        "hatsune_miku": {"copyright": "vocaloid", "traits": ["twintails", "aqua_hair"]},
        "kirisame_marisa": {"copyright": "touhou", "traits": ["witch_hat", "blonde_hair", "braid", "apron"]},
        "nobody": {"copyright": "none", "traits": []},
    },
    "implications": [["cat_ears", "animal_ears"], ["fate/grand_order", "fate_(series)"]],
}


def test_known_answer_posts_remove_the_traits() -> None:
    cases = known_answer_posts(TRUTH, count=2)
    assert [case["tags"]["character"] for case in cases] == [["kirisame_marisa"], ["usada_pekora"]]
    for case in cases:
        character = case["tags"]["character"][0]
        assert case["expected"] == sorted(TRUTH["characters"][character]["traits"])
        assert case["tags"]["copyright"] == [TRUTH["characters"][character]["copyright"]]
        assert not set(case["expected"]) & set(case["tags"]["general"])
    popular = known_answer_posts(TRUTH, count=3, popularity={"usada_pekora": 50, "hatsune_miku": 80, "nobody": 99})
    assert [case["tags"]["character"] for case in popular] == [["hatsune_miku"], ["usada_pekora"]]


def test_write_implications_is_the_tsv_build_tokenizer_reads(tmp_path: Path) -> None:
    from booru_embed.data.tag_tables import load_implications

    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps(TRUTH))
    table = load_implications(write_implications(truth, tmp_path / "implications.tsv"))
    assert table == {"cat_ears": ["animal_ears"], "fate/grand_order": ["fate_(series)"]}


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "thesis.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path), "--posts", "300"]) == 2
    assert "not empty and holds no earlier demo" in capsys.readouterr().err
    assert (tmp_path / "thesis.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["thesis.txt"]


@pytest.mark.parametrize("argv, message", [(["--posts", "10"], "--posts"), (["--max-steps", "0"], "--max-steps")])
def test_demo_rejects_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(["demo", "--workdir", str(tmp_path / "w"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_demo_draws_from_the_real_pairs_by_default(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--posts", "300", "--stop-after", "generate"]) == 0
    truth = json.loads((workdir / "corpus" / "posts.truth.json").read_text())
    assert truth["setting"] == "danbooru-pairs" and "rabbit_ears" in truth["characters"]["usada_pekora"]["traits"]
    assert json.loads((workdir / MARKER).read_text())["setting"] == "danbooru-pairs"


def test_demo_first_stages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir), "--posts", "300", "--stop-after", "tokenizer", "--setting", "small"]) == 0
    out = capsys.readouterr().out
    truth = json.loads((workdir / "corpus" / "posts.truth.json").read_text())
    assert len(truth["characters"]) == 60  # the demo's own corpus spec
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer

    tokenizer = BooruEmbedTokenizer.from_pretrained(str(workdir / "tokenizer"))
    assert tokenizer.implications  # the generator's implications went into the tokenizer
    for name in ("corpus", "data", "report", "tokenizer"):
        assert f"  {name:<13} {workdir / name}" in out
    assert not (workdir / "model").exists() and "stage times: generate" in out and "train" not in out.split("stage times:")[1]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / MARKER).write_text("{}")
    (workdir / "model").mkdir()
    (workdir / "model" / "stale.txt").write_text("from an earlier demo")
    (workdir / "notes.txt").write_text("not the demo's")
    assert main(["demo", "--workdir", str(workdir), "--posts", "1500", "--max-steps", "20"]) == 0
    out = capfd.readouterr().out  # capfd: the reload stage prints from a subprocess
    assert "baseline" in out and "precision@10 against the real partners" in out and "related tags" in out
    for name in ("corpus/posts.csv", "data/dataset_dict.json", "report", "tokenizer/vocab.json",
                 "model/model.safetensors", "model/modules.json", "metrics.json"):
        assert (workdir / name).exists(), name
        assert str(workdir / name.split("/")[0]) in out
    assert not (workdir / "model" / "stale.txt").exists()
    assert (workdir / "notes.txt").read_text() == "not the demo's"
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert any(key.startswith("model.") for key in metrics) and any(key.startswith("baseline.") for key in metrics)
