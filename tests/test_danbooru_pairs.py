"""The danbooru-pairs corpus: reproducible, real pair rates within a stated tolerance, clear errors,
and the shipped derivative equal to the shared table it was made from."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.data.danbooru_pairs import TRAIT_RATE, PairsWorld
from booru_embed.data.pair_table import (DERIVATIVE_FILES, load_pair_table, packaged_dir, read_derivative,
                                         write_derivative)
from booru_embed.data.synthetic import generate_corpus
from booru_embed.data.synthetic_settings import setting
from booru_embed.errors import UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# (character, partner, Danbooru's rate): count / post_count from the pair table and tags.csv
KNOWN_PAIRS = (("usada_pekora", "rabbit_ears", 7867 / 9612), ("usada_pekora", "thick_eyebrows", 4938 / 9612),
               ("usada_pekora", "carrot_hair_ornament", 4428 / 9612))
RATE_TOLERANCE = 0.05  # about 3.5 binomial standard errors at 1,000 posts of the character


@pytest.fixture(scope="module")
def table():
    return read_derivative(packaged_dir())


@pytest.fixture(scope="module")
def world(table):
    return PairsWorld(setting("danbooru-pairs"), np.random.default_rng(0), table)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "a.csv"
    generate_corpus(path, 400, seed=3, spec=setting("danbooru-pairs"), pairs=packaged_dir())
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def tags_of(row: dict[str, str]) -> set[str]:
    return set(" ".join(row[f"tag_string_{c}"] for c in ("general", "character", "copyright", "artist", "meta")).split())


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path: Path, corpus: Path, world) -> None:
    again = tmp_path / "b.csv"
    generate_corpus(again, 400, seed=3, spec=setting("danbooru-pairs"), pairs=packaged_dir())
    assert corpus.read_bytes() == again.read_bytes()
    assert again.with_name("b.truth.json").read_bytes() == corpus.with_name("a.truth.json").read_bytes()
    assert world.draw(np.random.default_rng(3), 50, 0) == world.draw(np.random.default_rng(3), 50, 0)
    assert world.draw(np.random.default_rng(3), 50, 0) != world.draw(np.random.default_rng(4), 50, 0)
    posts = rows(corpus)
    assert len(posts) == 400 and len({p["id"] for p in posts}) == 400
    lengths = [len(tags_of(p)) for p in posts]
    assert 25 < np.mean(lengths) < 45  # Danbooru's posts have about 34 tags
    assert {p["rating"] for p in posts} == {"g", "s", "q", "e"}


def test_a_characters_partners_come_at_the_tables_rates(table, world) -> None:
    index = table.index()
    pekora = index["usada_pekora"]
    only = np.zeros_like(world.character_p)
    only[np.searchsorted(world.characters, pekora)] = 1.0
    hers = copy.copy(world)
    hers.character_p = only  # every post with a leading character leads with her
    posts = [set(line.split(",")[4].split()) | set(line.split(",")[7].split())
             for line in hers.draw(np.random.default_rng(1), 1500, 0)]
    with_her = [p for p in posts if "usada_pekora" in p]
    assert len(with_her) > 900
    for _, partner, rate in KNOWN_PAIRS:
        measured = sum(partner in p for p in with_her) / len(with_her)
        assert abs(measured - rate) <= RATE_TOLERANCE, (partner, measured, rate)
    assert world.copyright_of[pekora] == index["hololive"]  # no pair says so: her partners vote for it


def test_truth_names_real_partners_as_traits(corpus: Path) -> None:
    truth = json.loads(corpus.with_name("a.truth.json").read_text())
    assert truth["setting"] == "danbooru-pairs" and truth["seed"] == 3
    pekora = truth["characters"]["usada_pekora"]
    assert pekora["copyright"] == "hololive" and "usada_pekora" in truth["copyrights"]["hololive"]["characters"]
    assert pekora["traits"][:3] == ["rabbit_ears", "thick_eyebrows", "rabbit_girl"]
    assert pekora["partners"]["rabbit_ears"] == pytest.approx(7867 / 9612, abs=1e-3)
    assert all(pekora["partners"][t] >= TRAIT_RATE for t in pekora["traits"])
    assert truth["characters"]["hakurei_reimu"]["copyright"] == "touhou"
    assert all(truth["artists"][a]["style_made_up"] for a in list(truth["artists"])[:5])


def test_derivative_round_trip(tmp_path: Path, table) -> None:
    write_derivative(table, tmp_path)
    again = read_derivative(tmp_path)
    assert again.names == table.names
    for field in ("categories", "post_counts", "pair_a", "pair_b", "pair_count", "implications"):
        assert np.array_equal(getattr(again, field), getattr(table, field)), field
    assert sum((packaged_dir() / name).stat().st_size for name in DERIVATIVE_FILES) <= 3_000_000


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "danbooru-cooccurrence" / "cooccurrence.parquet").is_file(),
                    reason="the shared pair table is not next to the repository")
def test_shipped_derivative_is_the_shared_table(tmp_path: Path, table) -> None:
    shared = load_pair_table(SHARED / "danbooru-cooccurrence", SHARED / "danbooru-2025-05")
    assert shared.names == table.names
    assert np.array_equal(shared.pair_count, table.pair_count) and np.array_equal(shared.implications, table.implications)
    spec = setting("danbooru-pairs")
    generate_corpus(tmp_path / "shared.csv", 300, seed=1, spec=spec, tag_data=SHARED / "danbooru-2025-05")
    generate_corpus(tmp_path / "shipped.csv", 300, seed=1, spec=spec, pairs=packaged_dir())
    assert (tmp_path / "shared.csv").read_bytes() == (tmp_path / "shipped.csv").read_bytes()


def write_parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("columns, message", [
    ({"tag_a": ["a"], "tag_b": ["b"]}, "no column 'count'"),
    ({"tag_a": ["a"], "tag_b": [None], "count": [3]}, "column 'tag_b' must be strings without nulls"),
    ({"tag_a": ["a"], "tag_b": ["b"], "count": ["3"]}, "column 'count' must be ints"),
    ({"tag_a": ["1girl"], "tag_b": ["solo"], "count": [0]}, "values below 1"),
    ({"tag_a": ["not_a_tag"], "tag_b": ["nor_this"], "count": [5]}, "no pair of two different tags"),
])
def test_malformed_table_is_a_one_line_error(tmp_path: Path, columns: dict, message: str) -> None:
    write_parquet(tmp_path / "pairs" / "cooccurrence.parquet", columns)
    (tmp_path / "tags").mkdir()
    (tmp_path / "tags" / "tags.csv").write_text('1girl,0,100,""\nsolo,0,90,""\n')
    with pytest.raises(UsageError, match=message):
        load_pair_table(tmp_path / "pairs", tmp_path / "tags")


def test_missing_or_unreadable_table(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no pair table in"):
        load_pair_table(tmp_path, None)
    (tmp_path / "cooccurrence.parquet").write_text("not parquet")
    with pytest.raises(UsageError, match="needs Danbooru's tag tables"):
        load_pair_table(tmp_path, None)
    (tmp_path / "tags").mkdir()
    (tmp_path / "tags" / "tags.csv").write_text('1girl,0,100,""\n')
    with pytest.raises(UsageError, match="not a readable parquet file"):
        load_pair_table(tmp_path, tmp_path / "tags")
    for name in DERIVATIVE_FILES[:2]:
        write_parquet(tmp_path / "d" / name, {"x": [1]})
    with pytest.raises(UsageError, match="no pair table in"):  # a derivative lacking a file
        load_pair_table(tmp_path / "d", None)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "c.csv")
    assert main(["generate-corpus", "--setting", "danbooru-pairs", "--posts", "10", "--output", out,
                 "--pairs", str(tmp_path)]) == 2
    assert "no pair table in" in capsys.readouterr().err
    assert main(["generate-corpus", "--setting", "default", "--posts", "10", "--output", out, "--pairs", str(tmp_path)]) == 2
    assert "--pairs is for the danbooru-pairs setting" in capsys.readouterr().err
    assert main(["generate-corpus", "--setting", "danbooru-pairs", "--posts", "10", "--output", out,
                 "--trait-probability", "0.5"]) == 2
    assert "--trait-probability cannot change setting 'danbooru-pairs'" in capsys.readouterr().err
    assert not Path(out).exists()
