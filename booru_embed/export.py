"""`booru-embed export-onnx`: the encoder and its heads as ONNX graphs, for CPU serving without torch.

The graphs go to ``MODEL_DIR/onnx/``, the folder sentence-transformers and optimum read with
``backend="onnx"``; ``BooruEmbedder.from_pretrained(MODEL_DIR, backend="onnx")`` runs them with ONNX Runtime.

- ``model.onnx``: inputs ``input_ids``, ``category_ids``, ``attention_mask``, int64 (batch, tokens), posts
  right-padded, both sizes dynamic. Outputs ``pooler_output`` (batch, embedding_dim), the embedding NOT
  normalised (every nested size is a prefix: truncate, then normalise), and ``mask_logits`` (batch, vocab),
  the masked-tag head at the LAST real token of every row: where ``suggest`` puts its ``<mask>``.
- ``readback.onnx``: the read-back heads of ``decode``, one input ``embeddings_D`` (rows, D) and one output
  ``readback_logits_D`` (rows, vocab) per trained size D; rows may be 0 for the sizes not asked for.
- ``aligners/NAME.onnx``: each aligner of ``MODEL_DIR/aligners/`` (``booru-embed align``), external vectors in,
  raw embeddings out (``alignment/export.py``).
- ``model_quantized.onnx`` (``--quantize int8``): ``model.onnx`` with dynamic int8 weights (ONNX Runtime's
  ``quantize_dynamic``); activations stay float, scales are computed per batch.

Why the padded layout: the packed layouts (``cu_seqlens``) have data-dependent shapes, while the padded
eager/sdpa path is plain tensor algebra with a key-padding mask, which torch.export traces with symbolic
batch and length.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .onnx_backend import INPUT_NAMES, ONNX_FILE, ONNX_FOLDER, OUTPUT_NAMES, QUANTIZED_FILE, READBACK_FILE

DEFAULT_OPSET = 18  # the oldest opset torch's dynamo exporter writes; ONNX Runtime >= 1.14 runs it


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporter's and quantizer's warnings (deprecations, axis renames, skipped torchvision ops)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._export", "root", "")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _modules() -> tuple[type, type]:
    """The two wrappers that choose what is exported (defined here so torch loads only when exporting)."""
    import torch
    from torch import nn

    class EncoderForExport(nn.Module):
        """Padded posts -> (pooled embedding, masked-tag logits at the last real token of every row)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, category_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(batch, tokens) x 3 -> (batch, embedding_dim), (batch, vocab)."""
            outputs = self.model.encode(input_ids, category_ids, attention_mask=attention_mask)
            last = attention_mask.sum(dim=1) - 1  # (batch,) right padding: the last real token
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            return outputs.pooler_output, self.model.masked_tag_logits(outputs.last_hidden_state[rows, last])

    class ReadbackForExport(nn.Module):
        """One embedding batch per trained size -> the tag logits of its read-back head."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """(rows_i, D_i) for each D_i in nested_dims + [embedding_dim] -> (rows_i, vocab) each."""
            return tuple(self.model.readback(batch) for batch in embeddings)

    return EncoderForExport, ReadbackForExport


def _example_inputs(tokenizer: Any) -> dict[str, np.ndarray]:
    """Three right-padded posts of different lengths drawn from the vocabulary (export example and check)."""
    tags = list(tokenizer.tag_token_ids)
    picks = [tags[:1], tags[1:4], tags[4:9] or tags[:5]]
    return dict(tokenizer([[tokenizer.convert_ids_to_tokens(i) for i in ids] for ids in picks],
                          padding=True, return_tensors="np"))


def export_encoder(model: Any, example: dict[str, np.ndarray], path: Path, opset: int) -> None:
    """Write the encoder graph (``model.onnx`` layout) with dynamic batch and length."""
    import torch

    encoder, _ = _modules()
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    arguments = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    torch.onnx.export(
        encoder(model).eval(), arguments, str(path), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
        dynamic_shapes={name: {0: batch, 1: tokens} for name in INPUT_NAMES},
        opset_version=opset, dynamo=True, external_data=False, verbose=False,
    )


def export_readback(model: Any, path: Path, opset: int) -> None:
    """Write the read-back graph: one input and one output per trained embedding size."""
    import torch

    _, readback = _modules()
    dims = list(model.readback_dims)
    examples = tuple(torch.randn(2 + index, dim) for index, dim in enumerate(dims))  # distinct row counts
    torch.onnx.export(
        readback(model).eval(), examples, str(path),
        input_names=[f"embeddings_{d}" for d in dims], output_names=[f"readback_logits_{d}" for d in dims],
        dynamic_shapes={"embeddings": tuple({0: torch.export.Dim(f"rows_{d}")} for d in dims)},
        opset_version=opset, dynamo=True, external_data=False, verbose=False,
    )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the weights of ``source`` into ``target`` (ONNX Runtime)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def compare(model: Any, example: dict[str, np.ndarray], path: Path) -> dict[str, float]:
    """ONNX Runtime on ``path`` vs PyTorch on ``example``: max abs diffs and the least cosine of the embeddings."""
    import onnxruntime
    import torch

    encoder, _ = _modules()
    with torch.inference_mode():
        expected = [t.numpy() for t in encoder(model).eval()(*(torch.from_numpy(example[n]) for n in INPUT_NAMES))]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pooled, logits = session.run(OUTPUT_NAMES, {name: example[name] for name in INPUT_NAMES})
    cosine = (pooled * expected[0]).sum(1) / (np.linalg.norm(pooled, axis=1) * np.linalg.norm(expected[0], axis=1))
    return {"pooler_max_abs_diff": float(np.abs(pooled - expected[0]).max()),
            "logits_max_abs_diff": float(np.abs(logits - expected[1]).max()),
            "min_cosine": float(cosine.min())}


def _export_aligners(folder: Path, target: Path, opset: int, report: dict[str, Any]) -> None:
    """Add ``aligners/NAME.onnx`` for every aligner of MODEL_DIR (``booru-embed align``) to ``target`` and ``report``."""
    from .alignment.export import export_aligners

    for name, check in export_aligners(folder, target, opset).items():
        report["files"].append(name)
        report["checks"][name] = check


def export_onnx(model_dir: str | Path, output: str | Path | None = None, opset: int = DEFAULT_OPSET,
                quantize: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Export MODEL_DIR's encoder, masked-tag head and read-back heads to ONNX; returns what was written.

    ``output`` defaults to ``MODEL_DIR/onnx``. ``quantize="int8"`` also writes ``model_quantized.onnx``.
    Each encoder file is checked against PyTorch on a small batch: the result's ``checks`` holds, per file,
    the max abs differences and the least cosine; ``files`` names what was written. Raises ``UsageError`` for a missing folder, a bad opset or a
    missing ``onnx`` extra.
    """
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise UsageError(f"not a model folder (no config.json): {folder}")
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize takes int8, got {quantize!r}")
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here, used by compare and quantize_int8)
        import onnxscript  # noqa: F401  (torch's dynamo exporter builds the graph with it)
    except ImportError as error:
        raise UsageError(f"export-onnx needs the onnx extra (pip install 'booru-embed[onnx]'): {error}") from None
    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise UsageError(f"--opset must be from {DEFAULT_OPSET} to {newest}, got {opset}")

    from tqdm.auto import tqdm
    from transformers import AutoModelForPreTraining, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    target = Path(output) if output is not None else folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    steps = ["load", "encoder", "readback", "check"] + (["int8"] if quantize else [])
    report: dict[str, Any] = {"output": str(target), "opset": opset, "files": [], "checks": {}}
    with tqdm(total=len(steps), desc="export-onnx", unit="step", disable=not progress) as bar:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        model = AutoModelForPreTraining.from_pretrained(str(folder), trust_remote_code=True,
                                                        attn_implementation="sdpa")
        if not hasattr(model, "encode"):  # remote code saved before the public methods: the package's classes
            from .modeling.modeling_booru_embed import BooruEmbedForPreTraining  # read it the same way

            model = BooruEmbedForPreTraining.from_pretrained(str(folder), attn_implementation="sdpa")
        model = model.float().eval()
        example = _example_inputs(tokenizer)
        bar.update()
        with _quiet():
            export_encoder(model, example, target / ONNX_FILE, opset)
            bar.update()
            export_readback(model, target / READBACK_FILE, opset)
            bar.update()
        report["checks"][ONNX_FILE] = compare(model, example, target / ONNX_FILE)
        report["files"] += [ONNX_FILE, READBACK_FILE]
        bar.update()
        with _quiet():
            _export_aligners(folder, target, opset, report)
        if quantize:
            with _quiet():
                quantize_int8(target / ONNX_FILE, target / QUANTIZED_FILE)
            report["checks"][QUANTIZED_FILE] = compare(model, example, target / QUANTIZED_FILE)
            report["files"].append(QUANTIZED_FILE)
            bar.update()
    return report


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed export-onnx``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="model folder")
    parser.add_argument("--output", type=Path, help="output folder (default: MODEL_DIR/onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--quantize", choices=["int8"], help="also write model_quantized.onnx with int8 weights")


def run_export_onnx(args: argparse.Namespace) -> int:
    """Run ``booru-embed export-onnx``."""
    report = export_onnx(args.model_dir, args.output, opset=args.opset, quantize=args.quantize)
    for name in report["files"]:
        path = Path(report["output"]) / name
        check = report["checks"].get(name)
        details = "" if check is None else " vs PyTorch: " + ", ".join(f"{k} {v:.3g}" for k, v in check.items())
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB){details}")
    return 0
