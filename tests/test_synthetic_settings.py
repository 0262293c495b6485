"""Named corpus settings and their knobs: each setting generates, and each knob changes what it claims."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.data.synthetic import generate_corpus
from booru_embed.data.synthetic_settings import SETTINGS, CorpusSpec, setting
from booru_embed.errors import UsageError

from test_synthetic import CATEGORIES, _posts


def _generate(tmp_path: Path, name: str, posts: int, spec: CorpusSpec, tag_data: Path | None = None,
              seed: int = 0) -> tuple[list[dict], dict]:
    truth = generate_corpus(tmp_path / f"{name}.csv", posts, seed=seed, tag_data=tag_data, spec=spec)
    return _posts(tmp_path / f"{name}.csv"), json.loads(truth.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", [n for n, s in SETTINGS.items() if s.universe == "sample"])
def test_each_sampled_setting_generates_and_records_its_knobs(tmp_path, name):
    posts, truth = _generate(tmp_path, name, 300, setting(name))
    assert len(posts) == 300 and truth["setting"] == name
    assert truth["spec"]["trait_probability"] == SETTINGS[name].trait_probability
    assert len(truth["characters"]) == SETTINGS[name].num_characters


def test_knobs_change_what_they_claim(tmp_path):
    base = setting("default")
    group = replace(base, characters_per_post=(0.05, 0.15, 0.2, 0.2, 0.2, 0.1, 0.05, 0.05))
    few_posts, _ = _generate(tmp_path, "few", 1500, base)
    many_posts, _ = _generate(tmp_path, "many", 1500, group)
    few = np.mean([len(p["character"]) for p in few_posts])
    many = np.mean([len(p["character"]) for p in many_posts])
    assert many > few + 1.0, (few, many)
    # trait probability 0.5: each of a character's traits is tagged about half the time
    posts, truth = _generate(tmp_path, "half", 1500, replace(base, trait_probability=0.5, max_traits=3))
    hits = total = 0
    for post in posts:
        general = set(post["general"])
        for character in post["character"]:
            traits = truth["characters"][character]["traits"]
            assert len(traits) <= 3
            hits += sum(t in general for t in traits)
            total += len(traits)
    assert 0.45 <= hits / total <= 0.62  # 0.5, plus traits that other characters or implications bring
    # noise tags: structure-free general tags on top
    noisy, _ = _generate(tmp_path, "noisy", 1500, replace(base, noise_tags=8.0))
    gained = np.mean([len(p["general"]) for p in noisy]) - np.mean([len(p["general"]) for p in few_posts])
    assert 6.0 <= gained <= 8.5, gained


def test_chunked_generation_is_deterministic_per_seed(tmp_path):
    spec = replace(setting("many-characters"), chunk_posts=128)
    generate_corpus(tmp_path / "a.csv", 400, seed=5, spec=spec)
    generate_corpus(tmp_path / "b.csv", 400, seed=5, spec=spec)
    generate_corpus(tmp_path / "c.csv", 400, seed=6, spec=spec)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    ids = [p["id"] for p in _posts(tmp_path / "a.csv")]
    assert ids == sorted(set(ids))  # ids keep increasing across chunks


def test_danbooru_scale_vocabulary_grows_with_the_posts(tmp_path, shared_tag_data):
    spec = replace(setting("danbooru-scale"), chunk_posts=3000)  # several chunks on the larger run
    small, truth = _generate(tmp_path, "small", 1000, spec, shared_tag_data)
    large, _ = _generate(tmp_path, "large", 8000, spec, shared_tag_data)
    assert truth["setting"] == "danbooru-scale" and len(truth["tags"]["artist"]) > 50_000

    def vocabulary(posts: list[dict]) -> int:
        counts = Counter(t for p in posts for c in CATEGORIES for t in p[c])
        return sum(n >= 3 for n in counts.values())

    assert vocabulary(large) > 3 * vocabulary(small), (vocabulary(small), vocabulary(large))
    lengths = np.array([sum(len(p[c]) for c in CATEGORIES) for p in large])
    assert 25 <= lengths.mean() <= 60
    # a drawn character brings its copyright (characters that only come in by a real character -> character
    # implication, such as an outfit variant implying the base character, need not)
    pairs = [(c, p) for p in large for c in p["character"]]
    with_copyright = sum(truth["characters"][c]["copyright"] in p["copyright"] for c, p in pairs)
    assert with_copyright > 0.9 * len(pairs), (with_copyright, len(pairs))


def test_danbooru_scale_needs_the_tag_tables(tmp_path):
    with pytest.raises(UsageError, match="real tag tables"):
        generate_corpus(tmp_path / "x.csv", 10, spec=setting("danbooru-scale"))


def test_cli_settings_and_overrides(tmp_path, capsys):
    assert main(["generate-corpus", "--list-settings"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SETTINGS)
    assert main(["generate-corpus", "--output", str(tmp_path / "s.csv"), "--posts", "60", "--no-tag-data",
                 "--setting", "sparse-traits", "--trait-probability", "0.3", "--characters", "90"]) == 0
    truth = json.loads((tmp_path / "s.truth.json").read_text(encoding="utf-8"))
    assert truth["setting"] == "sparse-traits" and truth["spec"]["trait_probability"] == 0.3
    assert len(truth["characters"]) == 90 and truth["spec"]["noise_tags"] == SETTINGS["sparse-traits"].noise_tags
    assert main(["generate-corpus", "--output", str(tmp_path / "d.csv"), "--setting", "danbooru-scale",
                 "--characters", "10"]) == 2
    assert "cannot change" in capsys.readouterr().err
    assert main(["generate-corpus", "--output", str(tmp_path / "e.csv"), "--trait-probability", "1.5"]) == 2
    assert main(["generate-corpus", "--output", str(tmp_path / "f.csv"), "--characters-per-post", "0.5,0.2"]) == 2
