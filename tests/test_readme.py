"""README.md cannot drift from the code: its commands are read from README itself and run.

README marks its runnable blocks with HTML comments: ``<!-- quickstart -->`` (from an export to a
published model), ``<!-- cli-usage -->`` (using the trained model from the command line) and
``<!-- python-usage -->`` (the same from Python). The fast tests parse every command line of the two
shell blocks with the very argparse parsers the commands use (``booru-embed``'s per-command parser,
``train_hf.py``'s), and check that every method the Python block calls exists. Then the quickstart
runs, in a temporary folder: the same commands, with flags appended (argparse keeps the last value)
that shrink them to seconds: a 600-post generated corpus, 2 training steps of ``small`` on the CPU,
20 test posts, and ``publish`` against the local fake Hub of ``tests/fake_hub.py`` (about 30 s). The
slow test runs the two usage blocks on the model it trained (another 35 s).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from booru_embed.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Appended to a README command (by its name) in the slow run, so the same pipeline takes seconds on a CPU.
SMALL = {
    "generate-corpus": ["--posts", "600"],
    "train_hf.py": ["--max-steps", "2", "--batch-size", "16", "--num-workers", "0", "--mixed-precision", "no",
                    "--attn-implementation", "sdpa", "--eval-posts", "0", "--no-progress"],
    "evaluate": ["--max-posts", "20"],
    "index": ["--kind", "exact"],
    "audit": ["--max-posts", "10"],
}


def readme_block(name: str) -> str:
    """The fenced code block between ``<!-- name -->`` and ``<!-- /name -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name} -->\n```\w*\n(.*?)```\n<!-- /{name} -->", text, re.S)
    assert match, f"README.md has no <!-- {name} --> code block"
    return match.group(1)


def shell_commands(name: str) -> list[list[str]]:
    """The commands of a README shell block as argument lists (continuation lines joined, comments dropped)."""
    lines = readme_block(name).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if shlex.split(line, comments=True)]


def train_parser() -> argparse.ArgumentParser:
    """``train_hf.py``'s parser, with the same arguments ``accelerate launch train_hf.py`` takes."""
    from booru_embed.training.loop import add_train_arguments

    parser = argparse.ArgumentParser(prog="train_hf.py")
    add_train_arguments(parser)
    return parser


def split_command(argv: list[str]) -> tuple[str, list[str]]:
    """``(name, arguments)`` of a README command: a ``booru-embed`` subcommand or ``train_hf.py``."""
    if argv[0] == "booru-embed":
        return argv[1], argv[2:]
    assert argv[:3] == ["accelerate", "launch", "train_hf.py"], f"unexpected command in README: {shlex.join(argv)}"
    return "train_hf.py", argv[3:]


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a README command with the parser its program uses; a bad flag or value fails the test."""
    name, args = split_command(argv)
    try:
        if name == "train_hf.py":
            return train_parser().parse_args(args)
        return build_parser(name).parse_args([name, *args])
    except SystemExit as error:
        pytest.fail(f"README command does not parse: {shlex.join(argv)} ({error})")


def test_readme_is_short_and_shows_the_two_commands_first():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_quickstart_goes_from_an_export_to_a_published_model():
    names = [split_command(argv)[0] for argv in shell_commands("quickstart")]
    assert names == ["generate-corpus", "build-dataset", "build-tokenizer", "train_hf.py", "evaluate", "publish"]


@pytest.mark.parametrize("block", ["quickstart", "cli-usage"])
def test_every_readme_command_parses_with_its_own_parser(block):
    commands = shell_commands(block)
    assert commands
    for argv in commands:
        parse(argv)
    if block == "quickstart":
        train = parse(commands[3])
        assert train.config == "small" and train.output == "runs/small"


def test_python_usage_calls_only_methods_that_exist():
    from booru_embed import BooruEmbedder
    from booru_embed.index import PostIndex

    tree = ast.parse(readme_block("python-usage"))
    owners = {"embedder": BooruEmbedder, "index": PostIndex, "BooruEmbedder": BooruEmbedder, "PostIndex": PostIndex}
    called = [(node.value.id, node.attr) for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in owners]
    assert {attr for _, attr in called} >= {"embed", "suggest", "decode", "normalize", "search"}
    missing = [f"{owner}.{attr}" for owner, attr in called if not hasattr(owners[owner], attr)]
    assert not missing, f"README's Python block calls what does not exist: {missing}"


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    assert links
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing


def run_readme_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one README command in this process, with the SMALL flags appended; it must exit 0."""
    name, args = split_command(argv)
    args = [*args, *SMALL.get(name, [])]
    if name == "train_hf.py":
        spec = importlib.util.spec_from_file_location("train_hf", REPO / "train_hf.py")
        train_hf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train_hf)
        monkeypatch.setattr(sys, "argv", ["train_hf.py", *args])
        code = train_hf.main()
    else:
        code = main([name, *args])
    assert code == 0, f"README command failed: {shlex.join(argv)}"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """README's quickstart run once in a temporary folder: ``(folder, files published to the fake Hub)``."""
    import huggingface_hub.constants
    from fake_hub import FakeHub

    folder = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as monkeypatch, FakeHub() as hub:
        monkeypatch.chdir(folder)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        for argv in shell_commands("quickstart"):
            run_readme_command(argv, monkeypatch)
        return folder, hub.repos["OWNER/NAME"].files


def test_readme_quickstart_runs_on_a_small_generated_corpus(quickstart):
    folder, published = quickstart
    assert (folder / "runs/data/build_info.json").is_file() and (folder / "runs/tokenizer/vocab.json").is_file()
    metrics = json.loads((folder / "runs/small/metrics.json").read_text())
    assert metrics["model.masked.micro_f1"] >= 0 and metrics["baseline.masked.micro_f1"] >= 0
    assert json.loads((folder / "runs/small/config.json").read_text())["hidden_size"] == 512   # `small`, as README says
    assert {"model.safetensors", "config.json", "README.md", "modules.json"} <= set(published)
    assert "{{" not in published["README.md"].decode()


@pytest.mark.slow
def test_readme_usage_runs_on_the_quickstart_model(quickstart, monkeypatch, capsys):
    folder, _ = quickstart
    monkeypatch.chdir(folder)
    has_faiss = importlib.util.find_spec("faiss") is not None
    for argv in shell_commands("cli-usage"):
        if split_command(argv)[0] in ("index", "search") and not has_faiss:
            continue
        run_readme_command(argv, monkeypatch)
    assert (folder / "runs/test.npy").is_file() and (folder / "runs/audit/audit.jsonl").is_file()
    if not has_faiss:
        pytest.skip("faiss is not installed (the index extra): index, search and the Python block not run")
    capsys.readouterr()
    exec(compile(readme_block("python-usage"), "README.md <!-- python-usage -->", "exec"), {})
    assert "Hit(" in capsys.readouterr().out
