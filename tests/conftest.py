"""Test settings: offline, and a private Hugging Face cache so nothing leaks into the user's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HF_HOME = tempfile.mkdtemp(prefix="booru-embed-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "danbooru-2025-05"


@pytest.fixture(scope="session")
def shared_tag_data() -> Path:
    """The real Danbooru tag tables in ../shared; tests that need them skip when absent."""
    if not (SHARED_DATA / "tags.csv").is_file():
        pytest.skip(f"real Danbooru tag data not found at {SHARED_DATA}")
    return SHARED_DATA
