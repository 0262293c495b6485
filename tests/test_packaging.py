"""The wheel holds every package, the shipped model configs and the model-card template.

Builds the wheel from a copy of the source (so no ``build/`` or ``*.egg-info`` lands in the
checkout), then imports the package from the unpacked wheel alone, the way an installed copy is
imported. ``.ci/wheel_smoke.sh`` goes further: a fresh virtual environment, the demo and training.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".whl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the dev extra has it): cannot build the wheel offline")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(root / "dist"), str(source)], check=True, capture_output=True, text=True)
    (built,) = (root / "dist").glob("booru_embed-*.whl")
    return built


def test_wheel_holds_every_package_and_the_hub_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(path.parent.relative_to(REPO).as_posix()
                      for path in (REPO / "booru_embed").rglob("__init__.py"))
    missing = [package for package in packages if f"{package}/__init__.py" not in names]
    assert not missing, f"packages missing from the wheel (add them to pyproject's packages): {missing}"
    modules = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "booru_embed").rglob("*.py"))
    assert set(modules) <= names
    shipped = sorted(path.name for path in (REPO / "hub_configs").iterdir() if path.suffix in (".json", ".md"))
    assert {"tiny.json", "small.json", "base.json", "model_card.md"} <= set(shipped)
    for name in shipped:
        assert zipfile.ZipFile(wheel).read(f"booru_embed/hub_configs/{name}") == (REPO / "hub_configs" / name).read_bytes()
    # The template is the top-level model_card.md; the wheel holds its text, not a link.
    assert zipfile.ZipFile(wheel).read("booru_embed/hub_configs/model_card.md") == (REPO / "model_card.md").read_bytes()
    assert not [name for name in names if not name.startswith(("booru_embed/", "booru_embed-"))]


def run_installed(wheel: Path, script: str, cwd: Path) -> tuple[Path, list[str]]:
    """Unpack ``wheel`` into ``cwd/site`` and run ``script`` in ``cwd`` with it as the only booru_embed,
    offline; assert it succeeds. Returns the site folder and the printed lines."""
    site = cwd / "site"
    zipfile.ZipFile(wheel).extractall(site)
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return site, result.stdout.splitlines()


def test_installed_copy_reads_its_own_configs_and_card(wheel, tmp_path):
    script = ("from booru_embed.resources import hub_configs, model_card_template, model_config_names, model_config_path;"
              "from booru_embed.training.config import read_model_config;"
              "print(hub_configs()); print(model_config_path('tiny')); print(' '.join(model_config_names()));"
              "print(read_model_config('small')[0]['hidden_size']); print(model_card_template().splitlines()[0])")
    site, lines = run_installed(wheel, script, tmp_path)
    folder, tiny, names, hidden, first_line = lines
    assert Path(folder) == site / "booru_embed" / "hub_configs"
    assert Path(tiny) == site / "booru_embed" / "hub_configs" / "tiny.json"
    assert names == "base small tiny" and hidden == "512" and first_line == "---"


def test_wheel_ships_the_pair_table_derivative(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = REPO / "booru_embed" / "data" / "danbooru_pairs"
    shipped = sorted(path.name for path in folder.iterdir())
    assert {"README.md", "tags.parquet", "pairs.parquet", "implications.parquet"} <= set(shipped)
    for name in shipped:
        assert zipfile.ZipFile(wheel).read(f"booru_embed/data/danbooru_pairs/{name}") == (folder / name).read_bytes()
    assert sum(zipfile.ZipFile(wheel).getinfo(f"booru_embed/data/danbooru_pairs/{n}").file_size for n in shipped) <= 3_000_000
    assert "SuzumiyaAkizuki/DanbooruSearchOnline" in (folder / "README.md").read_text()


def test_installed_demo_draws_from_the_shipped_pairs(wheel, tmp_path):
    script = ("import json, sys; from booru_embed.cli import main;"
              "code = main(['demo', '--workdir', 'demo', '--posts', '200', '--stop-after', 'generate']);"
              "truth = json.load(open('demo/corpus/posts.truth.json'));"
              "print(code, truth['setting'], truth['source'], truth['characters']['usada_pekora']['traits'][0])")
    site, lines = run_installed(wheel, script, tmp_path)
    code, setting, source, trait = lines[-1].split(" ")
    assert (code, setting, trait) == ("0", "danbooru-pairs", "rabbit_ears")
    assert Path(source) == site / "booru_embed" / "data" / "danbooru_pairs"
