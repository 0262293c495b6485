"""A saved model folder under the oldest transformers that pyproject.toml admits, as a Hub user loads it.

`save FOLDER` (the project's environment) writes a tiny model folder and the outputs the package's own
classes give for a few posts. `check FOLDER` (a separate environment with only torch and that
transformers, no booru-embed) loads the folder through the Auto classes with `trust_remote_code` and
compares, for eager, sdpa and `flash_attention_2` (served by `booru_varlen` without flash_attn).
`check-older FOLDER` (a transformers below the floor) expects the load to fail with one line naming the
version needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

POSTS = [
    {"general": ["1girl", "solo", "long_hair", "smile"], "character": ["usada_pekora"], "rating": "g"},
    "1girl cat_ears animal_ears :d",
    {"general": ["skirt", "open_mouth"], "copyright": ["vocaloid"], "rating": "q"},
]
ATTENTION = ("eager", "sdpa", "flash_attention_2")


def _embed(tokenizer, model) -> np.ndarray:
    batch = tokenizer(POSTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch, normalize_embeddings=True).pooler_output.numpy()


def save(folder: Path) -> None:
    """Write the model folder and the package's reference embeddings of POSTS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_model import build_tiny_model

    from booru_embed.modeling.modeling_booru_embed import BooruEmbedModel
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer

    model_dir = build_tiny_model(folder)
    reference = _embed(BooruEmbedTokenizer.from_pretrained(model_dir), BooruEmbedModel.from_pretrained(model_dir))
    np.save(folder / "reference.npy", reference)
    print(f"saved {model_dir} and {len(POSTS)} reference embeddings")


def check(folder: Path) -> None:
    """Load through the Auto classes on every backend and compare with the reference."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    model_dir = folder / "model"
    reference = np.load(folder / "reference.npy")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    for attention in ATTENTION:
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, attn_implementation=attention)
        np.testing.assert_allclose(_embed(tokenizer, model), reference, atol=1e-5, err_msg=attention)
        print(f"transformers {transformers.__version__}: {attention} -> {model.config._attn_implementation}, "
              "same embeddings as the package")


def check_older(folder: Path) -> None:
    """Below the floor, loading fails with one line that names the transformers version needed."""
    import transformers
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(folder / "model", trust_remote_code=True)
    except ImportError as error:
        message = str(error)
        if "\n" in message or "transformers>=" not in message:
            raise SystemExit(f"unclear error under transformers {transformers.__version__}: {message!r}") from error
        print(f"transformers {transformers.__version__}: {message}")
        return
    raise SystemExit(f"transformers {transformers.__version__} loaded the folder: the floor is stated too high")


if __name__ == "__main__":
    action, target = sys.argv[1], Path(sys.argv[2])
    {"save": save, "check": check, "check-older": check_older}[action](target)
