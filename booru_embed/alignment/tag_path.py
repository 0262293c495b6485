"""The ``tags`` aligner's second half: from a tag head's logits to a tag set the model embeds.

Each row's tags are those whose probability exceeds the aligner's ``threshold`` (chosen on the
held-out pairs by ``choose_threshold``), the ``max_tags`` most likely at most and the single most
likely one at least, so no row is empty. The tag set is read without a rating or score (an image
shows neither) and embedded by the model like any tag-only query. Nothing here imports torch: the
ONNX backend runs this path too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
MAX_TAGS = 100  # Danbooru posts carry about 34 tags; a cap keeps a poorly calibrated row from growing without end
THRESHOLD_POSTS = 2000  # held-out pairs that choose the threshold (a fixed, seeded subset when there are more)

Encoder = Callable[[list[list[int]]], np.ndarray]  # tag token-id lists -> (n, embedding_dim) raw embeddings


def predicted_tags(logits: np.ndarray, token_ids: np.ndarray, threshold: float, max_tags: int = MAX_TAGS) -> list[list[int]]:
    """Per row of ``logits`` (n, len(token_ids)): the token ids of the predicted tags, most likely first.

    Tags whose probability exceeds ``threshold``, at most ``max_tags``, at least the most likely one;
    each tag once (``token_ids`` holds each tag once).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    cut = float(np.log(threshold) - np.log1p(-threshold))  # the logit of the threshold
    rows = []
    for row in np.asarray(logits, dtype=np.float32):
        above = np.flatnonzero(row > cut)
        if len(above) == 0:
            above = np.asarray([int(np.argmax(row))])
        order = above[np.argsort(-row[above], kind="stable")][:max_tags]
        rows.append(token_ids[order].tolist())
    return rows


def choose_threshold(logits: np.ndarray, token_ids: np.ndarray, targets: np.ndarray, encode: Encoder,
                     max_tags: int = MAX_TAGS, thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, dict[float, float]]:
    """The threshold whose predicted tag sets embed nearest (mean cosine) to the posts' own embeddings ``targets``.

    Returns it and the mean cosine of every threshold tried (ties go to the lower threshold).
    """
    own = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    cosines = {}
    for threshold in thresholds:
        embedded = encode(predicted_tags(logits, token_ids, threshold, max_tags))
        embedded = embedded / np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
        cosines[threshold] = float((embedded * own).sum(axis=1).mean())
    return max(cosines, key=lambda t: (cosines[t], -t)), cosines
