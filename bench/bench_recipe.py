"""Quality of a training recipe across corpus settings and seeds: model vs the baselines, mean ± sd.

For every (setting, seed): generate a corpus with ``generate-corpus --setting S --seed K``, build the
dataset and tokenizer, train ``tiny`` with ``train_hf.py --config CONFIG --seed K`` plus the extra
flags after ``--``, and evaluate with the corpus's truth file. Corpora and runs are cached under
``--workdir`` (a run is keyed by its flags), so a table can be re-printed or extended cheaply.

    python bench/bench_recipe.py --workdir runs/recipe --settings default,sparse-traits --seeds 0,1,2 \\
        [--posts 20000] [--config tiny] [--name NAME] [--threads 2] [-- --view-drop-category-probability 0.5]

Prints one table per setting (rows: the headline metrics; columns: model, related tags / TF-IDF,
tag vectors, model - best baseline) and writes ``NAME.summary.json`` into the run folders' parent
(settings run earlier under the same name and flags are kept).

The named settings are ``default``, ``sparse-traits`` and ``many-characters``, on which recipes are
chosen, and ``danbooru-pairs`` (Danbooru's real associations; its traits are each character's real
partners), which is ``HELD_OUT``: never used to choose a recipe, so its table is the honest figure for
real associations. Its table says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "sparse-traits", "many-characters", "danbooru-pairs")
HELD_OUT = ("danbooru-pairs",)  # reported, never used to choose a recipe
# (label, model key, baseline key, tag-vector key); the keys are those of `booru-embed evaluate`.
ROWS = (
    ("retrieval character r@10", "model.retrieval.character.recall@10", "baseline.retrieval.character.recall@10",
     "tagvec.retrieval.character.recall@10"),
    ("retrieval character r@10, 64-d", "model.retrieval.character.dim64.recall@10", None,
     "tagvec.retrieval.character.dim64.recall@10"),
    ("retrieval artist r@10", "model.retrieval.artist.recall@10", "baseline.retrieval.artist.recall@10",
     "tagvec.retrieval.artist.recall@10"),
    ("retrieval artist r@10, 64-d", "model.retrieval.artist.dim64.recall@10", None,
     "tagvec.retrieval.artist.dim64.recall@10"),
    ("traits R-precision", "model.traits.r_precision", "baseline.traits.r_precision", None),
    ("traits recall@10", "model.traits.recall@10", "baseline.traits.recall@10", None),
    ("traits R-prec., rarest quarter", "model.traits.rarest_quarter.r_precision",
     "baseline.traits.rarest_quarter.r_precision", None),
    ("implications recall@5", "model.implications.recall@5", "baseline.implications.recall@5", None),
    ("masked micro-F1", "model.masked.micro_f1", "baseline.masked.micro_f1", None),
)


def run(argv: list[str], threads: int, log: Path) -> None:
    """Run one command, its output into ``log``; raise with the log's tail when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as handle:
        code = subprocess.call(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(argv)}\n{log.read_text()[-2000:]}")


def prepare_corpus(workdir: Path, setting: str, seed: int, posts: int, threads: int) -> Path:
    """The corpus, DATA_DIR and tokenizer of (setting, seed), made once."""
    folder = workdir / f"{setting}-{posts}-s{seed}"
    cli = [sys.executable, "-m", "booru_embed.cli"]
    if not (folder / "tokenizer").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        run([*cli, "generate-corpus", "--setting", setting, "--posts", str(posts), "--seed", str(seed),
             "--output", str(folder / "corpus.csv")], threads, folder / "generate.log")
        run([*cli, "build-dataset", str(folder / "corpus.csv"), "--output", str(folder / "data")],
            threads, folder / "build.log")
        run([*cli, "build-tokenizer", str(folder / "data"), "--output", str(folder / "tokenizer")],
            threads, folder / "tokenizer.log")
    return folder


def train_and_evaluate(corpus: Path, name: str, config: str, seed: int, flags: list[str], threads: int) -> dict:
    """Metrics of one run (cached in ``corpus/NAME/metrics.json``)."""
    out = corpus / name
    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run([sys.executable, "train_hf.py", "--config", config, "--dataset", str(corpus / "data"),
         "--tokenizer", str(corpus / "tokenizer"), "--output", str(out / "model"), "--seed", str(seed),
         "--eval-posts", "0", "--no-progress", *flags], threads, out / "train.log")
    train_seconds = time.perf_counter() - started
    run([sys.executable, "-m", "booru_embed.cli", "evaluate", str(out / "model"), "--dataset", str(corpus / "data"),
         "--truth", str(corpus / "corpus.truth.json"), "--output", str(out / "eval.json")], threads, out / "eval.log")
    values = json.loads((out / "eval.json").read_text())
    values["time.train.wall_seconds"] = train_seconds
    metrics.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    return values


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` (sd over seeds, ddof 1), or the value alone for one seed."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "–"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def tag_names(corpus: Path) -> str:
    """Where a cached corpus's tag names came from: ``made-up`` or the tag-data folder (its truth file says)."""
    return json.loads((corpus / "corpus.truth.json").read_text()).get("source", "unknown")


def table(setting: str, runs: list[dict], sources: list[str]) -> str:
    """One markdown table: per headline metric the model, the baselines and the paired margin."""
    names = ", ".join(f"{sources.count(s)} x {'made-up' if s == 'made-up' else 'real (' + s + ')'}"
                      for s in dict.fromkeys(sources))
    held_out = " [held out: never used to choose a recipe]" if setting in HELD_OUT else ""
    lines = [f"\n{setting}{held_out} ({len(runs)} seed(s); tag names: {names}); train wall s: "
             + mean_sd([r.get("time.train.wall_seconds") for r in runs]),
             "| metric | model | related / TF-IDF | tag vectors | model - best baseline |", "|---|---|---|---|---|"]
    for label, model_key, base_key, vec_key in ROWS:
        get = lambda key: [r.get(key) for r in runs] if key else []  # noqa: E731
        margins = []
        for r in runs:
            bases = [r.get(k) for k in (base_key, vec_key) if k and r.get(k) is not None]
            if r.get(model_key) is not None and bases:
                margins.append(r[model_key] - max(bases))
        lines.append(f"| {label} | {mean_sd(get(model_key))} | {mean_sd(get(base_key))} | {mean_sd(get(vec_key))} "
                     f"| {mean_sd(margins)} |")
    return "\n".join(lines)


def main() -> None:
    """Parse the flags, run what is missing, print the tables."""
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--settings", default="default,sparse-traits",
                        help=f"comma-separated, of {', '.join(SETTINGS)} (default: default,sparse-traits)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--name", default=None, help="run folder name (default: a hash of the config and flags)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    name = args.name or "run-" + hashlib.sha1(json.dumps([args.config, extra]).encode()).hexdigest()[:10]
    summary = {}
    for setting in args.settings.split(","):
        runs, sources = [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            corpus = prepare_corpus(args.workdir, setting, seed, args.posts, args.threads)
            sources.append(tag_names(corpus))
            runs.append(train_and_evaluate(corpus, name, args.config, seed, extra, args.threads))
            (corpus / name / "flags.json").write_text(json.dumps({"config": args.config, "flags": extra}) + "\n")
        summary[setting] = runs
        print(table(setting, runs, sources), flush=True)
    path = args.workdir / f"{name}.summary.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if earlier.get("config") == args.config and earlier.get("flags") == extra:
        summary = {**earlier["runs"], **summary}  # settings run earlier under this name stay in the summary
    path.write_text(json.dumps({"config": args.config, "flags": extra, "runs": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
