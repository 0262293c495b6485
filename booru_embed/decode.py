"""`booru-embed decode`: tags read back from embeddings in a .npy file, booru-embed's own or mapped in by an aligner.

Without ``--aligner`` the rows are booru-embed embeddings of one of the model's trained sizes; with
``--aligner NAME`` they are external (image) embeddings, mapped by ``embed_external`` first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .errors import UsageError


def load_embedding_file(path: Path) -> np.ndarray:
    """(n, d) float32 rows of a ``.npy`` file (one row for a 1-D array); one-line UsageError for a bad file."""
    if path.suffix != ".npy":
        raise UsageError(f"--embedding must be a .npy file, got {path}")
    if not path.is_file():
        raise UsageError(f"--embedding file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--embedding {path} is not a readable .npy file: {error}") from None
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not len(array) or not np.issubdtype(array.dtype, np.number):
        raise UsageError(f"--embedding {path} must hold a (n, d) array of numbers, got shape {array.shape}, {array.dtype}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise UsageError(f"--embedding {path}: {len(bad)} row(s) hold NaN or infinite values (first: row {bad[0]})")
    return array.astype(np.float32)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed decode``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("--embedding", required=True, type=Path, metavar="FILE.npy", help="(n, d) or (d,) embeddings")
    parser.add_argument("--aligner", metavar="NAME", help="the rows are external embeddings: map them with this aligner")
    parser.add_argument("--top-k", type=int, help="the K most likely tags of each row (default: every tag above --threshold)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability a tag must exceed (default: 0.5)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of tag lists, one per row")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_decode(args: argparse.Namespace) -> int:
    """Run ``booru-embed decode``."""
    from .embedder import load_for_command

    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    vectors = load_embedding_file(args.embedding)
    embedder = load_for_command(args.model_dir, args.device)
    try:
        if args.aligner is not None:
            vectors = embedder.embed_external(vectors, aligner=args.aligner)
        rows = embedder.decode(vectors, top_k=args.top_k, threshold=args.threshold)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for tags in rows:
        print(" ".join(tags))
    return 0
