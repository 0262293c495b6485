"""Time and peak memory of `booru-embed evaluate` at Danbooru's size (real tag names and post counts).

The generator of `booru_embed/data/synthetic.py` draws a few thousand tags; this bench writes a
DATA_DIR directly instead: every post draws, per category, a Poisson number of tags (means below,
~28 tags a post) with probabilities proportional to the real post counts of
`../shared/data/danbooru-2025-05/tags.csv` (so Zipf-like, 1girl in ~2/3 of the posts), duplicates
removed. A tokenizer is built from the largest training split (``--min-count`` 2 for every category,
which keeps a vocabulary of Danbooru's size), a random-weight model from `hub_configs/NAME.json` is
saved with it, and for each training size the `booru-embed evaluate` command runs in a fresh process
under `/usr/bin/time -v` (wall seconds, peak RSS); the per-stage seconds and peak MB come from the
``time.*`` / ``memory.*`` keys of its METRICS_JSON.

    python bench/bench_evaluate_scale.py --workdir /tmp/bench_eval [--train-posts 1000000,2000000]
        [--tags tags.csv] [--test-posts 20000] [--max-posts 10000] [--baseline-posts 1000000] [--config tiny]
        [--reference-code /path/to/an/older/checkout --reference-max-posts 2000]

``--reference-code`` runs the same command with another checkout's ``booru_embed`` first in
``PYTHONPATH`` (the code before this change, say) on the smallest training size, for a ratio measured
on the same machine and data.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_scale import time_v_figures  # this folder is first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
TAGS_CSV = REPO.parent / "shared" / "data" / "danbooru-2025-05" / "tags.csv"  # where the tests look too
DANBOORU_CATEGORY = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}
TAGS_PER_POST = {"general": 24.0, "artist": 0.9, "copyright": 1.2, "character": 1.3, "meta": 1.0}  # Poisson means


def read_tags(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category: tag names (object array) and post counts, from a Danbooru ``tags.csv``."""
    names: dict[str, list[str]] = {c: [] for c in TAGS_PER_POST}
    counts: dict[str, list[int]] = {c: [] for c in TAGS_PER_POST}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            category = DANBOORU_CATEGORY.get(int(row[1]))
            if category and int(row[2]) > 0:
                names[category].append(row[0])
                counts[category].append(int(row[2]))
    return {c: (np.array(names[c], dtype=object), np.array(counts[c], dtype=np.float64)) for c in TAGS_PER_POST}


def tag_column(rng: np.random.Generator, posts: int, names: np.ndarray, counts: np.ndarray, mean: float):
    """A list<string> Arrow column: per post, Poisson(mean) tags drawn by post count, duplicates removed."""
    import pyarrow as pa

    lengths = rng.poisson(mean, posts)
    cumulative = np.cumsum(counts / counts.sum())
    drawn = np.minimum(np.searchsorted(cumulative, rng.random(int(lengths.sum()))), len(names) - 1)
    post = np.repeat(np.arange(posts), lengths)
    order = np.lexsort((drawn, post))
    post, drawn = post[order], drawn[order]
    keep = np.ones(len(drawn), dtype=bool)
    keep[1:] = (post[1:] != post[:-1]) | (drawn[1:] != drawn[:-1])
    offsets = np.concatenate([[0], np.cumsum(np.bincount(post[keep], minlength=posts))]).astype(np.int32)
    values = pa.array(names, pa.string()).take(pa.array(drawn[keep].astype(np.int32)))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_data_dir(folder: Path, tags: dict, train_posts: int, test_posts: int, seed: int = 0) -> None:
    """A DATA_DIR (`datasets` splits train and test, the build-dataset columns) of generated posts."""
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    splits = {}
    for split, posts, first_id in (("train", train_posts, 0), ("test", test_posts, train_posts)):
        columns = {
            "id": pa.array(np.arange(first_id, first_id + posts, dtype=np.int64)),
            "rating": pa.array(np.array(list("gsqe"))[rng.choice(4, posts, p=[0.35, 0.35, 0.2, 0.1])]),
            "score": pa.array(rng.geometric(0.05, posts).astype(np.int32)),
        }
        for category in ("meta", "general", "artist", "copyright", "character"):
            names, counts = tags[category]
            columns[category] = tag_column(rng, posts, names, counts, TAGS_PER_POST[category])
        splits[split] = datasets.Dataset(pa.table(columns))
    datasets.DatasetDict(splits).save_to_disk(str(folder))


def build_model_dir(data_dir: Path, model_dir: Path, config_name: str) -> int:
    """Tokenizer (min count 2 everywhere) and a random-weight model of ``hub_configs/NAME.json``; the vocabulary size."""
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import build_model
    from booru_embed.data.tokenizer_build import build_tokenizer

    tokenizer = build_tokenizer(data_dir, model_dir, min_counts={c: 2 for c in TAGS_PER_POST})
    build_model(TrainingConfig(config=str(REPO / "hub_configs" / f"{config_name}.json")), tokenizer).save_pretrained(model_dir)
    return len(tokenizer)


def timed_evaluate(model_dir: Path, data_dir: Path, output: Path, max_posts: int, baseline_posts: int,
                   code: Path) -> tuple[dict, float, float, float]:
    """Run `booru-embed evaluate` under /usr/bin/time -v with ``code`` first on PYTHONPATH:
    (metrics, wall seconds, CPU seconds, peak RSS MB)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "booru_embed.cli", "evaluate", str(model_dir),
               "--dataset", str(data_dir), "--output", str(output), "--max-posts", str(max_posts)]
    if code == REPO:
        command += ["--baseline-posts", str(baseline_posts)]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed ({code}):\n{result.stderr[-3000:]}")
    seconds, cpu, peak_kb = time_v_figures(result.stderr)
    return json.loads(output.read_text()), seconds, cpu, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="folder for the corpora and the model (reused)")
    parser.add_argument("--tags", type=Path, default=TAGS_CSV, help=f"Danbooru tags.csv (default {TAGS_CSV})")
    parser.add_argument("--train-posts", default="1000000,2000000", help="training split sizes, comma-separated")
    parser.add_argument("--test-posts", type=int, default=20_000)
    parser.add_argument("--max-posts", type=int, default=10_000, help="test posts evaluated")
    parser.add_argument("--baseline-posts", type=int, default=1_000_000)
    parser.add_argument("--config", default="tiny", help="hub_configs name of the random-weight model")
    parser.add_argument("--reference-code", type=Path, help="another checkout to run on the smallest size")
    parser.add_argument("--reference-max-posts", type=int, default=2_000)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.train_posts.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    tags = read_tags(args.tags)
    for size in sizes:
        data_dir = args.workdir / f"data_{size}"
        if not (data_dir / "dataset_dict.json").is_file():
            write_data_dir(data_dir, tags, size, args.test_posts)
    rows.append(("generate corpora", time.perf_counter() - started, None))
    model_dir = args.workdir / f"model_{args.config}"
    started = time.perf_counter()
    if not (model_dir / "config.json").is_file():
        build_model_dir(args.workdir / f"data_{sizes[-1]}", model_dir, args.config)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rows.append((f"tokenizer + model (vocab {vocab:,})", time.perf_counter() - started, None))
    print(f"{'stage':<44} {'seconds':>8} {'peak MB':>8}   (wall seconds; the stages' peak MB is the process's peak so far)", flush=True)
    for name, seconds, peak in rows:
        print(f"{name:<44} {seconds:>8.1f} {'-' if peak is None else f'{peak:.0f}':>8}", flush=True)
    runs = [(REPO, size, args.max_posts) for size in sizes]
    if args.reference_code:
        runs = [(args.reference_code, sizes[0], args.reference_max_posts), (REPO, sizes[0], args.reference_max_posts), *runs]
    results = {}
    for code, size, max_posts in runs:
        label = f"{'reference' if code != REPO else 'this'} {size // 1000}k train, {max_posts // 1000}k test"
        metrics, wall, cpu, peak = timed_evaluate(model_dir, args.workdir / f"data_{size}",
                                             args.workdir / f"metrics_{label.replace(' ', '_').replace(',', '')}.json",
                                             max_posts, args.baseline_posts, code)
        results[code, size, max_posts] = (wall, cpu, peak)
        for stage in ("load", "encode", "baseline", "masked", "readback", "retrieval", "search_retrieval"):
            if f"time.{stage}.seconds" in metrics:
                print(f"  {label}: {stage:<26} {metrics[f'time.{stage}.seconds']:>8.1f} "
                      f"{metrics.get(f'memory.{stage}.peak_mb', float('nan')):>8.0f}")
        print(f"{label + ': whole command':<44} {wall:>8.1f} {peak:>8.0f}   CPU {cpu:.0f} s "
              f"(baseline posts {metrics.get('count.baseline.posts', size):,.0f}, "
              f"tagvec character {metrics.get('tagvec.retrieval.character.recall@10', float('nan')):.3f}, "
              f"tf-idf {metrics['baseline.retrieval.character.recall@10']:.3f})", flush=True)
    if args.reference_code:
        ref = results[args.reference_code, sizes[0], args.reference_max_posts]
        new = results[REPO, sizes[0], args.reference_max_posts]
        print(f"reference / this on the same inputs: {ref[0] / new[0]:.1f}x the wall seconds, {ref[1] / new[1]:.1f}x the CPU "
              f"seconds, {ref[2] / new[2]:.1f}x the peak memory")


if __name__ == "__main__":
    main()
