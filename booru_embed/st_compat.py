"""Files that make a MODEL_DIR load as ``SentenceTransformer(MODEL_DIR, trust_remote_code=True)``.

sentence-transformers (6.x) builds the model from ``modules.json``: a ``Transformer`` module whose
``sentence_bert_config.json`` says to call the model's ``forward`` and take its ``pooler_output`` (the
tag-set embedding, already pooled by the model) as the sentence embedding, then ``Normalize``. The
tokenizer is the model's own, so tag strings go in exactly as with ``BooruEmbedder``.
"""

from __future__ import annotations

import json
from pathlib import Path

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"},
]
TRANSFORMER_CONFIG = {
    "transformer_task": "feature-extraction",
    "modality_config": {"text": {"method": "forward", "method_output_name": "pooler_output"}},
    "module_output_name": "sentence_embedding",
}
MODEL_CONFIG = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                "similarity_fn_name": "cosine"}


def sentence_transformers_files() -> dict[str, bytes]:
    """The sentence-transformers files as ``{relative path: content}`` (they do not depend on the model)."""
    def dump(value: object) -> bytes:
        return (json.dumps(value, indent=2) + "\n").encode()

    return {
        "modules.json": dump(MODULES),
        "sentence_bert_config.json": dump(TRANSFORMER_CONFIG),
        "config_sentence_transformers.json": dump(MODEL_CONFIG),
        "1_Normalize/config.json": dump({}),
    }


def write_sentence_transformers_files(model_dir: str | Path) -> list[Path]:
    """Write the sentence-transformers files into ``model_dir`` (overwriting them); returns their paths."""
    written = []
    for relative, content in sentence_transformers_files().items():
        path = Path(model_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written
