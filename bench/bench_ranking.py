"""The evaluation's per-group top-100 selection at Danbooru's vocabulary size, against the numpy way.

    python bench/bench_ranking.py [--vocab 150000] [--cases 256] [--repeats 3]

One batch of ``--cases`` cases (the evaluator's ``CASE_BATCH``) of random float32 scores over the
vocabulary, ranked in the evaluator's 8 tag groups (all, 5 categories, the 2000 most frequent, the
rest): ``RankingAccumulator.add`` (torch.topk once per column "atom", groups merged from their atoms)
against a numpy argpartition + sort of each group's columns (the evaluator's selection before), which
must give the same top 100 scores (numpy may order tied ones either way; ``top_k`` puts the lower tag
id first). CPU seconds (all threads) of the faster of ``--repeats`` runs each, and their ratio,
measured in the same process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from booru_embed.evaluation import RankingAccumulator
from booru_embed.evaluation.metrics import TOP_K


def numpy_group_top(scores: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each group's top ``TOP_K`` tag ids per case, best first, by argpartition + sort of its columns."""
    out = {}
    for name, members in groups.items():
        columns = np.flatnonzero(members)
        part = scores[:, columns]
        idx = np.argpartition(-part, TOP_K - 1, axis=1)[:, :TOP_K]
        order = np.argsort(-np.take_along_axis(part, idx, axis=1), axis=1, kind="stable")
        out[name] = columns[np.take_along_axis(idx, order, axis=1)]
    return out


def cpu_seconds(work, repeats: int) -> float:
    """The least CPU time (process, all threads) of ``repeats`` calls of ``work``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--cases", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    category = rng.choice(5, args.vocab, p=[0.14, 0.36, 0.05, 0.19, 0.26])  # Danbooru's vocabulary shares
    popular = np.zeros(args.vocab, dtype=bool)
    popular[rng.choice(args.vocab, 2000, replace=False)] = True
    groups = {"all": np.ones(args.vocab, dtype=bool)}
    groups.update({f"category{c}": category == c for c in range(5)})
    groups.update({"top2000": popular, "rest": ~popular})
    scores = rng.standard_normal((args.cases, args.vocab)).astype(np.float32)
    answers = [set(rng.choice(args.vocab, 7, replace=False).tolist()) for _ in range(args.cases)]
    accumulator = RankingAccumulator(groups)
    accumulator.add(scores, answers)
    reference = numpy_group_top(scores, groups)
    for name in groups:  # the same top 100 scores in the same order (tied ones may swap places in numpy's)
        kept = np.take_along_axis(scores, reference[name], axis=1).ravel()
        assert np.array_equal(accumulator.pairs[name][0][0], kept), name
    old = cpu_seconds(lambda: numpy_group_top(scores, groups), args.repeats)
    new = cpu_seconds(lambda: RankingAccumulator(groups).add(scores, answers), args.repeats)
    print(f"{args.cases} cases x {args.vocab:,} tags, 8 groups, top {TOP_K}: CPU seconds (best of {args.repeats})")
    print(f"{'numpy argpartition + sort per group':<44} {old:>7.3f}")
    print(f"{'RankingAccumulator.add (torch.topk per atom)':<44} {new:>7.3f}   {old / new:.1f}x less CPU")


if __name__ == "__main__":
    main()
