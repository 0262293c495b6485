"""ONNX graphs of a MODEL_DIR's aligners, written by ``booru-embed export-onnx`` beside the encoder's.

Each ``aligners/NAME/`` becomes ``onnx/aligners/NAME.onnx`` (input ``external`` (rows, input_dim);
output ``embedding`` (rows, embedding_dim), raw, or for a ``tags`` aligner ``logits`` (rows, tags)) and
is checked against PyTorch on random rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .store import ALIGNERS_FOLDER, CONFIG_FILE, ONNX_INPUT, WEIGHTS_FILE, local_aligners, onnx_output, onnx_path


def export_aligner(folder: Path, path: Path, opset: int) -> dict[str, float]:
    """Export the aligner saved in ``folder`` to ``path``; return the max abs difference and least cosine vs PyTorch."""
    import onnxruntime
    import torch

    from .model import load_aligner

    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    aligner = load_aligner(config, folder / WEIGHTS_FILE)
    output = onnx_output(config["arch"])
    example = torch.randn(3, int(config["input_dim"]), generator=torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(aligner, (example,), str(path), input_names=[ONNX_INPUT], output_names=[output],
                      dynamic_shapes={"external": {0: torch.export.Dim("rows")}}, opset_version=opset,
                      dynamo=True, external_data=False, verbose=False)
    with torch.inference_mode():
        expected = aligner(example).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([output], {ONNX_INPUT: example.numpy()})[0]
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    return {"max_abs_diff": float(np.abs(got - expected).max()), "min_cosine": float(cosine.min())}


def export_aligners(model_dir: Path, target: Path, opset: int) -> dict[str, dict[str, float]]:
    """Export every finished aligner of MODEL_DIR into ``target/aligners/``; ``{relative file: check}``."""
    return {onnx_path(target, name).relative_to(target).as_posix():
            export_aligner(model_dir / ALIGNERS_FOLDER / name, onnx_path(target, name), opset)
            for name in local_aligners(model_dir)}
