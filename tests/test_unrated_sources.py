"""booru-chars files tables as booru-chars builds them: no rating and no score column.

Such a database builds a DATA_DIR whose posts have an unknown rating and no score (null, counted in
build_info.json and the summary); the tokenizer, training, evaluation, analysis and captions read
those as what they are (no rating or score token, no rating or score word, left out of the rating and
score accuracies), never as ``g`` or 0. ``--default-rating`` gives them one.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from datasets import load_from_disk

from booru_embed.cli import main
from booru_embed.data.ingest import build_dataset
from booru_embed.data.synthetic import generate_corpus
from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS, DANBOORU_CATEGORY_NAMES

# the files table of booru-chars (built from its *_files.tsv, as the t5-booru notes create it)
FILES_COLUMNS = ("booru", "fid", "shard", "file_name", "torr_md5", "orig_ext", "orig_md5", "file_size",
                 "img_width_torr", "img_height_torr", "jq", "torr_path", "tags_copyr", "tags_char", "tags_artist")
NUMBER = {name: number for number, name in DANBOORU_CATEGORY_NAMES.items()}
CATEGORIES = ("meta", "general", "artist", "copyright", "character")
MICRO_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "embedding_dim": 32, "nested_dims": [8, 16]}


def _files_row(row: dict) -> tuple:
    fid = int(row["id"])
    return ("safebooru", fid, fid % 10, f"{fid}.jpg", "m" * 32, "jpg", "o" * 32, 1000 + fid, 512, 768, 90,
            f"shard/{fid}.jpg", row["tag_string_copyright"], row["tag_string_character"], row["tag_string_artist"])


def write_booru_chars(path: Path, rows: list[dict]) -> Path:
    """A booru-chars sqlite database of ``rows`` (a generated CSV export's rows): no rating, no score."""
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE files ({', '.join(FILES_COLUMNS)})")
        db.execute("CREATE TABLE tags (booru TEXT, fid INTEGER, tag TEXT, tag_id INTEGER, tag_cat INTEGER)")
        db.executemany(f"INSERT INTO files VALUES ({', '.join('?' * len(FILES_COLUMNS))})", map(_files_row, rows))
        db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)",
                       [("safebooru", int(r["id"]), tag, 0, NUMBER[c]) for r in rows for c in CATEGORIES
                        for tag in r[f"tag_string_{c}"].split()])
    return path


@pytest.fixture(scope="module")
def unrated(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The database, its DATA_DIR built by the command, and the export rows it came from."""
    folder = tmp_path_factory.mktemp("unrated")
    generate_corpus(folder / "posts.csv", 420, seed=3)
    with open(folder / "posts.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    write_booru_chars(folder / "safebooru.sqlite", rows)
    return folder, rows


def test_a_database_without_rating_and_score_builds(unrated, capsys) -> None:
    folder, rows = unrated
    assert main(["build-dataset", str(folder / "safebooru.sqlite"), "--output", str(folder / "data")]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows)} posts without a rating (unknown; --default-rating sets one), {len(rows)} without a score" in out
    info = json.loads((folder / "data" / "build_info.json").read_text())
    assert info["kept"] == len(rows) and info["rejected"] == 0
    assert info["posts_without_rating"] == info["posts_without_score"] == len(rows) and info["default_rating"] is None
    data = load_from_disk(str(folder / "data"))
    posts = {row["id"]: row for split in ("train", "test") for row in data[split]}
    assert {post["rating"] for post in posts.values()} == {None} and {post["score"] for post in posts.values()} == {None}
    for row in rows:
        assert posts[int(row["id"])]["general"] == sorted(row["tag_string_general"].split())


def test_default_rating_and_the_tsv_pair(unrated, tmp_path) -> None:
    folder, rows = unrated
    info = build_dataset([folder / "safebooru.sqlite"], tmp_path / "rated", progress=False, default_rating="general")
    assert info["posts_without_rating"] == 0 and info["posts_without_score"] == len(rows) and info["default_rating"] == "g"
    assert set(load_from_disk(str(tmp_path / "rated"))["train"]["rating"]) == {"g"}
    with open(tmp_path / "sb_files.tsv", "w", encoding="utf-8") as handle:
        handle.write("\t".join(FILES_COLUMNS).upper() + "\n")
        handle.writelines("\t".join(map(str, _files_row(row))) + "\n" for row in rows[:50])
    with open(tmp_path / "sb_tags.tsv", "w", encoding="utf-8") as handle:
        handle.write("booru\tfid\ttag\ttag_id\ttag_cat\n")
        handle.writelines(f"safebooru\t{r['id']}\t{tag}\t0\t{NUMBER[c]}\n" for r in rows[:50] for c in CATEGORIES
                          for tag in r[f"tag_string_{c}"].split())
    info = build_dataset([tmp_path / "sb_tags.tsv"], tmp_path / "pair", progress=False)
    assert info["kept"] == 50 and info["posts_without_rating"] == info["posts_without_score"] == 50
    assert main(["build-dataset", str(folder / "safebooru.sqlite"), "--output", str(tmp_path / "x"),
                 "--default-rating", "safest"]) == 2


def test_an_export_with_a_missing_rating_is_still_rejected(tmp_path) -> None:
    """Only a source without the column has unknown ratings; an empty field of a column stays a bad row."""
    with sqlite3.connect(tmp_path / "bc.db") as db:
        db.execute("CREATE TABLE files (booru, fid, rating, score)")
        db.execute("CREATE TABLE tags (booru, fid, tag, tag_cat)")
        db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", [("d", 1, None, 3), ("d", 2, "g", None), ("d", 3, "g", 1)])
        db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?)", [("d", i, "solo", 0) for i in (1, 2, 3)])
    info = build_dataset([tmp_path / "bc.db"], tmp_path / "data", progress=False)
    assert info["kept"] == 1 and info["rejected_by_reason"] == {"missing_field": 2}
    assert info["posts_without_rating"] == info["posts_without_score"] == 0


def test_unrated_posts_train_evaluate_and_caption_as_unknown(unrated, tmp_path) -> None:
    import datasets

    from booru_embed.data.bulk_encoding import encode_dataset
    from booru_embed.data.tokenizer_build import build_tokenizer
    from booru_embed.evaluation.command import evaluate
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import fit
    from booru_embed.training.loss_log import LOSS_LOG

    folder, rows = unrated
    data_dir = folder / "data"
    if not data_dir.exists():
        build_dataset([folder / "safebooru.sqlite"], data_dir, progress=False)
    tokenizer = build_tokenizer(data_dir, tmp_path / "tokenizer")
    assert tokenizer.token_counts[tokenizer.rating_token_ids["g"]] == 0  # unknown is no rating, not g
    assert sum(tokenizer.token_counts[i] for i in tokenizer.score_token_ids) == 0  # no score is no score, not 0
    encoded = encode_dataset(tokenizer, datasets.load_from_disk(str(data_dir))["train"])
    categories = {c for row in encoded["category_ids"] for c in row}
    assert CATEGORY_IDS["rating"] not in categories and CATEGORY_IDS["score"] not in categories
    assert tokenizer({"general": ["solo"], "rating": None, "score": None})["input_ids"] == tokenizer("solo")["input_ids"]

    (tmp_path / "micro.json").write_text(json.dumps(MICRO_MODEL))
    model_dir = tmp_path / "model"
    config = TrainingConfig(dataset=str(data_dir), tokenizer=str(tmp_path / "tokenizer"), output=str(model_dir),
                            config=str(tmp_path / "micro.json"), max_steps=4, batch_size=32, warmup_steps=2,
                            num_workers=0, eval_posts=0, progress=False, checkpoint_every=0)
    result = fit(config)
    assert result.finished and result.state.step == 4
    logged = [json.loads(line) for line in (model_dir / "logs" / LOSS_LOG).read_text().splitlines()]
    assert all(entry["rating"] == 0 and entry["score"] == 0 for entry in logged)  # nothing to predict, no loss
    metrics = evaluate(model_dir, data_dir, tmp_path / "metrics.json", max_posts=60, baseline_posts=200)
    assert metrics["model.masked.micro_f1"] >= 0 and "model.rating.accuracy" not in metrics
    assert "model.score.accuracy" not in metrics and metrics["count.rating.posts"] == 0 == metrics["count.score.posts"]

    assert main(["analyze", str(data_dir), "--output", str(tmp_path / "report")]) == 0
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["ratings"]["unknown"] == stats["posts"] > 0 and stats["score"]["posts_with_score"] == 0
    assert main(["export-captions", str(data_dir), "--output", str(tmp_path / "captions"), "--format", "jsonl",
                 "--rating-words"]) == 0
    captions = [json.loads(line) for line in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == len(rows) and all(c["rating"] is None and c["score"] is None for c in captions)
    words = {"general", "sensitive", "questionable", "explicit"}
    assert not any(words & set(c["caption"].split(", ")) for c in captions)
