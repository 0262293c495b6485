"""Cost of `--embedding-init cooccurrence` on Danbooru-sized inputs, against ARPACK's truncated SVD.

Posts are drawn with Zipf-distributed tags over a 32k vocabulary (no structure: the worst case for
an iterative eigensolver, whose convergence needs a spectral gap). For each size the table gives the
seconds of the randomised range finder that `cooccurrence_embeddings` uses and, on the small size,
of `scipy.sparse.linalg.svds` (ARPACK) on the same matrix (up to width 256), with the relative (Frobenius) error of
both rank-`dim` products against the exact cosine co-count matrix, which can be formed there.
`--one-thread` also times the range finder with torch (and so the Gram products) held to one thread,
in the same process, and prints the ratio: the gain of splitting the Gram products over the cores.

    python bench/bench_cooccurrence_init.py [--sizes 20000,200000,1000000] [--dims 128,768] [--vocab 32000] [--one-thread]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from booru_embed.cooccurrence import cooccurrence_embeddings

VOCAB = 32_000
ARPACK_MAX_POSTS = 20_000  # ARPACK and the dense error check run on small sizes only
ARPACK_MAX_DIM = 256  # at 768, ARPACK on 20k posts ran past 5 minutes (the randomised finder: seconds)


def zipf_posts(posts: int, vocab: int = VOCAB, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ``ids``, ``categories``, ``lengths`` of posts with 10-60 Zipf-distributed tags."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 60, posts)
    weights = 1.0 / np.arange(1, vocab - 9)
    ids = rng.choice(np.arange(10, vocab), size=int(lengths.sum()), p=weights / weights.sum())
    return ids, np.full(len(ids), 3), lengths


def arpack_rows(ids: np.ndarray, lengths: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The same rows from ARPACK's truncated SVD of the normalised incidence matrix."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    incidence = sp.csr_matrix((np.ones(len(ids), dtype=np.float32), (rows, ids)), shape=(len(lengths), VOCAB))
    incidence.sum_duplicates()
    incidence.data[:] = 1.0
    counts = np.asarray(incidence.sum(axis=0)).ravel()
    seen = counts > 0
    normalised = incidence[:, seen] @ sp.diags((1.0 / np.sqrt(counts[seen])).astype(np.float32))
    _, values, vt = svds(normalised, k=dim, random_state=0)
    return vt.T * values, normalised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,200000,1000000", help="posts per run, comma-separated")
    parser.add_argument("--dims", default="128,768", help="embedding widths (tiny 128, base 768)")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="tags the posts draw from (Danbooru: ~150,000)")
    parser.add_argument("--one-thread", action="store_true", help="also time the range finder on one thread")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"{'posts':>9} {'dim':>5} {f'randomised s ({threads} thr)':>22} {'1 thread s':>11} {'speedup':>8} "
          f"{'ARPACK s':>9} {'ratio':>6} {'err rand':>9} {'err ARPACK':>11}")
    for posts in (int(s) for s in args.sizes.split(",")):
        ids, categories, lengths = zipf_posts(posts, args.vocab)
        for dim in (int(d) for d in args.dims.split(",")):
            started = time.perf_counter()
            rows, seen = cooccurrence_embeddings(ids, categories, lengths, args.vocab, dim, seed=0)
            randomised = time.perf_counter() - started
            line = f"{posts:>9,} {dim:>5} {randomised:>22.1f}"
            if args.one_thread:
                torch.set_num_threads(1)
                started = time.perf_counter()
                cooccurrence_embeddings(ids, categories, lengths, args.vocab, dim, seed=0)
                single = time.perf_counter() - started
                torch.set_num_threads(threads)
                line += f" {single:>11.1f} {single / randomised:>8.2f}"
            else:
                line += f" {'':>11} {'':>8}"
            if posts <= ARPACK_MAX_POSTS and dim <= ARPACK_MAX_DIM and args.vocab == VOCAB:
                started = time.perf_counter()
                exact, normalised = arpack_rows(ids, lengths, dim)
                arpack = time.perf_counter() - started
                cosine = (normalised.T @ normalised).toarray()
                norm = np.linalg.norm(cosine)
                err_rand = np.linalg.norm(rows[seen] @ rows[seen].T - cosine) / norm
                err_arpack = np.linalg.norm(exact @ exact.T - cosine) / norm
                line += f" {arpack:>9.1f} {arpack / randomised:>6.1f} {err_rand:>9.3f} {err_arpack:>11.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
