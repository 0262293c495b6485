"""The model side of the evaluation: a trained model run over lists of sequences, in packed batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..sequences import mark_masks, model_inputs, pack_sequences


class ModelRunner:
    """Runs a ``BooruEmbedForPreTraining`` over lists of sequences in packed batches (no grad).

    Sequences are sorted by length before batching (results come back in the caller's order): the
    packed attention of sdpa/eager on CPU costs posts x longest^2 per batch, so similar lengths matter.
    """

    OUTPUTS = {"mlm": "mlm_logits", "embeddings": "embeddings", "rating": "rating_logits", "score": "score_logits"}

    def __init__(self, model: Any, info: Any, batch_tokens: int = 4096) -> None:
        self.model = model
        self.info = info
        self.batch_tokens = batch_tokens
        self.device = next(model.parameters()).device

    def _batches(self, order: np.ndarray, lengths: np.ndarray):
        start = 0
        while start < len(order):
            end, tokens = start, 0
            while end < len(order) and (end == start or tokens + lengths[order[end]] <= self.batch_tokens):
                tokens += lengths[order[end]]
                end += 1
            yield order[start:end]
            start = end

    def _forward(self, batch: dict[str, Any], want: Sequence[str]) -> dict[str, Any]:
        """The wanted outputs; only the heads asked for run (the masked-tag head costs vocab-sized work).

        Through the model's public methods; remote code saved before they existed runs its forward pass.
        """
        if not hasattr(self.model, "encode"):
            out = self.model(**batch)
            return {name: getattr(out, self.OUTPUTS[name]) for name in want}
        positions = batch.pop("mlm_positions", None)
        encoded = self.model.encode(**batch)
        pooled = encoded.pooler_output
        heads = {
            "embeddings": lambda: pooled,
            "rating": lambda: self.model.rating_and_score_logits(pooled)[0],
            "score": lambda: self.model.rating_and_score_logits(pooled)[1],
            "mlm": lambda: self.model.masked_tag_logits(encoded.last_hidden_state, positions),
        }
        return {name: heads[name]() for name in want}

    def run(self, sequences: Sequence[tuple[np.ndarray, np.ndarray]], *want: str) -> dict[str, np.ndarray]:
        """The outputs named in ``want`` over all sequences: ``mlm`` (logits at the single ``<mask>`` of
        each), ``embeddings``, ``rating``, ``score`` (logits)."""
        import torch

        lengths = np.array([len(ids) for ids, _ in sequences])
        order = np.argsort(lengths, kind="stable")
        result: dict[str, np.ndarray] = {}
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for chunk in self._batches(order, lengths):
                batch = pack_sequences([sequences[i] for i in chunk], packed=True, pad_token_id=self.info.pad_token_id)
                if "mlm" in want:
                    batch["mlm_positions"] = mark_masks(batch, self.info.mask_token_id)
                batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in model_inputs(batch).items()}
                for name, value in self._forward(batch, want).items():
                    value = value.float().cpu().numpy()
                    if name not in result:
                        result[name] = np.empty((len(sequences), *value.shape[1:]), dtype=np.float32)
                    result[name][chunk] = value
        self.model.train(was_training)
        return result

    def readback(self, embeddings: np.ndarray) -> np.ndarray:
        """(posts, vocab) tag logits read back from ``embeddings`` (posts, width), width one of the model's
        read-back sizes: one head on a whole batch of embeddings, no (sizes, posts, vocab) stack."""
        import torch

        with torch.no_grad():
            logits = self.model.readback(torch.from_numpy(np.ascontiguousarray(embeddings)).to(self.device))
        return logits.float().cpu().numpy()
