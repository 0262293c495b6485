"""Model FLOPs of one pre-training step of `BooruEmbedForPreTraining`, counted from a collated batch.

Used by `bench_loader.py` (the post rate a GPU needs) and `gpu_check.py` (MFU). A multiply-add is 2
FLOPs; training is 3x the forward pass (backward: gradients of inputs and of weights). What runs per
batch (see `BooruEmbedForPreTraining.forward` and `training/objectives.py`):

* encoder blocks on every real token: qkv (3 h^2), output (h^2), SwiGLU (3 h x intermediate) -> 6 x
  those parameters per token; attention scores and mixing: 4 h x (length of the token's own sequence)
  per layer forward, i.e. 12 h layers x sum(length^2) per batch for training;
* the pooler (h x embedding_dim) on the first token of every sequence;
* the masked-tag head on every `<mask>` token (`mlm_positions`): dense h x h, then h x vocab;
* the read-back heads on every sequence at every nested size d and the full size: dense d x h,
  then h x vocab (the vocabulary-wide products that grow with the vocabulary);
* rating and score heads (embedding_dim x classes) on every sequence.
Element-wise work (norms, softmax, softplus over the read-back grid) is not counted, as usual for MFU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRAINING_FACTOR = 3  # forward 1x + backward 2x


@dataclass(frozen=True)
class BatchShape:
    """What the FLOPs of a batch depend on: token, sequence and `<mask>` counts, and sum of squared lengths."""

    tokens: int
    sequences: int
    masks: int
    squared_lengths: int
    posts: int

    @classmethod
    def of(cls, batch: dict[str, Any]) -> BatchShape:
        """Read the counts from a collated batch (packed or padded)."""
        if "cu_seqlens" in batch:
            lengths = batch["cu_seqlens"].diff().long()
        else:
            lengths = batch["attention_mask"].sum(dim=1).long()
        return cls(
            tokens=int(lengths.sum()), sequences=int(lengths.numel()), masks=int(batch["mlm_positions"].sum()),
            squared_lengths=int((lengths * lengths).sum()), posts=int(batch["num_posts"]),
        )

    def __add__(self, other: BatchShape) -> BatchShape:
        return BatchShape(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


def training_flops(config: Any, shape: BatchShape) -> dict[str, float]:
    """FLOPs of one training step (forward + backward) on a batch of ``shape``, by part, and ``total``.

    ``config`` is a `BooruEmbedConfig` (its ``vocab_size`` is the vocabulary the heads score).
    """
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    vocab, embedding = config.vocab_size, config.embedding_dim
    block_params = layers * (4 * h * h + 3 * h * inter)
    parts = {
        "encoder": 2 * block_params * shape.tokens,
        "attention": 4 * h * layers * shape.squared_lengths,
        "pooler": 2 * h * embedding * shape.sequences,
        "masked_head": 2 * (h * h + h * vocab) * shape.masks,
        "readback_heads": 2 * sum(d * h + h * vocab for d in [*config.nested_dims, embedding]) * shape.sequences,
        "rating_score_heads": 2 * embedding * (config.num_ratings + config.num_score_buckets) * shape.sequences,
    }
    parts = {name: float(TRAINING_FACTOR * value) for name, value in parts.items()}
    parts["total"] = sum(parts.values())
    return parts
