"""Applying a saved aligner for ``BooruEmbedder.embed_external``, on the torch or the ONNX backend.

The torch path loads ``aligners/NAME/model.safetensors`` into ``model.Aligner``; the ONNX path runs
``onnx/aligners/NAME.onnx`` through ``store`` and never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UsageError
from .store import ALIGNERS_FOLDER, WEIGHTS_FILE, Runner, check_vectors, fetch, onnx_runner, read_config


class LoadedAligner:
    """One aligner ready to run: its config and a numpy function external -> raw embedding."""

    def __init__(self, name: str, config: dict[str, Any], runner: Runner) -> None:
        """Wrap a config (``config.json``) and a runner (see ``load``)."""
        self.name, self.config, self._runner = name, config, runner
        self.input_dim, self.output_dim = int(config["input_dim"]), int(config["output_dim"])

    @classmethod
    def load(cls, source: str, local: bool, name: str, backend: str, device: Any = None,
             **kwargs: Any) -> LoadedAligner:
        """Aligner ``name`` of a MODEL_DIR (``local``) or Hub repo, for ``backend`` torch or onnx."""
        config = read_config(source, local, name, **kwargs)
        if backend == "onnx":
            return cls(name, config, onnx_runner(source, local, name, **kwargs))
        from .model import load_aligner, torch_runner

        weights = fetch(source, local, f"{ALIGNERS_FOLDER}/{name}/{WEIGHTS_FILE}", **kwargs)
        if weights is None:
            raise UsageError(f"aligner {name!r} of {source} has no {WEIGHTS_FILE}")
        aligner = load_aligner(config, weights)
        return cls(name, config, torch_runner(aligner.to(device) if device is not None else aligner, name))

    def __call__(self, vectors: Any) -> np.ndarray:
        """(n, output_dim) float32 raw embeddings of (n, input_dim) external vectors; ValueError for bad rows."""
        array = check_vectors(vectors, self.input_dim, self.name)
        if len(array) == 0:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        return np.asarray(self._runner(array), dtype=np.float32)
