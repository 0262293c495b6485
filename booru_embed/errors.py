"""Errors that the command line reports as one line instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A mistake of the caller: a wrong path, flag or input file. Shown to the user as one line."""


def read_json_file(path: str | Path) -> Any:
    """The JSON value in ``path``; a file that is not valid JSON is a one-line ``UsageError``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None
