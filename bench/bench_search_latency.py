"""Query latency (one core, top 10) and index size of dense, sparse and hybrid search at Danbooru's scale.

    python bench/bench_search_latency.py [--posts 1000000] [--vocab 150000] [--tags 25] [--terms 16] [--queries 200] [--no-seismic]

Embedding a million posts with a model takes far longer than searching them, so the index holds
generated vectors that look like the real ones: the dense side is ``bench_index.clustered_unit_vectors``
(unit 64-d vectors around Zipf-sized clusters); each post's sparse vector holds about ``--tags`` present
tags plus ``--terms`` expansion tags, drawn from a Zipf law over ``--vocab`` tags (a few tags in most
posts, as ``1girl`` is, a long tail in few), weighted by their idf, rows unit-normalised: the non-zeros
and posting-list lengths of ``booru-embed index``'s ``sparse.npz``. Queries are fresh posts from the
same generators.

Searching goes through ``PostIndex`` itself (the code ``booru-embed search`` runs, the model call
aside): ``dense`` is faiss (exact up to 200k posts, IVF above, as ``--kind auto`` builds); ``sparse`` and
``hybrid`` run once with each sparse engine (``sparse_index``): ``exact`` scores the CSC inverted index,
``seismic`` (pyseismic-lsr) proposes candidates that are scored exactly; ``hybrid`` fuses both sides
(exact kind: every post's two scores; IVF: both sides' ``HYBRID_CANDIDATES`` best, scored exactly). The
Seismic rows give their recall@10 against the exact engine's top 10 (same dense side). Times are CPU
seconds of one thread per query (median), so a shared machine's queue does not count; the ratio is
against dense. The Seismic index is built with 2 threads (its build time and the process's peak RSS
after it are printed).
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

from booru_embed.index import FORMAT, PostIndex, build_faiss_index, choose_kind, index_parameters, shard_paths  # noqa: E402
from booru_embed.sparse_index import (SEISMIC_CANDIDATES, SEISMIC_FILE, SEISMIC_SEARCH, SPARSE_FILE, SeismicPostings,  # noqa: E402
                                      SparsePostings, build_seismic, save_postings, seismic_path, top_rows)
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
    import resource

    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--tags", type=int, default=25, help="mean present tags a post")
    parser.add_argument("--terms", type=int, default=16, help="expansion tags a post")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-seismic", action="store_true", help="leave out the Seismic engine")
    parser.add_argument("--seismic-candidates", default=str(SEISMIC_CANDIDATES),
                        help=f"comma-separated candidate counts to try (default: {SEISMIC_CANDIDATES})")
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
        figures = save_postings(folder, [lexical], "exact")
        del lexical
        kind = choose_kind("auto", args.posts)
        parameters = index_parameters(kind, args.posts)
        index = build_faiss_index(kind, [vectors], parameters)
        faiss.write_index(index, str(folder / "index.faiss"))
        dense_bytes = (folder / "index.faiss").stat().st_size
        del vectors, index
        info = {"format": FORMAT, "dim": DIM, "kind": kind, "parameters": parameters, "count": args.posts,
                "shard_size": args.posts, "model_dir": "-", "fusion_weight": 0.5,
                "sparse": {"terms": args.terms, "scale": 4.0, "engine": "exact"}}
        (folder / "index_info.json").write_text(json.dumps(info))
        np.save(folder / "ids.npy", np.arange(args.posts))
        build_seconds = time.perf_counter() - started
        index = PostIndex.load(folder)
        engines = {"exact": index.postings}
        seismic_note = ""
        if not args.no_seismic:
            forward = index.postings.matrix.tocsr()
            started = time.perf_counter()
            built = build_seismic(forward)
            seismic_seconds = time.perf_counter() - started
            for part, index_part in enumerate(built):
                index_part.save(str(folder / SEISMIC_FILE.format(part=part)))
            seismic_bytes = sum(seismic_path(folder, part).stat().st_size for part in range(len(built)))
            for candidates in (int(c) for c in args.seismic_candidates.split(",")):
                engines[f"seismic ({candidates})"] = SeismicPostings(forward, built, {**SEISMIC_SEARCH,
                                                                                    "candidates": candidates})
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
            seismic_note = (f"; Seismic ({SEISMIC_SEARCH}, {len(built)} part(s)) built in {seismic_seconds:.0f} s, "
                            f"{seismic_bytes / 1e6:.0f} MB on disk; peak RSS {peak:.1f} GB")
        dense_queries, _ = clustered_unit_vectors(args.queries, DIM, 1, rng, centres=centres)
        sparse_queries = unit_rows(sparse_posts(args.queries, args.vocab, args.tags, args.terms, rng, idf)[0]).tocsr()

        def dense(i: int) -> None:
            index.index.search(dense_queries[i : i + 1], 10)

        rows = {("dense", "-"): (timed_ms(dense, args.queries), None, dense_bytes)}
        exact_top: dict[str, list[set[int]]] = {}
        for engine, postings in engines.items():
            index.postings = postings
            found = {"sparse": [], "hybrid": []}

            def lexical_search(i: int) -> None:
                found["sparse"].append(set(postings.top(sparse_queries[i], 10)[0].tolist()))

            def hybrid(i: int) -> None:
                found["hybrid"].append(set(index._hybrid(dense_queries[i], sparse_queries[i], 10)[0].tolist()))

            for mode, work in (("sparse", lexical_search), ("hybrid", hybrid)):
                ms = timed_ms(work, args.queries)
                exact_top.setdefault(mode, found[mode])  # the exact engine runs first
                recall = float(np.mean([len(a & b) / max(len(b), 1) for a, b in zip(found[mode], exact_top[mode])]))
                size = figures["bytes"] + (seismic_bytes if engine != "exact" else 0) + (dense_bytes if mode == "hybrid" else 0)
                rows[(mode, engine)] = (ms, recall, size)
    print(f"{args.posts:,} posts, vocabulary {args.vocab:,}, {figures['nonzeros_per_post']} non-zeros a post "
          f"(~{args.tags} present + {args.terms} expansion), dense {DIM}-d {kind} ({parameters}); "
          f"built in {build_seconds:.0f} s; faiss {faiss.__version__}, 1 thread; {args.queries} queries{seismic_note}")
    print("| mode | sparse engine | median ms / query (CPU, 1 thread) | vs dense | recall@10 vs exact | index size MB |")
    print("|---|---|---|---|---|---|")
    base = rows[("dense", "-")][0]
    for (mode, engine), (ms, recall, size) in rows.items():
        shown = "-" if recall is None else f"{recall:.3f}"
        print(f"| {mode} | {engine} | {ms:.2f} | {ms / base:.1f}x | {shown} | {size / 1e6:.0f} |")


if __name__ == "__main__":
    main()
