"""`booru-embed export-captions`: formats, order, style, words, normalisation, model completion, bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from booru_embed import captions
from booru_embed.cli import main
from tag_fixtures import build_tag_tokenizer, tag_posts
from tiny_model import build_tiny_model, tiny_posts, write_data_dir


@pytest.fixture(scope="module")
def tag_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tag_tokenizer(tmp_path_factory.mktemp("tags"))


def _export(data_dir: Path, output: Path, *flags: str) -> int:
    return main(["export-captions", str(data_dir), "--output", str(output), *flags])


def test_three_formats_hold_the_same_captions(tag_folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions, "BATCH_ROWS", 7)  # several Arrow batches per split
    data_dir, _ = tag_folders
    ids = [p["id"] for p in tag_posts()] + [p["id"] for p in tag_posts()[::5]]
    assert _export(data_dir, tmp_path / "k", "--format", "kohya-json") == 0
    kohya = json.loads((tmp_path / "k" / "metadata.json").read_text())
    assert list(kohya) == [str(i) for i in dict.fromkeys(ids)] and set(kohya["3"]) == {"tags"}
    assert _export(data_dir, tmp_path / "j", "--format", "jsonl", "--split", "train") == 0
    lines = [json.loads(line) for line in (tmp_path / "j" / "captions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in lines] == [p["id"] for p in tag_posts()]
    assert all(kohya[str(row["id"])]["tags"] == row["caption"] for row in lines)
    assert lines[2]["rating"] == "q" and lines[2]["score"] == 2
    assert _export(data_dir, tmp_path / "t", "--format", "txt", "--split", "test", "--extension", ".caption") == 0
    files = sorted((tmp_path / "t").glob("*.caption"))
    assert sorted(int(f.stem) for f in files) == [p["id"] for p in tag_posts()[::5]]
    assert (tmp_path / "t" / "5.caption").read_text() == kohya["5"]["tags"] + "\n"
    info = json.loads((tmp_path / "t" / "export_info.json").read_text())
    assert info["posts"] == len(files) and info["splits"] == ["test"]


def test_without_tokenizer_only_spelling_and_duplicates(tag_folders, tmp_path: Path) -> None:
    data_dir, _ = tag_folders
    assert _export(data_dir, tmp_path, "--format", "jsonl", "--split", "train", "--separator", " ") == 0
    first = json.loads((tmp_path / "captions.jsonl").read_text().splitlines()[0])["caption"].split(" ")
    assert first.count("long_hair") == 1 and "longhair" in first  # no alias table: longhair stays
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["duplicates_removed"] == 2 and info["aliases_resolved"] == 0 and info["tokenizer"] is None


def test_order_style_words_and_implications(tag_folders, tmp_path: Path) -> None:
    data_dir, tokenizer_dir = tag_folders
    assert _export(data_dir, tmp_path, "--format", "jsonl", "--split", "train", "--tokenizer", str(tokenizer_dir),
                   "--order", "general,character", "--style", "prompt", "--implications", "minimal",
                   "--rating-words", "--score-words") == 0
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    scores = np.array([p["score"] for p in tag_posts()])
    cuts = np.quantile(scores, [1 / 3, 2 / 3], method="higher")
    for row, post in zip(rows, tag_posts()):
        words = row["caption"].split(", ")
        assert words[0] == {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}[post["rating"]]
        assert words[1] == ["low score", "average score", "high score"][int((post["score"] >= cuts).sum())]
        assert words[-1] == "highres"  # meta was not named: it follows in canonical order
        assert f"artist {post['id'] % 3}" in words  # so was artist
        if post["character"]:
            character = words.index("springfield \\(girls' frontline\\)")
            assert all(words.index(t.replace("_", " ")) < character for t in post["general"] if t in ("1girl", "null"))
            assert "girls' frontline" not in words  # implied by the character: minimal removes it
        assert not ("cat ears" in words and "animal ears" in words)
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["score_thresholds"] == [int(c) for c in cuts] and info["implied_removed"] > 0


def test_complete_with_a_model(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "tiny")
    output = tmp_path / "out"
    assert _export(tmp_path / "tiny" / "data", output, "--format", "jsonl", "--split", "test",
                   "--complete", str(model_dir), "--threshold", "0.05") == 0
    rows = {row["id"]: row for row in map(json.loads, (output / "captions.jsonl").read_text().splitlines())}
    added = [json.loads(line) for line in (output / "added_tags.jsonl").read_text().splitlines()]
    assert added, "an untrained model over 60 tags still gives some suggestions above 5%"
    posts = {p["id"]: p for p in tiny_posts()}
    for entry in added:
        original = {t for c in ("general", "artist", "copyright", "character", "meta") for t in posts[entry["id"]][c]}
        caption = set(rows[entry["id"]]["caption"].split(", "))
        for item in entry["added"]:
            assert item["probability"] >= 0.05 and item["tag"] in caption and item["tag"] not in original
    info = json.loads((output / "export_info.json").read_text())
    assert info["model_tags_added"] == sum(len(e["added"]) for e in added) and info["posts_completed"] == len(added)


@pytest.mark.parametrize(("flags", "message"), [
    (["--order", "artist,charactr"], "unknown category 'charactr'"),
    (["--order", "artist,artist"], "at most once"),
    (["--complete", "no/such/model", "--threshold", "0.5"], "not a model folder"),
    (["--complete", "no/such/model"], "needs --threshold"),
    (["--threshold", "0.5"], "goes with --complete"),
    (["--extension", "txt"], "--extension must be one of"),
    (["--implications", "complete"], "needs --tokenizer"),
    (["--split", "validation"], "not in"),
    (["--tokenizer", "no/such/tokenizer"], "no vocab.json"),
])
def test_bad_flags_fail_with_one_line_before_any_work(tag_folders, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       flags: list[str], message: str) -> None:
    data_dir, _ = tag_folders
    output = tmp_path / "out"
    assert _export(data_dir, output, "--format", "txt", *flags) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not output.exists()


def test_a_malformed_row_is_named(tag_folders, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    posts = tag_posts(6)
    posts[4]["rating"] = "z"
    data_dir = write_data_dir(tmp_path / "bad", posts)
    assert _export(data_dir, tmp_path / "out", "--format", "kohya-json") == 2
    assert "post id 4: unknown rating 'z'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metadata.json").exists()  # only metadata.json.partial: not complete
    assert (tmp_path / "out" / "metadata.json.partial").read_text().count('"tags"') == 4
    assert main(["normalize", str(tag_folders[1]), "--dataset", str(data_dir), "--output", str(tmp_path / "n")]) == 2
    assert "train post id 4: unknown rating 'z'" in capsys.readouterr().err
