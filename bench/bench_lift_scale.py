"""Time and peak memory of counting the subject lift (``sparse_index.training_lift``) at Danbooru's size.

``booru-embed index`` counts it once per build, on the training split's seeded sample of ``LIFT_POSTS``
(1M) posts without the held-out slice: encode the sample, form its posts x tags matrix, and multiply it
with its character and artist columns a chunk at a time (``sparse_vectors.subject_lift_weights``). Uses
the DATA_DIRs and the tokenizer that ``bench/bench_evaluate_scale.py`` writes into WORKDIR (real tag
names drawn by the real post counts, a 142,848-token vocabulary); each size runs in a fresh process under
``/usr/bin/time -v``.

    python bench/bench_evaluate_scale.py --workdir /tmp/bench_eval --train-posts 1000000,5800000 --max-posts 2000
    python bench/bench_lift_scale.py --workdir /tmp/bench_eval [--train-posts 1000000,5800000] [--held-out 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench_scale import time_v_figures  # this folder is first on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]


def count_lift(data_dir: str, model_dir: str, held_out: int) -> None:
    """Count the lift of DATA_DIR's training split without its first ``held_out`` post ids; print a summary."""
    import numpy as np

    from booru_embed.data.splits import open_split
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from booru_embed.sparse_index import training_lift

    tokenizer = BooruEmbedTokenizer.from_pretrained(model_dir)
    training = open_split(Path(data_dir), "train")
    ids = np.asarray(training.select(range(held_out)).select_columns(["id"]).with_format("numpy")[:]["id"])
    lift = training_lift(tokenizer, training, ids)
    above = int((lift > lift.min()).sum())
    print(f"vocab {len(lift):,}, {above:,} tags above the floor, largest weight {lift.max():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--train-posts", default="1000000,5800000")
    parser.add_argument("--held-out", type=int, default=2000, help="post ids left out, as a validation slice is")
    parser.add_argument("--count", nargs=2, metavar=("DATA_DIR", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:
        count_lift(*args.count, args.held_out)
        return
    print(f"{'training posts':>15} {'seconds':>8} {'CPU s':>7} {'peak MB':>8}  result")
    for posts in (int(p) for p in args.train_posts.split(",")):
        data_dir = args.workdir / f"data_{posts}"
        command = ["/usr/bin/time", "-v", sys.executable, __file__, "--workdir", str(args.workdir), "--held-out",
                   str(args.held_out), "--count", str(data_dir), str(args.workdir / "model_tiny")]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
        seconds, cpu, peak_kb = time_v_figures(done.stderr)
        print(f"{posts:>15,} {seconds:>8.1f} {cpu:>7.1f} {peak_kb / 1024:>8.0f}  {done.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
