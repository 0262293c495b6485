"""Read-back tables of runs cached by ``bench/bench_recipe.py``: the model beside the linear code, mean ± sd.

    python bench/readback_table.py --workdir runs/recipe --names OLD,NEW [--settings default,sparse-traits]
        [--seeds 0,1,2] [--posts 20000]

For every setting, one row per (run name, metric): read-back F1 (P = R) at each width against the linear
code of the same width (``linear.readback.*``, the same for every run of a corpus), the paired margin,
what each width adds, rare tags, the character share, and the completion and retrieval metrics the
recipe also has to keep (traits, implications, masked F1, retrieval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

WIDTHS = (32, 64, 128)
OTHER = (
    ("traits R-precision", "model.traits.r_precision"),
    ("traits R-prec., rarest quarter", "model.traits.rarest_quarter.r_precision"),
    ("implications recall@5", "model.implications.recall@5"),
    ("masked micro-F1", "model.masked.micro_f1"),
    ("retrieval character r@10", "model.retrieval.character.recall@10"),
    ("retrieval artist r@10", "model.retrieval.artist.recall@10"),
    ("train wall s", "time.train.wall_seconds"),
)


def mean_sd(values: list[float | None]) -> str:
    """``mean ± sd`` over the runs that have the value (sd with ddof 1), the value alone for one, ``–`` for none."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "–"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def rows_of(runs: list[dict]) -> list[tuple[str, list, list]]:
    """(label, model values, linear-code values) for every read-back row, then the other metrics."""
    get = lambda key: [r.get(key) for r in runs]  # noqa: E731
    rows = []
    for d in WIDTHS:
        rows.append((f"read-back F1 dim{d}", get(f"model.readback.dim{d}.micro_f1"),
                     get(f"linear.readback.dim{d}.micro_f1")))
    for d in WIDTHS:
        model, linear = get(f"model.readback.dim{d}.micro_f1"), get(f"linear.readback.dim{d}.micro_f1")
        rows.append((f"margin over linear dim{d}", [m - l if m is not None and l is not None else None
                                                      for m, l in zip(model, linear)], []))
    for d in WIDTHS[1:]:
        rows.append((f"added by dim{d}", get(f"model.readback.dim{d}.added_micro_f1"),
                     get(f"linear.readback.dim{d}.added_micro_f1")))
    rows.append(("rare tags F1 dim128", get("model.readback.dim128.rest.micro_f1"),
                 get("linear.readback.dim128.rest.micro_f1")))
    rows.append(("character read back dim128", get("model.readback.dim128.character_share"),
                 get("linear.readback.dim128.character_share")))
    rows += [(label, get(key), []) for label, key in OTHER]
    return rows


def main() -> None:
    """Print one markdown table per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--names", required=True, help="run names (bench_recipe.py --name), comma separated")
    parser.add_argument("--settings", default="default")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--posts", type=int, default=20_000)
    args = parser.parse_args()
    names = args.names.split(",")
    for setting in args.settings.split(","):
        runs = {name: [] for name in names}
        for seed in args.seeds.split(","):
            for name in names:
                path = args.workdir / f"{setting}-{args.posts}-s{seed}" / name / "metrics.json"
                if path.is_file():
                    runs[name].append(json.loads(path.read_text()))
        counts = ", ".join(f"{name}: {len(r)}" for name, r in runs.items())
        print(f"\n{setting} (seeds {args.seeds}; runs {counts})\n")
        print("| metric | " + " | ".join(names) + " | linear code |")
        print("|---|" + "---|" * (len(names) + 1))
        table = {name: rows_of(r) for name, r in runs.items()}
        for index, (label, _, _) in enumerate(table[names[0]]):
            linear = next((table[n][index][2] for n in names if any(v is not None for v in table[n][index][2])), [])
            cells = [mean_sd(table[name][index][1]) for name in names]
            print(f"| {label} | " + " | ".join(cells) + f" | {mean_sd(linear)} |")


if __name__ == "__main__":
    main()
