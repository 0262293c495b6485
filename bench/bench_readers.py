"""Benchmark ``build-dataset`` on booru-chars inputs against the CSV export of the same posts, in the same run.

    python bench/bench_readers.py [--posts 100000] [--workdir runs/bench-readers]

Generates a synthetic CSV export, writes the same posts as a booru-chars TSV pair (tag rows
shuffled, so not sorted by post id) and as a booru-chars sqlite database, and builds a DATA_DIR
from each in a fresh child process (peak memory, max RSS from ``wait4``, is each build's own).
Prints wall time, posts per second, tag rows per second, peak RSS and the time ratio to the CSV build.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from booru_embed.data.synthetic import generate_corpus
from booru_embed.modeling.categories_booru_embed import DANBOORU_CATEGORY_NAMES

CATEGORIES = ("meta", "general", "artist", "copyright", "character")
NUMBER = {name: number for number, name in DANBOORU_CATEGORY_NAMES.items()}
BUILD = """
import json, time
from booru_embed.data.ingest import build_dataset
t = time.perf_counter(); info = build_dataset({inputs!r}, {out!r}, progress=False)
print(json.dumps([time.perf_counter() - t, info["kept"], info["rejected"]]))
"""


def _write_inputs(folder: Path, posts: int) -> tuple[Path, int]:
    """The CSV export, the TSV pair and the sqlite file of the same posts; returns (CSV, tag rows)."""
    csv_path = folder / "posts.csv"
    generate_corpus(csv_path, posts, seed=1)
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    long = [("danbooru", r["id"], tag, "0", str(NUMBER[c])) for r in rows for c in CATEGORIES
            for tag in r[f"tag_string_{c}"].split()]
    random.Random(0).shuffle(long)
    with open(folder / "bc_tags.tsv", "w", encoding="utf-8") as handle:
        handle.write("BOORU\tFID\tTAG\tTAG_ID\tTAG_CAT\n" + "".join("\t".join(t) + "\n" for t in long))
    with open(folder / "bc.tsv", "w", encoding="utf-8") as handle:
        handle.write("BOORU\tFID\tRATING\tSCORE\n"
                     + "".join(f"danbooru\t{r['id']}\t{r['rating']}\t{r['score']}\n" for r in rows))
    (folder / "bc.sqlite").unlink(missing_ok=True)
    with sqlite3.connect(folder / "bc.sqlite") as db:
        db.execute("CREATE TABLE files (booru TEXT, fid INTEGER, rating TEXT, score INTEGER)")
        db.execute("CREATE TABLE tags (booru TEXT, fid INTEGER, tag TEXT, tag_id INTEGER, tag_cat INTEGER)")
        db.executemany("INSERT INTO files VALUES ('danbooru', ?, ?, ?)", [(r["id"], r["rating"], r["score"]) for r in rows])
        db.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?)", long)
    return csv_path, len(long)


def _build(inputs: list[str], out: Path) -> tuple[float, int, float]:
    """(seconds, posts kept, peak RSS in MB) of one build in a fresh process."""
    child = subprocess.Popen([sys.executable, "-c", BUILD.format(inputs=inputs, out=str(out))],
                             stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build of {inputs} failed")
    seconds, kept, rejected = json.loads(output.strip().splitlines()[-1])
    if rejected:
        raise SystemExit(f"build of {inputs} rejected {rejected} rows")
    return seconds, kept, usage.ru_maxrss / 1024


def main() -> int:
    """Write the inputs, build each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000, help="posts to generate (default 100000)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-readers"), help="where inputs and builds go")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # written in a child process: a child's peak RSS would otherwise start from this process's size
    written = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, 'bench'); "
                              "from bench_readers import _write_inputs; from pathlib import Path; "
                              f"print(json.dumps(str(_write_inputs(Path({str(args.workdir)!r}), {args.posts})[1])))"],
                             check=True, capture_output=True, text=True)
    csv_path, tag_rows = args.workdir / "posts.csv", int(json.loads(written.stdout.strip().splitlines()[-1]))
    kinds = {"CSV export (baseline)": [str(csv_path)], "booru-chars TSV pair": [str(args.workdir / "bc_tags.tsv")],
             "booru-chars sqlite": [str(args.workdir / "bc.sqlite")]}
    print(f"{args.posts} posts, {tag_rows} tag rows\n")
    print("| input | seconds | posts/s | tag rows/s | peak RSS MB | time vs CSV |")
    print("|---|---:|---:|---:|---:|---:|")
    baseline = None
    for kind, inputs in kinds.items():
        seconds, kept, rss = _build(inputs, args.workdir / "data")
        baseline = baseline or seconds
        if kept != args.posts:
            raise SystemExit(f"{kind}: kept {kept} of {args.posts} posts")
        print(f"| {kind} | {seconds:.2f} | {kept / seconds:,.0f} | {tag_rows / seconds:,.0f} | {rss:.0f} | "
              f"{seconds / baseline:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
