"""The ONNX Runtime backend of BooruEmbedder: runs the graphs of ``booru-embed export-onnx``, without torch.

``OnnxModel`` answers the three calls the embedder makes of a model, on numpy arrays: the pooled
embeddings of a padded batch, the masked-tag logits at the last real token of every row, and the tag
logits read back from embeddings. Nothing here imports torch (ONNX Runtime, numpy, the config as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

ONNX_FOLDER = "onnx"
ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"
READBACK_FILE = "readback.onnx"
INPUT_NAMES = ["input_ids", "category_ids", "attention_mask"]
OUTPUT_NAMES = ["pooler_output", "mask_logits"]


def _fetch(name: str, relative: str, local: bool, required: bool, **kwargs: Any) -> Path | None:
    """Path of ``relative`` in a local MODEL_DIR or a Hub repository (downloaded); None when absent and optional."""
    if local:
        path = Path(name) / relative
        if path.is_file():
            return path
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(name, relative, **kwargs))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            pass
    if required:
        raise UsageError(f"no ONNX model {relative} in {name}: run `booru-embed export-onnx MODEL_DIR` first "
                         f"(add --quantize int8 for {QUANTIZED_FILE})")
    return None


class OnnxModel:
    """The encoder (``onnx/model.onnx`` or another file of ``onnx/``) and read-back heads on ONNX Runtime.

    Attributes mirror what the embedder reads from a torch model: ``embedding_dim``, ``nested_dims`` and
    ``device`` (always ``"cpu"`` for the CPU provider; ``providers`` may name others).
    """

    def __init__(self, encoder: Path, readback: Path | None, config: dict[str, Any],
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        """Open ONNX Runtime sessions on ``encoder`` and (when given) ``readback``; ``config`` is config.json."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        self.path = encoder
        self.session = onnxruntime.InferenceSession(str(encoder), options, providers=providers)
        self.readback_session = (None if readback is None
                                 else onnxruntime.InferenceSession(str(readback), options, providers=providers))
        self.embedding_dim = int(config["embedding_dim"])
        self.nested_dims = [int(d) for d in config.get("nested_dims", [])]
        self.device = "cpu"

    @classmethod
    def from_pretrained(cls, name: str, local: bool, onnx_file: str = ONNX_FILE,
                        providers: Sequence[str] | None = None, threads: int | None = None,
                        **kwargs: Any) -> OnnxModel:
        """Open ``onnx/<onnx_file>`` of a MODEL_DIR (``local``) or Hub repo; ``kwargs`` go to the Hub download.

        ``readback.onnx`` is optional (``decode`` needs it). Raises ``UsageError`` telling to run
        ``export-onnx`` when the file is missing, or to install the ``onnx`` extra.
        """
        try:
            import onnxruntime  # noqa: F401  (imported by __init__; checked here for a one-line error)
        except ImportError:
            raise UsageError("backend='onnx' needs onnxruntime: pip install 'booru-embed[onnx]'") from None
        encoder = _fetch(name, f"{ONNX_FOLDER}/{onnx_file}", local, required=True, **kwargs)
        readback = _fetch(name, f"{ONNX_FOLDER}/{READBACK_FILE}", local, required=False, **kwargs)
        config_path = _fetch(name, "config.json", local, required=True, **kwargs)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return cls(encoder, readback, config, providers=providers, threads=threads)

    def _encode(self, batch: dict[str, np.ndarray], output: str) -> np.ndarray:
        feed = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in INPUT_NAMES}
        return self.session.run([output], feed)[0]

    def pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, embedding_dim) float32 pooled embeddings, not normalised, of a right-padded batch."""
        return self._encode(batch, OUTPUT_NAMES[0])

    def mask_logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, vocab) float32 masked-tag logits at the last real token of every row."""
        return self._encode(batch, OUTPUT_NAMES[1])

    def readback(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, vocab) float32 tag logits read back from (n, d) embeddings, d one of the trained sizes."""
        if self.readback_session is None:
            raise ValueError(f"decode needs {READBACK_FILE} next to {self.path.name}: run `booru-embed export-onnx`")
        width = embeddings.shape[1]
        feed = {f"embeddings_{d}": embeddings if d == width else np.zeros((0, d), np.float32)
                for d in [*self.nested_dims, self.embedding_dim]}
        return self.readback_session.run([f"readback_logits_{width}"], feed)[0]
