"""Tag-set normalisation: tokenizer.normalize (remote code), BooruEmbedder.normalize, `booru-embed normalize`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from booru_embed.cli import main
from booru_embed.modeling.normalization_booru_embed import TagNormalizer, prompt_tag
from booru_embed.tags import load_tokenizer
from tag_fixtures import build_tag_tokenizer, tag_posts
from tiny_model import build_tiny_model

ODD_TAGS = [":d", "^_^", "girls'_frontline", "?", "...", "null"]
SETS = [
    "alpha beta gamma delta cat_ears feline kitty_ears gfl ? ... null :d ^_^ springfield_(girls'_frontline) zzz",
    "1girl, Long Hair, springfield \\(girls' frontline\\), animal ears, rating:q, score:7, unknown_thing",
    ["cat_ears", "animal_ears", "animal_features", "1girl", "1girl", "LONGHAIR"],
    {"general": ["gamma", "cat_ears", "made_up"], "character": "springfield_(girls'_frontline)", "rating": "e", "score": 3},
]


@pytest.fixture(scope="module")
def tag_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tag_tokenizer(tmp_path_factory.mktemp("tags"))


@pytest.fixture(scope="module")
def tokenizer(tag_folders):
    return load_tokenizer(tag_folders[1])


def test_aliases_spelling_duplicates_and_unknown_tags(tokenizer) -> None:
    result = tokenizer.normalize("Long_Hair longhair long_hair KITTY_EARS gfl not_a_tag rating:general")
    assert result.tags["general"] == tokenizer.normalize("cat_ears long_hair").tags["general"]
    assert set(result.tags["general"]) == {"long_hair", "cat_ears"}
    assert result.tags["copyright"] == ["girls'_frontline"]
    assert result.tags["unknown"] == ["not_a_tag"] and result.unknown == ["not_a_tag"]
    assert result.aliases == {"longhair": "long_hair", "kitty_ears": "cat_ears", "gfl": "girls'_frontline"}
    assert result.duplicates == 2 and result.rating == "g"


def test_dict_input_keeps_unknown_tags_in_their_category_and_moves_known_ones(tokenizer) -> None:
    result = tokenizer.normalize({"artist": ["brand_new_artist", "1girl"], "general": "cat_ears", "score": "12"})
    assert result.tags["artist"] == ["brand_new_artist"]  # unknown: stays where it was given
    assert set(result.tags["general"]) == {"1girl", "cat_ears"}  # known: its vocabulary category
    assert result.unknown == ["brand_new_artist"] and result.score == 12 and result.tags["unknown"] == []


def test_prompt_style_escapes_and_odd_tags_survive(tokenizer) -> None:
    result = tokenizer.normalize(ODD_TAGS + ["springfield_(girls'_frontline)", "not_in_vocab"])
    assert set(result.all_tags()) == {*ODD_TAGS, "springfield_(girls'_frontline)", "not_in_vocab"}
    prompt = result.to_string("prompt")
    assert "springfield \\(girls' frontline\\)" in prompt.split(", ") and "^_^" in prompt.split(", ")
    assert "girls' frontline" in prompt.split(", ") and "null" in prompt.split(", ")
    assert tokenizer.normalize(prompt).all_tags() == result.all_tags()
    assert tokenizer.normalize(result.to_string()).all_tags() == result.all_tags()
    assert prompt_tag(">_<") == ">_<" and prompt_tag("long_hair") == "long hair"


@pytest.mark.parametrize("mode", ["keep", "minimal", "complete"])
@pytest.mark.parametrize("style", ["tags", "prompt"])
def test_normalizing_twice_equals_once(tokenizer, mode: str, style: str) -> None:
    for tagset in SETS:
        once = tokenizer.normalize(tagset, mode)
        twice = tokenizer.normalize(once.to_string(style), mode)
        assert twice.to_string(style) == once.to_string(style), tagset
        assert twice.duplicates == 0 and twice.aliases == {} and twice.added == [] and twice.removed == []


def test_minimal_then_complete_equals_complete(tokenizer) -> None:
    for tagset in SETS:
        complete = tokenizer.normalize(tagset, "complete")
        via_minimal = tokenizer.normalize(tokenizer.normalize(tagset, "minimal").to_string(), "complete")
        assert sorted(via_minimal.all_tags()) == sorted(complete.all_tags()), tagset


def test_implications_are_transitive(tokenizer) -> None:
    complete = tokenizer.normalize("cat_ears", "complete")
    assert complete.added == ["animal_ears", "animal_features", "feline"]
    assert complete.unknown == ["feline"]  # implied but outside the vocabulary: kept and marked
    minimal = tokenizer.normalize("animal_features cat_ears animal_ears 1girl", "minimal")
    assert minimal.all_tags() == ["1girl", "cat_ears"] and minimal.removed == ["animal_ears", "animal_features"]
    kept = tokenizer.normalize("animal_features cat_ears animal_ears")
    assert kept.added == kept.removed == [] and len(kept.all_tags()) == 3


def test_cycles_terminate_and_minimal_keeps_one_member(tokenizer) -> None:
    complete = tokenizer.normalize("beta", "complete")
    assert set(complete.all_tags()) == {"alpha", "beta", "gamma", "delta"}
    minimal = tokenizer.normalize("gamma beta alpha delta", "minimal")
    first = min(["alpha", "beta", "gamma"], key=tokenizer.tag_to_id)  # canonical order = vocabulary id here
    assert minimal.all_tags() == [first]
    assert set(minimal.removed) == {"alpha", "beta", "gamma", "delta"} - {first}
    # A table that is one big cycle, self-loops included, without any vocabulary.
    loop = TagNormalizer(implications={"a": ["b", "a"], "b": ["c"], "c": ["a"]})
    assert loop.normalize("c b a", "minimal").all_tags() == ["a"]
    assert loop.normalize("b", "complete").all_tags() == ["a", "b", "c"]


def test_empty_sets_and_bad_input(tokenizer) -> None:
    for empty in ("", " , ,", [], {}, {"general": []}):
        result = tokenizer.normalize(empty, "complete")
        assert result.all_tags() == [] and result.to_string() == ""
    with pytest.raises(ValueError, match="implications must be one of"):
        tokenizer.normalize("1girl", "everything")
    with pytest.raises(ValueError, match="unknown rating"):
        tokenizer.normalize("1girl rating:x")
    with pytest.raises(ValueError, match="two ratings"):
        tokenizer.normalize("rating:g rating:e")
    with pytest.raises(ValueError, match="tags must be strings"):
        tokenizer.normalize(["1girl", 3])
    with pytest.raises(ValueError, match="unknown key"):
        tokenizer.normalize({"tags": ["1girl"]})
    with pytest.raises(ValueError, match="unknown category"):
        tokenizer.normalize("1girl").to_string(order=["general", "charcter"])


def test_without_tables_only_spelling_and_duplicates() -> None:
    result = TagNormalizer().normalize({"general": ["Long_Hair", "long hair", "longhair"], "meta": ["highres"]}, "complete")
    assert result.tags["general"] == ["long_hair", "longhair"] and result.duplicates == 1
    assert result.unknown == [] and result.added == [] and result.tags["meta"] == ["highres"]


def test_remote_code_and_embedder_give_the_same_answer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from booru_embed.embedder import BooruEmbedder

    model_dir = build_tiny_model(tmp_path)
    assert (model_dir / "normalization_booru_embed.py").is_file()
    remote = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    assert type(remote).__module__.startswith("transformers_modules")
    tags = "usada pekora, cat ears, animal ears, null, ^_^"
    expected = load_tokenizer(model_dir).normalize(tags, "complete")
    assert remote.normalize(tags, "complete").to_dict() == expected.to_dict()
    assert BooruEmbedder.from_pretrained(model_dir, device="cpu").normalize(tags, "complete").to_dict() == expected.to_dict()
    assert expected.added == ["animal_features", "rabbit_ears"]


def test_cli_one_tag_set(tag_folders, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer_dir = str(tag_folders[1])
    assert main(["normalize", tokenizer_dir, "kitty_ears, animal ears, zzz", "--implications", "minimal"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "cat_ears zzz"
    assert "kitty_ears -> cat_ears" in err and "zzz" in err and "animal_ears" in err
    assert main(["normalize", tokenizer_dir, "springfield_(girls'_frontline) cat_ears", "--style", "prompt", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["string"] == "springfield \\(girls' frontline\\), cat ears"
    assert shown["tags"]["character"] == ["springfield_(girls'_frontline)"] and shown["tags"]["general"] == ["cat_ears"]
    assert main(["normalize", tokenizer_dir, " , "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["normalize", str(tag_folders[0]), "1girl"]) == 2
    assert "no vocab.json" in capsys.readouterr().err


def _expected_minimal_removals(posts: list[dict]) -> int:
    """Tags ``minimal`` must remove from the fixture posts, counted from the implication rules directly."""
    removed = 0
    for post in posts:
        tags = set(post["general"]) | set(post["copyright"]) | set(post["character"])
        aliases = {"longhair": "long_hair", "gfl": "girls'_frontline"}
        tags = {aliases.get(t.lower(), t.lower()) for t in tags}
        removed += "animal_ears" in tags and "cat_ears" in tags
        removed += "animal_features" in tags and bool({"animal_ears", "cat_ears"} & tags)
        cycle = tags & {"alpha", "beta", "gamma"}
        removed += max(len(cycle) - 1, 0) + ("delta" in tags and bool(cycle))
        removed += "girls'_frontline" in tags and "springfield_(girls'_frontline)" in tags
    return removed


def test_cli_whole_data_dir(tag_folders, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets

    data_dir, tokenizer_dir = tag_folders
    output = tmp_path / "normalized"
    args = ["normalize", str(tokenizer_dir), "--dataset", str(data_dir), "--output", str(output),
            "--implications", "minimal", "--batch-size", "7"]
    assert main(args) == 0
    assert "implied_removed" in capsys.readouterr().out
    before, after = datasets.load_from_disk(str(data_dir)), datasets.load_from_disk(str(output))
    assert set(after) == {"train", "test"} and after["train"].features == before["train"].features
    assert after["train"]["id"] == before["train"]["id"] and after["train"]["score"] == before["train"]["score"]
    first = after["train"][0]
    assert first["general"].count("long_hair") == 1 and "longhair" not in first["general"]
    assert after["train"][1]["copyright"] == [] and after["train"][1]["character"] == ["springfield_(girls'_frontline)"]
    info = json.loads((output / "normalize_info.json").read_text())
    train = info["splits"]["train"]
    assert train["posts"] == len(tag_posts())
    assert train["implied_removed"] == _expected_minimal_removals(tag_posts())
    assert train["aliases_resolved"] == 2  # post 0: longhair; post 1: gfl
    assert train["duplicates_removed"] == 3  # post 0: long_hair four times
    tokenizer = load_tokenizer(tokenizer_dir)
    for row in after["train"]:
        again = tokenizer.normalize({c: row[c] for c in ("general", "artist", "copyright", "character", "meta")}, "minimal")
        assert again.removed == [] and again.duplicates == 0
    assert main(args) == 2  # the output folder now exists
    assert "not empty" in capsys.readouterr().err
    assert main(["normalize", str(tokenizer_dir), "1girl", "--dataset", str(data_dir), "--output", str(tmp_path / "x")]) == 2
