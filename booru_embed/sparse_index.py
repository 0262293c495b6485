"""The sparse half of a search index: the posts' sparse tag vectors, their search engine, and their settings.

``INDEX_DIR/sparse.npz`` holds the unit-normalised sparse vectors (``BooruEmbedder.embed_sparse``) of
every post (posts x vocabulary). Two engines search them (``SPARSE_ENGINES``, ``index --sparse-engine``):

- ``exact``: the matrix is stored as CSC, so column ``t`` is tag ``t``'s posting list (the posts holding
  or expected to hold it, with their weights), and a query's cosine to every post is the sum of its few
  columns scaled by its weights, exact, with scipy (``SparsePostings``). Its cost is the length of the
  query tags' posting lists, which grows with the posts: ~12 ms at 1M posts, ~100 ms at 5.8M.
- ``seismic``: pyseismic-lsr's Seismic index (Bruch, Nardini, Rulli, Venturini, SIGIR 2024: posting
  lists pruned to their largest weights, cut into blocks with summary vectors that let a query skip
  most blocks) in ``sparse.{part}.index.seismic`` (one per ``SEISMIC_PART_POSTS`` posts) finds
  ``SEISMIC_CANDIDATES`` candidates per part, which are then scored exactly from the matrix, stored as
  CSR (the forward index; ``SeismicPostings``). Approximate:
  a post can be missed, never mis-scored. ``auto`` (the default) picks it above ``SEISMIC_MIN_POSTS``
  posts when pyseismic-lsr is installed (the ``index`` extra).

The sparse vectors' idf power, expansion terms, subject weight and lift exponent
(``sparse_vectors.SPARSE_SETTINGS``) and the hybrid's weight ``a`` in ``(1 - a) cos_dense + a cos_sparse`` are
chosen when the index is built, before the posts are embedded, never on the test split
(``choose_index_settings``): each validation post with a character (artist) tag and another tag is a query
without its character (artist) tags, a hit a neighbour among the 10 nearest sharing one, and the combination
whose hybrid has the best mean recall@10 over the two is stored in ``index_info.json``. The validation posts
(``validation_slice``) are the model's held-out slice of the training split (``data.validation_slice``), posts
it never trained on; a model without one (trained with ``--validation-posts 0``, or not a local folder) falls
back to ``VALIDATION_POSTS`` seeded training posts and the fixed ``FUSION_WEIGHT``, since on posts the model
trained on the dense side looks stronger than it is. The subject lift
(``sparse_vectors.subject_lift_weights``) is counted on the training split without the held-out posts
(``training_lift``: the seeded sample of ``LIFT_POSTS`` that ``evaluate``'s baseline counts; the seeded
fallback posts are counted, the model trained on them anyway) and stored as ``INDEX_DIR/subject_lift.npy``,
which the queries use as the posts did.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .evaluation.command import BASELINE_POSTS
from .evaluation.hybrid_retrieval import VALIDATION_POSTS, choose_search_settings
from .modeling.categories_booru_embed import TAG_CATEGORIES
from .sparse_vectors import SPARSE_SETTINGS, VECTOR_SETTINGS, column_weighted, subject_lift_weights, unit_rows

if TYPE_CHECKING:
    from .embedder import BooruEmbedder

SPARSE_FILE = "sparse.npz"
LIFT_FILE = "subject_lift.npy"  # (vocab,) float32 subject lift weights of the training posts
LIFT_POSTS = BASELINE_POSTS  # training posts the subject lift is counted on: evaluate's baseline sample
SEISMIC_FILE = "sparse.{part}"  # one Seismic index per part of the posts; pyseismic-lsr appends ``.index.seismic``
SPARSE_ENGINES = ("auto", "exact", "seismic")
SEISMIC_MIN_POSTS = 2_000_000  # auto engine: exact scoring up to here (~25 ms a query), Seismic above
SEISMIC_CANDIDATES = 200  # posts Seismic proposes per query, then scored exactly
SEISMIC_ADD_ROWS = 500_000  # rows handed to Seismic's dataset at once
# posts per Seismic index: building one holds ~2.3 GB per million posts (15.2 GB for all 5.8M at once), so
# larger collections are split into parts built one after the other and searched one after the other
SEISMIC_PART_POSTS = 3_000_000
# Seismic's settings (bench/bench_search_latency.py measured them at 1M and 5.8M posts, docs/search.md):
# posting lists pruned to 3,500 postings a tag on average, blocks summarised to 40 % of their energy; a query
# uses its 40 heaviest tags and skips a block only when its summary's score is under 0.3 of the heap's worst.
# At 1M generated posts: recall@10 against exact scoring 0.98 in ~1.6 ms, 1.3 GB on disk (60 % of the energy:
# 1.00 in ~3.5 ms, 1.7 GB; 20 tags and 0.7: 0.88-0.93)
SEISMIC_BUILD = {"n_postings": 3500, "summary_energy": 0.4}
SEISMIC_SEARCH = {"query_cut": 40, "heap_factor": 0.3}
VALIDATION_CATEGORIES = ("character", "artist")
VALIDATION_SEED = 0


def choose_engine(engine: str, count: int) -> str:
    """The sparse engine to build: ``engine`` itself, or for ``auto`` Seismic above ``SEISMIC_MIN_POSTS`` posts
    when pyseismic-lsr is installed, else exact. UsageError for an unknown name or a missing pyseismic-lsr."""
    from .errors import UsageError

    if engine not in SPARSE_ENGINES:
        raise UsageError(f"--sparse-engine must be one of {', '.join(SPARSE_ENGINES)}, got {engine!r}")
    installed = _seismic() is not None
    if engine == "seismic" and not installed:
        raise UsageError("--sparse-engine seismic needs pyseismic-lsr: pip install 'booru-embed[index]'")
    if engine == "auto":
        return "seismic" if count > SEISMIC_MIN_POSTS and installed else "exact"
    return engine


def _seismic() -> Any:
    """The ``seismic`` module of pyseismic-lsr, or None when it is not installed."""
    try:
        import seismic
    except ImportError:
        return None
    return seismic


def save_postings(folder: Path, shards: Iterable[Any], engine: str = "exact") -> dict[str, Any]:
    """Write the unit rows of the stacked shard matrices as ``sparse.npz`` (CSC for ``exact``, CSR plus the
    Seismic index for ``seismic``); return the engine and its size figures. Pass the shards as an iterator
    that holds no other reference to them, so that only the stacked matrix stays in memory."""
    from scipy import sparse

    matrix = unit_rows(sparse.vstack(list(shards)).tocsr())
    matrix = matrix.tocsc() if engine == "exact" else matrix.tocsr()
    matrix.sort_indices()
    path = folder / SPARSE_FILE
    sparse.save_npz(path, matrix, compressed=False)
    figures: dict[str, Any] = {"engine": engine, "nonzeros": int(matrix.nnz),
                               "nonzeros_per_post": round(matrix.nnz / max(matrix.shape[0], 1), 2),
                               "bytes": int(path.stat().st_size)}
    if engine == "seismic":
        started = time.perf_counter()
        parts = seismic_parts(matrix.shape[0])
        for part, (start, stop) in enumerate(parts):  # one at a time: a part's build memory is freed before the next
            seismic_part(matrix, start, stop).save(str(folder / SEISMIC_FILE.format(part=part)))
        figures["seismic"] = {**SEISMIC_BUILD, **SEISMIC_SEARCH, "candidates": SEISMIC_CANDIDATES,
                              "parts": len(parts),
                              "bytes": sum(int(seismic_path(folder, part).stat().st_size) for part in range(len(parts))),
                              "seconds": round(time.perf_counter() - started, 2)}
    return figures


def seismic_path(folder: Path, part: int) -> Path:
    """The file of Seismic index ``part`` in INDEX_DIR ``folder``."""
    return folder / f"{SEISMIC_FILE.format(part=part)}.index.seismic"


def seismic_parts(posts: int) -> list[tuple[int, int]]:
    """(start, stop) rows of each Seismic part: ``SEISMIC_PART_POSTS`` posts or fewer, of equal sizes."""
    count = max(1, -(-posts // SEISMIC_PART_POSTS))
    bounds = np.linspace(0, posts, count + 1).round().astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def seismic_part(matrix: Any, start: int, stop: int) -> Any:
    """A pyseismic-lsr index (large-vocabulary variant, ``SEISMIC_BUILD``) of CSR rows ``start:stop`` of
    ``matrix``, row ``i`` as document ``"i"``."""
    dataset = _seismic().SeismicDatasetLV()
    for low in range(start, stop, SEISMIC_ADD_ROWS):  # bounded int64 copies of the indices
        rows = matrix[low : min(stop, low + SEISMIC_ADD_ROWS)]
        dataset.add_documents_by_id([str(row) for row in range(low, low + rows.shape[0])],
                                    rows.indices.astype(np.int64), rows.data.astype(np.float32),
                                    rows.indptr.astype(np.int64))
    return _seismic().SeismicIndexLV.build_from_dataset(dataset, **SEISMIC_BUILD)


def build_seismic(matrix: Any) -> list[Any]:
    """The Seismic indexes of all rows of ``matrix``, one per part (``seismic_parts``), held in memory."""
    return [seismic_part(matrix, start, stop) for start, stop in seismic_parts(matrix.shape[0])]


def load_postings(folder: Path, info: dict[str, Any]) -> SparsePostings | SeismicPostings:
    """The sparse engine an index was built with (``info`` is index_info.json's ``sparse`` part)."""
    from scipy import sparse

    matrix = sparse.load_npz(folder / SPARSE_FILE)
    if info.get("engine", "exact") == "exact":
        return SparsePostings(matrix.tocsc())
    seismic = _seismic()
    if seismic is None:
        from .errors import UsageError

        raise UsageError(f"{folder} was built with the Seismic sparse engine: pip install 'booru-embed[index]'")
    settings = info.get("seismic", SEISMIC_SEARCH)
    indexes = [seismic.SeismicIndexLV.load(str(seismic_path(folder, part))) for part in range(settings.get("parts", 1))]
    return SeismicPostings(matrix.tocsr(), indexes, settings)


class SparsePostings:
    """The exact engine: sparse cosines of a query to every post, from the CSC inverted index."""

    def __init__(self, matrix: Any) -> None:
        """Wrap a (posts, vocab) CSC matrix of unit rows (use ``load_postings``)."""
        self.matrix = matrix

    def __len__(self) -> int:
        """The number of posts."""
        return int(self.matrix.shape[0])

    def scores(self, query: Any) -> np.ndarray:
        """(posts,) float32 cosine of one query row (a 1 x vocab sparse matrix, unit norm or zero) to every post."""
        row = query.tocsr()
        columns = self.matrix[:, row.indices]  # the query tags' posting lists
        return np.asarray(columns @ row.data.astype(np.float32)).ravel()

    def top(self, query: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines) of the ``count`` posts nearest to one query row, best first, zero cosines left out."""
        scores = self.scores(query)
        rows = top_rows(scores, count)
        rows = rows[scores[rows] > 0]
        return rows, scores[rows]


class SeismicPostings:
    """The Seismic engine: candidates from the pruned index, their cosines exact from the CSR forward index."""

    def __init__(self, matrix: Any, indexes: list[Any], search: dict[str, Any]) -> None:
        """Wrap the (posts, vocab) CSR matrix of unit rows, the loaded Seismic index of each part and the
        search settings."""
        self.matrix, self.indexes = matrix, indexes
        self.query_cut, self.heap_factor = int(search["query_cut"]), float(search["heap_factor"])
        self.candidates = int(search.get("candidates", SEISMIC_CANDIDATES))
        self._string = _seismic().get_seismic_string()

    def __len__(self) -> int:
        """The number of posts."""
        return int(self.matrix.shape[0])

    def scores(self, query: Any) -> np.ndarray:
        """(posts,) float32 exact cosine of one query row to every post (a pass over the whole forward index)."""
        return np.asarray(self.matrix @ query.tocsr().T.toarray().astype(np.float32)).ravel()

    def scores_at(self, query: Any, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) float32 exact cosines of one query row to posts ``rows``."""
        if not len(rows):
            return np.zeros(0, dtype=np.float32)
        row = query.tocsr()
        dense = np.zeros(self.matrix.shape[1], dtype=np.float32)
        dense[row.indices] = row.data
        return np.asarray(self.matrix[rows] @ dense, dtype=np.float32).ravel()

    def top(self, query: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact cosines) of the best of Seismic's candidates for one query row, best first, at most
        ``count``, zero cosines left out."""
        row = query.tocsr()
        if row.nnz == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        components = np.array([str(c) for c in row.indices], dtype=self._string)
        found = [int(doc) for index in self.indexes  # each part proposes its own candidates
                 for _, _, doc in index.search("q", components, row.data.astype(np.float32),
                                               max(count, self.candidates), self.query_cut, self.heap_factor)]
        rows = np.unique(np.array(found, dtype=np.int64))
        scores = self.scores_at(row, rows)
        best = top_rows(scores, count)
        best = best[scores[best] > 0]
        return rows[best], scores[best]


def top_rows(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest scores, largest first (ties in index order)."""
    count = min(count, len(scores))
    chosen = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def posts_at(table: Any, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows ``rows`` of a split (a ``datasets.Dataset``) as tag-set dicts by category."""
    columns = [c for c in (*TAG_CATEGORIES, "rating", "score") if c in table.column_names]
    return table.select(rows).select_columns(columns).to_list()


def validation_slice(model_dir: str | Path, training: Any) -> tuple[list[dict[str, Any]], str, np.ndarray]:
    """(posts, source, their post ids) the search settings are chosen on: the model's held-out posts found in
    ``training`` (source ``held-out``), else ``VALIDATION_POSTS`` seeded posts of ``training`` (source ``training``)."""
    from .data.validation_slice import read_validation_ids, rows_with_ids

    ids = read_validation_ids(model_dir) if Path(model_dir).is_dir() else None
    rows = rows_with_ids(training, ids) if ids is not None else np.zeros(0, dtype=np.int64)
    source = "held-out"
    if len(rows) < 2:
        rows = np.sort(np.random.default_rng(VALIDATION_SEED).permutation(len(training))[:VALIDATION_POSTS])
        source = "training"
    post_ids = np.asarray(training.select(rows).select_columns(["id"]).with_format("numpy")[:]["id"], dtype=np.int64)
    return posts_at(training, rows), source, post_ids


def training_lift(tokenizer: Any, training: Any, held_out_ids: np.ndarray) -> np.ndarray:
    """(vocab,) subject lift weights (``sparse_vectors.subject_lift_weights``) of the training split's posts, the
    seeded sample of ``LIFT_POSTS`` that ``evaluate`` counts, without the posts ``held_out_ids``."""
    from .cooccurrence import incidence_matrix
    from .evaluation.evaluator import encode_sample
    from .sequences import TokenInfo, flat_posts

    info = TokenInfo.from_tokenizer(tokenizer)
    table = encode_sample(tokenizer, training, LIFT_POSTS, "train").with_format("arrow")[:]
    held_out = np.flatnonzero(np.isin(table["id"].to_numpy(), held_out_ids))
    ids, _, lengths = flat_posts(table)
    incidence = incidence_matrix(ids, lengths, info.vocab_size, counted=info.tag_candidates()[ids])
    return subject_lift_weights(incidence, info.token_categories, exclude_rows=held_out)


def choose_index_settings(embedder: BooruEmbedder, posts: Sequence[dict[str, Any]], dim: int, scale: float,
                          weights: Sequence[float], lift_weights: np.ndarray,
                          ) -> tuple[tuple[float, int, float, float], float, dict[str, float]]:
    """((idf power, expansion terms, subject weight, lift exponent), hybrid weight among ``weights``) with the
    best mean recall@10 on the character and artist cases of ``posts``, and every combination's mean (module
    docstring); ``lift_weights`` are the training posts' subject lift (``training_lift``).

    Each (power, terms) pair is embedded once; its subject weights and lift scale that matrix's columns."""
    dense, lexical, labels = [], {setting: [] for setting in SPARSE_SETTINGS}, []
    categories = np.asarray(embedder.tokenizer.token_categories)
    for category in VALIDATION_CATEGORIES:
        cases = [({k: v for k, v in post.items() if k != category}, post[category]) for post in posts
                 if post.get(category) and any(post.get(c) for c in TAG_CATEGORIES if c != category)]
        if len(cases) < 2:
            continue
        queries = [query for query, _ in cases]
        number: dict[str, int] = {}  # tag name -> label number
        dense.append(embedder.embed(queries, dim=dim, progress=False))
        vectors = {(power, terms): embedder.embed_sparse(queries, terms=terms, scale=scale, power=power, progress=False)
                   for power, terms in VECTOR_SETTINGS}
        for setting, weighted in column_weighted(vectors, categories, lift_weights).items():
            lexical[setting].append(weighted)
        labels.append([{number.setdefault(tag, len(number)) for tag in tags} for _, tags in cases])
    return choose_search_settings(dense, lexical, labels, weights=weights)
