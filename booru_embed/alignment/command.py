"""`booru-embed align`: learn an aligner from a pair file joined to a DATA_DIR, save it, report on the test split.

Steps: read and check the pairs, join them to the DATA_DIR by post id (absent ids counted, listed in
``absent_ids.txt``), embed the joined posts with the model (cached in ``checkpoints/``), train the
aligner and the linear probe on the train split's pairs (the held-out slice chooses their epoch and, for
a ``tags`` aligner, its threshold), save ``config.json`` + ``model.safetensors``, and write
``metrics.json`` measured on the test split's pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .pairs import absent_note, join_pairs, read_pairs
from .store import CHECKPOINT_FOLDER, CONFIG_FILE, METRICS_FILE, TAG_ARCH, aligner_folder, check_name

PLAN_FILE = "plan.json"
ABSENT_FILE = "absent_ids.txt"
EVAL_POSTS = 2000  # test posts measured (F1 keeps the top 100 tags of each; hits scan every joined post)
EVAL_BATCH = 256
SETTING_HELP = {
    "hidden_dim": "width of the MLP's hidden layer", "epochs": "most passes over the training pairs",
    "batch_size": "pairs per step", "learning_rate": "peak AdamW learning rate", "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "negatives": "sampled tags scored beside the batch's own in the read-back BCE",
    "bce_weight": "weight of the read-back BCE (the cosine term weighs 1)",
    "norm_weight": "weight of the squared relative norm difference",
    "patience": "epochs without a better held-out loss before stopping",
    "holdout": "share of the train split's pairs that chooses the epoch",
    "checkpoint_every": "steps between checkpoints (also at every epoch's end)", "seed": "seed of every draw",
    "min_tag_pairs": "a tags aligner predicts the tags seen in at least this many training pairs",
}


def _existing_input_dim(folder: Path) -> int | None:
    """The input width an existing aligner folder was made for (finished or planned), None when new."""
    for path in (folder / CONFIG_FILE, folder / CHECKPOINT_FOLDER / PLAN_FILE):
        if path.is_file():
            return int(json.loads(path.read_text(encoding="utf-8"))["input_dim"])
    return None


def _check_folder(folder: Path, name: str, plan: dict[str, Any], resume: bool) -> None:
    """Refuse a width that differs from an existing aligner, an existing one without --resume, a changed plan."""
    existing = _existing_input_dim(folder)
    if existing is not None and existing != plan["input_dim"]:
        raise UsageError(f"the pairs hold {plan['input_dim']}-d vectors but aligner {name!r} maps {existing}-d ones: "
                         "choose another --name")
    plan_path = folder / CHECKPOINT_FOLDER / PLAN_FILE
    if folder.exists() and any(folder.iterdir()):
        if not resume:
            raise UsageError(f"aligner {name!r} already exists in {folder.parent}: pass --resume to continue an "
                             "interrupted run, or choose another --name")
        if (folder / CONFIG_FILE).is_file() and not plan_path.is_file():
            raise UsageError(f"aligner {name!r} is finished and has no training state to resume")
        previous = json.loads(plan_path.read_text(encoding="utf-8")) if plan_path.is_file() else {}
        changed = [key for key in plan if previous.get(key) != plan[key]]
        if previous and changed:
            raise UsageError(f"--resume: aligner {name!r} was started with other settings ("
                             + ", ".join(f"{key} {previous.get(key)!r} now {plan[key]!r}" for key in changed) + ")")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")


def _targets(embedder: Any, data_dir: Path, split: str, rows: np.ndarray, cache: Path, bar_label: str) -> Any:
    """The posts' targets of ``split`` rows, from the cache in checkpoints/ or computed and cached."""
    from tqdm.auto import tqdm

    from ..data.splits import open_split
    from .targets import PostTargets, compute_targets

    if cache.is_file():
        return PostTargets.load(cache)
    table = open_split(data_dir, split)
    with tqdm(total=len(rows), desc=bar_label, unit="post", disable=None) as bar:
        targets = compute_targets(embedder, table, rows, bar=bar)
    targets.save(cache)
    return targets


def _split_holdout(count: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of ``count`` training pairs: a seeded ``share``, at least one post."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(share * count))
    return np.sort(order[held:]), np.sort(order[:held])


def _train(embedder: Any, external: np.ndarray, targets: Any, settings: Any, folder: Path) -> dict[str, Any]:
    """Train the aligner and (with ``settings.probe``) the probe; return the modules, their run states and,
    for a ``tags`` aligner, its kept rows (``token_ids``) and chosen ``threshold``."""
    from tqdm.auto import tqdm

    from .fit import make_phases

    train_rows, holdout_rows = _split_holdout(len(external), settings.holdout, settings.seed)
    phases, counts = make_phases(embedder.model.requires_grad_(False), embedder._is_tag, external, targets,
                         train_rows, holdout_rows, settings, folder)
    for phase in phases:
        phase.restore()
    total = sum(settings.epochs * phase.steps_per_epoch for phase in phases)
    done = sum(phase.state["epoch"] * phase.steps_per_epoch + phase.state["step_in_epoch"] for phase in phases)
    with tqdm(total=total, initial=done, desc="align", unit="step", disable=None) as bar:
        states = {phase.name: phase.run(bar) for phase in phases}
    modules = {phase.name: phase.module for phase in phases}
    trained = {"aligner": modules["aligner"], "probe": modules.get("probe"), "states": states,
               "counts": counts, "split": (len(train_rows), len(holdout_rows))}
    if settings.arch == TAG_ARCH:
        trained.update(_tag_rows_and_threshold(embedder, modules["aligner"], external, targets, holdout_rows,
                                               counts, settings))
    return trained


def _tag_rows_and_threshold(embedder: Any, head: Any, external: np.ndarray, targets: Any, holdout_rows: np.ndarray,
                            counts: np.ndarray, settings: Any) -> dict[str, Any]:
    """A trained ``tags`` aligner cut to the tags seen in ``min_tag_pairs`` training pairs, and its threshold
    chosen on (up to ``THRESHOLD_POSTS`` of) the held-out pairs."""
    import torch

    from .tag_path import THRESHOLD_POSTS, choose_threshold

    token_ids = np.flatnonzero(embedder._is_tag & (counts >= settings.min_tag_pairs))
    if len(token_ids) == 0:
        raise UsageError(f"no tag is in {settings.min_tag_pairs} training pairs: lower --min-tag-pairs")
    compact = head.rows(token_ids)
    rows = holdout_rows
    if len(rows) > THRESHOLD_POSTS:
        rows = np.sort(np.random.default_rng(settings.seed).choice(rows, THRESHOLD_POSTS, replace=False))
    device = next(compact.parameters()).device
    with torch.inference_mode():
        logits = compact(torch.from_numpy(external[rows]).to(device)).float().cpu().numpy()
    threshold, cosines = choose_threshold(logits, token_ids, targets.embeddings[rows], embedder._encode_tag_ids)
    return {"aligner": compact, "token_ids": token_ids, "threshold": threshold, "threshold_cosines": cosines}


def _aligner_config(name: str, embedder: Any, external_dim: int, pairs: Path, settings: Any,
                    trained: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a trained aligner (a ``tags`` aligner adds its rows and threshold)."""
    from .tag_path import MAX_TAGS

    config = {"name": name, "arch": settings.arch, "input_dim": external_dim,
              "output_dim": int(embedder.embedding_dim), "hidden_dim": int(settings.hidden_dim),
              "model_embedding_dim": int(embedder.embedding_dim), "pairs_file": pairs.name,
              "settings": asdict(settings), "best_epoch": trained["states"]["aligner"]["best_epoch"],
              "epochs_run": trained["states"]["aligner"]["epoch"]}
    if settings.arch == TAG_ARCH:
        config.update({"threshold": trained["threshold"], "max_tags": MAX_TAGS,
                       "token_ids": [int(t) for t in trained["token_ids"]]})
    return config


def _report(embedder: Any, aligner: Any, trained: dict[str, Any], external: np.ndarray, targets: Any,
            train_targets: Any, eval_posts: int, seed: int) -> dict[str, float]:
    """The test-split measures of the ceiling, the aligned vectors (``aligner``, a ``runtime.LoadedAligner``)
    and the probe (``metrics`` module); a ``tags`` aligner's own tag head is its probe."""
    import torch

    from .metrics import PairMeasures, TagF1, nearest_hits, tag_groups
    from .store import unit_rows

    model = embedder.model
    device = next(model.parameters()).device
    rows = np.arange(len(external))
    if len(rows) > eval_posts:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), eval_posts, replace=False))
    vocab = len(embedder._is_tag)
    probe, probe_columns = trained["probe"], None
    if aligner.reads_tags:
        probe, probe_columns = trained["aligner"], trained["token_ids"]
    groups = tag_groups(embedder._categories, embedder._is_tag, trained["counts"])
    sources = {name: TagF1(groups) for name in ("ceiling", "aligned", "probe") if name != "probe" or probe is not None}
    measures = PairMeasures()
    aligned_all = np.zeros((len(rows), embedder.embedding_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), EVAL_BATCH):
            chunk = rows[start : start + EVAL_BATCH]
            target = targets.embeddings[chunk]
            aligned = aligner(external[chunk])
            aligned_all[start : start + len(chunk)] = aligned
            logits = {"ceiling": model.readback(torch.from_numpy(target).to(device)).float().cpu().numpy(),
                      "aligned": model.readback(torch.from_numpy(aligned).to(device)).float().cpu().numpy()}
            if probe is not None:
                scores = probe(torch.from_numpy(external[chunk]).to(device)).float().cpu().numpy()
                if probe_columns is not None:  # a tags aligner scores its own rows only
                    logits["probe"] = np.full((len(chunk), vocab), -1e4, dtype=np.float32)
                    logits["probe"][:, probe_columns] = scores
                else:
                    logits["probe"] = scores
            answers = [set(targets.tags_of(int(r)).tolist()) for r in chunk]
            truth = np.zeros((len(chunk), vocab))
            for i, tags in enumerate(answers):
                truth[i, list(tags)] = 1.0
            for name, accumulator in sources.items():
                accumulator.add(logits[name], answers)
            measures.add(aligned, target, logits["aligned"], logits["ceiling"], truth, embedder._is_tag)
    out: dict[str, float] = {"count.test_posts_measured": float(len(rows))}
    for name, accumulator in sources.items():
        out.update(accumulator.metrics(name))
    out.update(measures.metrics("aligned"))
    index = unit_rows(np.concatenate([train_targets.embeddings, targets.embeddings]), embedder.embedding_dim)
    characters = train_targets.character_sets() + targets.character_sets()
    own = len(train_targets) + rows
    for name, queries in (("tagset", index[own]), ("aligned", unit_rows(aligned_all, embedder.embedding_dim))):
        hit, character_hit = nearest_hits(queries, own, index, characters)
        out[f"{name}.hit@10"], out[f"{name}.character_hit@10"] = hit, character_hit
    out["count.index_posts"] = float(len(index))
    return out


def align(model_dir: str | Path, pairs: str | Path, data_dir: str | Path, name: str, settings: Any = None,
          resume: bool = False, device: str | None = None, eval_posts: int = EVAL_POSTS) -> dict[str, Any]:
    """Train aligner ``name`` of MODEL_DIR on the pair file ``pairs`` joined to DATA_DIR; returns metrics.json.

    ``settings`` is a ``fit.FitSettings`` (defaults when None). Writes ``MODEL_DIR/aligners/NAME/``. Raises
    ``UsageError`` (one line) for bad pairs, an empty join, a width that differs from an existing
    aligner of that name, or an existing aligner without ``resume``.
    """
    from ..embedder import load_for_command
    from ..evaluation.metrics import peak_memory_mb
    from .fit import FitSettings
    from .model import save_aligner, torch_runner
    from .runtime import LoadedAligner

    settings = settings or FitSettings()
    check_name(name)
    model_dir, data_dir, pairs = Path(model_dir), Path(data_dir), Path(pairs)
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"not a model folder (no config.json): {model_dir}")
    started = time.perf_counter()
    ids, external = read_pairs(pairs)
    folder = aligner_folder(model_dir, name)
    plan = {"pairs": str(pairs.resolve()), "dataset": str(data_dir.resolve()), "input_dim": int(external.shape[1]),
            "count": int(len(ids)), **asdict(settings)}
    join = join_pairs(ids, data_dir)
    if join.count("train") < 2:
        raise UsageError(f"only {join.count('train')} of the {len(ids)} pairs are in the train split of {data_dir}: "
                         "at least 2 are needed")
    _check_folder(folder, name, plan, resume)
    note = absent_note(join, len(ids))
    if note:
        print(f"note: {note} (all listed in {folder / ABSENT_FILE})", file=sys.stderr)
    (folder / ABSENT_FILE).write_text("".join(f"{i}\n" for i in join.absent), encoding="utf-8")
    embedder = load_for_command(str(model_dir), device)
    cache = folder / CHECKPOINT_FOLDER
    seconds = {"read_and_join": time.perf_counter() - started}
    clock = time.perf_counter()
    train_targets = _targets(embedder, data_dir, "train", join.split_rows["train"], cache / "targets_train.npz", "embed train")
    has_test = join.count("test") > 0
    test_targets = (_targets(embedder, data_dir, "test", join.split_rows["test"], cache / "targets_test.npz", "embed test")
                    if has_test else None)
    seconds["embed_posts"] = time.perf_counter() - clock
    clock = time.perf_counter()
    trained = _train(embedder, external[join.pair_rows["train"]], train_targets, settings, cache)
    seconds["train"] = time.perf_counter() - clock
    config = _aligner_config(name, embedder, int(external.shape[1]), pairs, settings, trained)
    save_aligner(folder, trained["aligner"].cpu(), config)
    trained["aligner"].to(next(embedder.model.parameters()).device)
    aligner = LoadedAligner(name, config, torch_runner(trained["aligner"], name), embedder._encode_tag_ids)
    metrics: dict[str, Any] = {
        "count.pairs": len(ids), "count.absent": len(join.absent),
        **{f"count.{split}": join.count(split) for split in join.pair_rows},
        "count.train_used": trained["split"][0], "count.holdout": trained["split"][1],
        **{f"training.{phase}.best_epoch": state["best_epoch"] for phase, state in trained["states"].items()},
        **{f"training.{phase}.epochs": state["epoch"] for phase, state in trained["states"].items()},
        **{f"training.{phase}.best_holdout_loss": state["best_loss"] for phase, state in trained["states"].items()},
        **({"training.threshold": trained["threshold"], "count.aligner_tags": len(trained["token_ids"]),
            **{f"training.threshold_cosine.{t}": c for t, c in trained["threshold_cosines"].items()}}
           if settings.arch == TAG_ARCH else {}),
    }
    if has_test:
        clock = time.perf_counter()
        metrics.update(_report(embedder, aligner, trained, external[join.pair_rows["test"]], test_targets,
                               train_targets, eval_posts, settings.seed))
        seconds["report"] = time.perf_counter() - clock
    else:
        print(f"note: no pair is in the test split of {data_dir}: metrics.json holds no test measures", file=sys.stderr)
    metrics.update({f"seconds.{key}": round(value, 2) for key, value in seconds.items()})
    metrics["peak_memory_mb"] = round(peak_memory_mb(), 1)
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed align``."""
    from .fit import FitSettings

    defaults = FitSettings()
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder (the aligner is saved in MODEL_DIR/aligners/NAME)")
    parser.add_argument("--pairs", required=True, type=Path, metavar="FILE",
                        help=".npz (ids, embs), .safetensors (ids, embs) or .parquet (id, embedding list column)")
    parser.add_argument("--dataset", required=True, type=Path, metavar="DATA_DIR", help="DATA_DIR the ids are joined to")
    parser.add_argument("--name", required=True, help="aligner name (its folder under MODEL_DIR/aligners)")
    parser.add_argument("--arch", choices=("tags", "mlp", "linear"), default=defaults.arch,
                        help="tags: read the image's tags and embed them with the model; mlp / linear: map the vector "
                             f"straight to the embedding (default: {defaults.arch})")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of this --name")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the linear probe (reference F1) of a mlp or linear aligner (a tags aligner is its own probe)")
    parser.add_argument("--eval-posts", type=int, default=EVAL_POSTS, help=f"test posts measured (default: {EVAL_POSTS})")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    for field in fields(FitSettings):
        if field.name in SETTING_HELP:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default,
                                help=f"{SETTING_HELP[field.name]} (default: {field.default})")


def run_align(args: argparse.Namespace) -> int:
    """Run ``booru-embed align``."""
    from .fit import FitSettings

    settings = FitSettings(**{f.name: getattr(args, f.name) for f in fields(FitSettings)})
    counts = {"epochs": settings.epochs, "batch-size": settings.batch_size, "hidden-dim": settings.hidden_dim,
              "min-tag-pairs": settings.min_tag_pairs,
              "negatives": settings.negatives, "patience": settings.patience, "eval-posts": args.eval_posts}
    for flag, value in counts.items():
        if value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    if not 0 < settings.holdout < 1:
        raise UsageError(f"--holdout must be between 0 and 1, got {settings.holdout}")
    metrics = align(args.model_dir, args.pairs, args.dataset, args.name, settings, resume=args.resume,
                    device=args.device, eval_posts=args.eval_posts)
    folder = aligner_folder(args.model_dir, args.name)
    print(f"wrote {folder}: {metrics['count.train_used']} training pairs, {metrics.get('count.test', 0)} test pairs")
    if "aligned.f1" in metrics:
        probe = f", probe {metrics['probe.f1']:.3f}" if "probe.f1" in metrics else ""
        print(f"tag F1 at P=R on the test split: ceiling {metrics['ceiling.f1']:.3f}, aligned {metrics['aligned.f1']:.3f}"
              f"{probe}; hit@10 aligned {metrics['aligned.hit@10']:.3f} vs tag set {metrics['tagset.hit@10']:.3f}")
    return 0
