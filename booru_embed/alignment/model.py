"""The aligner as a torch module, and its safetensors file.

An aligner standardises its input with the training pairs' per-dimension mean and standard deviation
(stored with the weights), then maps it to booru-embed's pooled embedding: one linear layer
(``linear``) or linear -> GELU -> linear plus a linear skip path (``mlp``). Its output is the raw
(not normalised) embedding; ``embed_external`` truncates and normalises it like ``embed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .store import CONFIG_FILE, FORMAT, WEIGHTS_FILE, check_vectors

ARCHS = ("linear", "mlp")


class Aligner(nn.Module):
    """external (…, input_dim) -> booru-embed embedding (…, output_dim), not normalised."""

    def __init__(self, arch: str, input_dim: int, output_dim: int, hidden_dim: int) -> None:
        """A ``linear`` or ``mlp`` map; ``hidden_dim`` is the MLP's width (unused by ``linear``)."""
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        self.arch = arch
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.skip = nn.Linear(input_dim, output_dim)
        self.hidden = nn.Linear(input_dim, hidden_dim) if arch == "mlp" else None
        self.out = nn.Linear(hidden_dim, output_dim, bias=False) if arch == "mlp" else None
        if self.out is not None:
            nn.init.zeros_(self.out.weight)  # starts as the linear map; the MLP path learns what it misses

    def forward(self, external: torch.Tensor) -> torch.Tensor:
        """(…, input_dim) -> (…, output_dim)."""
        x = (external - self.input_mean) * self.input_scale
        y = self.skip(x)
        if self.hidden is not None:
            y = y + self.out(nn.functional.gelu(self.hidden(x)))
        return y

    @torch.no_grad()
    def set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Use ``(x - mean) / std`` as the input (std floored so constant dimensions stay finite)."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_scale.copy_(1.0 / torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))


def build_aligner(config: dict[str, Any]) -> Aligner:
    """An untrained ``Aligner`` shaped by an aligner config (``arch``, ``input_dim``, ``output_dim``, ``hidden_dim``)."""
    return Aligner(config["arch"], int(config["input_dim"]), int(config["output_dim"]), int(config["hidden_dim"]))


def save_aligner(folder: Path, aligner: Aligner, config: dict[str, Any]) -> None:
    """Write ``config.json`` and ``model.safetensors`` of an aligner into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in aligner.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "format": FORMAT}, indent=2) + "\n", encoding="utf-8")


def load_aligner(config: dict[str, Any], weights: Path) -> Aligner:
    """The ``Aligner`` of ``config`` with the weights of the safetensors file ``weights`` (eval mode)."""
    from safetensors.torch import load_file

    aligner = build_aligner(config)
    aligner.load_state_dict(load_file(str(weights)))
    return aligner.eval()


def torch_runner(aligner: Aligner, name: str, batch_size: int = 4096) -> Any:
    """A function (n, input_dim) numpy -> (n, output_dim) float32 numpy running ``aligner`` in batches."""
    device = next(aligner.parameters()).device
    input_dim = aligner.skip.in_features

    def run(vectors: np.ndarray) -> np.ndarray:
        array = check_vectors(vectors, input_dim, name)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(array), batch_size):
                chunk = torch.from_numpy(array[start : start + batch_size]).to(device)
                parts.append(aligner(chunk).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, aligner.skip.out_features), np.float32)

    return run
