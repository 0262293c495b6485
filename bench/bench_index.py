"""Search-index cost at 1M posts: build time, memory, query latency and recall of exact, HNSW and IVF.

Embedding 1M posts with a model would take far longer than the index itself on a small CPU machine, so
the index is benchmarked on vectors that look like post embeddings: unit vectors of dim 64 drawn around
cluster centres (posts of one character, artist or theme lie close together). Centres are Gaussian with
a per-dimension scale decaying like 1/sqrt(i+1) (embeddings spread most along few directions), cluster
sizes follow Zipf's law (a few huge clusters, many tiny ones), and each point is its centre plus
Gaussian noise of a per-cluster width, normalised. Queries are fresh draws from the same mixture, not
in the index. Every index is built with ``booru_embed.index.build_faiss_index`` (the code
``booru-embed index`` runs) and compared against exact search (``IndexFlatIP``), the baseline:

  build s    time to build (IVF: k-means training included), CPU and wall
  peak MB    peak resident memory of building, above the vectors (each index in its own forked process)
  1-query ms median CPU time of one query at a time (top 10)
  batch ms   CPU time per query in one batch of all queries (top 10)
  recall@10  share of the exact top 10 that the index returns in its top 10

faiss runs on one thread by default, so CPU time is what the work costs on an idle core: on a machine
shared with other jobs wall time mostly measures the queue.

    python bench/bench_index.py [--posts 1000000] [--queries 1000] [--dim 64] [--threads 1]
    python bench/bench_index.py --vectors INDEX_DIR/shards/00000.npy --queries 500   # real embeddings
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np

from booru_embed.index import build_faiss_index, index_parameters

SINGLE_QUERIES = 100  # queries timed one at a time (the median is reported)


def clustered_unit_vectors(count: int, dim: int, clusters: int, rng: np.random.Generator,
                           centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors (float32) from the cluster mixture described above; also returns the centres."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(np.arange(1, dim + 1))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    members = rng.choice(clusters, size=count, p=weights / weights.sum())
    widths = np.random.default_rng(1).uniform(0.02, 0.08, size=clusters).astype(np.float32)  # per-cluster spread
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        part = members[start : start + 100_000]
        noise = rng.standard_normal((len(part), dim), dtype=np.float32) * widths[part, None]
        block = centres[part] + noise
        out[start : start + len(part)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centres


def peak_rss_reset() -> int:
    """Reset the process' peak-RSS counter (Linux) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _timed(work) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of ``work()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def measure(name: str, kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray | None,
            parameters: dict[str, int], search_settings: list[dict[str, int]]) -> list[dict]:
    """``_measure`` in a forked child process, so each index's peak memory is its own (vectors shared, not copied)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=lambda: queue.put(_measure(name, kind, vectors, queries, truth, parameters,
                                                              search_settings)))
    child.start()
    rows = queue.get()
    child.join()
    return rows


def _measure(name: str, kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray | None,
             parameters: dict[str, int], search_settings: list[dict[str, int]]) -> list[dict]:
    """Build one index, then time and score its searches for each setting in ``search_settings``."""
    before = peak_rss_reset()
    build_cpu, build_wall, index = _timed(lambda: build_faiss_index(kind, [vectors], parameters))
    peak = _status_kb("VmHWM") * 1024 - before
    rows = []
    for setting in search_settings:
        if "ef_search" in setting:
            index.hnsw.efSearch = setting["ef_search"]
        if "nprobe" in setting:
            index.nprobe = setting["nprobe"]
        single = [_timed(lambda: index.search(query[None], 10))[0] for query in queries[:SINGLE_QUERIES]]
        batch_cpu, _, (_, found) = _timed(lambda: index.search(queries, 10))
        recall = 1.0 if truth is None else float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        label = ", ".join(f"{key} {value}" for key, value in {**parameters, **setting}.items() if key != "train_size")
        rows.append({"index": f"{name} ({label})" if label else name, "build_cpu": build_cpu,
                     "build_wall": build_wall, "peak": peak, "single": float(np.median(single)) * 1000,
                     "batch": batch_cpu / len(queries) * 1000, "recall": recall, "found": found})
        print(f"  {rows[-1]['index']}: built in {build_cpu:.1f} s CPU, recall@10 {recall:.3f}", flush=True)
    return rows


def main() -> None:
    """Parse arguments, build the three kinds of index and print the table."""
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--vectors", type=Path,
                        help="benchmark these (n, dim) vectors instead, e.g. INDEX_DIR/shards/00000.npy; "
                             "--queries rows are held out as queries")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss OpenMP threads (default 1: on a shared machine more threads wait on each other)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    if args.vectors:
        loaded = np.load(args.vectors).astype(np.float32)
        held_out = np.zeros(len(loaded), dtype=bool)
        held_out[rng.choice(len(loaded), args.queries, replace=False)] = True
        vectors, queries = loaded[~held_out], loaded[held_out]
        source = f"from {args.vectors}"
    else:
        vectors, centres = clustered_unit_vectors(args.posts, args.dim, args.clusters, rng)
        queries, _ = clustered_unit_vectors(args.queries, args.dim, args.clusters, rng, centres)
        source = f"{args.clusters:,} clusters"
    print(f"{len(vectors):,} vectors of dim {vectors.shape[1]} ({vectors.nbytes / 2**20:.0f} MB), {source}, "
          f"{len(queries)} queries; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")

    exact = measure("exact", "exact", vectors, queries, None, {}, [{}])
    truth = exact[0]["found"]
    hnsw = index_parameters("hnsw", len(vectors))
    rows = exact + measure("hnsw", "hnsw", vectors, queries, truth, hnsw,
                           [{"ef_search": ef} for ef in (16, 32, 64, 128)])
    ivf = index_parameters("ivf", len(vectors))
    rows += measure("ivf", "ivf", vectors, queries, truth, ivf,
                    [{"nprobe": n} for n in (8, 16, 32, 64)])

    base_single, base_batch = rows[0]["single"], rows[0]["batch"]
    print("\n| index | build s CPU | build s wall | peak MB | 1-query ms | vs exact | batch ms/query | vs exact | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['index']} | {row['build_cpu']:.1f} | {row['build_wall']:.1f} | {row['peak'] / 2**20:.0f} | "
              f"{row['single']:.3f} | "
              f"{base_single / row['single']:.1f}x | {row['batch']:.4f} | {base_batch / row['batch']:.1f}x | "
              f"{row['recall']:.3f} |")


if __name__ == "__main__":
    main()
