"""Push a MODEL_DIR to the Hugging Face Hub with a model card filled from its last evaluation.

Publishing is its own small step (training never talks to the Hub): check the folder, render
the model-card template (the repository's top-level ``model_card.md``) into the Hub repository's
``README.md``, add the sentence-transformers files, and send everything in one commit. The local folder is only read, never changed, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .errors import UsageError, read_json_file
from .modeling.versions_booru_embed import MIN_TRANSFORMERS
from .resources import model_card_template
from .st_compat import sentence_transformers_files

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
DEFAULT_DATASETS = ("danbooru",)
LICENSE = "apache-2.0"
TAGS = ("booru-embed", "danbooru", "tag-embedding", "feature-extraction", "sentence-transformers", "custom_code")
# Subfolders sent along with the top-level files, with their own subfolders: the ONNX export
# (``booru-embed export-onnx``), which BooruEmbedder.from_pretrained(repo_id, backend="onnx") reads from the
# repository's onnx/, and the aligners (``booru-embed align``). Folders named in LOCAL_SUBFOLDERS stay local.
PUBLISHED_SUBFOLDERS = ("onnx", "aligners")
LOCAL_SUBFOLDERS = ("checkpoints", "logs")
# training_config.json keys that hold local paths or run state, left out of the card's table.
LOCAL_TRAINING_KEYS = ("dataset", "tokenizer", "output", "config", "resume")


def check_model_dir(model_dir: str | Path) -> list[Path]:
    """Check that ``model_dir`` holds a complete model; return the files to publish, sorted.

    Those are the top-level files and the files of ``PUBLISHED_SUBFOLDERS`` (``onnx/``, ``aligners/``) when
    present, with their subfolders except ``checkpoints/`` and ``logs/``.

    Needs ``config.json`` with an ``auto_map``, ``tokenizer_config.json``, the remote-code files both
    name, and safetensors weights. Raises ``UsageError`` naming what is missing.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise UsageError(f"model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{folder} is not a model folder: config.json is missing")
    config = read_json_file(config_path)
    if not config.get("auto_map"):
        raise UsageError(f"{config_path} has no auto_map: save the model with save_pretrained")
    tokenizer_config_path = folder / "tokenizer_config.json"
    auto_map = dict(config["auto_map"])
    if tokenizer_config_path.is_file():
        auto_map.update(read_json_file(tokenizer_config_path).get("auto_map") or {})
    needed = {"tokenizer_config.json"}
    for reference in auto_map.values():
        for class_path in reference if isinstance(reference, list) else [reference]:
            if class_path:
                needed.add(class_path.split("--")[-1].split(".")[0] + ".py")
    missing = sorted(name for name in needed if not (folder / name).is_file())
    if not any(folder.glob("*.safetensors")):
        missing.append("model.safetensors")
    if missing:
        raise UsageError(f"{folder} is incomplete, missing: {', '.join(missing)}")
    files = [path for path in folder.iterdir() if path.is_file()]
    files += [path for name in PUBLISHED_SUBFOLDERS if (folder / name).is_dir() for path in (folder / name).rglob("*")
              if path.is_file() and not set(LOCAL_SUBFOLDERS) & set(path.relative_to(folder).parts[:-1])]
    return sorted(path for path in files if not path.name.startswith("."))


def _format_number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# (task, measure, metric key after the side prefix): completion and retrieval side by side on the card
HEADLINE_METRICS = (
    ("completion", "masked tags, micro-F1", "masked.micro_f1"),
    ("completion", "implied tags, recall@5", "implications.recall@5"),
    ("completion", "character traits, R-precision", "traits.r_precision"),
    ("retrieval", "same character, recall@10", "retrieval.character.recall@10"),
    ("retrieval", "same character, recall@10, first 64 dims", "retrieval.character.dim64.recall@10"),
    ("retrieval", "same artist, recall@10", "retrieval.artist.recall@10"),
    ("retrieval", "same artist, recall@10, first 64 dims", "retrieval.artist.dim64.recall@10"),
)


def headline_table(metrics: dict) -> str:
    """Completion and retrieval measures in one table: the model, related tags / TF-IDF and tag vectors."""
    lines = ["| task | measure | model | related tags / TF-IDF | tag vectors (idf-weighted mean) |",
             "|---|---|---:|---:|---:|"]
    for task, label, key in HEADLINE_METRICS:
        if f"model.{key}" not in metrics:
            continue
        cells = [_format_number(metrics[f"{side}.{key}"]) if f"{side}.{key}" in metrics else "–"
                 for side in ("model", "baseline", "tagvec")]
        lines.append(f"| {task} | {label} | {' | '.join(cells)} |")
    return "\n".join(lines) if len(lines) > 2 else "No headline measure was recorded for this model."


def readback_table(metrics: dict) -> str:
    """Read-back F1 (P = R) per embedding width, the model beside the linear code of the same width
    (``evaluation/readback.py``): all tags, tags outside the 2,000 most common, the share of posts whose
    character is read back, and what the width adds over the one below."""
    widths = sorted({int(key.split(".")[2][3:]) for key in metrics
                     if key.startswith("model.readback.dim") and key.endswith(".micro_f1")})
    if not widths:
        return "No read-back was recorded for this model."
    lines = ["| width | all tags: model | linear code | rare tags: model | linear code | character read back: model "
             "| linear code | added by the width: model | linear code |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for width in widths:
        cells = [_format_number(metrics[f"{side}.readback.dim{width}.{key}"])
                 if f"{side}.readback.dim{width}.{key}" in metrics else "–"
                 for key in ("micro_f1", "rest.micro_f1", "character_share", "added_micro_f1")
                 for side in ("model", "linear")]
        lines.append(f"| {width} | {' | '.join(cells)} |")
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """A markdown table of flat ``model.*``/``baseline.*`` metrics, one row per measure."""
    rows: dict[str, dict[str, object]] = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        side, _, measure = key.partition(".")
        if side in ("model", "baseline") and measure:
            rows.setdefault(measure, {})[side] = value
    if not rows:
        return "No evaluation was recorded for this model (`eval_metrics.json` is missing)."
    lines = ["| measure | model | baseline |", "|---|---:|---:|"]
    for measure in sorted(rows):
        model_value, baseline_value = rows[measure].get("model", "–"), rows[measure].get("baseline", "–")
        lines.append(f"| {measure} | {_format_number(model_value)} | {_format_number(baseline_value)} |")
    return "\n".join(lines)


def _metadata(datasets: list[str]) -> str:
    lines = ["library_name: transformers", "pipeline_tag: feature-extraction", f"license: {LICENSE}", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    lines += ["datasets:"] + [f"- {json.dumps(name)}" for name in datasets]
    return "\n".join(lines)


def _model_table(config: dict) -> str:
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "embedding_dim", "nested_dims", "num_categories")
    return "\n".join(f"| {key} | {config[key]} |" for key in keys if key in config)


def _training_summary(model_dir: Path) -> str:
    path = model_dir / "training_config.json"
    if not path.is_file():
        return "No `training_config.json` was saved with this model."
    config = json.loads(path.read_text(encoding="utf-8"))
    # Local paths say nothing to a reader of the card (the file keeps them); the config is named.
    shown = {key: value for key, value in config.items()
             if isinstance(value, (int, float, str, bool)) and key not in LOCAL_TRAINING_KEYS}
    if config.get("config"):
        shown["config"] = Path(config["config"]).name
    lines = ["Hyper-parameters from `training_config.json` (the file is in this repository):", "",
             "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in shown.items()]
    return "\n".join(lines)


def render_model_card(model_dir: str | Path, repo_id: str, datasets: list[str] | None = None) -> str:
    """Fill the model-card template with the model's config, training settings and ``eval_metrics.json``."""
    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    metrics_path = folder / "eval_metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    values = {
        "metadata": _metadata(list(datasets or DEFAULT_DATASETS)),
        "model_name": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "min_transformers": MIN_TRANSFORMERS,
        "embedding_dim": str(config.get("embedding_dim", "")),
        "nested_dims": "/".join(str(d) for d in config.get("nested_dims", [])),
        "model_table": _model_table(config),
        "headline_table": headline_table(metrics),
        "readback_table": readback_table(metrics),
        "metrics_table": metrics_table(metrics),
        "training_summary": _training_summary(folder),
    }
    text = model_card_template()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def publish(model_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
            endpoint: str | None = None, datasets: list[str] | None = None,
            commit_message: str = "Upload booru-embed model") -> str:
    """Push ``model_dir`` to the Hub repository ``repo_id`` (created if needed); returns the commit URL.

    Sends the top-level files (weights, config with auto_map, remote code, tokenizer files, metrics,
    training config), the ONNX export in ``onnx/`` if there is one, a ``README.md`` model card rendered from ``model_card.md``, and the
    sentence-transformers files. ``checkpoints/`` and ``logs/`` stay local. ``token`` defaults to the
    logged-in token (``HF_TOKEN`` or ``hf auth login``), ``endpoint`` to ``HF_ENDPOINT``. Raises
    ``UsageError`` (one line) for a bad folder, repo id or token and for a failed push.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not REPO_ID.match(repo_id):
        raise UsageError(f"--repo-id must look like OWNER/NAME, got {repo_id!r}")
    files = check_model_dir(model_dir)
    token = token or get_token()
    if not token:
        raise UsageError("no Hugging Face token: set HF_TOKEN or run `hf auth login` first")
    card = render_model_card(model_dir, repo_id, datasets)
    generated = {"README.md": card.encode(), **sentence_transformers_files()}
    folder = Path(model_dir)
    operations = [CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                  for path in files if path.relative_to(folder).as_posix() not in generated]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content)
                   for name, content in generated.items()]
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as error:
        raise UsageError(f"push to {repo_id} failed: {_one_line(error)}") from None
    return commit.commit_url


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed publish``."""
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="trained model folder")
    parser.add_argument("--repo-id", required=True, help="Hub repository, OWNER/NAME (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dataset", action="append", dest="datasets", metavar="ID",
                        help=f"dataset named in the model card metadata (repeatable; default: {DEFAULT_DATASETS[0]})")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the `hf auth login` token)")


def run_publish(args: argparse.Namespace) -> int:
    """Run ``booru-embed publish``."""
    url = publish(args.model_dir, args.repo_id, private=args.private, token=args.token, datasets=args.datasets)
    print(f"published {args.model_dir} -> {url}")
    return 0
