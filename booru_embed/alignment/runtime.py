"""Applying a saved aligner for ``BooruEmbedder.embed_external``, on the torch or the ONNX backend.

The torch path loads ``aligners/NAME/model.safetensors`` (``model``); the ONNX path runs
``onnx/aligners/NAME.onnx`` through ``store`` and never imports torch. A ``tags`` aligner's output is
the logits of its tags: the predicted tag set (``tag_path``) is then embedded by the model's encoder,
which the embedder passes in as ``encode``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError
from .store import ALIGNERS_FOLDER, TAG_ARCH, WEIGHTS_FILE, Runner, check_vectors, fetch, onnx_runner, read_config
from .tag_path import MAX_TAGS, Encoder, predicted_tags


class LoadedAligner:
    """One aligner ready to run: its config and a numpy function external -> raw embedding."""

    def __init__(self, name: str, config: dict[str, Any], runner: Runner, encode: Encoder) -> None:
        """Wrap a config (``config.json``), a runner (see ``load``) and the model's encoder of tag token-id lists."""
        self.name, self.config, self._runner, self._encode = name, config, runner, encode
        self.input_dim, self.output_dim = int(config["input_dim"]), int(config["output_dim"])
        self.reads_tags = config["arch"] == TAG_ARCH
        if self.reads_tags:
            self.token_ids = np.asarray(config["token_ids"], dtype=np.int64)
            self.threshold, self.max_tags = float(config["threshold"]), int(config.get("max_tags", MAX_TAGS))

    @classmethod
    def load(cls, source: str, local: bool, name: str, backend: str, encode: Encoder, device: Any = None,
             **kwargs: Any) -> LoadedAligner:
        """Aligner ``name`` of a MODEL_DIR (``local``) or Hub repo, for ``backend`` torch or onnx."""
        config = read_config(source, local, name, **kwargs)
        if backend == "onnx":
            return cls(name, config, onnx_runner(source, local, name, config["arch"], **kwargs), encode)
        from .model import load_aligner, torch_runner

        weights = fetch(source, local, f"{ALIGNERS_FOLDER}/{name}/{WEIGHTS_FILE}", **kwargs)
        if weights is None:
            raise UsageError(f"aligner {name!r} of {source} has no {WEIGHTS_FILE}")
        aligner = load_aligner(config, weights)
        return cls(name, config, torch_runner(aligner.to(device) if device is not None else aligner, name), encode)

    def tags(self, vectors: Any) -> list[list[int]]:
        """The token ids a ``tags`` aligner reads from each row (most likely first)."""
        return predicted_tags(self._runner(check_vectors(vectors, self.input_dim, self.name)), self.token_ids,
                              self.threshold, self.max_tags)

    def __call__(self, vectors: Any) -> np.ndarray:
        """(n, output_dim) float32 raw embeddings of (n, input_dim) external vectors; ValueError for bad rows."""
        array = check_vectors(vectors, self.input_dim, self.name)
        if len(array) == 0:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        if self.reads_tags:
            return np.asarray(self._encode(self.tags(array)), dtype=np.float32)
        return np.asarray(self._runner(array), dtype=np.float32)
