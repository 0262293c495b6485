"""What an aligner reaches with a trained model (slow): the issue's targets on generated corpora.

Each test runs one row of ``bench/bench_align_quality.py`` (a generated corpus, a small model trained
briefly, synthetic image embeddings made from the posts' visible tags with noise, artist and meta tags
only partly visible, then ``align``). docs/aligners.md "Measured" has the table over seeds and settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_align_quality import run  # noqa: E402

# Measured (docs/aligners.md "Measured", seeds 0-2, filled in below from bench/bench_align_quality.py).
HIT_RATIO = 0.8
F1_RATIO = 0.9


@pytest.mark.slow
def test_tags_aligner_reads_back_like_the_ceiling_and_finds_its_posts(tmp_path: Path) -> None:
    metrics = run(tmp_path, "default", seed=0, posts=8000, steps=300, dim=512, archs=("tags", "mlp"), epochs=20)
    tags, mlp = metrics["tags"], metrics["mlp"]
    # the targets: tags read back from the aligned vector against the ceiling, and nearest posts (the own
    # post or a same-character one among the 10 nearest; the own tag set always finds itself)
    assert tags["aligned.f1"] >= F1_RATIO * tags["ceiling.f1"]
    assert tags["aligned.hit@10"] >= HIT_RATIO * tags["tagset.hit@10"]
    # the default beats the map straight to the embedding on both (by more than the seeds' spread)
    assert tags["aligned.f1"] >= mlp["aligned.f1"] + 0.02 and tags["aligned.hit@10"] >= mlp["aligned.hit@10"] + 0.05
