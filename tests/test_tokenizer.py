"""The whole-tag tokenizer: one token per tag, categories, input forms, truncation, save/load, bulk path."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS, PRIORITY_ORDER
from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer
from booru_embed.data.bulk_encoding import encode_dataset
from booru_embed.data.tokenizer_build import build_tokenizer

TAG_COLUMNS = ("meta", "general", "artist", "copyright", "character")
FEATURES = datasets.Features(
    {
        "id": datasets.Value("int64"),
        "rating": datasets.Value("string"),
        "score": datasets.Value("int32"),
        **{c: datasets.List(datasets.Value("string")) for c in TAG_COLUMNS},
    }
)
ODD_TAGS = [":d", "^_^", "?", "...", "<pad>", "<mask>", "null", "nan", "n/a", "\\(^o^)/"]
# A small corpus: every tag below appears at least twice, so all are kept with min count 2.
POSTS = [
    {"rating": "g", "score": 3, "general": ["1girl", "solo", "long_hair", ":d"], "artist": ["artist_a"],
     "copyright": ["vocaloid"], "character": ["hatsune_miku"], "meta": ["highres"]},
    {"rating": "s", "score": 12, "general": ["1girl", "long_hair", "^_^", "?", "valentine"], "artist": ["artist_a"],
     "copyright": ["fate/grand_order"], "character": ["mash_kyrielight"], "meta": []},
    {"rating": "q", "score": 40, "general": ["1girl", "solo", "...", "<pad>", "<mask>", "valentine"], "artist": ["artist_b"],
     "copyright": ["girls'_frontline"], "character": ["m4a1_(girls'_frontline)"], "meta": ["highres", "absurdres"]},
    {"rating": "e", "score": 0, "general": ["1girl", "null", "nan", "n/a", "\\(^o^)/"], "artist": ["artist_b"],
     "copyright": ["fate/grand_order"], "character": ["mash_kyrielight"], "meta": ["absurdres"]},
    {"rating": "g", "score": 7, "general": ["solo", "long_hair", ":d", "^_^", "?", "...", "<pad>", "<mask>"],
     "artist": [], "copyright": ["vocaloid", "girls'_frontline"], "character": ["hatsune_miku", "m4a1_(girls'_frontline)"],
     "meta": ["highres"]},
    {"rating": "s", "score": 25, "general": ["1girl", "null", "nan", "n/a", "\\(^o^)/", "rare_tag"], "artist": [],
     "copyright": ["vocaloid"], "character": ["hatsune_miku"], "meta": ["absurdres"]},
]


def write_data_dir(path: Path, posts: list[dict]) -> Path:
    """Save ``posts`` as a DATA_DIR (train and test split both hold all posts)."""
    columns = {"id": list(range(1, len(posts) + 1))}
    for key in ("rating", "score", *TAG_COLUMNS):
        columns[key] = [post.get(key, [] if key in TAG_COLUMNS else None) for post in posts]
    split = datasets.Dataset.from_dict(columns, features=FEATURES)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokenizer")
    data_dir = write_data_dir(root / "data", POSTS)
    build_tokenizer(data_dir, root / "tok", min_counts={c: 2 for c in TAG_COLUMNS}, score_buckets=3)
    return root / "tok"


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> BooruEmbedTokenizer:
    return BooruEmbedTokenizer.from_pretrained(str(tokenizer_dir))


def tag_ids(tok: BooruEmbedTokenizer, tags: list[str]) -> list[int]:
    return [tok.tag_to_id(t) for t in tags]


def test_fixed_ids_and_attributes(tok):
    assert (tok.pad_token_id, tok.cls_token_id, tok.mask_token_id) == (0, 1, 2)
    assert len(tok) % 64 == 0 and len(tok.token_categories) == len(tok)
    assert set(tok.rating_token_ids) == {"g", "s", "q", "e"}
    assert all(tok.token_categories[i] == CATEGORY_IDS["rating"] for i in tok.rating_token_ids.values())
    assert all(tok.token_categories[i] == CATEGORY_IDS["score"] for i in tok.score_token_ids)
    for category, index in tok.unk_token_ids.items():
        assert tok.token_categories[index] == CATEGORY_IDS[category]
    assert tok.tag_to_id("rare_tag") is None  # seen once: below the minimum count of 2
    assert tok.score_bucket(-5) == 0 and tok.score_bucket(10**6) == len(tok.score_token_ids) - 1


def test_one_token_per_known_tag_including_odd_real_tags(tok):
    for tag in [*ODD_TAGS, "fate/grand_order", "girls'_frontline", "m4a1_(girls'_frontline)"]:
        index = tok.tag_to_id(tag)
        assert index is not None and index not in tok.all_special_ids, tag
        out = tok([tag], is_split_into_words=True)
        assert out["input_ids"] == [tok.cls_token_id, index], tag
        assert tok.convert_ids_to_tokens(index) == tag
    copyright_id = tok.tag_to_id("fate/grand_order")
    assert tok({"copyright": ["fate/grand_order"]})["category_ids"] == [0, CATEGORY_IDS["copyright"]]
    assert tok("fate/grand_order :d")["input_ids"] == [1, copyright_id, tok.tag_to_id(":d")]


def test_literal_special_token_names_are_tags(tok):
    pad_tag = tok.tag_to_id("<pad>")
    assert pad_tag not in (tok.pad_token_id, tok.mask_token_id)
    ids = tok("<pad> <mask> 1girl")["input_ids"]
    assert tok.pad_token_id not in ids and tok.mask_token_id not in ids
    assert pad_tag in ids and tok.token_categories[pad_tag] == CATEGORY_IDS["general"]
    assert tok.convert_tokens_to_ids("<pad>") == 0  # the token-string API names the special token
    assert tok.decode(ids, skip_special_tokens=True) == tok.decode(tag_ids(tok, ["<mask>", "<pad>", "1girl"]))


def test_unknown_tags_keep_their_category(tok):
    unk = tok.unk_token_ids
    assert tok({"artist": ["nobody_we_know"]})["input_ids"] == [1, unk["artist"]]
    assert tok({"character": ["someone_new"]})["category_ids"] == [0, CATEGORY_IDS["character"]]
    assert tok("totally_unknown_tag")["input_ids"] == [1, unk["general"]]
    both = tok({"artist": ["x1", "x2"], "meta": ["x3"]})["input_ids"]
    assert both == [1, unk["artist"], unk["meta"]]  # one unknown token per category, in canonical order


def test_resolve_tag_and_lookup_read_tags_as_call_does(tok):
    assert tok.resolve_tag("Long Hair", "general") == tok.tag_to_id("long_hair") == tok.tag_lookup["long_hair"]
    assert tok.resolve_tag("brand_new_artist", "artist") == tok.unk_token_ids["artist"]
    assert tok({"artist": ["brand_new_artist"]})["input_ids"] == [1, tok.unk_token_ids["artist"]]
    assert tok.resolve_tag("  ", "meta") is None and tok.resolve_tag(None) is None
    with pytest.raises(ValueError, match="strings"):
        tok.resolve_tag(3)
    with pytest.raises(TypeError):
        tok.tag_lookup["x"] = 1  # read-only view


def test_vocabulary_file_is_validated(tokenizer_dir, tmp_path):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    (tmp_path / "v2.json").write_text(json.dumps({**vocab, "format": 2}))
    with pytest.raises(ValueError, match="unsupported vocabulary format 2"):
        BooruEmbedTokenizer(vocab_file=str(tmp_path / "v2.json"))
    swapped = {**vocab, "tokens": [vocab["tokens"][1], vocab["tokens"][0], *vocab["tokens"][2:]]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match="<pad> at id 0"):
        BooruEmbedTokenizer(vocab_file=str(tmp_path / "swapped.json"))


def test_four_input_forms_give_identical_ids(tok):
    danbooru = "hatsune_miku vocaloid artist_a 1girl long_hair :d highres rating:g score:3"
    prompt = "Hatsune Miku, vocaloid, artist a, 1girl, long hair, :d, highres, rating:g, score:3"
    tags = ["hatsune_miku", "vocaloid", "artist_a", "1girl", "long_hair", ":d", "highres", "rating:g", "score:3"]
    by_category = {"character": ["hatsune_miku"], "copyright": ["vocaloid"], "artist": ["artist_a"],
                   "general": ["1girl", "long_hair", ":d"], "meta": ["highres"], "rating": "g", "score": 3}
    expected = tok(danbooru)["input_ids"]
    assert tok.unk_token_ids["general"] not in expected and len(expected) == 1 + 2 + 7
    assert tok(prompt)["input_ids"] == expected
    assert tok(tags, is_split_into_words=True)["input_ids"] == expected
    assert tok(by_category)["input_ids"] == expected
    assert tok([danbooru, prompt, tags, by_category])["input_ids"] == [expected] * 4
    escaped = tok("m4a1 \\(girls' frontline\\), girls' frontline")["input_ids"]
    assert escaped == [1, tok.tag_to_id("m4a1_(girls'_frontline)"), tok.tag_to_id("girls'_frontline")]


def test_duplicates_removed_and_order_canonical(tok):
    shuffled = tok("highres 1girl :d 1girl hatsune_miku highres rating:s artist_a")["input_ids"]
    assert shuffled == tok("rating:s artist_a hatsune_miku :d 1girl highres")["input_ids"]
    assert len(shuffled) == len(set(shuffled))
    categories = [tok.token_categories[i] for i in shuffled]
    order = [CATEGORY_IDS[c] for c in PRIORITY_ORDER]
    tag_categories = categories[2:]
    assert categories[:2] == [0, CATEGORY_IDS["rating"]]
    assert [order.index(c) for c in tag_categories] == sorted(order.index(c) for c in tag_categories)
    general = [i for i in shuffled if tok.token_categories[i] == CATEGORY_IDS["general"]]
    assert [tok.token_counts[i] for i in general] == sorted(tok.token_counts[i] for i in general)  # rarer first


def test_decode_round_trip_gives_canonical_tag_string(tok):
    for post in POSTS:
        ids = tok(post)["input_ids"]
        text = tok.decode(ids, skip_special_tokens=True)
        assert tok(text)["input_ids"] == [i for i in ids if i not in tok.unk_token_ids.values()]
        assert text.split()[0] == f"rating:{post['rating']}"
        known = {t for c in TAG_COLUMNS for t in post[c] if tok.tag_to_id(t) is not None}
        assert set(text.split()[2:]) == known
    assert tok.batch_decode([tok(p)["input_ids"] for p in POSTS[:2]]) == [tok.decode(tok(p)["input_ids"]) for p in POSTS[:2]]


def test_truncation_keeps_most_informative_tags(tok):
    post = POSTS[2]
    full = tok(post)["input_ids"]
    kept = tok(post, truncation=True, max_length=7)["input_ids"]
    assert kept == full[:7]
    names = tok.convert_ids_to_tokens(kept)
    assert names[:3] == ["<cls>", "rating:q", tok.convert_ids_to_tokens(tok.score_token_ids[tok.score_bucket(40)])]
    assert names[3:6] == ["m4a1_(girls'_frontline)", "girls'_frontline", "artist_b"]
    general = [i for i in full if tok.token_categories[i] == CATEGORY_IDS["general"]]
    assert kept[6] == min(general, key=lambda i: tok.token_counts[i])  # the rarest general tag comes next
    assert tok.tag_to_id("1girl") not in kept and tok.tag_to_id("highres") not in kept
    assert tok(post, truncation=True, max_length=1)["input_ids"] == [tok.cls_token_id]  # never drops the post
    batch = tok([post, "1girl"], truncation=True, max_length=4, padding="max_length", return_tensors="pt")
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].sum().item() == 4 + 2


def test_batch_padding_tensors_and_pad(tok):
    posts = [POSTS[0], "1girl", {"general": []}]
    out = tok(posts, padding=True, return_tensors="pt")
    lengths = [len(tok(p)["input_ids"]) for p in posts]
    assert set(out) == {"input_ids", "category_ids", "attention_mask"}
    assert out["input_ids"].shape == (3, max(lengths)) and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].sum(1).tolist() == lengths
    assert (out["input_ids"][:, 0] == tok.cls_token_id).all()
    assert (out["category_ids"][out["attention_mask"] == 0] == 0).all()
    assert (out["input_ids"][out["attention_mask"] == 0] == tok.pad_token_id).all()
    left = tok(posts, padding="max_length", max_length=16, padding_side="left", return_tensors="np")
    assert left["input_ids"].shape == (3, 16) and (left["input_ids"][:, -1] != 0).all()
    padded = tok.pad([tok(p) for p in posts], return_tensors="pt")
    for key in out:
        assert torch.equal(padded[key], out[key]), key
    single = tok(POSTS[0], return_tensors="pt")
    assert single["input_ids"].shape == (1, lengths[0])
    assert tok.encode("1girl solo") == tok("1girl solo")["input_ids"]


def test_shuffle_within_categories_keeps_the_set_and_category_blocks(tok):
    post = POSTS[4]
    canonical = tok(post)["input_ids"]
    orders = {tuple(tok(post, shuffle_within_categories=True, seed=s)["input_ids"]) for s in range(20)}
    assert len(orders) > 1
    for order in orders:
        assert sorted(order) == sorted(canonical)
        assert [tok.token_categories[i] for i in order] == [tok.token_categories[i] for i in canonical]
    again = tok(post, shuffle_within_categories=True, seed=3)["input_ids"]
    assert again == tok(post, shuffle_within_categories=True, seed=3)["input_ids"]


def test_bad_input_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="rating"):
        tok({"general": ["1girl"], "rating": "x"})
    with pytest.raises(ValueError, match="unknown key"):
        tok({"generals": ["1girl"]})
    with pytest.raises(ValueError, match="score"):
        tok("1girl score:lots")
    with pytest.raises(ValueError, match="pairs"):
        tok("1girl", "solo")
    with pytest.raises(ValueError, match="fixed"):
        tok.add_tokens(["brand_new_tag"])
    with pytest.raises(TypeError, match="unexpected"):
        tok("1girl", shufle_within_categories=True)


def random_posts(tok: BooruEmbedTokenizer, count: int, seed: int) -> list[dict]:
    """Posts mixing known tags, unknown tags, spelling variants, duplicates, empty lists and null scores."""
    rng = random.Random(seed)
    known = [tok.convert_ids_to_tokens(i) for i in tok.tag_token_ids]
    posts = []
    for _ in range(count):
        post = {"rating": rng.choice(["g", "s", "q", "e", "G", None]), "score": rng.choice([None, -3, 0, 5, 12, 30, 1000])}
        for column in TAG_COLUMNS:
            tags = rng.sample(known, rng.randint(0, 4)) + [f"new_{rng.randint(0, 5)}" for _ in range(rng.randint(0, 2))]
            if tags and rng.random() < 0.3:
                tags.append(tags[0].upper().replace("_", " "))
            post[column] = tags
        posts.append(post)
    return posts


def test_bulk_path_equals_call_on_every_post(tok, tmp_path):
    posts = random_posts(tok, 300, seed=0)
    split = datasets.load_from_disk(str(write_data_dir(tmp_path / "data", posts)))["train"]
    encoded = encode_dataset(tok, split, batch_size=64)
    assert encoded.column_names == ["id", "input_ids", "category_ids", "length"]
    assert encoded.features["input_ids"].feature.dtype == "int32"
    assert encoded.features["category_ids"].feature.dtype == "int8"
    calls = tok([dict(row) for row in split])
    assert encoded["input_ids"] == calls["input_ids"]
    assert encoded["category_ids"] == calls["category_ids"]
    assert encoded["length"] == [len(ids) for ids in calls["input_ids"]]
    assert encoded["id"] == split["id"]
    truncated = encode_dataset(tok, split, max_length=5)
    assert truncated["input_ids"] == tok([dict(row) for row in split], truncation=True, max_length=5)["input_ids"]
    shuffled = encode_dataset(tok, split, shuffle_within_categories=True, seed=1)
    for order, canonical in zip(shuffled["input_ids"], calls["input_ids"]):
        assert sorted(order) == sorted(canonical)
        assert [tok.token_categories[i] for i in order] == [tok.token_categories[i] for i in canonical]
    assert shuffled["input_ids"] != calls["input_ids"]
    assert encode_dataset(tok, split, shuffle_within_categories=True, seed=1)["input_ids"] == shuffled["input_ids"]


RELOAD_SCRIPT = """
import json, sys
sys.modules["booru_embed"] = None  # the package must not be needed: only the remote code in the folder
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = json.loads(sys.argv[2])
out = tok(inputs, padding=True, truncation=True, max_length=12, return_tensors="pt")
print(json.dumps({
    "module": type(tok).__module__,
    "encoded": {k: v.tolist() for k, v in out.items()},
    "decoded": tok.batch_decode(out["input_ids"], skip_special_tokens=True),
    "categories": tok.token_categories,
    "ratings": tok.rating_token_ids, "scores": tok.score_token_ids, "unks": tok.unk_token_ids,
    "ids": [tok.pad_token_id, tok.cls_token_id, tok.mask_token_id],
}))
"""


def test_save_and_reload_in_a_fresh_offline_process(tok, tmp_path):
    saved = tmp_path / "saved"
    tok.save_pretrained(str(saved))
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_booru_embed.BooruEmbedTokenizer"
    assert (saved / "tokenization_booru_embed.py").is_file()
    inputs = [POSTS[0], "1girl, long hair, <pad>", ["solo", ":d", "unknown_x"], POSTS[2]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(saved), json.dumps(inputs)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["module"].startswith("transformers_modules.")
    here = tok(inputs, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert reloaded["encoded"] == {k: v.tolist() for k, v in here.items()}
    assert reloaded["decoded"] == tok.batch_decode(here["input_ids"], skip_special_tokens=True)
    assert reloaded["categories"] == tok.token_categories
    assert reloaded["ratings"] == tok.rating_token_ids and reloaded["scores"] == tok.score_token_ids
    assert reloaded["unks"] == tok.unk_token_ids and reloaded["ids"] == [0, 1, 2]


def test_real_alias_table_is_resolved(shared_tag_data, tmp_path):
    posts = [
        {"rating": "g", "score": 1, "general": ["valentines", "1girl"], "copyright": ["ff7"]},
        {"rating": "g", "score": 2, "general": ["valentine", "1girl"], "copyright": ["final_fantasy_vii"]},
    ]
    data_dir = write_data_dir(tmp_path / "data", posts)
    tok = build_tokenizer(data_dir, tmp_path / "tok", aliases=shared_tag_data / "aliases.tsv", min_counts={c: 2 for c in TAG_COLUMNS})
    assert tok.tag_to_id("valentines") == tok.tag_to_id("valentine") is not None  # counted together: 2 posts
    assert tok.tag_to_id("ff7") == tok.tag_to_id("final_fantasy_vii") is not None
    assert tok.convert_ids_to_tokens(tok.tag_to_id("ff7")) == "final_fantasy_vii"
    assert tok("valentines, ff7")["input_ids"] == tok("valentine final_fantasy_vii")["input_ids"]
    assert tok({"general": ["valentine's day", "valentines"]})["input_ids"] == [1, tok.tag_to_id("valentine")]
    split = datasets.load_from_disk(str(data_dir))["train"]
    assert encode_dataset(tok, split)["input_ids"] == tok([dict(r) for r in split])["input_ids"]


def test_any_vocabulary_id_order_gives_the_same_canonical_tokens(tok, tokenizer_dir, tmp_path):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    rows = vocab["tokens"]
    rest = rows[3:]
    random.Random(0).shuffle(rest)  # pad, cls, mask stay at 0, 1, 2; everything else moves
    vocab["tokens"] = rows[:3] + rest
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    shuffled = BooruEmbedTokenizer(vocab_file=str(tmp_path / "vocab.json"))
    assert not shuffled.vocabulary.rank_is_identity
    posts = random_posts(tok, 100, seed=1)
    split = datasets.load_from_disk(str(write_data_dir(tmp_path / "data", posts)))["train"]
    here = [tok.convert_ids_to_tokens(ids) for ids in tok(posts)["input_ids"]]
    there = [shuffled.convert_ids_to_tokens(ids) for ids in shuffled(posts)["input_ids"]]
    assert here == there
    assert encode_dataset(shuffled, split, batch_size=32)["input_ids"] == shuffled(posts)["input_ids"]
