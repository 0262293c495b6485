"""``booru-embed evaluate MODEL_DIR --dataset DATA_DIR --output METRICS_JSON``: load, sample, evaluate, write."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..data.validation_slice import read_validation_ids
from ..errors import UsageError
from .evaluator import Evaluator, encode_sample
from .metrics import peak_memory_mb

BASELINE_POSTS = 1_000_000  # training posts the baseline counts by default: ~1 GB of co-counts at Danbooru's vocabulary


def evaluate(model_dir: str | Path, data_dir: str | Path, output_json: str | Path | None = None,
             implications: str | Path | None = None, max_posts: int | None = None,
             truth: str | Path | None = None, baseline_posts: int | None = BASELINE_POSTS) -> dict[str, float]:
    """Evaluate MODEL_DIR on DATA_DIR's test split vs the baseline; write METRICS_JSON and
    ``MODEL_DIR/eval_metrics.json``; return the flat metrics.

    Only the sampled posts are encoded: ``max_posts`` of the test split and ``baseline_posts`` of the
    training split (seeded; None or 0 keeps all), so the memory is set by those two numbers.
    """
    import datasets
    from transformers import AutoModelForPreTraining

    from ..modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from ..sequences import TokenInfo

    started = time.perf_counter()
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    if baseline_posts is not None and baseline_posts < 0:
        raise UsageError(f"--baseline-posts must be positive (0 counts the whole training split), got {baseline_posts}")
    if max_posts is not None and max_posts < 0:
        raise UsageError(f"--max-posts must be positive, got {max_posts}")
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"not a model folder (no config.json): {model_dir}")
    try:
        splits = datasets.load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"cannot read dataset {data_dir}: {error}") from None
    if not {"train", "test"} <= set(splits):
        raise UsageError(f"{data_dir} needs splits `train` and `test`")
    from ..data.tag_tables import read_pair_table

    pairs = read_pair_table(implications, "implication") if implications else []
    truth_table = None
    if truth:
        if not Path(truth).is_file():
            raise UsageError(f"ground-truth file not found: {truth}")
        truth_table = json.loads(Path(truth).read_text())
    # The package's tokenizer class, not the folder's copy: the bulk encoder needs its current API, and
    # it reads folders saved by earlier versions the same way (tests/test_saved_folder.py).
    tokenizer = BooruEmbedTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForPreTraining.from_pretrained(str(model_dir), trust_remote_code=True)
    info = TokenInfo.from_tokenizer(tokenizer)
    if not pairs:
        pairs = [(a, c) for a, consequents in tokenizer.implications.items() for c in consequents]
    if not pairs and truth_table:
        pairs = [(a, c) for a, c in truth_table.get("implications", [])]
    held_out_ids = read_validation_ids(model_dir)
    loaded = {"time.load.seconds": time.perf_counter() - started, "memory.load.peak_mb": peak_memory_mb()}
    started = time.perf_counter()
    evaluator = Evaluator(
        info,
        encode_sample(tokenizer, splits["train"], baseline_posts, "train"),
        encode_sample(tokenizer, splits["test"], max_posts, "test"),
        tokenizer.tag_to_id,
        max_posts=max_posts,
        baseline_posts=baseline_posts,
        train_total=len(splits["train"]),
        validation_posts=held_out_posts(tokenizer, splits["train"], held_out_ids),
        held_out_ids=held_out_ids,
    )
    loaded["time.encode.seconds"] = time.perf_counter() - started - evaluator.recorded["time.baseline.seconds"]
    loaded["memory.encode.peak_mb"] = peak_memory_mb()
    metrics = dict(sorted({**evaluator.run(model, pairs, truth_table), **loaded}.items()))
    text = json.dumps(metrics, indent=2) + "\n"
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(text)
    (model_dir / "eval_metrics.json").write_text(text)
    return metrics


def held_out_posts(tokenizer: Any, train: Any, ids: Any) -> Any:
    """The encoded posts of ``train`` whose ids are the model's validation slice (``ids``), or None when it has none."""
    from ..data.bulk_encoding import encode_dataset
    from ..data.validation_slice import rows_with_ids

    rows = rows_with_ids(train, ids) if ids is not None else []
    return encode_dataset(tokenizer, train.select(rows)) if len(rows) else None


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed evaluate``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder written by training")
    parser.add_argument("--dataset", required=True, metavar="DATA_DIR", help="dataset folder (train for the baseline, test for the cases)")
    parser.add_argument("--output", required=True, metavar="METRICS_JSON", help="where to write the flat metrics")
    parser.add_argument("--implications", metavar="FILE", help="implications TSV (antecedent, consequent) for the implication metrics")
    parser.add_argument("--truth", metavar="FILE", help="ground-truth JSON of a generated corpus, for character-trait recovery")
    parser.add_argument("--max-posts", type=int, metavar="N", help="evaluate on a seeded sample of N test posts")
    parser.add_argument("--baseline-posts", type=int, default=BASELINE_POSTS, metavar="N",
                        help=f"count the baseline on a seeded sample of N training posts (default {BASELINE_POSTS:,}; 0: all)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``booru-embed evaluate``; print the model vs baseline table."""
    metrics = evaluate(args.model_dir, args.dataset, args.output, args.implications, args.max_posts, args.truth,
                       args.baseline_posts)
    print(format_metrics(metrics))
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    """A model | baseline | tagvec | linear table of the metrics (a side without the metric shows ``-``)."""
    sides = ("model", "baseline", "tagvec", "linear")
    names = sorted({k.split(".", 1)[1] for k in metrics if k.startswith(tuple(f"{who}." for who in sides))})
    rows = [f"{'metric':<40} {'model':>8} {'baseline':>8} {'tagvec':>8} {'linear':>8}"]
    for name in names:
        cells = [metrics.get(f"{who}.{name}") for who in sides]
        rows.append(f"{name:<40} " + " ".join(f"{c:>8.4f}" if c is not None else f"{'-':>8}" for c in cells))
    return "\n".join(rows)
