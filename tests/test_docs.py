"""The documentation site indexes what the repository holds (the strict mkdocs build checks its links)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_bench_script_has_a_row_in_the_benchmarks_table():
    first_cells = re.findall(r"^\|([^|]+)\|", (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"), re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([\w.]+\.(?:py|sh))`", cell)}
    scripts = {path.name for path in (REPO / "bench").iterdir() if path.suffix in (".py", ".sh")}
    assert scripts - listed == set(), f"bench scripts missing from docs/benchmarks.md: {sorted(scripts - listed)}"


def test_every_docs_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(path.relative_to(REPO / "docs").as_posix() for path in (REPO / "docs").rglob("*.md"))
    assert [page for page in pages if page not in nav] == []
