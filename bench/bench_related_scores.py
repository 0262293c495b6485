"""The related-tags baseline's scores at Danbooru's vocabulary size, against one sparse product.

    python bench/bench_related_scores.py [--posts 1000000] [--vocab 146000] [--cases 1024] [--repeats 2]

Posts of 14-41 Zipf-distributed tags over ``--vocab`` tags (common tags co-occur with most of the
vocabulary, as on Danbooru), counted into ``CooccurrenceBaseline``; ``--cases`` cases of 20 visible
tags drawn from other such posts are scored two ways, which must agree to float32 rounding: one
sparse product of the cases' incidence with the whole cosine matrix, densified (the evaluator's way
before), and ``CooccurrenceBaseline.suggest_scores`` (rows at least half full as a dense product,
blocks of cases over threads). Wall and CPU seconds (all threads) of the faster of ``--repeats`` runs
each, and their ratio, in the same process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from booru_embed.cooccurrence import incidence_matrix, sparse_threads
from booru_embed.evaluation import CooccurrenceBaseline


def zipf_posts(rng: np.random.Generator, posts: int, vocab: int) -> list[np.ndarray]:
    """Posts as arrays of distinct tag ids, 14-41 tags each, tag t drawn with weight 1 / (t + 1)."""
    weights = 1.0 / np.arange(1, vocab + 1)
    lengths = rng.integers(14, 42, posts)
    ids = rng.choice(vocab, size=int(lengths.sum()), p=weights / weights.sum())
    return [np.unique(part) for part in np.split(ids, np.cumsum(lengths)[:-1])]


def best_of(work, repeats: int) -> tuple[float, float, object]:
    """(least wall seconds, least CPU seconds, last result) of ``repeats`` calls of ``work``."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = work()
        wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.process_time() - started_cpu)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=146_000)
    parser.add_argument("--cases", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    posts = zipf_posts(rng, args.posts, args.vocab)
    lengths = np.array([len(p) for p in posts])
    started = time.perf_counter()
    baseline = CooccurrenceBaseline(
        incidence_matrix(np.concatenate(posts), lengths, args.vocab), args.vocab,
        np.full(len(posts), -1), np.full(len(posts), -1), 1, 1,
    )
    built = time.perf_counter() - started
    visible = [rng.choice(p, min(20, len(p)), replace=False) for p in zipf_posts(rng, args.cases, args.vocab)]

    def one_sparse_product() -> np.ndarray:
        return (baseline._incidence(visible) @ baseline.cosine).toarray()

    old_wall, old_cpu, old = best_of(one_sparse_product, args.repeats)
    new_wall, new_cpu, new = best_of(lambda: baseline.suggest_scores(visible), args.repeats)
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)
    print(f"{args.posts:,} posts x {args.vocab:,} tags: cosine matrix {baseline.cosine.nnz:,} entries "
          f"(built in {built:.1f} s), {len(baseline.dense_rows)} rows at least half full; "
          f"{args.cases} cases of 20 visible tags; {sparse_threads()} threads; best of {args.repeats}")
    print(f"{'':<44} {'wall s':>8} {'CPU s':>8}")
    print(f"{'one sparse product, densified (before)':<44} {old_wall:>8.2f} {old_cpu:>8.2f}")
    print(f"{'suggest_scores (dense rows + threads)':<44} {new_wall:>8.2f} {new_cpu:>8.2f}   "
          f"{old_wall / new_wall:.2f}x less wall, {old_cpu / new_cpu:.2f}x less CPU")


if __name__ == "__main__":
    main()
