"""The synthetic corpus: layout, determinism, and the hidden structure it promises."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.data.synthetic import CSV_HEADER, generate_corpus

CATEGORIES = ("meta", "general", "artist", "copyright", "character")


def _posts(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{"id": int(r["id"]), "rating": r["rating"], "score": int(r["score"]),
             **{c: r[f"tag_string_{c}"].split() for c in CATEGORIES}} for r in rows]


def _closure(implications: list[list[str]]) -> dict[str, set[str]]:
    direct: dict[str, set[str]] = {}
    for antecedent, consequent in implications:
        direct.setdefault(antecedent, set()).add(consequent)
    closed = {}
    for tag in direct:
        seen, stack = set(), list(direct[tag])
        while stack:
            implied = stack.pop()
            if implied not in seen:
                seen.add(implied)
                stack.extend(direct.get(implied, ()))
        closed[tag] = seen
    return closed


@pytest.fixture(scope="module")
def made_up(tmp_path_factory) -> tuple[list[dict], dict, Path]:
    path = tmp_path_factory.mktemp("corpus") / "made_up.csv"
    truth_path = generate_corpus(path, 6000, seed=3)
    return _posts(path), json.loads(truth_path.read_text(encoding="utf-8")), path


def test_layout_and_truth_file(made_up):
    posts, truth, path = made_up
    assert path.read_text(encoding="utf-8").splitlines()[0] == CSV_HEADER
    assert len(posts) == truth["num_posts"] == 6000 and truth["seed"] == 3
    assert len({p["id"] for p in posts}) == len(posts)
    assert {p["rating"] for p in posts} == {"g", "s", "q", "e"}
    assert truth["source"] == "made-up"
    for name, character in truth["characters"].items():
        assert name in truth["copyrights"][character["copyright"]]["characters"]
        assert 3 <= len(character["traits"]) <= 6 and character["trait_probability"] == 0.9
    # BigQuery writes empty fields as "": a post without an artist has ,"", in its line
    assert any(',"",' in line for line in path.read_text(encoding="utf-8").splitlines()[1:50])


def test_deterministic_per_seed(tmp_path):
    first = generate_corpus(tmp_path / "a.csv", 300, seed=7)
    second = generate_corpus(tmp_path / "b.csv", 300, seed=7)
    other = generate_corpus(tmp_path / "c.csv", 300, seed=8)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert first.read_text(encoding="utf-8") == second.read_text(encoding="utf-8")
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    assert first.name == "a.truth.json"


def test_implications_hold_transitively(made_up):
    posts, truth, _ = made_up
    closure = _closure(truth["implications"])
    assert any(len(implied) > 1 for implied in closure.values()), "no implication chain to test"
    used = 0
    for post in posts:
        tags = {t for c in CATEGORIES for t in post[c]}
        for tag in tags & closure.keys():
            used += 1
            assert closure[tag] <= tags, (post["id"], tag)
    assert used > 1000


def test_characters_carry_their_traits_and_copyright(made_up):
    posts, truth, _ = made_up
    hits = total = 0
    for post in posts:
        general = set(post["general"])
        for character in post["character"]:
            assert truth["characters"][character]["copyright"] in post["copyright"]
            traits = truth["characters"][character]["traits"]
            hits += sum(t in general for t in traits)
            total += len(traits)
    assert total > 3000
    assert 0.85 <= hits / total <= 0.97  # drawn with p=0.9, plus a little from implications


def test_artist_styles_and_popularity(made_up):
    posts, truth, _ = made_up
    hits = total = 0
    for post in posts:
        general = set(post["general"])
        for artist in post["artist"]:
            style = truth["artists"][artist]["style"]
            hits += sum(t in general for t in style)
            total += len(style)
    assert 0.75 <= hits / total <= 0.95
    general_counts = Counter(t for p in posts for t in p["general"])
    top = [count for _, count in general_counts.most_common(200)]
    assert top[0] > 10 * top[-1]  # Zipf-like: the head is far more common than rank 200


def test_lengths_and_scores_are_realistic(made_up):
    posts, _, _ = made_up
    lengths = np.array([sum(len(p[c]) for c in CATEGORIES) for p in posts])
    scores = np.array([p["score"] for p in posts])
    assert 24 <= lengths.mean() <= 40
    assert lengths.max() >= 120  # a long tail
    assert np.percentile(scores, 99) > 5 * max(1.0, np.median(scores))  # heavy tail
    assert (scores < 0).any()


def test_real_tag_names(tmp_path, shared_tag_data):
    truth = json.loads(generate_corpus(tmp_path / "real.csv", 400, seed=1, tag_data=shared_tag_data).read_text(encoding="utf-8"))
    category = {}
    with open(shared_tag_data / "tags.csv", encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            category[row[0]] = int(row[1])
    real_implications = set()
    with open(shared_tag_data / "implications.tsv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            real_implications.add((row["antecedent"], row["consequent"]))
    assert all(category[t] == 0 for t in truth["tags"]["general"])
    assert all(category[t] == 1 for t in truth["artists"])
    assert all(category[t] == 3 for t in truth["copyrights"])
    assert all(category[t] == 4 for t in truth["characters"])
    assert all(category[t] == 5 for t in truth["tags"]["meta"])
    assert truth["implications"] and all(tuple(pair) in real_implications for pair in truth["implications"])
    assert ["cat_ears", "animal_ears"] in truth["implications"]


def test_cli(tmp_path, capsys):
    assert main(["generate-corpus", "--output", str(tmp_path / "c.csv"), "--posts", "50", "--no-tag-data"]) == 0
    assert len(_posts(tmp_path / "c.csv")) == 50 and (tmp_path / "c.truth.json").is_file()
    assert main(["generate-corpus", "--output", str(tmp_path / "d.csv"), "--posts", "0"]) == 2
    assert "--posts" in capsys.readouterr().err
