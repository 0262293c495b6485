"""Evaluation: what the model learned, side by side with classical baselines on the same cases.

``booru-embed evaluate MODEL_DIR --dataset DATA_DIR --output METRICS_JSON [--implications FILE]
[--truth FILE] [--max-posts N] [--baseline-posts N]``. Every metric is computed for the model (``model.*``) and, where a
classical method exists, for the baseline (``baseline.*``) on exactly the same cases (same posts, same
hidden tags, drawn with a fixed seed). The keys are documented in docs/evaluation.md.

One module per part: ``metrics`` (metrics on plain arrays), ``baselines`` (co-occurrence, TF-IDF,
tag-vector and naive-Bayes baselines from the training split), ``runner`` (the model over lists of
sequences), ``evaluator`` (the seeded cases and every metric), ``command`` (``evaluate`` and the CLI).
"""

from .baselines import CooccurrenceBaseline
from .command import BASELINE_POSTS, add_evaluate_arguments, evaluate, format_metrics, run_evaluate
from .evaluator import SEED, Evaluator, encode_sample, posts_from_encoded, sample_rows
from .metrics import (
    TOP_K,
    RankingAccumulator,
    f1_at_equal_precision_recall,
    peak_memory_mb,
    recall_at_k,
    retrieval_recall_at_k,
)
from .runner import ModelRunner

__all__ = [
    "BASELINE_POSTS",
    "SEED",
    "TOP_K",
    "CooccurrenceBaseline",
    "Evaluator",
    "ModelRunner",
    "RankingAccumulator",
    "add_evaluate_arguments",
    "encode_sample",
    "evaluate",
    "f1_at_equal_precision_recall",
    "format_metrics",
    "peak_memory_mb",
    "posts_from_encoded",
    "recall_at_k",
    "retrieval_recall_at_k",
    "run_evaluate",
    "sample_rows",
]
