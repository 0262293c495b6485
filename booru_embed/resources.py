"""Where the shipped model configs and the model-card template are: the one place that knows.

The configs live in the repository's top-level ``hub_configs/`` folder (``tiny.json``, ``small.json``,
``base.json``); the template is the top-level ``model_card.md``, where a reader of the repository looks
for it, and ``hub_configs/model_card.md`` is a symbolic link to it (a wheel build copies the file it
points to, so the wheel holds the text). A wheel or an editable install ships that folder as the package
``booru_embed.hub_configs`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml), read here
through ``importlib.resources``. A source checkout imported without installing (``PYTHONPATH``, or
``python train_hf.py`` from the repository root) has no such package; then the folder next to
``booru_embed/`` is the one read.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

CONFIG_PACKAGE = "booru_embed.hub_configs"
MODEL_CARD_TEMPLATE = "model_card.md"


def hub_configs() -> Traversable:
    """The folder holding the shipped model configs and the model-card template."""
    try:
        return resources.files(CONFIG_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "hub_configs"


def model_config_names() -> list[str]:
    """Names of the shipped model configs (``tiny`` for ``tiny.json``), sorted."""
    return sorted(entry.name[: -len(".json")] for entry in hub_configs().iterdir() if entry.name.endswith(".json"))


def model_config_path(config: str | os.PathLike[str]) -> Traversable:
    """The config JSON that ``--config`` names: a shipped name (``tiny``) or a path to a JSON file.

    A shipped name wins over a file of the same name in the working directory. Raises ``UsageError``
    (one line) for an unknown name, listing the shipped ones, and for a path that is not a file.
    """
    value = os.fspath(config)
    names = model_config_names()
    if value in names:
        return hub_configs() / f"{value}.json"
    path = Path(value)
    if path.is_file():
        return path
    if path.suffix or len(path.parts) != 1:
        raise UsageError(f"model config not found: {path}")
    raise UsageError(f"unknown model config {value!r}: choose one of {', '.join(names)} or give the path of a config JSON")


def model_card_template() -> str:
    """The text of the model-card template that ``publish`` fills (``{{name}}`` placeholders)."""
    return (hub_configs() / MODEL_CARD_TEMPLATE).read_text(encoding="utf-8")
