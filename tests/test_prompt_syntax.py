"""Reading tag-set text as people paste it: front-end prompts (weights, emphasis, BREAK, LoRA) and Danbooru strings.

The table holds typed inputs with the parse expected from the module's rules
(``normalization_booru_embed.read_tag_text``); the vocabulary is a handful of real Danbooru names
(from the shared tag list) plus ``(9)``, a made-up name with brackets, to show that a known tag wins.
"""

from __future__ import annotations

import csv
import json

import pytest

from booru_embed.cli import main
from booru_embed.modeling.normalization_booru_embed import (
    TagNormalizer,
    emphasized,
    is_prompt,
    normalize_tag,
    parse_tagset,
    prompt_tag,
    read_tag_text,
)
from booru_embed.tags import load_tokenizer
from tag_fixtures import build_tag_tokenizer

REAL = ["1girl", "solo", "takamachi_nanoha", "twintails", "long_hair", "blue_eyes", "smile", "hatsune_miku",
        "hatsune_miku_(vocaloid)", "vocaloid", ":d", "^_^", ":3", ">_<", ">:)", ";)", "\\(^o^)/", "\\m/", "7:08",
        "vertin_(reverse:1999)", "re:zero_kara_hajimeru_isekai_seikatsu", "honkai:_star_rail", "jagdpanzer_38(t)",
        "under_night_in-birth_exe:late[st]", "girls'_frontline", "?", "...", "(9)"]
ALIASES = {":)": "smile", "longhair": "long_hair"}
NORMALIZER = TagNormalizer({tag: ("general", rank) for rank, tag in enumerate(REAL)}, ALIASES)
KNOWN = NORMALIZER.known
LORA, EMBEDDING = "LoRA or network, not a tag", "textual-inversion embedding, not a tag"

# typed text -> (expected (tag, weight) pairs in reading order, expected ignored (text, reason) pairs)
TABLE = [
    # the rows
    ("1girl solo takamachi_nanoha, twintails", [("1girl", 1), ("solo", 1), ("takamachi_nanoha", 1), ("twintails", 1)], []),
    ("(long hair)", [("long_hair", 1.1)], []),
    ("(masterpiece:1.2), best quality", [("masterpiece", 1.2), ("best_quality", 1)], []),
    ("[blue eyes]", [("blue_eyes", 0.9091)], []),
    ("twintails BREAK solo", [("twintails", 1), ("solo", 1)], []),
    # emphasis and weights
    ("((long hair))", [("long_hair", 1.21)], []),
    ("(((smile)))", [("smile", 1.331)], []),
    ("{blue eyes}", [("blue_eyes", 1.05)], []),
    ("{{smile}}, [[solo]]", [("smile", 1.1025), ("solo", 0.8264)], []),
    ("((long hair, smile:1.3), solo)", [("long_hair", 1.43), ("smile", 1.43), ("solo", 1.1)], []),
    ("[(smile:1.5)]", [("smile", 1.3636)], []),
    ("(smile: 0.5 ), (solo:0)", [("smile", 0.5), ("solo", 0.0)], []),
    ("(long hair) blue eyes smile", [("long_hair", 1.1), ("blue_eyes", 1), ("smile", 1)], []),
    ("[blue eyes:long hair:0.5], [smile:5]", [("blue_eyes", 1), ("long_hair", 1), ("smile", 1)],
     [(":0.5", "prompt-editing step, not a weight"), (":5", "prompt-editing step, not a weight")]),
    # escapes and real names with brackets or colons: a known tag wins
    ("hatsune miku \\(vocaloid\\)", [("hatsune_miku_(vocaloid)", 1)], []),
    ("hatsune miku (vocaloid), smile", [("hatsune_miku_(vocaloid)", 1), ("smile", 1)], []),
    ("(hatsune miku \\(vocaloid\\):1.2)", [("hatsune_miku_(vocaloid)", 1.2)], []),
    (":d, ^_^, :3, >_<", [(":d", 1), ("^_^", 1), (":3", 1), (">_<", 1)], []),
    ("(:3), (>_<:1.3), (:d)", [(":3", 1.1), (">_<", 1.3), (":d", 1.1)], []),
    (">:), ;), :)", [(">:)", 1), (";)", 1), (":)", 1)], []),
    ("(7:08), (9)", [("7:08", 1.1), ("(9)", 1)], []),
    ("(vertin (reverse:1999):1.2)", [("vertin_(reverse:1999)", 1.2)], []),
    ("jagdpanzer 38(t), under night in-birth exe:late[st]",
     [("jagdpanzer_38(t)", 1), ("under_night_in-birth_exe:late[st]", 1)], []),
    ("\\(^o^)/, \\m/, girls' frontline, ?, ...",
     [("\\(^o^)/", 1), ("\\m/", 1), ("girls'_frontline", 1), ("?", 1), ("...", 1)], []),
    ("re:zero kara hajimeru isekai seikatsu, honkai: star rail",
     [("re:zero_kara_hajimeru_isekai_seikatsu", 1), ("honkai:_star_rail", 1)], []),
    # separators, and what is not a tag
    ("1girl, <lora:add_detail:0.8>, <lyco:foo>", [("1girl", 1)], [("<lora:add_detail:0.8>", LORA), ("<lyco:foo>", LORA)]),
    ("embedding:easynegative, (embedding:bad_hands:1.2), solo", [("solo", 1)],
     [("embedding:easynegative", EMBEDDING), ("embedding:bad_hands:1.2", EMBEDDING)]),
    ("1girl <lora:x:1> solo", [("1girl", 1), ("solo", 1)], [("<lora:x:1>", LORA)]),
    ("1girl\nsolo\n\nsmile", [("1girl", 1), ("solo", 1), ("smile", 1)], []),
    ("twintails AND solo", [("twintails", 1), ("solo", 1)], []),
    ("1girl, , ,solo,", [("1girl", 1), ("solo", 1)], []),
    ("Long Hair, SMILE", [("long_hair", 1), ("smile", 1)], []),
    # unbalanced brackets and weights that are not numbers
    ("((long hair, smile", [("long_hair", 1.21), ("smile", 1.21)], []),
    ("long hair), smile", [("long_hair", 1), ("smile", 1)], [(")", "closing bracket without an opening one")]),
    ("(long hair:high)", [("long_hair", 1.1)], [(":high", "weight is not a number")]),
    ("(masterpiece:abc)", [("masterpiece:abc", 1.1)], []),
    # quality words: unknown tags, kept
    ("masterpiece, best quality, score_9, score_8_up", [("masterpiece", 1), ("best_quality", 1), ("score_9", 1),
                                                        ("score_8_up", 1)], []),
    ("1girl solo zzz, twintails", [("1girl_solo_zzz", 1), ("twintails", 1)], []),
    ("1girl solo nanoha_(new_outfit), blue eyes long hair", [("1girl", 1), ("solo", 1), ("nanoha_(new_outfit)", 1),
                                                           ("blue_eyes", 1), ("long_hair", 1)], []),
    # Danbooru tag strings: words, as always
    ("1girl solo :d ^_^ vertin_(reverse:1999) 7:08", [("1girl", 1), ("solo", 1), (":d", 1), ("^_^", 1),
                                                      ("vertin_(reverse:1999)", 1), ("7:08", 1)], []),
    ("1girl (9) solo \\(^o^)/ >:)", [("1girl", 1), ("(9)", 1), ("solo", 1), ("\\(^o^)/", 1), (">:)", 1)], []),
    ("", [], []),
]


def _read(text: str) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    reading = read_tag_text(text, KNOWN)
    return [(normalize_tag(t), w) for t, w in zip(reading.tags, reading.weights)], reading.ignored


def test_the_table_has_enough_rows() -> None:
    assert len(TABLE) >= 30


@pytest.mark.parametrize("text, tags, ignored", TABLE, ids=[row[0][:40] or "empty" for row in TABLE])
def test_typed_inputs(text: str, tags: list, ignored: list) -> None:
    assert _read(text) == (tags, ignored)


@pytest.mark.parametrize("text", [row[0] for row in TABLE])
def test_reading_twice_gives_the_same_result(text: str) -> None:
    once = NORMALIZER.normalize(text)
    written = once.to_string("prompt")
    twice = NORMALIZER.normalize(written)
    assert twice.tags == once.tags and twice.weights == once.weights, written
    assert twice.to_string("prompt") == written
    assert NORMALIZER.normalize(once.to_string("tags")).tags == once.tags


def test_weights_stay_beside_the_tags_and_are_written_back_in_the_front_ends_syntax() -> None:
    result = NORMALIZER.normalize("(longhair:1.2), [blue eyes], {{smile}}, ((solo)), (7:08), 1girl, longhair")
    assert result.weights == {"7:08": 1.1, "long_hair": 1.2, "blue_eyes": 0.9091, "smile": 1.1025, "solo": 1.21}
    assert set(result.all_tags()) == {"long_hair", "blue_eyes", "smile", "solo", "7:08", "1girl"}
    assert result.aliases == {"longhair": "long_hair"} and result.duplicates == 1  # the first spelling's weight stays
    prompt = result.to_string("prompt").split(", ")
    assert {"(long hair:1.2)", "[blue eyes]", "{{smile}}", "((solo))", "(7:08:1.1)", "1girl"} == set(prompt)
    assert result.to_string("prompt", weights=False).split(", ") == [p.strip("()[]{}").replace(":1.2", "").replace(
        ":1.1", "") for p in prompt]
    assert result.to_string("tags") == " ".join(result.all_tags())  # Danbooru style has no weights
    assert "weights" in result.to_dict() and result.to_dict()["ignored"] == []
    assert emphasized("x", 1.0) == "x" and emphasized("x", 0.5) == "(x:0.5)" and emphasized("x", 1 / 1.1**2) == "(x:0.8264)"


def test_rating_score_and_unknown_quality_words_in_a_prompt() -> None:
    result = NORMALIZER.normalize("rating:general, score:12, (masterpiece:1.2), best quality, <lora:x:0.5>, smile")
    assert result.rating == "g" and result.score == 12
    assert result.unknown == ["best_quality", "masterpiece"] and result.tags["general"] == ["smile"]
    assert result.ignored == [("<lora:x:0.5>", LORA)]
    assert result.to_dict()["ignored"] == [{"text": "<lora:x:0.5>", "reason": LORA}]


def test_lists_and_dicts_are_tags_as_written() -> None:
    assert parse_tagset(["(long hair)", "smile"], KNOWN).tags == ["(long_hair)", "smile"]
    assert parse_tagset({"general": "(smile) solo"}, KNOWN).tags == ["(smile)", "solo"]


def test_without_a_vocabulary_the_syntax_is_still_read() -> None:
    reading = read_tag_text("((long hair)), [blue eyes], hatsune miku \\(vocaloid\\), (7:08), <lora:a:1>")
    assert list(zip(reading.tags, reading.weights)) == [("long_hair", 1.21), ("blue_eyes", 0.9091),
                                                        ("hatsune_miku_(vocaloid)", 1.0), ("7", 8.0)]  # as a1111 reads it
    assert reading.ignored == [("<lora:a:1>", LORA)]
    assert read_tag_text("1girl solo takamachi_nanoha, twintails").tags == ["1girl_solo_takamachi_nanoha", "twintails"]
    assert read_tag_text("\\m/, \\(^o^)/, a\\").tags == ["\\m/", "(^o^)/", "a\\"]  # a backslash escapes brackets only


def test_every_real_tag_name_reads_as_itself(shared_tag_data) -> None:
    """Danbooru strings of every name in the shared tag list are words, with and without a vocabulary; written
    prompt style (with and without a weight) every name reads back as itself when it is known."""
    with open(shared_tag_data / "tags.csv", encoding="utf-8", newline="") as handle:
        names = [row[0] for row in csv.reader(handle)]
    with open(shared_tag_data / "aliases.tsv", encoding="utf-8", newline="") as handle:
        aliases = {row["antecedent"]: row["consequent"] for row in csv.DictReader(handle, delimiter="\t")}
    known = frozenset(names) | frozenset(aliases)
    for start in range(0, len(names), 500):
        chunk = names[start: start + 500]
        for vocabulary in (None, known):
            assert not is_prompt(" ".join(chunk), vocabulary)
            assert read_tag_text(" ".join(chunk), vocabulary).tags == chunk
    wrong = []
    for index, name in enumerate(names):
        weight = (1.0, 1.1, 0.9091, 1.3, 1.05)[index % 5]  # plain, (x), [x], (x:1.3), {x} in turn
        text = f"1girl, {emphasized(prompt_tag(name), weight)}, solo"
        reading = read_tag_text(text, known)
        if [normalize_tag(t) for t in reading.tags] != ["1girl", name, "solo"] or reading.weights[1] != weight:
            wrong.append((text, reading.tags, reading.weights))
    assert wrong == []


def test_the_demo_corpus_parses_as_before(tmp_path, shared_tag_data) -> None:
    """Every post of a demo-style corpus (real names): its tag string reads as its words, spelled as before."""
    from booru_embed.data.synthetic import CorpusSpec, generate_corpus

    corpus = tmp_path / "corpus.csv"
    generate_corpus(corpus, 3000, seed=0, tag_data=shared_tag_data, spec=CorpusSpec())
    with open(corpus, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [name for name in rows[0] if name.startswith("tag_string")]
    known = frozenset(tag for row in rows for column in columns for tag in row[column].split())
    normalizer = TagNormalizer({tag: ("general", 0) for tag in known})
    for row in rows:
        text = " ".join(row[column] for column in columns)
        before = list(dict.fromkeys(normalize_tag(word) for word in text.split()))  # the reading so far
        assert parse_tagset(text, known).tags == before
        assert parse_tagset(text).tags == before
        assert sorted(normalizer.normalize(text).all_tags()) == sorted(before)


@pytest.fixture(scope="module")
def tag_folders(tmp_path_factory: pytest.TempPathFactory):
    return build_tag_tokenizer(tmp_path_factory.mktemp("prompt-tags"))


def test_tokenizer_reads_prompts_and_leaves_weights_out_of_the_ids(tag_folders) -> None:
    tokenizer = load_tokenizer(tag_folders[1])
    plain = tokenizer("1girl long_hair cat_ears :d")["input_ids"]
    assert tokenizer("((1girl)), [long hair], (cat ears:0.7), (:d), <lora:x:1>")["input_ids"] == plain
    assert tokenizer("1girl long hair BREAK cat ears :d")["input_ids"] == plain  # chunks of known words
    assert tokenizer("1girl, longhair, kitty ears, :d")["input_ids"] == plain  # aliases, as before
    unk = tokenizer.unk_token_ids["general"]
    assert tokenizer("masterpiece, 1girl")["input_ids"][1:] == sorted([unk, tokenizer.tag_to_id("1girl")],
                                                                      key=tokenizer.vocabulary.rank.__getitem__)


def test_cli_writes_weights_back_and_lists_ignored_pieces(tag_folders, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tag_folders[1])
    assert main(["normalize", folder, "(long hair:1.2), [cat ears], <lora:x:0.5>, masterpiece", "--style", "prompt"]) == 0
    out, err = capsys.readouterr()
    assert set(out.strip().split(", ")) == {"(long hair:1.2)", "[cat ears]", "masterpiece"}
    assert "ignored, not tags: <lora:x:0.5> (LoRA or network, not a tag)" in err and "masterpiece" in err
    assert main(["normalize", folder, "(long hair:1.2), embedding:bad", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["string"] == "long_hair" and shown["weights"] == {"long_hair": 1.2}
    assert shown["ignored"] == [{"text": "embedding:bad", "reason": EMBEDDING}]


def test_any_text_reads_without_error_and_twice_as_once() -> None:
    """Random texts over the syntax's characters (seeded): reading never fails, and writing back then
    reading again gives the same tags and weights, with and without a vocabulary."""
    import random

    pieces = ["(", ")", "[", "]", "{", "}", "\\", ":", ",", " ", "\n", "1.2", "0", "smile", "long", "hair", ":3",
              "7:08", "BREAK", "<lora:x:1>", ", embedding:e", "a_b", "9)", "\\(", ">_<"]
    # embedding: an item of its own. Without (9) in the vocabulary: with it, 9 weighted 1.1 is written (9)
    # and reads back as that tag (a clash no Danbooru name makes: none starts with a bracket)
    rng = random.Random(0)
    real = TagNormalizer({tag: ("general", rank) for rank, tag in enumerate(REAL) if tag != "(9)"}, ALIASES)
    for normalizer in (real, TagNormalizer()):
        for _ in range(3000):
            # 1girl first: a written-back set of one tag with a space, "long hair", is a Danbooru string of two
            text = "1girl, " + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
            once = normalizer.normalize(text)
            twice = normalizer.normalize(once.to_string("prompt"))
            assert (twice.tags, twice.weights) == (once.tags, once.weights), (text, once.to_string("prompt"))
