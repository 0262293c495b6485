"""Query latency (one core, top 10) and index size of dense, sparse and hybrid search at Danbooru's scale.

    python bench/bench_search_latency.py [--posts 1000000] [--vocab 150000] [--tags 25] [--terms 16] [--queries 200]

Embedding a million posts with a model takes far longer than searching them, so the index holds
generated vectors that look like the real ones: the dense side is ``bench_index.clustered_unit_vectors``
(unit 64-d vectors around Zipf-sized clusters); each post's sparse vector holds about ``--tags`` present
tags plus ``--terms`` expansion tags, drawn from a Zipf law over ``--vocab`` tags (a few tags in most
posts, as ``1girl`` is, a long tail in few), weighted by their idf, rows unit-normalised: the non-zeros
and posting-list lengths of ``booru-embed index``'s ``sparse.npz``. Queries are fresh posts from the
same generators.

Searching goes through ``PostIndex`` itself (the code ``booru-embed search`` runs, the model call
aside): ``dense`` is faiss (exact up to 200k posts, IVF above, as ``--kind auto`` builds), ``sparse``
the exact CSC inverted-index scoring, ``hybrid`` the fusion of both (exact kind: every post's two
scores; IVF: both sides' ``HYBRID_CANDIDATES`` best, scored exactly). Times are CPU seconds of one
thread per query (median), so a shared machine's queue does not count; the ratio is against dense.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_index import clustered_unit_vectors  # noqa: E402

from booru_embed.index import FORMAT, PostIndex, shard_paths, _top_rows, build_faiss_index, choose_kind, index_parameters  # noqa: E402
from booru_embed.sparse_index import SPARSE_FILE, SparsePostings, save_postings  # noqa: E402
from booru_embed.sparse_vectors import idf_weights, unit_rows  # noqa: E402

DIM = 64
ZIPF_EXPONENT = 1.0  # tag frequencies on Danbooru fall roughly as 1 / rank


def sparse_posts(count: int, vocab: int, tags: int, terms: int, rng: np.random.Generator, idf: np.ndarray | None,
                 chunk: int = 200_000):
    """(count, vocab) CSR sparse vectors: Poisson(tags) + 1 present and ``terms`` expansion tags a post, Zipf-drawn."""
    from scipy import sparse

    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** ZIPF_EXPONENT)
    cdf /= cdf[-1]
    parts = []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        lengths = rng.poisson(tags, n) + 1 + terms
        cols = np.searchsorted(cdf, rng.random(int(lengths.sum()))).astype(np.int32)
        rows = np.repeat(np.arange(n), lengths)
        matrix = sparse.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n, vocab))
        matrix.data[:] = 1.0  # a tag drawn twice is one tag
        parts.append(matrix)
    matrix = sparse.vstack(parts).tocsr()
    if idf is None:
        idf = idf_weights(np.bincount(matrix.indices, minlength=vocab), count)
    matrix.data *= idf[matrix.indices]
    return matrix, idf


def timed_ms(work, queries: int) -> float:
    """Median CPU milliseconds of ``work(i)`` over ``queries`` calls."""
    times = []
    for i in range(queries):
        started = time.process_time()
        work(i)
        times.append(time.process_time() - started)
    return 1000 * float(np.median(times))


def main() -> None:
    """Build one index of generated vectors and print the latency and size table."""
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--tags", type=int, default=25, help="mean present tags a post")
    parser.add_argument("--terms", type=int, default=16, help="expansion tags a post")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        (folder / "shards").mkdir()
        started = time.perf_counter()
        vectors, centres = clustered_unit_vectors(args.posts, DIM, max(1, args.posts // 100), rng)
        np.save(shard_paths(folder, 0)["vectors"], vectors)
        lexical, idf = sparse_posts(args.posts, args.vocab, args.tags, args.terms, rng, None)
        figures = save_postings(folder / SPARSE_FILE, [lexical])
        del lexical
        kind = choose_kind("auto", args.posts)
        parameters = index_parameters(kind, args.posts)
        index = build_faiss_index(kind, [vectors], parameters)
        faiss.write_index(index, str(folder / "index.faiss"))
        dense_bytes = (folder / "index.faiss").stat().st_size
        del vectors, index
        info = {"format": FORMAT, "dim": DIM, "kind": kind, "parameters": parameters, "count": args.posts,
                "shard_size": args.posts, "model_dir": "-", "fusion_weight": 0.5,
                "sparse": {"terms": args.terms, "scale": 4.0}}
        (folder / "index_info.json").write_text(json.dumps(info))
        np.save(folder / "ids.npy", np.arange(args.posts))
        build_seconds = time.perf_counter() - started
        index = PostIndex.load(folder)
        dense_queries, _ = clustered_unit_vectors(args.queries, DIM, 1, rng, centres=centres)
        sparse_queries = unit_rows(sparse_posts(args.queries, args.vocab, args.tags, args.terms, rng, idf)[0]).tocsr()
        postings: SparsePostings = index.postings

        def dense(i: int) -> None:
            index.index.search(dense_queries[i : i + 1], 10)

        def lexical_search(i: int) -> None:
            _top_rows(postings.scores(sparse_queries[i]), 10)

        def hybrid(i: int) -> None:
            index._hybrid(dense_queries[i], postings.scores(sparse_queries[i]), 10)

        rows = {"dense": timed_ms(dense, args.queries), "sparse": timed_ms(lexical_search, args.queries),
                "hybrid": timed_ms(hybrid, args.queries)}
    print(f"{args.posts:,} posts, vocabulary {args.vocab:,}, {figures['nonzeros_per_post']} non-zeros a post "
          f"(~{args.tags} present + {args.terms} expansion), dense {DIM}-d {kind} ({parameters}); "
          f"built in {build_seconds:.0f} s; faiss {faiss.__version__}, 1 thread; {args.queries} queries")
    print("| mode | median ms / query (CPU, 1 thread) | vs dense | index size MB |")
    print("|---|---|---|---|")
    sizes = {"dense": dense_bytes, "sparse": figures["bytes"], "hybrid": dense_bytes + figures["bytes"]}
    for mode, ms in rows.items():
        print(f"| {mode} | {ms:.2f} | {ms / rows['dense']:.1f}x | {sizes[mode] / 1e6:.0f} |")


if __name__ == "__main__":
    main()
