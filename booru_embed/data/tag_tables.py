"""Danbooru alias and implication tables: read the TSV files, normalise and alias-resolve both sides.

``build-tokenizer`` stores the tables with the tokenizer (``aliases.json``, ``implications.json``);
evaluation reads the implication TSV for its trait groups through the same reader.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UsageError
from ..modeling.normalization_booru_embed import normalize_tag, resolve_alias


def read_pair_table(path: str | Path, what: str) -> list[tuple[str, str]]:
    """Rows ``(antecedent, consequent)`` of a Danbooru alias or implication TSV (header ``antecedent<TAB>consequent...``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path}")
    pairs = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["antecedent", "consequent"]:
            raise UsageError(f"{path}: expected a tab-separated header 'antecedent<TAB>consequent', got {header!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise UsageError(f"{path}:{line}: expected antecedent<TAB>consequent, got {row!r}")
            pairs.append((row[0], row[1]))
    return pairs


def load_aliases(path: str | Path) -> dict[str, str]:
    """Alias table: normalised antecedent -> normalised canonical tag."""
    aliases = {}
    for antecedent, consequent in read_pair_table(path, "alias"):
        antecedent, consequent = normalize_tag(antecedent), normalize_tag(consequent)
        if antecedent != consequent:
            aliases[antecedent] = consequent
    return aliases


def load_implications(path: str | Path, aliases: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Implication table: antecedent -> sorted consequents, both sides normalised and alias-resolved."""
    aliases = aliases or {}
    table: dict[str, set[str]] = {}
    for antecedent, consequent in read_pair_table(path, "implication"):
        antecedent = resolve_alias(normalize_tag(antecedent), aliases)
        consequent = resolve_alias(normalize_tag(consequent), aliases)
        if antecedent != consequent:
            table.setdefault(antecedent, set()).add(consequent)
    return {antecedent: sorted(consequents) for antecedent, consequents in sorted(table.items())}


__all__ = ["load_aliases", "load_implications", "read_pair_table"]
