"""Where aligners live and how they run without torch.

``MODEL_DIR/aligners/NAME/`` holds ``config.json`` (architecture, input and output sizes, training
settings), ``model.safetensors`` (the weights, with the input standardisation as two tensors) and
``metrics.json`` (the test-split report of ``booru-embed align``); ``checkpoints/`` there is the
resumable training state and stays local. ``booru-embed export-onnx`` adds ``onnx/aligners/NAME.onnx``:
input ``external`` (rows, input_dim) float32; output ``logits`` (rows, tags) for a ``tags`` aligner,
else ``embedding`` (rows, embedding_dim), not normalised.

Nothing here imports torch: the ONNX backend of the embedder runs aligners through this module alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

ALIGNERS_FOLDER = "aligners"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
CHECKPOINT_FOLDER = "checkpoints"
ONNX_SUBFOLDER = "onnx/aligners"
TAG_ARCH = "tags"
ONNX_INPUT = "external"
FORMAT = "booru-embed-aligner"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Runner = Callable[[np.ndarray], np.ndarray]


def check_name(name: str) -> str:
    """``name`` when it can name an aligner folder (letters, digits, ``_.-``, up to 64), else a UsageError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UsageError(f"aligner name must be letters, digits, '_', '.' or '-' (up to 64), got {name!r}")
    return name


def aligner_folder(model_dir: str | Path, name: str) -> Path:
    """``MODEL_DIR/aligners/NAME``."""
    return Path(model_dir) / ALIGNERS_FOLDER / check_name(name)


def onnx_path(onnx_folder: str | Path, name: str) -> Path:
    """The ONNX file of aligner ``name`` inside an export folder (``MODEL_DIR/onnx``)."""
    return Path(onnx_folder) / ALIGNERS_FOLDER / f"{check_name(name)}.onnx"


def local_aligners(model_dir: str | Path) -> list[str]:
    """Names of the finished aligners of a local MODEL_DIR (those with config and weights), sorted."""
    folder = Path(model_dir) / ALIGNERS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file())


def fetch(source: str, local: bool, relative: str, **kwargs: Any) -> Path | None:
    """``relative`` in a local MODEL_DIR or a Hub repository (downloaded); None when it is not there."""
    if local:
        path = Path(source) / relative
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(source, relative, **kwargs))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError):
        return None


def read_config(source: str, local: bool, name: str, **kwargs: Any) -> dict[str, Any]:
    """The ``config.json`` of aligner ``name``; a one-line UsageError naming the aligners there when missing."""
    path = fetch(source, local, f"{ALIGNERS_FOLDER}/{check_name(name)}/{CONFIG_FILE}", **kwargs)
    if path is None:
        known = local_aligners(source) if local else []
        listing = f" (aligners there: {', '.join(known)})" if known else " (it has no aligner: train one with booru-embed align)"
        raise UsageError(f"no aligner {name!r} in {source}{listing}")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise UsageError(f"{path} does not describe a booru-embed aligner")
    return config


def check_vectors(vectors: Any, input_dim: int, name: str) -> np.ndarray:
    """(n, input_dim) float32 C-contiguous copy of ``vectors``; ValueError for a wrong width or NaN/inf rows."""
    array = np.array(vectors, dtype=np.float32, ndmin=2)
    if array.ndim != 2 or array.shape[1] != input_dim:
        raise ValueError(f"aligner {name!r} maps vectors of width {input_dim}, got shape {tuple(np.shape(vectors))}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise ValueError(f"{len(bad)} row(s) hold NaN or infinite values (first: row {bad[0]})")
    return np.ascontiguousarray(array)


def onnx_output(arch: str) -> str:
    """The name of an aligner graph's output: ``logits`` of a ``tags`` aligner, else ``embedding``."""
    return "logits" if arch == TAG_ARCH else "embedding"


def onnx_runner(source: str, local: bool, name: str, arch: str, **kwargs: Any) -> Runner:
    """A function (n, input_dim) -> (n, outputs) running ``onnx/aligners/NAME.onnx`` on ONNX Runtime."""
    import onnxruntime

    relative = f"{ONNX_SUBFOLDER}/{check_name(name)}.onnx"
    path = fetch(source, local, relative, **kwargs)
    if path is None:
        raise UsageError(f"no ONNX aligner {relative} in {source}: run `booru-embed export-onnx MODEL_DIR` "
                         "after `booru-embed align`")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = onnx_output(arch)
    return lambda array: session.run([output], {ONNX_INPUT: array})[0]


def unit_rows(vectors: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns of ``vectors``, each row L2-normalised (float32)."""
    prefix = np.asarray(vectors[:, :width], dtype=np.float32)
    return prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)
