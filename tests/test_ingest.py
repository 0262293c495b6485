"""build-dataset: round trip, bad rows with exact lines, duplicates, split stability, formats, errors."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_from_disk

from booru_embed.cli import main
from booru_embed.data import blocks
from booru_embed.data.checks import tag_lists
from booru_embed.data.ingest import build_dataset, is_test_post
from booru_embed.data.synthetic import CSV_HEADER, generate_corpus
from booru_embed.errors import UsageError

CATEGORIES = ("meta", "general", "artist", "copyright", "character")
ODD_TAGS = [":d", "^_^", "fate/grand_order", "girls'_frontline", "?", "...", "null", "nan", "n/a",
            'don\'t_say_"lazy"', "honkai:_star_rail", "love_live!", "NULL", "None", "#", "\u2606"]


def _row(post_id, rating="g", score="1", meta="", general="", artist="", copyright="", character="") -> str:
    def quote(field: str) -> str:
        return '"' + field.replace('"', '""') + '"'
    return ",".join([str(post_id), rating, str(score)] + [quote(f) for f in (meta, general, artist, copyright, character)])


def _write(path: Path, lines: list[str | bytes], header: str = CSV_HEADER) -> Path:
    data = header.encode() + b"\n" + b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def _all_rows(data_dir: Path) -> dict[int, dict]:
    dataset = load_from_disk(str(data_dir))
    return {row["id"]: row for split in ("train", "test") for row in dataset[split]}


def _rejects(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]


def test_synthetic_round_trip(tmp_path):
    csv_path = tmp_path / "posts.csv"
    generate_corpus(csv_path, 1500, seed=5)
    info = build_dataset([csv_path], tmp_path / "data")
    dataset = load_from_disk(str(tmp_path / "data"))
    assert set(dataset) == {"train", "test"}
    assert dataset["train"].features["id"].dtype == "int64" and dataset["train"].features["score"].dtype == "int32"
    assert str(dataset["train"].features["general"].feature.dtype) == "string"
    assert info["rows_read"] == info["kept"] == 1500 and info["rejected"] == info["duplicates"] == 0
    assert info["splits"]["test"] == len(dataset["test"]) > 0
    rows = _all_rows(tmp_path / "data")
    with open(csv_path, encoding="utf-8", newline="") as handle:
        for source in csv.DictReader(handle):
            row = rows[int(source["id"])]
            assert (row["rating"], row["score"]) == (source["rating"], int(source["score"]))
            for category in CATEGORIES:
                assert row[category] == source[f"tag_string_{category}"].split()
    saved = json.loads((tmp_path / "data" / "build_info.json").read_text())
    assert saved["rows_read"] == 1500 and saved["splits"] == info["splits"]


def test_odd_tags_kept_exactly_and_deduplicated(tmp_path):
    general = " ".join(ODD_TAGS)
    path = _write(tmp_path / "odd.csv", [
        _row(1, general=general, copyright="fate/grand_order girls'_frontline"),
        _row(2, general="solo  b a b solo ", meta="highres highres"),  # repeats, double spaces, unsorted
        _row(3, general="a,b c", character="hu_tao_(genshin_impact)"),
    ])
    build_dataset([path], tmp_path / "data")
    rows = _all_rows(tmp_path / "data")
    assert rows[1]["general"] == ODD_TAGS
    assert rows[1]["copyright"] == ["fate/grand_order", "girls'_frontline"]
    assert rows[1]["artist"] == [] and rows[1]["meta"] == []
    assert rows[2]["general"] == ["solo", "b", "a"] and rows[2]["meta"] == ["highres"]
    assert rows[3]["general"] == ["a,b", "c"] and rows[3]["character"] == ["hu_tao_(genshin_impact)"]


def _bad_file(tmp_path: Path) -> Path:
    lines = [
        _row(10, general="1girl solo"),                       # line 2 ok
        '11,g,1,"","multi\nline tag","","",""',               # lines 3-4 ok (quoted newline)
        _row(12, general="ok"),                               # line 5 ok
        "13,g,1,,",                                           # line 6 wrong_column_count (too few)
        _row(14) + ',"extra"',                                # line 7 wrong_column_count (too many)
        _row("x15"),                                          # line 8 bad_id
        _row(16, score="1.5"),                                # line 9 bad_score
        _row(17, score="99999999999"),                        # line 10 bad_score (int32 overflow)
        _row(18, rating="safe"),                              # line 11 bad_rating
        _row(19, general="caf").encode() + b"\xe9",           # line 12 invalid_utf8
        _row(20, general="a\x00b"),                           # line 13 nul_byte
        _row(21, general=" ".join(f"t{i}" for i in range(2500))),  # line 14 too_many_tags
        '22,q,3,"","quoted\n\nblank lines inside","","",""',  # lines 15-17 ok
        "",                                                   # line 18 blank: no post
        _row(23, general="last"),                             # line 19 ok
    ]
    return _write(tmp_path / "bad.csv", lines)


EXPECTED_REJECTS = [
    (6, "wrong_column_count"), (7, "wrong_column_count"), (8, "bad_id"), (9, "bad_score"), (10, "bad_score"),
    (11, "bad_rating"), (12, "invalid_utf8"), (13, "nul_byte"), (14, "too_many_tags"),
]


@pytest.mark.parametrize("block_bytes", [32 << 20, 200, 64])
def test_every_bad_row_is_reported_with_its_line(tmp_path, block_bytes):
    """Small blocks put good and bad rows in separate blocks: both parse paths must agree."""
    path = _bad_file(tmp_path)
    info = build_dataset([path], tmp_path / "data", block_bytes=block_bytes)
    rejects = _rejects(tmp_path / "data")
    assert [(r["line"], r["reason"]) for r in rejects] == EXPECTED_REJECTS
    assert all(r["file"] == str(path) for r in rejects)
    assert rejects[2]["raw"].startswith("x15,g,1,") and "x15" in rejects[2]["detail"]
    assert len(rejects[-1]["raw"]) <= 300
    assert info["rows_read"] == 14 and info["kept"] == 5 and info["rejected"] == 9 and info["duplicates"] == 0
    assert info["rejected_by_reason"] == {"bad_id": 1, "bad_rating": 1, "bad_score": 2, "invalid_utf8": 1,
                                          "nul_byte": 1, "too_many_tags": 1, "wrong_column_count": 2}
    rows = _all_rows(tmp_path / "data")
    assert sorted(rows) == [10, 11, 12, 22, 23]
    assert rows[11]["general"] == ["multi\nline", "tag"]


def test_max_tags_flag(tmp_path):
    path = _write(tmp_path / "p.csv", [_row(1, general="a b c"), _row(2, general="a b", meta="m")])
    info = build_dataset([path], tmp_path / "data", max_tags=2)
    assert info["rejected_by_reason"] == {"too_many_tags": 2}
    assert main(["build-dataset", str(path), "--output", str(tmp_path / "d2"), "--max-tags", "3"]) == 0
    assert json.loads((tmp_path / "d2" / "build_info.json").read_text())["kept"] == 2


def test_duplicates_keep_the_last_occurrence(tmp_path):
    first = _write(tmp_path / "a.csv", [_row(1, general="old"), _row(2, general="x"), _row(1, general="newer")])
    second = _write(tmp_path / "b.csv", [_row(3, general="y"), _row(1, general="newest"), _row(2, general="x2")])
    info = build_dataset([first, second], tmp_path / "data")
    assert info["rows_read"] == 6 and info["duplicates"] == 3 and info["kept"] == 3
    assert info["rows_read"] == info["kept"] + info["rejected"] + info["duplicates"]
    rows = _all_rows(tmp_path / "data")
    assert rows[1]["general"] == ["newest"] and rows[2]["general"] == ["x2"] and rows[3]["general"] == ["y"]


def test_split_is_a_stable_function_of_the_id(tmp_path):
    csv_path = tmp_path / "posts.csv"
    generate_corpus(csv_path, 2000, seed=2)
    build_dataset([csv_path], tmp_path / "whole", test_fraction=0.1)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    body = lines[1:]
    random.Random(0).shuffle(body)
    part_a = _write(tmp_path / "part_a.csv", body[:700], header=lines[0])
    part_b = _write(tmp_path / "part_b.csv", body[700:], header=lines[0])
    build_dataset([str(tmp_path / "part_*.csv")], tmp_path / "parts", test_fraction=0.1)
    whole, parts = load_from_disk(str(tmp_path / "whole")), load_from_disk(str(tmp_path / "parts"))
    for split in ("train", "test"):
        assert sorted(whole[split]["id"]) == sorted(parts[split]["id"])
    test_ids = np.array(whole["test"]["id"])
    assert 0.07 < len(test_ids) / 2000 < 0.13
    assert is_test_post(test_ids, 0.1).all() and not is_test_post(np.array(whole["train"]["id"]), 0.1).any()
    smaller = set(np.array(whole["test"]["id"])[is_test_post(test_ids, 0.05)])
    assert smaller and smaller < set(test_ids)  # a smaller fraction is a subset
    assert part_a.exists() and part_b.exists()


def _csv_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_other_formats_give_the_same_dataset(tmp_path):
    csv_path = tmp_path / "posts.csv"
    generate_corpus(csv_path, 400, seed=4)
    rows = _csv_rows(csv_path)
    with open(tmp_path / "posts.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, quotechar=None)
        writer.writerow(rows[0].keys())
        writer.writerows(r.values() for r in rows)
    with open(tmp_path / "posts.jsonl", "w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps({**r, "id": int(r["id"]), "score": int(r["score"]), "extra": {"a": 1}}) + "\n")
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    table = table.set_column(0, "id", pa.array([int(r["id"]) for r in rows], pa.int64()))
    table = table.set_column(2, "score", pa.array([int(r["score"]) for r in rows], pa.int32()))
    pq.write_table(table.append_column("created_at", pa.array(["2024"] * len(rows))), tmp_path / "posts.parquet")
    with gzip.open(tmp_path / "posts.csv.gz", "wb") as handle:
        handle.write(csv_path.read_bytes())
    expected = None
    for name in ("posts.csv", "posts.tsv", "posts.jsonl", "posts.parquet", "posts.csv.gz"):
        info = build_dataset([tmp_path / name], tmp_path / f"data-{name}")
        assert info["kept"] == 400 and info["rejected"] == 0, name
        got = _all_rows(tmp_path / f"data-{name}")
        expected = expected or got
        assert got == expected, name


def test_bad_jsonl_and_parquet_rows(tmp_path):
    good = {"id": 1, "rating": "g", "score": 3, "tag_string_meta": "", "tag_string_general": "a b",
            "tag_string_artist": "", "tag_string_copyright": "", "tag_string_character": ""}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": 2, "rating": None}),
             json.dumps({**good, "id": "abc"}), json.dumps([1, 2]), json.dumps({**good, "id": 3}),
             json.dumps({**good, "id": 4, "tag_string_general": {"a": 1}}),
             json.dumps({**good, "id": 5, "tag_string_artist": None, "tag_string_general": ["x", "y"]})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    info = build_dataset([tmp_path / "p.jsonl"], tmp_path / "data")
    assert [(r["line"], r["reason"]) for r in _rejects(tmp_path / "data")] == [
        (2, "invalid_json"), (3, "missing_field"), (4, "bad_id"), (5, "invalid_json"), (7, "invalid_json")]
    assert info["kept"] == 3 and info["rows_read"] == 8
    rows = _all_rows(tmp_path / "data")
    assert rows[5]["general"] == ["x", "y"] and rows[5]["artist"] == []
    table = pa.table({"id": [5, 6, None, 7], "rating": ["g", "x", "s", "e"], "score": [1, 2, 3, None],
                      **{f"tag_string_{c}": ["", "a", "b", None] for c in CATEGORIES}})
    pq.write_table(table, tmp_path / "p.parquet")
    info = build_dataset([tmp_path / "p.parquet"], tmp_path / "data2")
    assert [(r["line"], r["reason"]) for r in _rejects(tmp_path / "data2")] == [
        (2, "bad_rating"), (3, "missing_field"), (4, "missing_field")]
    assert info["kept"] == 1


def test_input_errors_stop_with_one_line(tmp_path, capsys):
    good = _write(tmp_path / "good.csv", [_row(1, general="a")])
    wrong = _write(tmp_path / "wrong.csv", ["1,g,1,a"], header="id,rating,score,tags")
    (tmp_path / "empty.csv").write_bytes(b"")
    header_only = _write(tmp_path / "header.csv", [])
    (tmp_path / "posts.xlsx").write_bytes(b"x")
    cases = {
        str(tmp_path / "missing.csv"): "not found",
        str(tmp_path / "nothing-*.csv"): "no input file matches",
        str(wrong): "wrong header",
        str(tmp_path / "empty.csv"): "empty file",
        str(header_only): "no posts",
        str(tmp_path / "posts.xlsx"): "unknown input format",
    }
    for source, message in cases.items():
        with pytest.raises(UsageError, match=message):  # checked before anything is written
            build_dataset([source] if message == "no posts" else [good, source], tmp_path / "out")
        assert main(["build-dataset", source, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "train").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        build_dataset([good], tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").exists()
    with pytest.raises(UsageError, match="test-fraction"):
        build_dataset([good], tmp_path / "out", test_fraction=1.5)


def test_rebuild_replaces_a_previous_dataset(tmp_path, capsys):
    path = _write(tmp_path / "p.csv", [_row(1, general="a"), _row(2, general="b")])
    assert main(["build-dataset", str(path), "--output", str(tmp_path / "data")]) == 0
    assert "kept 2" in capsys.readouterr().out
    _write(tmp_path / "p.csv", [_row(3, general="c")])
    assert main(["build-dataset", str(path), "--output", str(tmp_path / "data")]) == 0
    assert sorted(_all_rows(tmp_path / "data")) == [3]
    with pytest.raises(UsageError, match="no posts"):  # a failed build leaves the earlier dataset alone
        build_dataset([_write(tmp_path / "header.csv", [])], tmp_path / "data")
    assert sorted(_all_rows(tmp_path / "data")) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "header.csv", "p.csv"]


def test_unterminated_quote_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "MAX_RECORD_BYTES", 200)
    path = _write(tmp_path / "p.csv", [_row(1, general="a"), '2,g,1,"","never closed', *[_row(i) for i in range(3, 40)]])
    with pytest.raises(UsageError, match="unterminated quoted field starting near line 3"):
        build_dataset([path], tmp_path / "data", block_bytes=64)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("strings, expected", [
    (["a b", "c d"], [["a", "b"], ["c", "d"]]),  # sorted: the fast path
    (["b a", "a b"], [["b", "a"], ["a", "b"]]),  # unsorted, no repeats: kept as given
    (["a a", ""], [["a"], []]),  # a repeat and an empty string
    (["", "a", "", "b c", ""], [[], ["a"], [], ["b", "c"], []]),  # empty rows around, at both ends
    ([" a  b ", None], [["a", "b"], []]),  # edge and double spaces, a null
    (["x y", "", "y x y"], [["x", "y"], [], ["y", "x"]]),  # repeat after an empty row
])
def test_tag_lists_split_exactly(strings, expected):
    lists, _ = tag_lists(pa.array(strings, type=pa.string()))
    assert lists.to_pylist() == expected
    # the same on a slice of a longer array (offsets not starting at 0)
    sliced, _ = tag_lists(pa.array(["zz  zz", *strings], type=pa.string()).slice(1))
    assert sliced.to_pylist() == expected
