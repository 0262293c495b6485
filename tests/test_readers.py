"""build-dataset readers for booru-chars (sqlite, TSV pair) and Danbooru metadata dumps (Parquet with
tag strings or per-category lists, JSON arrays): the same DATA_DIR as the CSV export, bad rows reported."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk

from booru_embed.cli import main
from booru_embed.data.ingest import build_dataset
from booru_embed.data.synthetic import generate_corpus
from booru_embed.errors import UsageError
from booru_embed.modeling.categories_booru_embed import DANBOORU_CATEGORY_NAMES, RATING_ALIASES

CATEGORIES = ("meta", "general", "artist", "copyright", "character")
NUMBER = {name: number for number, name in DANBOORU_CATEGORY_NAMES.items()}
WORD = {letter: word for word, letter in RATING_ALIASES.items()}


def _all_rows(data_dir: Path) -> dict[int, dict]:
    dataset = load_from_disk(str(data_dir))
    return {row["id"]: row for split in ("train", "test") for row in dataset[split]}


def _rejects(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A generated CSV export, its DATA_DIR, and its rows."""
    folder = tmp_path_factory.mktemp("corpus")
    generate_corpus(folder / "posts.csv", 300, seed=11)
    build_dataset([folder / "posts.csv"], folder / "data", progress=False)
    with open(folder / "posts.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return folder, _all_rows(folder / "data"), rows


def _long_rows(rows: list[dict]) -> list[tuple[str, int, str, int, int]]:
    """The posts as booru-chars tag rows (booru, fid, tag, tag_id, tag_cat), shuffled: not sorted by fid."""
    long = [("danbooru", int(r["id"]), tag, 0, NUMBER[c]) for r in rows for c in CATEGORIES
            for tag in r[f"tag_string_{c}"].split()]
    random.Random(0).shuffle(long)
    return long


def _write_pair(folder: Path, rows: list[dict], extra_tags=(), extra_files=()) -> Path:
    with open(folder / "bc_tags.tsv", "w", encoding="utf-8") as handle:
        handle.write("BOORU\tFID\tTAG\tTAG_ID\tTAG_CAT\tDANB_TAG\n")
        for row in [*_long_rows(rows), *extra_tags]:
            handle.write("\t".join(map(str, row)) + "\t\n")
    with open(folder / "bc.tsv", "w", encoding="utf-8") as handle:
        handle.write("BOORU\tFID\tFNAME\tG_RATN\tG_SCORE\n")
        for r in [*[("danbooru", r["id"], "x.jpg", WORD[r["rating"]].title(), r["score"]) for r in rows], *extra_files]:
            handle.write("\t".join(map(str, r)) + "\n")
    return folder / "bc_tags.tsv"


def _write_sqlite(path: Path, rows: list[dict], extra_tags=(), extra_files=()) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE files (booru TEXT, fid INTEGER, rating TEXT, score INTEGER, md5 TEXT)")
        db.execute("CREATE TABLE tags (booru TEXT, fid INTEGER, tag TEXT, tag_id INTEGER, tag_cat INTEGER)")
        db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, 'm')",
                       [("danbooru", int(r["id"]), r["rating"], int(r["score"])) for r in rows] + list(extra_files))
        db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)", _long_rows(rows) + list(extra_tags))
    return path


def test_every_kind_gives_the_csv_dataset(corpus, tmp_path):
    folder, expected, rows = corpus
    table = pa.table({
        "id": pa.array([int(r["id"]) for r in rows], pa.int64()), "created_at": ["2024"] * len(rows),
        "rating": [WORD[r["rating"]] for r in rows], "score": pa.array([int(r["score"]) for r in rows], pa.int32()),
        **{f"tag_string_{c}": [r[f"tag_string_{c}"] for r in rows] for c in CATEGORIES}})
    pq.write_table(table, tmp_path / "strings.parquet")
    lists = table.drop([f"tag_string_{c}" for c in CATEGORIES])
    for c in CATEGORIES:
        lists = lists.append_column(c, pa.array([r[f"tag_string_{c}"].split() for r in rows], pa.list_(pa.string())))
    pq.write_table(lists, tmp_path / "lists.parquet")
    posts = [{"id": int(r["id"]), "rating": r["rating"], "score": int(r["score"]), "fav_count": 1,
              **{f"tag_string_{c}": r[f"tag_string_{c}"] for c in CATEGORIES}} for r in rows]
    (tmp_path / "posts.json").write_text("[\n" + ",\n".join(json.dumps(p, indent=1) for p in posts) + "\n]\n")
    inputs = {
        "sqlite": [_write_sqlite(tmp_path / "bc.sqlite", rows)],
        "tsv pair": [_write_pair(tmp_path, rows)],
        "tsv pair given as both files": [tmp_path / "bc.tsv", tmp_path / "bc_tags.tsv"],
        "parquet tag strings": [tmp_path / "strings.parquet"],
        "parquet lists": [tmp_path / "lists.parquet"],
        "json array": [tmp_path / "posts.json"],
    }
    for kind, paths in inputs.items():
        info = build_dataset(paths, tmp_path / "data", progress=False, block_bytes=4096)
        assert info["kept"] == len(rows) and info["rejected"] == 0, kind
        assert _all_rows(tmp_path / "data") == expected, kind


def test_bad_rows_of_a_tsv_pair_are_reported_with_file_and_line(corpus, tmp_path):
    _, expected, rows = corpus
    rows = rows[:20]
    first = int(rows[0]["id"])
    tags = _write_pair(tmp_path, rows, extra_tags=[
        ("danbooru", first, "a_tag", 0, 2),  # line n+2: unknown category
        ("danbooru", "12x", "solo", 0, 0),  # bad fid
        ("danbooru", 99_000_000, "lost", 0, 0),  # no files row
        ("safebooru", first, "solo", 0, 0),  # another booru
    ], extra_files=[("danbooru", 77, "x.jpg", "None", 1), ("danbooru", 78, "x.jpg", "Safe", "1.5"),
                    ("danbooru", 79, "x.jpg", "Safe", 4)])
    with open(tags, "a", encoding="utf-8") as handle:
        handle.write("danbooru\t5\tshort_row\n")
    info = build_dataset([tags], tmp_path / "data", progress=False)
    tag_lines = len(_long_rows(rows)) + 1
    found = sorted((Path(r["file"]).name, r["line"], r["reason"]) for r in _rejects(tmp_path / "data"))
    assert found == sorted([
        ("bc_tags.tsv", tag_lines + 1, "unknown_category"), ("bc_tags.tsv", tag_lines + 2, "bad_id"),
        ("bc_tags.tsv", tag_lines + 3, "orphan_tag"), ("bc_tags.tsv", tag_lines + 4, "other_booru"),
        ("bc_tags.tsv", tag_lines + 5, "wrong_column_count"),
        ("bc.tsv", len(rows) + 2, "bad_rating"), ("bc.tsv", len(rows) + 3, "bad_score")])
    got = _all_rows(tmp_path / "data")
    assert got[79]["general"] == [] and got[79]["rating"] == "g"  # a files row without tags is a post without tags
    assert {i: got[i] for i in got if i != 79} == {int(r["id"]): expected[int(r["id"])] for r in rows}
    assert info["kept"] == len(rows) + 1 and info["rejected"] == 7
    assert info["rows_read"] == info["kept"] + info["rejected"]


def test_bad_rows_of_a_sqlite_file_are_reported_with_table_and_rowid(corpus, tmp_path):
    _, expected, rows = corpus
    rows = rows[:10]
    path = _write_sqlite(tmp_path / "bc.db", rows, extra_tags=[
        ("danbooru", int(rows[0]["id"]), "x", 0, 7), ("danbooru", "abc", "x", 0, 0), ("danbooru", 123456789, "x", 0, 0),
        ("danbooru", int(rows[0]["id"]), "two words", 0, 0), ("danbooru", int(rows[0]["id"]), "y", 0, None)],
        extra_files=[("danbooru", "no", "g", 1), ("danbooru", 88, "z", 1), ("danbooru", 89, "general", "high")])
    build_dataset([path], tmp_path / "data", progress=False)
    tag_rows = len(_long_rows(rows))
    found = sorted((r["table"], r["line"], r["reason"]) for r in _rejects(tmp_path / "data"))
    assert found == sorted([
        ("tags", tag_rows + 1, "unknown_category"), ("tags", tag_rows + 2, "bad_id"), ("tags", tag_rows + 3, "orphan_tag"),
        ("tags", tag_rows + 4, "bad_tag"), ("tags", tag_rows + 5, "missing_field"),
        ("files", len(rows) + 1, "bad_id"), ("files", len(rows) + 2, "bad_rating"), ("files", len(rows) + 3, "bad_score")])
    assert _all_rows(tmp_path / "data") == {int(r["id"]): expected[int(r["id"])] for r in rows}


def test_malformed_inputs_stop_with_one_line(corpus, tmp_path, capsys):
    _, _, rows = corpus
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database at all, just bytes" * 100)
    with sqlite3.connect(tmp_path / "no_tags.db") as db:
        db.execute("CREATE TABLE files (booru, fid, rating, score)")
    with sqlite3.connect(tmp_path / "no_cat.db") as db:
        db.execute("CREATE TABLE files (booru, fid, rating, score)")
        db.execute("CREATE TABLE tags (booru, fid, tag)")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "x_tags.tsv").write_text("BOORU\tFID\tTAG\tTAG_ID\tTAG_CAT\n")
    (tmp_path / "broken.json").write_text("[1, 2]")
    cases = {"garbage.sqlite": "not a readable sqlite database", "no_tags.db": "no tags table",
             "no_cat.db": "no tag_cat column", "lonely/x_tags.tsv": "without its files TSV",
             "broken.json": "not a post object"}
    for name, message in cases.items():
        with pytest.raises(UsageError, match=message):
            build_dataset([tmp_path / name], tmp_path / "out")
        assert main(["build-dataset", str(tmp_path / name), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_json_array_that_breaks_keeps_the_posts_before(tmp_path):
    good = {"id": 1, "rating": "explicit", "score": 3, "tag_string_general": ["a", "b"], "tag_string_meta": "",
            "tag_string_artist": "", "tag_string_copyright": "", "tag_string_character": "x"}
    text = "[" + json.dumps(good) + ",\n" + json.dumps({**good, "id": 2, "rating": "safe"}) + ",\n7,\n" \
           + json.dumps({**good, "id": 3}) + ",\n{broken\n" + json.dumps({**good, "id": 4}) + "]"
    (tmp_path / "p.json").write_text(text)
    info = build_dataset([tmp_path / "p.json"], tmp_path / "data", progress=False)
    assert [(r["line"], r["reason"]) for r in _rejects(tmp_path / "data")] == [
        (2, "bad_rating"), (3, "invalid_json"), (5, "invalid_json")]
    rows = _all_rows(tmp_path / "data")
    assert sorted(rows) == [1, 3] and rows[1]["rating"] == "e" and rows[1]["general"] == ["a", "b"]
    assert info["rows_read"] == 5
