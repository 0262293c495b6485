"""Choosing the vocabulary: minimum counts, coverage, score buckets, alias/implication tables, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from test_tokenizer import TAG_COLUMNS, write_data_dir

from booru_embed.cli import main
from booru_embed.errors import UsageError
from booru_embed.modeling.vocabulary_booru_embed import Vocabulary
from booru_embed.data.bulk_encoding import encode_dataset
from booru_embed.data.tag_tables import load_implications, read_pair_table
from booru_embed.data.tokenizer_build import (
    BUILD_INFO_FILE,
    assign_categories,
    build_tokenizer,
    parse_min_counts,
    score_boundaries,
)


def posts_with_counts(counts: dict[tuple[str, str], int], num_posts: int) -> list[dict]:
    """``num_posts`` posts where tag ``(category, name)`` appears in the first ``count`` posts."""
    posts = [{"rating": "gsqe"[i % 4], "score": i, **{c: [] for c in TAG_COLUMNS}} for i in range(num_posts)]
    for (category, tag), count in counts.items():
        for post in posts[:count]:
            post[category].append(tag)
    return posts


COUNTS = {
    ("general", "common"): 40, ("general", "mid"): 10, ("general", "few"): 3,
    ("artist", "artist_three"): 3, ("artist", "artist_one"): 1,
    ("character", "char_five"): 5, ("copyright", "series_five"): 5, ("meta", "highres"): 30, ("meta", "rare_meta"): 2,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("vocab") / "data", posts_with_counts(COUNTS, 40))


def kept_tags(tok) -> set[str]:
    return set(tok.convert_ids_to_tokens(tok.tag_token_ids))


def test_default_min_counts_favour_specific_categories(data_dir, tmp_path):
    tok = build_tokenizer(data_dir, tmp_path / "tok")
    assert kept_tags(tok) == {"common", "mid", "artist_three", "char_five", "series_five", "highres"}
    info = json.loads((tmp_path / "tok" / BUILD_INFO_FILE).read_text())
    assert info["categories"]["general"]["tags_seen"] == 3 and info["categories"]["general"]["tags_kept"] == 2
    assert info["categories"]["general"]["coverage"] == pytest.approx(50 / 53)


def test_explicit_min_counts_override_defaults(data_dir, tmp_path):
    tok = build_tokenizer(data_dir, tmp_path / "tok", min_counts={"general": 3, "artist": 1, "meta": 31})
    assert kept_tags(tok) == {"common", "mid", "few", "artist_three", "artist_one", "char_five", "series_five"}
    assert tok.tag_to_id("highres") is None
    assert tok({"meta": ["highres"]})["input_ids"] == [1, tok.unk_token_ids["meta"]]


def test_coverage_picks_thresholds_per_category(data_dir, tmp_path):
    tok = build_tokenizer(data_dir, tmp_path / "tok", coverage=0.7, min_counts={"artist": 1})
    assert {"common", "mid", "few"} & kept_tags(tok) == {"common"}  # 40/53 >= 0.7
    assert {"artist_three", "artist_one"} <= kept_tags(tok)
    with pytest.raises(UsageError, match="coverage"):
        build_tokenizer(data_dir, tmp_path / "bad", coverage=1.5)


def test_vocabulary_layout_and_padding_rows(data_dir, tmp_path):
    tok = build_tokenizer(data_dir, tmp_path / "tok")
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    kinds = [row[1] for row in vocab["tokens"]]
    assert len(kinds) % 64 == 0 and kinds[:3] == ["special"] * 3
    unused = [i for i, kind in enumerate(kinds) if kind == "unused"]
    assert unused and all(tok.token_categories[i] == 0 for i in unused)
    assert all(i > max(tok.tag_token_ids) for i in unused)
    split = datasets.load_from_disk(str(data_dir))["train"]
    produced = {i for ids in encode_dataset(tok, split)["input_ids"] for i in ids}
    assert not produced & set(unused)
    assert {tok.convert_ids_to_tokens(i) for i in tok.tag_token_ids} == kept_tags(tok)
    assert tok.token_counts[tok.tag_to_id("common")] == 40


def test_build_writes_vocab_json_once_and_it_reloads_identically(data_dir, tmp_path, monkeypatch):
    written = []
    write = Vocabulary.write
    monkeypatch.setattr(Vocabulary, "write", lambda self, path: (written.append(Path(path).name), write(self, path))[1])
    tok = build_tokenizer(data_dir, tmp_path / "tok")
    assert written == ["vocab.json"]
    reloaded = Vocabulary.read(tmp_path / "tok" / "vocab.json")
    assert reloaded.rows() == tok.vocabulary.rows() and reloaded.score_boundaries == tok.score_boundaries


def test_score_buckets_are_training_quantiles(data_dir, tmp_path):
    assert score_boundaries(list(range(100)), 4) == [25, 50, 75]
    assert score_boundaries([0] * 90 + list(range(1, 11)), 4) == []  # three quarters at 0: one bucket
    assert score_boundaries([0] * 60 + list(range(1, 41)), 4) == [16]  # the lower quartiles are all 0
    tok = build_tokenizer(data_dir, tmp_path / "tok", score_buckets=4)  # scores 0..39
    assert tok.score_boundaries == [10, 20, 30]
    assert [tok.score_bucket(s) for s in (0, 9, 10, 29, 30, 500)] == [0, 0, 1, 2, 3, 3]
    assert tok.convert_ids_to_tokens(tok.score_token_ids) == ["score:<10", "score:10..19", "score:20..29", "score:>=30"]
    assert [tok.token_counts[i] for i in tok.score_token_ids] == [10, 10, 10, 10]
    assert tok("score:10..19")["input_ids"] == tok("score:15")["input_ids"] == [1, tok.score_token_ids[1]]


def test_implications_are_stored_with_aliases_resolved(data_dir, tmp_path):
    aliases = tmp_path / "aliases.tsv"
    aliases.write_text("antecedent\tconsequent\tcreated_at\nold_name\tcommon\t2020-01-01\n")
    implications = tmp_path / "implications.tsv"
    implications.write_text('antecedent\tconsequent\tcreated_at\nold_name\tmid\t2020\nfew\told_name\t2020\nfew\tmid\t2020\n"q"_tag\tmid\t2020\n')
    assert load_implications(implications) == {'"q"_tag': ["mid"], "few": ["mid", "old_name"], "old_name": ["mid"]}
    tok = build_tokenizer(data_dir, tmp_path / "tok", aliases=aliases, implications=implications)
    expected = {'"q"_tag': ["mid"], "common": ["mid"], "few": ["common", "mid"]}
    assert tok.implications == expected
    reloaded = type(tok).from_pretrained(str(tmp_path / "tok"))
    assert reloaded.implications == expected and reloaded.aliases == {"old_name": "common"}
    assert reloaded("old_name")["input_ids"] == reloaded("common")["input_ids"]


def test_category_of_a_tag_is_its_majority_use():
    counts = {"general": {"x": 5, "y": 1}, "artist": {"x": 2, "y": 1}, "character": {"z": 1}}
    assert assign_categories(counts) == {"x": ("general", 7), "y": ("artist", 2), "z": ("character", 1)}


def test_table_and_flag_errors_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("antecedent\tconsequent\nonly_one_column\n")
    with pytest.raises(UsageError, match=":2:"):
        read_pair_table(bad, "alias")
    bad.write_text("a,b\n")
    with pytest.raises(UsageError, match="header"):
        read_pair_table(bad, "alias")
    with pytest.raises(UsageError, match="not found"):
        read_pair_table(tmp_path / "missing.tsv", "alias")
    assert parse_min_counts(["artist=2", "General=50"]) == {"artist": 2, "general": 50}
    for item in ("artist", "painter=2", "artist=0", "artist=two"):
        with pytest.raises(UsageError):
            parse_min_counts([item])


def test_cli_builds_a_tokenizer_and_reports_bad_usage(data_dir, tmp_path, capsys):
    assert main(["build-tokenizer", str(data_dir), "--output", str(tmp_path / "tok"), "--min-count", "artist=1"]) == 0
    printed = capsys.readouterr().out
    assert "artist: kept       2 of       2 tags" in printed and "vocabulary: 64 tokens" in printed
    assert (tmp_path / "tok" / "tokenizer_config.json").is_file()
    assert main(["build-tokenizer", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2
    assert main(["build-tokenizer", str(data_dir), "--output", str(tmp_path / "x"), "--min-count", "artist=-1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("booru-embed build-tokenizer: error:") for line in errors)
