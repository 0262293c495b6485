"""Shipped model configs and the model-card template: found by name or path, wrong ones are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from booru_embed.cli import main
from booru_embed.errors import UsageError
from booru_embed.resources import model_card_template, model_config_names, model_config_path
from booru_embed.training.config import TrainingConfig, read_model_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_is_a_name():
    shipped = sorted(path.stem for path in (REPO / "hub_configs").glob("*.json"))
    assert {"tiny", "small", "base"} <= set(shipped)
    assert model_config_names() == shipped
    for name in shipped:
        assert read_model_config(name) == read_model_config(REPO / "hub_configs" / f"{name}.json")


def test_a_name_wins_over_a_file_of_that_name_and_a_path_still_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny").write_text("not json")
    assert json.loads(model_config_path("tiny").read_text(encoding="utf-8"))["hidden_size"] == 128
    (tmp_path / "mine.json").write_text(json.dumps({"hidden_size": 48, "training": {"learning_rate": 0.01}}))
    assert read_model_config("mine.json") == ({"hidden_size": 48}, {"learning_rate": 0.01})
    config = TrainingConfig.from_sources(str(tmp_path / "mine.json"))
    assert config.learning_rate == 0.01 and config.config == str(tmp_path / "mine.json")


def test_wrong_names_and_paths_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"unknown model config 'tinny': choose one of base, small, tiny") as error:
        read_model_config("tinny")
    assert "\n" not in str(error.value)
    with pytest.raises(UsageError, match="model config not found: .*missing.json"):
        read_model_config(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="model config not found: tiny.jsn"):
        model_config_path("tiny.jsn")


def test_train_commands_reject_a_wrong_name_in_one_line(tmp_path, capsys):
    args = ["--config", "tinny", "--dataset", str(tmp_path), "--tokenizer", str(tmp_path), "--output", str(tmp_path / "m")]
    assert main(["train", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "booru-embed train: error: unknown model config 'tinny': choose one of base, small, tiny "
        "or give the path of a config JSON"]
    result = subprocess.run([sys.executable, str(REPO / "train_hf.py"), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train_hf.py: error: unknown model config 'tinny': choose one of base, small, tiny "
        "or give the path of a config JSON"]


def test_model_card_template_has_the_placeholders_publish_fills():
    text = model_card_template()
    assert text == (REPO / "model_card.md").read_text(encoding="utf-8")  # the top-level file, through the link
    for key in ("metadata", "model_name", "repo_id", "metrics_table", "training_summary"):
        assert "{{" + key + "}}" in text
