"""The prepared GPU check (bench/gpu_check.py) in its CPU dry-run mode: same code paths, tiny sizes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """A 600-post generated corpus, its tokenizer and the dry-run arguments."""
    from booru_embed.training.loop import load_tokenizer

    out = tmp_path_factory.mktemp("gpu_check")
    args = gpu_check.parse_args(["--dry-run", "--out", str(out), "--posts", "600", "--batch-size", "8"])
    data, tokenizer_dir, info = gpu_check.make_corpus(args)
    return args, data, load_tokenizer(tokenizer_dir), info


def test_attention_numerics_compare_each_backend_with_eager(corpus):
    import torch

    args, data, tokenizer, _ = corpus
    batch = gpu_check.collated_batches(data, tokenizer, 8, 1)[0]
    rows = gpu_check.attention_numerics(args, tokenizer, batch, torch.device("cpu"))
    assert [(r["backend"], r["dtype"]) for r in rows] == [("eager", "float32"), ("sdpa", "float32")]
    assert rows[0]["reference"] and rows[0]["tokens"] == int(batch["num_tokens"]) and rows[0]["posts"] == 8
    sdpa = rows[1]
    assert sdpa["within_tolerance"], sdpa
    assert 0 <= sdpa["max_abs_diff_hidden"] < 1e-4 and sdpa["max_abs_diff_grads"] < 1e-4 < sdpa["max_abs_grad"]


def test_a_packed_row_with_trailing_padding_is_refused_on_the_device(corpus):
    import torch

    _, _, tokenizer, _ = corpus
    guard = gpu_check.packed_row_guard(tokenizer, torch.device("cpu"))
    assert guard["padded_packed_row_refused"] and "cu_seqlens must run from 0" in guard["message"]


def test_throughput_row_counts_the_flops_of_the_timed_batches(corpus):
    import torch

    args, data, tokenizer, _ = corpus
    batches = gpu_check.collated_batches(data, tokenizer, 8, 4)
    row = gpu_check.throughput(args, tokenizer, batches, "tiny", "sdpa", torch.device("cpu"))
    assert row["posts_per_batch"] == 8 and row["vocab"] == 4096
    timed = [batches[i % len(batches)] for i in range(args.timed_steps)]
    assert row["tokens_per_batch"] == sum(int(b["num_tokens"]) for b in timed) // len(timed)
    assert math.isclose(row["tokens_per_s"] * row["step_s"], row["tokens_per_batch"], rel_tol=0.01)
    assert 0 < row["mfu"] < 1 and 0 < row["heads_share_of_flops"] < 1
    assert math.isclose(row["epoch_minutes"], args.epoch_posts / row["posts_per_s"] / 60)
    assert row["peak_memory_gb"] is None  # CPU: no device memory to report


@pytest.mark.slow
def test_dry_run_writes_the_report_with_an_exact_resume(tmp_path: Path):
    """Three `accelerate launch` runs (full, stopped at the checkpoint, resumed): about a minute on 2 idle cores."""
    report = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["mode"] == "dry-run" and set(written) >= {"environment", "corpus", "guards", "attention", "throughput",
                                                               "training", "loader", "elapsed_s"}
    assert written["training"] == report["training"]
    training = written["training"]
    assert training["steps"] == 4 and training["checkpoint_step"] == 2
    assert training["exact_resume"] and training["max_loss_diff_after_resume"] == 0.0
    assert training["max_loss_diff_before_resume"] == 0.0 and math.isfinite(training["last_loss"])
    assert all(r["within_tolerance"] for r in written["attention"] if not r.get("reference"))
    assert [r["config"] for r in written["throughput"]] == ["tiny"]
    assert [r["workers"] for r in written["loader"]] == [0, 1]
    assert all(r["posts_per_s"] > 0 for r in written["loader"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "failed" not in markdown and "| sdpa | float32 |" in markdown
    assert "trailing padding: refused" in markdown
    assert "| tiny | sdpa | 4,096 |" in markdown and "| yes |" in markdown
