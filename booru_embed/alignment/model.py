"""The aligner as a torch module, and its safetensors file.

An aligner standardises its input with the training pairs' per-dimension mean and standard deviation
(stored with the weights). The ``tags`` aligner (the default) is a ``TagHead``: one linear layer from
the external vector to the logits of the model's tags, whose predicted tag set the model itself then
embeds (``tag_path``). The ``linear`` and ``mlp`` aligners map the vector straight to booru-embed's
pooled embedding: one linear layer, or linear -> GELU -> linear plus a linear skip path. Either way
``embed_external`` ends with the raw (not normalised) embedding and truncates and normalises it like
``embed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .store import CONFIG_FILE, FORMAT, TAG_ARCH, WEIGHTS_FILE, check_vectors

MAP_ARCHS = ("mlp", "linear")
ARCHS = (TAG_ARCH, *MAP_ARCHS)


class Aligner(nn.Module):
    """external (…, input_dim) -> booru-embed embedding (…, output_dim), not normalised."""

    def __init__(self, arch: str, input_dim: int, output_dim: int, hidden_dim: int) -> None:
        """A ``linear`` or ``mlp`` map; ``hidden_dim`` is the MLP's width (unused by ``linear``)."""
        super().__init__()
        if arch not in MAP_ARCHS:
            raise ValueError(f"arch must be one of {', '.join(MAP_ARCHS)}, got {arch!r}")
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


class TagHead(nn.Module):
    """Standardised external vector -> logits of tags (one linear layer): what a tagger's head does.

    It is the ``tags`` aligner (its rows are the tags it predicts, ``token_ids`` in the aligner's config)
    and, beside the ``linear`` and ``mlp`` aligners, the reference probe (one row per vocabulary token).
    Rows and biases are sparse-gradient embeddings trained with ``SparseAdam``: a step costs the batch's
    sampled columns, not the vocabulary (``bench/bench_align.py``, 20,000 pairs of 1024-d vectors,
    vocabulary 32,000, one shared core: 1.9 s a step with a dense weight and AdamW, 0.83 s this way).
    """

    def __init__(self, input_dim: int, rows: int, bias: torch.Tensor | None = None) -> None:
        """``rows`` output logits; ``bias`` (rows,) starts them at the tags' base rates (zeros when None)."""
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.weight = nn.Embedding(rows, input_dim, sparse=True)
        self.bias = nn.Embedding(rows, 1, sparse=True)
        with torch.no_grad():
            self.weight.weight.zero_()
            self.bias.weight.copy_(bias[:, None] if bias is not None else torch.zeros(rows, 1))

    def forward(self, external: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """(n, input_dim) -> (n, rows) logits, or (n, len(columns)) for the given rows."""
        x = (external - self.input_mean) * self.input_scale
        if columns is None:
            return F.linear(x, self.weight.weight, self.bias.weight[:, 0])
        return F.linear(x, self.weight(columns), self.bias(columns)[:, 0])

    def make_optimizer(self, learning_rate: float) -> torch.optim.Optimizer:
        """``SparseAdam`` (no weight decay: it would touch every row)."""
        return torch.optim.SparseAdam(list(self.parameters()), lr=learning_rate)

    @torch.no_grad()
    def rows(self, keep: np.ndarray) -> TagHead:
        """A head of the rows ``keep`` only (indices), with the same standardisation."""
        index = torch.as_tensor(keep, dtype=torch.long, device=self.weight.weight.device)
        head = TagHead(self.input_mean.numel(), len(keep)).to(self.weight.weight.device)
        head.load_state_dict({"input_mean": self.input_mean, "input_scale": self.input_scale,
                              "weight.weight": self.weight.weight[index], "bias.weight": self.bias.weight[index]})
        return head.eval()


@torch.no_grad()
def set_standardisation(module: Aligner | TagHead, mean: np.ndarray, std: np.ndarray) -> None:
    """Make ``module`` read ``(x - mean) / std`` (std floored so constant dimensions stay finite)."""
    module.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    module.input_scale.copy_(1.0 / torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))


def build_aligner(config: dict[str, Any]) -> Aligner | TagHead:
    """An untrained aligner shaped by an aligner config (``arch``, ``input_dim``, ``output_dim``, ``hidden_dim``,
    and for ``tags`` its ``token_ids``)."""
    if config["arch"] == TAG_ARCH:
        return TagHead(int(config["input_dim"]), len(config["token_ids"]))
    return Aligner(config["arch"], int(config["input_dim"]), int(config["output_dim"]), int(config["hidden_dim"]))


def save_aligner(folder: Path, aligner: Aligner | TagHead, config: dict[str, Any]) -> None:
    """Write ``config.json`` and ``model.safetensors`` of an aligner into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous().cpu() for key, value in aligner.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "format": FORMAT}, indent=2) + "\n", encoding="utf-8")


def load_aligner(config: dict[str, Any], weights: Path) -> Aligner | TagHead:
    """The aligner of ``config`` with the weights of the safetensors file ``weights`` (eval mode)."""
    from safetensors.torch import load_file

    aligner = build_aligner(config)
    aligner.load_state_dict(load_file(str(weights)))
    return aligner.eval()


def torch_runner(aligner: Aligner | TagHead, name: str, batch_size: int = 4096) -> Any:
    """A function (n, input_dim) numpy -> (n, outputs) float32 numpy running ``aligner`` in batches (outputs:
    the embedding of a map, the logits of a ``TagHead``)."""
    device = next(aligner.parameters()).device
    input_dim = aligner.input_mean.numel()

    def run(vectors: np.ndarray) -> np.ndarray:
        array = check_vectors(vectors, input_dim, name)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(array), batch_size):
                chunk = torch.from_numpy(array[start : start + batch_size]).to(device)
                parts.append(aligner(chunk).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return run
