"""How the masked-tag head's logits become rankings: one definition for suggest, score_tags and evaluation.

Numpy only (the ONNX backend of the embedder runs without torch).

The "distinctive" ranking is Danbooru's related-tags normalisation in the model's terms: the
co-occurrence cosine n(a,b)/sqrt(n(a)n(b)) is P(b|a)/sqrt(P(b)) up to a constant, so a tag is ranked by
log p(tag | tag set) - 1/2 log p(tag | no tags): what is typical of this tag set before what is common
everywhere (``highres``, ``1girl``).

Both estimate the same quantity, log P(b|a) - 1/2 log P(b) up to a constant, so they can be averaged:
``with_counts`` is the geometric mean of the model's estimate and the co-occurrence cosine's, with equal
weights (no weight is tuned), for a tool that has the training posts' counts at hand.
"""

from __future__ import annotations

import numpy as np

DISTINCTIVE_PRIOR_WEIGHT = 0.5  # the square root of the prior in the cosine's denominator
COSINE_FLOOR = 1e-4  # the cosine a pair never counted together gets in ``with_counts`` (a finite log)


def masked_log_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Log softmax over the last axis among the ``allowed`` entries (others -inf), in the logits' dtype."""
    shifted = np.where(allowed, logits, -np.inf)
    shifted -= shifted.max(axis=-1, keepdims=True)  # in place: one (…, vocab) array besides exp's
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def distinctive_scores(log_probabilities: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """log p(tag | tag set) - 1/2 log p(tag | no tags): the related-tags ranking (module docstring)."""
    return log_probabilities - DISTINCTIVE_PRIOR_WEIGHT * log_prior


def with_counts(distinctive: np.ndarray, related: np.ndarray) -> np.ndarray:
    """The mean of the model's distinctive scores and the log of the related-tags score (the co-occurrence
    cosine, summed over the tag set's tags), floored at ``COSINE_FLOOR`` (module docstring); float32, and
    entries where ``distinctive`` is -inf stay -inf."""
    fused = np.log(np.maximum(np.asarray(related, dtype=np.float32), np.float32(COSINE_FLOOR)))
    fused += np.asarray(distinctive, dtype=np.float32)  # -inf stays -inf
    fused *= np.float32(0.5)
    return fused
