"""publish: folder checks, the model card, and pushes to a local fake Hub (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from booru_embed.cli import main
from booru_embed.errors import UsageError
from booru_embed.modeling.versions_booru_embed import MIN_TRANSFORMERS
from booru_embed.publish import (
    check_model_dir, headline_table, metrics_table, publish, readback_table, render_model_card,
)

from fake_hub import FakeHub

AUTO_MAP = {
    "AutoConfig": "configuration_booru_embed.BooruEmbedConfig",
    "AutoModel": "modeling_booru_embed.BooruEmbedModel",
    "AutoModelForPreTraining": "modeling_booru_embed.BooruEmbedForPreTraining",
    "AutoTokenizer": ["tokenization_booru_embed.BooruEmbedTokenizer", None],
}


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its content."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with the files a model folder has (contents are placeholders, nothing loads them)."""
    folder = tmp_path / "model"
    folder.mkdir()
    model_auto_map = {key: value for key, value in AUTO_MAP.items() if key != "AutoTokenizer"}  # as saved
    config = {"model_type": "booru_embed", "auto_map": model_auto_map, "vocab_size": 120, "hidden_size": 32,
              "embedding_dim": 64, "nested_dims": [16, 32]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    for name in ("configuration_booru_embed.py", "modeling_booru_embed.py", "tokenization_booru_embed.py"):
        (folder / name).write_text(f"# {name}\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": AUTO_MAP["AutoTokenizer"]}}))
    (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "<cls>": 1, "<mask>": 2, "1girl": 3}))
    (folder / "eval_metrics.json").write_text(json.dumps(
        {"model.mlm_micro_f1": 0.61234, "baseline.mlm_micro_f1": 0.4, "model.retrieval_recall@10": 0.7,
         "num_posts": 300, "note": "text is ignored"}))
    (folder / "training_config.json").write_text(json.dumps(
        {"learning_rate": 0.001, "max_steps": 50, "dataset": "/home/me/data", "config": "/home/me/hub_configs/tiny.json"}))
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "optimizer.bin").write_bytes(b"\0" * 100)
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out").write_bytes(b"events")
    return folder


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let huggingface_hub make requests (conftest sets HF_HUB_OFFLINE=1); they only go to the fake Hub."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_check_model_dir_lists_top_level_files(model_dir: Path) -> None:
    names = [path.name for path in check_model_dir(model_dir)]
    assert "model.safetensors" in names and "config.json" in names
    assert "checkpoints" not in names and "logs" not in names


@pytest.mark.parametrize("remove, expected", [
    ("model.safetensors", "missing: model.safetensors"),
    ("modeling_booru_embed.py", "missing: modeling_booru_embed.py"),
    ("tokenization_booru_embed.py", "missing: tokenization_booru_embed.py"),
    ("tokenizer_config.json", "missing: tokenizer_config.json"),
    ("config.json", "config.json is missing"),
])
def test_check_model_dir_names_missing_file(model_dir: Path, remove: str, expected: str) -> None:
    (model_dir / remove).unlink()
    with pytest.raises(UsageError, match=expected):
        check_model_dir(model_dir)


def test_check_model_dir_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="model folder not found"):
        check_model_dir(tmp_path / "nope")


def test_headline_table_puts_retrieval_beside_completion() -> None:
    table = headline_table({"model.masked.micro_f1": 0.3, "baseline.masked.micro_f1": 0.2,
                            "model.retrieval.character.recall@10": 0.6, "baseline.retrieval.character.recall@10": 0.5,
                            "tagvec.retrieval.character.recall@10": 0.55, "baseline.traits.r_precision": 0.6})
    rows = table.splitlines()[2:]
    assert rows == ["| completion | masked tags, micro-F1 | 0.3000 | 0.2000 | – |",
                    "| retrieval | same character, recall@10 | 0.6000 | 0.5000 | 0.5500 |"]
    assert "No headline measure" in headline_table({"baseline.masked.micro_f1": 0.2})


def test_readback_table_puts_the_linear_code_beside_the_model_per_width() -> None:
    metrics = {"model.readback.dim32.micro_f1": 0.4, "linear.readback.dim32.micro_f1": 0.45,
               "model.readback.dim128.micro_f1": 0.6, "linear.readback.dim128.micro_f1": 0.55,
               "model.readback.dim128.rest.micro_f1": 0.3, "model.readback.dim128.character_share": 0.9,
               "model.readback.dim128.added_micro_f1": 0.2}
    rows = readback_table(metrics).splitlines()[2:]
    assert rows == ["| 32 | 0.4000 | 0.4500 | – | – | – | – | – | – |",
                    "| 128 | 0.6000 | 0.5500 | 0.3000 | – | 0.9000 | – | 0.2000 | – |"]
    assert "No read-back" in readback_table({"linear.readback.dim32.micro_f1": 0.45})


def test_metrics_table_pairs_model_and_baseline() -> None:
    table = metrics_table({"model.f1": 0.5, "baseline.f1": 0.25, "model.only": 3, "other": 1.0, "model.s": "x"})
    lines = table.splitlines()
    assert "| f1 | 0.5000 | 0.2500 |" in lines
    assert "| only | 3 | – |" in lines
    assert not any("other" in line or "| s |" in line for line in lines)


def test_model_card_has_metadata_and_metrics(model_dir: Path) -> None:
    card = render_model_card(model_dir, "someone/booru-embed-tiny", datasets=["someone/danbooru-tags"])
    assert "{{" not in card
    header = card.split("---")[1]
    assert "library_name: transformers" in header and "pipeline_tag: feature-extraction" in header
    assert "license: apache-2.0" in header and '- "someone/danbooru-tags"' in header
    assert "| mlm_micro_f1 | 0.6123 | 0.4000 |" in card
    assert 'from_pretrained("someone/booru-embed-tiny", trust_remote_code=True)' in card
    assert f"`transformers>={MIN_TRANSFORMERS}`" in card
    assert "| learning_rate | 0.001 |" in card and "| config | tiny.json |" in card
    assert "/home/me" not in card


def test_publish_pushes_files_and_card(model_dir: Path, online: None) -> None:
    before = folder_digest(model_dir)
    with FakeHub() as hub:
        url = publish(model_dir, "someone/tiny", private=True, token=hub.token, endpoint=hub.endpoint)
        repo = hub.repos["someone/tiny"]
    assert url.startswith(f"{hub.endpoint}/someone/tiny/commit/")
    assert repo.private
    for name in ("config.json", "model.safetensors", "modeling_booru_embed.py", "tokenization_booru_embed.py",
                 "configuration_booru_embed.py", "tokenizer_config.json", "vocab.json", "eval_metrics.json"):
        assert repo.files[name] == (model_dir / name).read_bytes(), name
    assert not any(name.startswith(("checkpoints", "logs")) for name in repo.files)
    assert "| model_retrieval_recall@10" not in repo.files["README.md"].decode()
    assert "| retrieval_recall@10 | 0.7000 | – |" in repo.files["README.md"].decode()
    assert json.loads(repo.files["modules.json"])[0]["type"].endswith("Transformer")
    assert folder_digest(model_dir) == before


def test_publish_sends_the_onnx_export(model_dir: Path, online: None) -> None:
    (model_dir / "onnx").mkdir()
    (model_dir / "onnx" / "model.onnx").write_bytes(b"graph bytes")
    (model_dir / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
    with FakeHub() as hub:
        publish(model_dir, "someone/tiny", token=hub.token, endpoint=hub.endpoint)
        repo = hub.repos["someone/tiny"]
    assert repo.files["onnx/model.onnx"] == b"graph bytes"
    assert not any(name.startswith(("checkpoints", "logs")) for name in repo.files)


def test_publish_without_token_fails_in_one_line(model_dir: Path, online: None, capsys) -> None:
    before = folder_digest(model_dir)
    with FakeHub() as hub:
        code = main(["publish", str(model_dir), "--repo-id", "someone/tiny"])
        assert hub.requests == []
    error = capsys.readouterr().err
    assert code == 2 and "no Hugging Face token" in error and len(error.strip().splitlines()) == 1
    assert folder_digest(model_dir) == before


def test_publish_server_error_fails_in_one_line_and_keeps_folder(model_dir: Path, online: None) -> None:
    before = folder_digest(model_dir)
    with FakeHub() as hub:
        hub.fail_commits = True
        with pytest.raises(UsageError, match=r"push to someone/tiny failed: .*500") as raised:
            publish(model_dir, "someone/tiny", token=hub.token, endpoint=hub.endpoint)
        assert hub.repos["someone/tiny"].files == {}
    assert "\n" not in str(raised.value)
    assert folder_digest(model_dir) == before


def test_publish_wrong_token_is_one_line(model_dir: Path, online: None) -> None:
    with FakeHub() as hub, pytest.raises(UsageError, match="push to someone/tiny failed"):
        publish(model_dir, "someone/tiny", token="hf_wrong", endpoint=hub.endpoint)


@pytest.mark.parametrize("repo_id", ["tiny", "a/b/c", "someone/", "/tiny", "some one/tiny"])
def test_publish_rejects_bad_repo_id(model_dir: Path, repo_id: str) -> None:
    with pytest.raises(UsageError, match="OWNER/NAME"):
        publish(model_dir, repo_id, token="hf_x")


LOAD_FROM_HUB = """
import sys
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from booru_embed.embedder import BooruEmbedder

repo_id, output = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
batch = tokenizer(["1girl solo smile", "hatsune_miku, skirt"], padding=True, return_tensors="pt")
with torch.inference_mode():
    pooled = model(**batch, normalize_embeddings=True).pooler_output.numpy()
suggested = BooruEmbedder.from_pretrained(repo_id).suggest("1girl cat_ears", top_k=3)
np.savez(output, pooled=pooled, suggested=np.array([tag for tag, _ in suggested]))
"""


def test_hub_round_trip_loads_with_automodel(tmp_path: Path, online: None) -> None:
    """Push a real (tiny, untrained) model, then load it back from the fake Hub in a fresh process."""
    import os
    import subprocess
    import sys

    import numpy as np

    from booru_embed.embedder import BooruEmbedder
    from tiny_model import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny")
    local = BooruEmbedder.from_pretrained(model_dir, device="cpu")
    with FakeHub() as hub:
        publish(model_dir, "someone/booru-tiny", private=True, token=hub.token, endpoint=hub.endpoint)
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "fresh-hf-home")}
        result = subprocess.run([sys.executable, "-c", LOAD_FROM_HUB, "someone/booru-tiny", str(tmp_path / "out.npz")],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        downloads = {path.rsplit("/", 1)[1] for method, path in hub.requests
                     if method == "GET" and path.startswith("/someone/booru-tiny/resolve/")}
    assert {"model.safetensors", "config.json", "modeling_booru_embed.py", "tokenizer_config.json", "vocab.json",
            "tokenization_booru_embed.py", "implications.json"} <= downloads
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["pooled"], local.embed(["1girl solo smile", "hatsune_miku, skirt"]), atol=1e-5)
    assert out["suggested"].tolist() == [tag for tag, _ in local.suggest("1girl cat_ears", top_k=3)]


def test_publish_command(model_dir: Path, online: None, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import huggingface_hub.constants

    with FakeHub() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT sets
        monkeypatch.setenv("HF_TOKEN", hub.token)
        code = main(["publish", str(model_dir), "--repo-id", "someone/cli", "--dataset", "someone/tags"])
        repo = hub.repos["someone/cli"]
    assert code == 0 and not repo.private
    assert f"-> {hub.endpoint}/someone/cli/commit/{repo.head}" in capsys.readouterr().out
    assert '- "someone/tags"' in repo.files["README.md"].decode()
