"""analyze: exact numbers on a corpus with known statistics, the recommendation, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from booru_embed.cli import main
from booru_embed.data.analysis import analyze, recommend_context_length, recommend_min_counts, vocabulary_size
from booru_embed.data.ingest import build_dataset
from booru_embed.data.synthetic import CSV_HEADER
from booru_embed.errors import UsageError

POSTS = 1000


def _known_corpus(tmp_path: Path) -> Path:
    """1000 posts: every post has `common`, posts 1-10 `rare`, post i `g{i % 5}`; posts 999 and 1000
    carry 40 and 60 extra general tags; one artist `a{i % 4}`, ratings cycle g s q e, score = i - 100."""
    lines = [CSV_HEADER]
    for i in range(1, POSTS + 1):
        general = ["common", f"g{i % 5}"] + (["rare"] if i <= 10 else [])
        general += [f"x{k}" for k in range({999: 40, 1000: 60}.get(i, 0))]
        meta = "highres" if i % 2 else ""
        lines.append(f'{i},{"gsqe"[i % 4]},{i - 100},"{meta}","{" ".join(general)}","a{i % 4}","",""')
    (tmp_path / "known.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    build_dataset([tmp_path / "known.csv"], tmp_path / "data", test_fraction=0.0)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def known_data(tmp_path_factory) -> Path:
    return _known_corpus(tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="module")
def report(known_data) -> tuple[dict, Path]:
    return analyze(known_data, known_data.parent / "report", coverage=0.9), known_data.parent / "report"


def test_counts_are_exact(report):
    stats, folder = report
    assert stats["posts"] == POSTS and stats["posts_by_split"] == {"train": POSTS}
    general = stats["categories"]["general"]
    assert general["distinct_tags"] == 1 + 5 + 1 + 60
    assert general["occurrences"] == POSTS * 2 + 10 + 40 + 60
    assert general["top"][0] == ["common", POSTS] and general["top"][1] == ["g0", 200]
    assert stats["categories"]["artist"]["distinct_tags"] == 4 and stats["categories"]["meta"]["occurrences"] == 500
    assert stats["categories"]["character"]["occurrences"] == 0
    assert stats["ratings"] == {"g": 250, "s": 250, "q": 250, "e": 250, "unknown": 0}
    rows = (folder / "tag_counts.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "category\ttag\tcount" and rows[1] == "general\tcommon\t1000"
    assert "general\trare\t10" in rows and len(rows) == 1 + 67 + 4 + 1


def test_lengths_scores_and_context(report):
    stats, _ = report
    # tags per post: 3 (artist + common + g) or 4 with meta; +1 for rare; posts 999/1000: +40/+60
    lengths = np.array([3 + (i % 2) + (i <= 10) + {999: 40, 1000: 60}.get(i, 0) for i in range(1, POSTS + 1)])
    ordered = np.sort(lengths)
    assert stats["tags_per_post"]["all"]["p50"] == ordered[499]
    assert stats["tags_per_post"]["all"]["p99.9"] == ordered[998] == 3 + 1 + 40  # post 999 (odd: highres)
    assert stats["tags_per_post"]["all"]["max"] == 3 + 60 and stats["tags_per_post"]["artist"]["max"] == 1
    assert stats["recommendation"]["context_length"] == 3 + ordered[998]
    assert stats["score"]["min"] == -99 and stats["score"]["max"] == 900 and stats["score"]["p50"] == 400


def test_recommended_min_counts_reach_the_coverage(report):
    stats, _ = report
    rec = stats["recommendation"]
    assert rec["coverage"] == 0.9
    general = stats["categories"]["general"]
    # common (1000) + g0..g4 (200 each) = 2000 of 2110 occurrences >= 0.9 * 2110 = 1899
    assert rec["min_counts"]["general"] == 200 and general["recommended_vocabulary"] == 6
    assert general["recommended_coverage"] == pytest.approx(2000 / 2110, abs=1e-6)
    assert rec["min_counts"]["artist"] == 250 and rec["min_counts"]["character"] == 1


def test_report_files(report):
    stats, folder = report
    assert json.loads((folder / "stats.json").read_text(encoding="utf-8")) == json.loads(json.dumps(stats))
    text = (folder / "report.md").read_text(encoding="utf-8")
    assert f"**{stats['recommendation']['context_length']} tokens**" in text
    assert "--min-count general=200" in text
    for name in ("coverage.png", "lengths.png", "ratings_scores.png", "top_tags.png"):
        data = (folder / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"({name})" in text


def test_recommend_min_counts_unit():
    counts = {"a": 50, "b": 30, "c": 15, "d": 5}
    assert recommend_min_counts({"general": counts}, 0.5) == {"general": 50}
    assert recommend_min_counts({"general": counts}, 0.8) == {"general": 30}
    assert recommend_min_counts({"general": counts}, 0.81) == {"general": 15}
    assert recommend_min_counts({"general": list(counts.values())}, 1.0) == {"general": 5}
    assert recommend_min_counts({"artist": {}}, 0.9) == {"artist": 1}
    assert vocabulary_size({"a": 10, "b": 10, "c": 1}, 10) == (2, pytest.approx(20 / 21))
    for bad in (0.0, 1.5):
        with pytest.raises(UsageError, match="coverage"):
            recommend_min_counts({"general": counts}, bad)
    assert recommend_context_length(np.array([1, 2, 3, 100])) == 3 + 100


def test_cli(tmp_path, capsys, known_data):
    data_dir = known_data
    assert main(["analyze", str(data_dir), "--output", str(tmp_path / "r"), "--split", "all", "--coverage", "0.5"]) == 0
    assert "context length" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "stats.json").read_text())["split"] == "all"
    assert main(["analyze", str(tmp_path / "nope"), "--output", str(tmp_path / "r2")]) == 2
    assert main(["analyze", str(data_dir), "--output", str(tmp_path / "r3"), "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert "not a DATA_DIR" in err and "no split 'dev'" in err
