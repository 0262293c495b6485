"""The package's layout rules: imports point one way (docs/development.md, "Where the code lives")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "booru_embed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every booru_embed module ``path`` imports (anywhere in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {target for target in found if target.split(".")[0] == "booru_embed"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}


# Above training: the aligner's fitting trains a map with the read-back loss and its sampled negatives.
TRAINING_USERS = ("booru_embed.training", "booru_embed.alignment.fit")


def test_only_training_imports_training_and_evaluation_does_not() -> None:
    for module, targets in _graph().items():
        if not module.startswith(TRAINING_USERS):
            assert not [t for t in targets if t.startswith("booru_embed.training")], module
    assert not [t for t in _graph()["booru_embed.alignment.fit"]
                if t.startswith("booru_embed.training") and t != "booru_embed.training.objectives"]


def test_remote_code_imports_only_its_siblings() -> None:
    for module, targets in _graph().items():
        if module.startswith("booru_embed.modeling."):
            assert all(t.startswith("booru_embed.modeling.") for t in targets), (module, targets)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            if target.startswith(module + "."):
                continue  # a package importing its own submodules is not a cycle
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
