"""Benchmark ``build-dataset`` against pyarrow's raw CSV parse of the same file, in the same run.

    python bench/bench_build_dataset.py [--posts 1000000] [--workdir runs/bench]

Generates (or reuses) ``WORKDIR/synthetic-<posts>.csv`` and runs each stage in a fresh child
process, so every stage's peak memory (max RSS, from ``wait4``) is its own. Times are measured in
the child around the work itself (imports excluded), as wall time and as CPU time of all the
child's threads; on a busy shared machine the CPU-time ratio is the steadier of the two. The baseline is the faster of pyarrow's
whole-file ``read_csv`` and streaming ``open_csv`` with default options (type inference, all
threads): just parsing, no checks, no tag splitting, nothing written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = {
    "pyarrow read_csv (raw parse)": """
import time, pyarrow.csv as c
t, cpu = time.perf_counter(), time.process_time(); rows = c.read_csv(PATH).num_rows
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
""",
    "pyarrow open_csv (streaming raw parse)": """
import time, pyarrow.csv as c
t, cpu = time.perf_counter(), time.process_time(); rows = sum(b.num_rows for b in c.open_csv(PATH))
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
""",
    "booru-embed build-dataset": """
import time
from booru_embed.data.ingest import build_dataset
t, cpu = time.perf_counter(), time.process_time(); rows = build_dataset([PATH], OUT, progress=False)["rows_read"]
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
""",
}


def _run_stage(code: str, csv_path: Path, out_dir: Path) -> tuple[float, float, int, float]:
    """(seconds, CPU seconds, rows, peak RSS in MB) of ``code`` run in a fresh Python process."""
    script = f"PATH = {str(csv_path)!r}\nOUT = {str(out_dir)!r}\n{code}\nimport json; print(json.dumps([seconds, cpu, rows]))"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"stage failed with exit code {child.returncode}")
    seconds, cpu, rows = json.loads(output.strip().splitlines()[-1])
    return seconds, cpu, rows, usage.ru_maxrss / 1024


def main() -> int:
    """Generate or reuse the corpus, run the stages, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1_000_000, help="posts in the generated CSV (default 1000000)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench"), help="where the CSV and the build go")
    args = parser.parse_args()
    csv_path = args.workdir / f"synthetic-{args.posts}.csv"
    if not csv_path.is_file():
        from booru_embed.data.synthetic import default_tag_data, generate_corpus

        start = time.perf_counter()
        generate_corpus(csv_path, args.posts, seed=0, tag_data=default_tag_data())
        print(f"generated {csv_path} in {time.perf_counter() - start:.1f} s")
    size_mb = csv_path.stat().st_size / 1e6
    print(f"input: {csv_path} ({args.posts} posts, {size_mb:.0f} MB), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} before the run")
    results = {name: _run_stage(code, csv_path, args.workdir / "data") for name, code in STAGES.items()}
    baseline = max(rows / seconds for seconds, _, rows, _ in list(results.values())[:2])
    cpu_baseline = max(rows / cpu for _, cpu, rows, _ in list(results.values())[:2])
    print("\n| stage | seconds | posts/s | MB/s | vs raw parse | CPU s | posts per CPU s, vs raw | peak RSS (MB) |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, (seconds, cpu, rows, rss) in results.items():
        rate = rows / seconds
        print(f"| {name} | {seconds:.2f} | {rate:,.0f} | {size_mb / seconds:.0f} | {rate / baseline:.0%} | {cpu:.2f} | "
              f"{rows / cpu / cpu_baseline:.0%} | {rss:.0f} |")
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f} (the machine is shared; high load = noisy times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
