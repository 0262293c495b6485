"""The README's results table: one recipe's runs cached by ``bench/bench_recipe.py``, every setting side by side.

    python bench/summary_table.py --workdir runs/recipe --name R2 \\
        --settings default,sparse-traits,many-characters,danbooru-pairs --seeds 0,1,2

Each cell is "model / baseline", the mean over the seeds found (the count is in the header), the
better side in bold; the baseline is the one the issues measure against: related tags for completion,
the linear code of the same width for read-back, the better of TF-IDF and BM25 (best ``b``) for the
hybrid search. Every figure comes from ``booru-embed evaluate``'s metrics (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROWS = (  # (label, model key, baseline keys: the best of them per run)
    ("masked-tag micro-F1 (related tags)", "model.masked.micro_f1", ("baseline.masked.micro_f1",)),
    ("character trait R-precision (related tags)", "model.traits.r_precision", ("baseline.traits.r_precision",)),
    ("implication recall@5 (related tags)", "model.implications.recall@5", ("baseline.implications.recall@5",)),
    ("read-back F1 at 128 dims (linear code)", "model.readback.dim128.micro_f1", ("linear.readback.dim128.micro_f1",)),
    ("read-back F1 at 32 dims (linear code)", "model.readback.dim32.micro_f1", ("linear.readback.dim32.micro_f1",)),
    ("same-character search, hybrid r@10 (TF-IDF / BM25)", "hybrid.retrieval.character.recall@10",
     ("baseline.retrieval.character.recall@10", "bm25.retrieval.character.recall@10")),
    ("same-artist search, hybrid r@10 (TF-IDF / BM25)", "hybrid.retrieval.artist.recall@10",
     ("baseline.retrieval.artist.recall@10", "bm25.retrieval.artist.recall@10")),
)


def cell(runs: list[dict], model_key: str, baseline_keys: tuple[str, ...]) -> str:
    """"model / baseline" means over ``runs`` (the better in bold), or a dash when a key is missing."""
    if not runs or any(model_key not in r or not all(k in r for k in baseline_keys) for r in runs):
        return "–"
    model = float(np.mean([r[model_key] for r in runs]))
    baseline = float(np.mean([max(r[k] for k in baseline_keys) for r in runs]))
    bold = lambda value, wins: f"**{value:.3f}**" if wins else f"{value:.3f}"
    return f"{bold(model, model >= baseline)} / {bold(baseline, baseline > model)}"


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the run name given to bench_recipe.py --name")
    parser.add_argument("--settings", default="default,sparse-traits,many-characters,danbooru-pairs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--posts", type=int, default=20000)
    args = parser.parse_args()
    settings = args.settings.split(",")
    runs = {}
    for name in settings:
        files = [args.workdir / f"{name}-{args.posts}-s{seed}" / args.name / "metrics.json" for seed in args.seeds.split(",")]
        runs[name] = [json.loads(f.read_text()) for f in files if f.is_file()]
    seeds = lambda n: f"{n} seed{'' if n == 1 else 's'}"
    print("| metric (model / baseline) | " + " | ".join(f"`{s}` ({seeds(len(runs[s]))})" for s in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for label, model_key, baseline_keys in ROWS:
        print(f"| {label} | " + " | ".join(cell(runs[s], model_key, baseline_keys) for s in settings) + " |")


if __name__ == "__main__":
    main()
