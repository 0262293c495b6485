"""The transformers floor: one number in pyproject.toml and the remote code, and a one-line error below it.

The load of a saved folder under the floor itself runs in a separate environment: .ci/transformers_floor.sh.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from booru_embed.modeling import versions_booru_embed

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_states_the_floor_the_remote_code_checks() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = [re.fullmatch(r"transformers>=([0-9.]+)", dep) for dep in dependencies if dep.startswith("transformers")]
    assert floors and floors[0] is not None
    assert floors[0].group(1) == versions_booru_embed.MIN_TRANSFORMERS


@pytest.mark.parametrize("version", ["5.2.0", "4.57.6", "5.2.0.dev0"])
def test_an_older_transformers_gets_one_line_naming_the_release(version: str, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(versions_booru_embed.transformers, "__version__", version)  # the module it reads
    with pytest.raises(ImportError) as raised:
        versions_booru_embed.require_transformers()
    message = str(raised.value)
    assert "\n" not in message and f"transformers>={versions_booru_embed.MIN_TRANSFORMERS}" in message
    assert f"found {version}" in message


@pytest.mark.parametrize("version", ["5.3.0", "5.25.0", "5.26.0.dev0", "6.0.0rc1"])
def test_the_floor_and_newer_releases_pass(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions_booru_embed.transformers, "__version__", version)  # the module it reads
    versions_booru_embed.require_transformers()


@pytest.mark.parametrize("name", ["configuration_booru_embed", "modeling_booru_embed", "tokenization_booru_embed"])
def test_every_remote_file_that_imports_transformers_checks_the_release_first(name: str) -> None:
    source = (ROOT / "booru_embed" / "modeling" / f"{name}.py").read_text()
    check = source.index("require_transformers()")
    first_import = re.search(r"^(from transformers|import transformers|import torch)", source, re.MULTILINE)
    assert first_import is not None and check < first_import.start()
