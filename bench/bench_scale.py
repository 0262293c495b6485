"""Every stage at Danbooru's size: time and peak memory of each, from a generated export to suggest.

    python bench/bench_scale.py --workdir /tmp/bench_scale [--posts 5800000] [--config small]
        [--train-steps 3] [--eval-posts 10000] [--embed-posts 10000] [--suggest-calls 300]

Each stage runs in a fresh process under ``/usr/bin/time -v`` (wall seconds, and the peak resident
memory of the largest process of the stage; DataLoader workers are separate processes, so training's
figure is its main process): ``generate-corpus --setting danbooru-scale`` (tags drawn from the real
Danbooru counts of ``../shared/data/danbooru-2025-05``), ``build-dataset``, ``analyze``,
``build-tokenizer`` (default thresholds), ``train_hf.py`` for a few steps of ``hub_configs/NAME.json``
with the co-occurrence initialisation (its seconds, and seconds per step, from the training log),
``evaluate --max-posts``, ``embed`` of test posts (a text file, one tag set a line) and ``suggest``
calls in one process (the model loaded once). CPU seconds (user + system, all threads) are printed
beside the wall seconds: on a shared machine they are the steadier figure. Outputs are kept in WORKDIR
and a stage whose output is already there is not run again unless ``--fresh`` (its earlier row is
printed; ``--until STAGE`` stops after that stage). The table marks the issue's targets (build <= 30 s,
every stage < 12 GB, evaluation of 10k test posts < 5 min).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "booru_embed.cli"]
MEMORY_TARGET_GB = 12.0
TARGET_SECONDS = {"build-dataset": 30.0, "evaluate": 300.0}

SUGGEST_CALLS = """
import sys, time
import numpy as np
from booru_embed.embedder import BooruEmbedder
model_dir, tagsets, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(tagsets, encoding="utf-8").read().splitlines()[:calls]
embedder = BooruEmbedder.from_pretrained(model_dir)
seconds = []
for line in lines:
    started = time.perf_counter()
    embedder.suggest(line, top_k=10)
    seconds.append(time.perf_counter() - started)
print(f"SUGGEST {len(seconds)} calls, median {np.median(seconds) * 1000:.1f} ms, p95 {np.percentile(seconds, 95) * 1000:.1f} ms")
"""


def timed(name: str, command: list[str], log: Path) -> tuple[float, float, float, str]:
    """Run ``command`` under /usr/bin/time -v, output to ``log``: (wall seconds, CPU seconds, peak RSS GB, output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env, cwd=REPO)
    log.write_text(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    if result.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {result.returncode}); see {log}:\n{result.stderr[-3000:]}")
    seconds, cpu, peak_kb = time_v_figures(result.stderr)
    return seconds, cpu, peak_kb / 2**20, result.stdout + result.stderr


def time_v_figures(report: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds user + system, peak RSS kB) from the report of ``/usr/bin/time -v``."""
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", report).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", report).group(1)) for kind in ("User", "System"))
    return seconds, cpu, peak_kb


def write_tagsets(data_dir: Path, path: Path, posts: int) -> int:
    """The first ``posts`` test posts of DATA_DIR as tag sets, one a line (rating first); how many."""
    import datasets

    test = datasets.load_from_disk(str(data_dir))["test"]
    rows = test.select(range(min(posts, len(test))))
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            tags = [f"rating:{row['rating']}"] + [t for c in ("general", "character", "copyright", "artist", "meta")
                                                   for t in row[c]]
            handle.write(" ".join(tags) + "\n")
    return len(rows)


def stages(args: argparse.Namespace) -> list[tuple[str, list[str], Path]]:
    """(name, command, output that marks it done) of every stage, in order."""
    w = args.workdir
    return [
        ("generate-corpus", [*CLI, "generate-corpus", "--setting", "danbooru-scale", "--posts", str(args.posts),
                             "--output", str(w / "posts.csv")], w / "posts.truth.json"),
        ("build-dataset", [*CLI, "build-dataset", str(w / "posts.csv"), "--output", str(w / "data")],
         w / "data" / "dataset_dict.json"),
        ("analyze", [*CLI, "analyze", str(w / "data"), "--output", str(w / "report")], w / "report"),
        ("build-tokenizer", [*CLI, "build-tokenizer", str(w / "data"), "--output", str(w / "tokenizer")],
         w / "tokenizer" / "tokenizer_config.json"),
        (f"train {args.config} ({args.train_steps} steps)",
         [sys.executable, str(REPO / "train_hf.py"), "--config", args.config, "--dataset", str(w / "data"),
          "--tokenizer", str(w / "tokenizer"), "--output", str(w / "model"), "--max-steps", str(args.train_steps),
          "--embedding-init", "cooccurrence", "--eval-posts", "0", "--no-resume",
          "--mixed-precision", "no", "--num-workers", "1", "--batch-size", "64"],  # small's recipe is a GPU one
                                                                                  # (bf16, 8 workers, 1024 posts)
         w / "model" / "config.json"),
        (f"evaluate --max-posts {args.eval_posts}",
         [*CLI, "evaluate", str(w / "model"), "--dataset", str(w / "data"), "--max-posts", str(args.eval_posts),
          "--output", str(w / "metrics.json")], w / "metrics.json"),
        (f"embed {args.embed_posts} posts", [*CLI, "embed", str(w / "model"), "--input", str(w / "tagsets.txt"),
                                             "--output", str(w / "embeddings.npy")], w / "embeddings.npy"),
        (f"suggest x {args.suggest_calls}", [sys.executable, "-c", SUGGEST_CALLS, str(w / "model"), str(w / "tagsets.txt"),
                                             str(args.suggest_calls)], w / "suggest.done"),
    ]


def notes(name: str, output: str, args: argparse.Namespace) -> str:
    """What a stage's output says beyond time and memory (sizes, rates, sub-stage seconds)."""
    w = args.workdir
    if name == "generate-corpus":
        return f"CSV {(w / 'posts.csv').stat().st_size / 2**30:.2f} GB"
    if name == "build-dataset":
        found = re.search(r"kept (\d+) \(train (\d+), test (\d+)\)", output)
        return f"train {int(found.group(2)):,}, test {int(found.group(3)):,}" if found else ""
    if name == "build-tokenizer":
        found = re.search(r"vocabulary: (\d+) tokens", output)
        return f"vocabulary {int(found.group(1)):,}" if found else ""
    if name.startswith("train"):
        init = re.search(r"co-counts in ([\d.]+) s", output)
        done = re.search(r"done: (\d+) steps, ([\d,]+) tokens in ([\d,.]+) s", output)
        parts = [f"co-occurrence init {float(init.group(1)):.0f} s"] if init else []
        if done:
            steps, seconds = int(done.group(1)), float(done.group(3).replace(",", ""))
            parts.append(f"{seconds / max(steps, 1):.1f} s/step")
        return ", ".join(parts)
    if name.startswith("evaluate"):
        metrics = json.loads((w / "metrics.json").read_text())
        return ", ".join(f"{stage} {metrics[f'time.{stage}.seconds']:.0f}" for stage in
                         ("load", "encode", "baseline", "masked", "readback", "retrieval", "implications")
                         if f"time.{stage}.seconds" in metrics) + " s"
    if name.startswith("suggest"):
        found = re.search(r"SUGGEST (.*)", output)
        return found.group(1) if found else ""
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="folder for every stage's output (reused)")
    parser.add_argument("--posts", type=int, default=5_800_000, help="posts of the generated export")
    parser.add_argument("--config", default="small", help="hub_configs name of the model trained")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--eval-posts", type=int, default=10_000, help="test posts evaluated")
    parser.add_argument("--embed-posts", type=int, default=10_000)
    parser.add_argument("--suggest-calls", type=int, default=300)
    parser.add_argument("--fresh", action="store_true", help="delete WORKDIR first")
    parser.add_argument("--until", metavar="STAGE", help="stop after the stage whose name starts with STAGE (e.g. train)")
    args = parser.parse_args()
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "logs").mkdir(exist_ok=True)
    print(f"{args.posts:,} posts, model {args.config}; logs in {args.workdir / 'logs'}")
    print(f"{'stage':<30} {'seconds':>8} {'CPU s':>8} {'peak GB':>8}  {'target':<7} notes", flush=True)
    rows_file = args.workdir / "rows.json"  # the printed row of every stage run so far
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    for name, command, done in stages(args):
        if name.startswith("embed") and not (args.workdir / "tagsets.txt").is_file():
            write_tagsets(args.workdir / "data", args.workdir / "tagsets.txt", args.embed_posts)
        log = args.workdir / "logs" / f"{name.split()[0]}.log"
        if done.exists() and name in rows:
            print(rows[name] + "  (an earlier run)", flush=True)
        else:
            seconds, cpu, peak, output = timed(name, command, log)
            if name.startswith("suggest"):
                done.write_text(output)
            met = peak < MEMORY_TARGET_GB and seconds <= TARGET_SECONDS.get(name.split()[0], float("inf"))
            rows[name] = (f"{name:<30} {seconds:>8.1f} {cpu:>8.1f} {peak:>8.2f}  {'ok' if met else 'MISSED':<7} "
                          f"{notes(name, output, args)}")
            rows_file.write_text(json.dumps(rows, indent=1))
            print(rows[name], flush=True)
        if args.until and name.startswith(args.until):
            break


if __name__ == "__main__":
    main()
