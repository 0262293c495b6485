"""A nearest-post search index: embed a DATA_DIR split with ``BooruEmbedder`` and search it, dense, sparse or hybrid.

Every post has two vectors from the model: the dense embedding (searched with faiss) and the sparse tag
vector (``BooruEmbedder.embed_sparse``, searched exactly through an inverted index, ``sparse_index.py``).
``search`` fuses them by default: ``(1 - a) cos_dense + a cos_sparse``, ``a`` chosen at build time on
training posts and stored in ``index_info.json`` (``sparse_vectors.py`` says why this fusion).

Building has two stages, both memory-bounded. First the split is read in slices of ``shard_size``
posts (65,536 by default) and embedded; each slice is written to ``INDEX_DIR/shards`` as its vectors,
its sparse vectors, its post ids and its tag strings (a one-column Arrow file), the vectors last and
atomically, so a shard whose vectors and sparse files exist is complete and ``--resume`` skips it. Then the vectors are streamed
from the memory-mapped shards into a faiss index of one of three kinds, all on inner product, which
is the cosine for the unit rows ``embed`` returns:

- ``exact`` (``IndexFlatIP``): every vector is compared; the reference, and fast enough up to
  ``EXACT_MAX_POSTS`` posts (a query over 1M posts costs about 20 ms of one CPU core).
- ``ivf`` (``IndexIVFFlat``): k-means cells, ``nprobe`` of them scanned per query; the automatic
  choice above ``EXACT_MAX_POSTS``. At 1M posts it builds in under 30 s of one core and answers in
  about 0.5 ms at recall@10 0.92 (bench/bench_index.py).
- ``hnsw`` (``IndexHNSWFlat``): a proximity graph, no training. On the benchmark's generated 1M vectors it cost
  5.6 times IVF's build time and gave lower recall at equal latency, so it is only chosen by ``--kind``.

``INDEX_DIR`` holds ``index.faiss``, ``sparse.npz`` (the inverted index), ``subject_lift.npy`` (the training
posts' subject lift, ``sparse_index.training_lift``), ``ids.npy`` (post id of each row), ``index_info.json``
(model folder, dim, split, kind, parameters, count, build times, the sparse part's settings and the fusion
weight) and ``shards/``, which search reads the hits' tags from and ``--resume`` rebuilds another ``--kind``
from without embedding again. The tags travel with the index (about as many bytes as the vectors), so search
needs neither the DATA_DIR nor its exact version, only the model to embed the query.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .data.splits import open_split
from .errors import UsageError, read_json_file
from .modeling.categories_booru_embed import PRIORITY_ORDER, TAG_CATEGORIES
from .sparse_index import (LIFT_FILE, SEISMIC_MIN_POSTS, SPARSE_ENGINES, SPARSE_FILE, SeismicPostings,
                           SparsePostings, choose_engine, choose_index_settings, load_postings, save_postings,
                           top_rows, training_lift, validation_slice)
from .sparse_vectors import EXPANSION_SCALE, FUSION_WEIGHT, FUSION_WEIGHTS, check_weight, fuse, unit_rows

if TYPE_CHECKING:
    import pyarrow as pa

    from .embedder import BooruEmbedder, TagSet

FORMAT = "booru-embed-index"
SHARD_SIZE = 65_536  # posts per shard: about 16 MB of 64-dim vectors, a minute or two of CPU embedding
EMBED_CHUNK = 4_096  # posts per embed() call inside a shard: the progress bar moves at least this often
EXACT_MAX_POSTS = 200_000  # auto kind: brute force up to here (about 4 ms a query at 64 dims), IVF above
KINDS = ("auto", "exact", "hnsw", "ivf")
MODES = ("hybrid", "dense", "sparse")
HYBRID_CANDIDATES = 200  # approximate kinds: posts taken from each side's top list and scored exactly by both
# HNSW: faiss' small graph settings; at 1M posts they already cost 155 s of one core to build
# and reach less recall than IVF at equal latency on the benchmark's vectors; raise them for more recall.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128  # recall@10 0.80 at 1M posts in 0.49 ms (0.72 at 64)
# IVF: about 4 * sqrt(n) cells (faiss' guideline), trained on 40 points a cell (faiss warns below 39).
IVF_CELLS_PER_SQRT = 4
IVF_TRAIN_PER_CELL = 40
IVF_NPROBE = 64  # 1.6% of the cells at 1M posts: recall@10 0.92 (0.85 at 32, 0.77 at 16)
DATA_COLUMNS = (*TAG_CATEGORIES, "rating", "score")


def _faiss() -> Any:
    """The faiss module, or a one-line UsageError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UsageError("the search index needs faiss: pip install booru-embed[index]") from None
    return faiss


def post_tags(post: dict[str, Any]) -> str:
    """A post's Danbooru tag string: tags in ``PRIORITY_ORDER``, then ``rating:x`` and ``score:n``.

    The string is itself a valid query: searching it embeds the same tag set as the post.
    """
    tags = [tag for category in PRIORITY_ORDER for tag in post.get(category) or []]
    if post.get("rating"):
        tags.append(f"rating:{post['rating']}")
    if post.get("score") is not None:
        tags.append(f"score:{int(post['score'])}")
    return " ".join(tags)


# ----------------------------------------------------------------------------------------------
# Index kinds and their parameters
# ----------------------------------------------------------------------------------------------
def choose_kind(kind: str, count: int) -> str:
    """The index kind to build: ``kind`` itself, or for ``auto`` exact up to ``EXACT_MAX_POSTS`` posts, else ivf."""
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "exact" if count <= EXACT_MAX_POSTS else "ivf"


def index_parameters(kind: str, count: int, **overrides: int | None) -> dict[str, int]:
    """The parameters of a ``kind`` index over ``count`` vectors: defaults, then the non-None ``overrides``.

    hnsw: ``m``, ``ef_construction``, ``ef_search``; ivf: ``nlist``, ``nprobe``, ``train_size``;
    exact: none. An override that does not belong to ``kind`` or is below 1 is a UsageError.
    """
    if kind == "hnsw":
        parameters = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    elif kind == "ivf":
        # never more cells than the training points can fill
        nlist = max(1, min(round(IVF_CELLS_PER_SQRT * math.sqrt(count)), count // IVF_TRAIN_PER_CELL))
        parameters = {"nlist": nlist, "nprobe": IVF_NPROBE, "train_size": 0}
    else:
        parameters = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in parameters:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to a {kind} index")
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        parameters[name] = int(value)
    if kind == "ivf":
        parameters["nlist"] = min(parameters["nlist"], count)
        parameters["nprobe"] = min(parameters["nprobe"], parameters["nlist"])
        if not overrides.get("train_size"):
            parameters["train_size"] = min(count, IVF_TRAIN_PER_CELL * parameters["nlist"])
    return parameters


def _gather(chunks: Sequence[np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` (sorted) of the concatenation of ``chunks``, read chunk by chunk."""
    starts = np.cumsum([0, *(len(chunk) for chunk in chunks)])
    parts = []
    for number, chunk in enumerate(chunks):
        inside = positions[(positions >= starts[number]) & (positions < starts[number + 1])]
        parts.append(np.asarray(chunk[inside - starts[number]], dtype=np.float32))
    return np.concatenate(parts)


def build_faiss_index(kind: str, chunks: Sequence[np.ndarray], parameters: dict[str, int],
                      progress: bool = False, seed: int = 0) -> Any:
    """A faiss index of ``kind`` (exact, hnsw or ivf) holding the rows of ``chunks`` in order.

    ``chunks`` are (n_i, dim) float32 arrays, e.g. memory-mapped shards: they are added one at a
    time, and ivf trains on ``train_size`` rows drawn with ``seed``, so memory stays near the index's own.
    """
    from tqdm.auto import tqdm

    faiss = _faiss()
    dim = int(chunks[0].shape[1])
    count = sum(len(chunk) for chunk in chunks)
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, parameters["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = parameters["ef_construction"]
        index.hnsw.efSearch = parameters["ef_search"]
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, parameters["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.nprobe = parameters["nprobe"]
        sample = np.sort(np.random.default_rng(seed).choice(count, parameters["train_size"], replace=False))
        index.train(_gather(chunks, sample))
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    with tqdm(total=count, desc=f"index ({kind})", unit="post", disable=None if progress else True) as bar:
        for chunk in chunks:
            for start in range(0, len(chunk), SHARD_SIZE):
                part = np.ascontiguousarray(chunk[start : start + SHARD_SIZE], dtype=np.float32)
                index.add(part)
                bar.update(len(part))
    return index


# ----------------------------------------------------------------------------------------------
# Building from a DATA_DIR
# ----------------------------------------------------------------------------------------------
def shard_paths(folder: Path, number: int) -> dict[str, Path]:
    """The four files of shard ``number``: vectors, sparse vectors, post ids, tag strings."""
    stem = folder / "shards" / f"{number:05d}"
    return {"vectors": stem.with_suffix(".npy"), "sparse": stem.with_suffix(".sparse.npz"),
            "ids": stem.with_suffix(".ids.npy"), "tags": stem.with_suffix(".tags.arrow")}


def _shard_done(folder: Path, number: int) -> bool:
    """Whether shard ``number`` is complete: its vectors (written last) and its sparse vectors exist."""
    paths = shard_paths(folder, number)
    return paths["vectors"].is_file() and paths["sparse"].is_file()


def _save_atomic(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary name, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (np.save would add ``.npy`` to a temporary name)."""
    with open(path, "wb") as handle:
        np.save(handle, array)


def _write_npz(path: Path, matrix: Any) -> None:
    """``scipy.sparse.save_npz`` to exactly ``path`` (it would add ``.npz`` to a temporary name)."""
    from scipy import sparse

    with open(path, "wb") as handle:
        sparse.save_npz(handle, matrix, compressed=False)


def _write_tags(path: Path, tags: list[str]) -> None:
    """One-column Arrow IPC file of tag strings, memory-mapped by search."""
    import pyarrow as pa

    table = pa.table({"tags": pa.array(tags, type=pa.large_string())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _open_split(data_dir: Path, split: str) -> Any:
    """The ``split`` of DATA_DIR to index; UsageError when missing, without ids or tags, or empty."""
    table = open_split(data_dir, split)
    if "id" not in table.column_names or not set(TAG_CATEGORIES) & set(table.column_names):
        raise UsageError(f"split {split!r} of {data_dir} has no id column or no tag columns")
    if table.num_rows == 0:
        raise UsageError(f"split {split!r} of {data_dir} holds no posts")
    return table


def _split_ids(table: Any) -> np.ndarray:
    """The post ids of the split, read from Arrow without Python objects."""
    return table.with_format("arrow")["id"].to_numpy().astype(np.int64, copy=False)


def _posts(table: Any, start: int, stop: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Rows ``start:stop`` of the split as tag-set dicts, and their post ids."""
    columns = [c for c in DATA_COLUMNS if c in table.column_names]
    batch = table[start:stop]
    posts = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
    for offset, post in enumerate(posts):
        if not any(post.get(category) for category in TAG_CATEGORIES) and post.get("rating") is None \
                and post.get("score") is None:
            raise UsageError(f"row {start + offset} (post id {batch['id'][offset]}) has no tags, rating or score")
    return posts, np.asarray(batch["id"], dtype=np.int64)


def _check_resume(output: Path, plan: dict[str, Any], resume: bool) -> None:
    """Refuse to mix runs: an existing INDEX_DIR needs ``--resume`` and the same model, data, split, dim, shard size."""
    plan_path = output / "shards" / "plan.json"
    if output.exists() and any(output.iterdir()):
        if not plan_path.is_file():
            raise UsageError(f"--output {output} is a non-empty folder that holds no index")
        if not resume:
            raise UsageError(f"--output {output} already holds an index: pass --resume to continue or "
                             "rebuild it, or choose another folder")
        previous = json.loads(plan_path.read_text(encoding="utf-8"))
        changed = [key for key in plan if previous.get(key) != plan[key]]
        if changed:
            raise UsageError(f"--resume: {output} was built with other settings ("
                             + ", ".join(f"{key} {previous.get(key)!r} now {plan[key]!r}" for key in changed) + ")")
        return
    (output / "shards").mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")


def _embed_shards(embedder: BooruEmbedder, table: Any, output: Path, dim: int, shard_size: int,
                  batch_size: int, power: float, terms: int, subject_weight: float,
                  lift_weights: np.ndarray | None) -> tuple[int, float]:
    """Embed every shard not yet on disk (sparse vectors with idf ``power``, ``terms`` expansion tags,
    ``subject_weight`` and ``lift_weights`` or none); return how many were embedded and the seconds it took."""
    from scipy import sparse
    from tqdm.auto import tqdm

    count = table.num_rows
    shards = range(math.ceil(count / shard_size))
    todo = [n for n in shards if not _shard_done(output, n)]
    done_posts = count - sum(min(shard_size, count - n * shard_size) for n in todo)
    started = time.perf_counter()
    with tqdm(total=count, initial=done_posts, desc="embed", unit="post", disable=None) as bar:
        for number in todo:
            start, stop = number * shard_size, min(count, (number + 1) * shard_size)
            parts, lexical, ids, tags = [], [], [], []
            for chunk in range(start, stop, EMBED_CHUNK):
                posts, chunk_ids = _posts(table, chunk, min(stop, chunk + EMBED_CHUNK))
                try:
                    parts.append(embedder.embed(posts, dim=dim, batch_size=batch_size, progress=False))
                    lexical.append(embedder.embed_sparse(posts, terms=terms, scale=EXPANSION_SCALE, power=power,
                                                         subject_weight=subject_weight, lift_weights=lift_weights,
                                                         batch_size=batch_size, progress=False))
                except ValueError as error:
                    raise UsageError(f"rows {chunk}-{chunk + len(posts) - 1}: {error}") from None
                ids.append(chunk_ids)
                tags.extend(post_tags(post) for post in posts)
                bar.update(len(posts))
            paths = shard_paths(output, number)
            _save_atomic(paths["ids"], lambda p: _write_npy(p, np.concatenate(ids)))
            _save_atomic(paths["tags"], lambda p: _write_tags(p, tags))
            _save_atomic(paths["sparse"], lambda p: _write_npz(p, sparse.vstack(lexical).tocsr()))
            _save_atomic(paths["vectors"], lambda p: _write_npy(p, np.concatenate(parts)))
    return len(todo), time.perf_counter() - started


def _load_shard_ids(output: Path, count: int, shard_size: int) -> np.ndarray:
    """The post ids of all shards, in row order."""
    shards = range(math.ceil(count / shard_size))
    return np.concatenate([np.load(shard_paths(output, n)["ids"]) for n in shards])


def build_index(model_dir: str | Path, data_dir: str | Path, output: str | Path, dim: int | None = None,
                split: str = "train", kind: str = "auto", batch_size: int = 256, resume: bool = False,
                shard_size: int = SHARD_SIZE, device: str | None = None, fusion_weight: float | None = None,
                qdrant: str | None = None, qdrant_collection: str | None = None, sparse_engine: str = "auto",
                **parameters: int | None) -> dict[str, Any]:
    """Embed ``split`` of DATA_DIR with MODEL_DIR into INDEX_DIR ``output`` and build its search index.

    ``dim`` truncates the embeddings (default: the model's full size); ``kind`` is auto, exact, hnsw
    or ivf; ``parameters`` override the kind's defaults (see ``index_parameters``); ``fusion_weight`` fixes the
    sparse share of the hybrid score stored with the index; None (the default) chooses it on the model's
    validation slice (``sparse_index.validation_slice``), or takes ``sparse_vectors.FUSION_WEIGHT`` for a
    model that has none. ``qdrant`` (a server URL or a local folder) also writes the posts' dense and
    sparse vectors to the Qdrant collection ``qdrant_collection`` (default: INDEX_DIR's folder name;
    ``qdrant_store``). ``sparse_engine`` is auto, exact or seismic (``sparse_index``). With ``resume``,
    shards already embedded are kept and the index is rebuilt from them. Returns ``index_info.json``'s content.
    """
    from .embedder import load_for_command

    output, data_dir = Path(output), Path(data_dir)
    if batch_size < 1 or shard_size < 1:
        raise UsageError(f"--batch-size and --shard-size must be at least 1, got {batch_size} and {shard_size}")
    try:
        if fusion_weight is not None:
            check_weight(fusion_weight)
    except ValueError as error:
        raise UsageError(f"--fusion-weight: {error}") from None
    faiss = _faiss()
    table = _open_split(data_dir, split)
    count = table.num_rows
    kind = choose_kind(kind, count)
    engine = choose_engine(sparse_engine, count)
    chosen = index_parameters(kind, count, **parameters)
    embedder = load_for_command(str(model_dir), device)
    try:
        dim = embedder._check_dim(dim)
    except ValueError as error:
        raise UsageError(f"--dim: {error}") from None
    model = str(Path(model_dir).resolve()) if Path(model_dir).exists() else str(model_dir)
    plan = {"format": FORMAT, "model_dir": model, "data_dir": str(data_dir.resolve()), "split": split,
            "dim": dim, "count": count, "shard_size": shard_size}
    _check_resume(output, plan, resume)
    (output / "index_info.json").unlink(missing_ok=True)  # a rebuild cut short must not look finished
    training = table if split == "train" else _open_split(data_dir, "train")
    started = time.perf_counter()
    posts, source, held_out_ids = validation_slice(model_dir, training)
    weights = (fusion_weight,) if fusion_weight is not None else FUSION_WEIGHTS if source == "held-out" else (FUSION_WEIGHT,)
    # the held-out posts choose the settings as unseen posts, so their subjects stay out of the lift; seeded
    # training posts are posts the model trained on anyway, and leaving them out could leave no post to count
    lift = training_lift(embedder.tokenizer, training, held_out_ids if source == "held-out" else held_out_ids[:0])
    _save_atomic(output / LIFT_FILE, lambda p: _write_npy(p, lift))
    (power, terms, subject_weight, lift_exponent), weight, means = choose_index_settings(
        embedder, posts, dim, EXPANSION_SCALE, weights, lift)
    settings = {"terms": terms, "scale": EXPANSION_SCALE, "idf_power": power, "subject_weight": subject_weight,
                "lift": lift_exponent, "lift_file": LIFT_FILE, "fusion_weight": weight,
                "validation": source, "validation_posts": len(posts),
                "validation_recall@10": {name: round(mean, 4) for name, mean in means.items()},
                "validation_seconds": round(time.perf_counter() - started, 2)}
    embedded, embed_seconds = _embed_shards(embedder, table, output, dim, shard_size, batch_size, power, terms,
                                            subject_weight, lift if lift_exponent else None)
    ids = _load_shard_ids(output, count, shard_size)
    if not np.array_equal(ids, _split_ids(table)):
        raise UsageError(f"{output}: the shards' post ids differ from split {split!r} of {data_dir}: remove the folder")
    started = time.perf_counter()
    shards = [np.load(shard_paths(output, n)["vectors"], mmap_mode="r") for n in range(math.ceil(count / shard_size))]
    index = build_faiss_index(kind, shards, chosen, progress=True)
    _save_atomic(output / "index.faiss", lambda p: faiss.write_index(index, str(p)))
    _save_atomic(output / "ids.npy", lambda p: _write_npy(p, ids))
    sparse_info = {**settings, **_build_sparse_part(output, count, shard_size, engine)}
    info = {**plan, "kind": kind, "parameters": chosen, "shards_embedded_this_run": embedded,
            "embed_seconds": round(embed_seconds, 2), "index_seconds": round(time.perf_counter() - started, 2),
            "sparse": sparse_info, "fusion_weight": sparse_info.pop("fusion_weight"),
            "faiss_version": faiss.__version__, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _save_atomic(output / "index_info.json",
                 lambda p: p.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"))
    if qdrant:
        from .qdrant_store import write_qdrant

        info["qdrant"] = write_qdrant(_shard_contents(output, count, shard_size), qdrant,
                                      qdrant_collection or output.resolve().name, dim, count)
        _save_atomic(output / "index_info.json",
                     lambda p: p.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"))
    return info


def _shard_contents(output: Path, count: int, shard_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, Any, list[str]]]:
    """Each shard's post ids, unit embeddings, sparse vectors (CSR) and tag strings, in order."""
    import pyarrow as pa
    from scipy import sparse

    for number in range(math.ceil(count / shard_size)):
        paths = shard_paths(output, number)
        tags = pa.ipc.open_file(pa.memory_map(str(paths["tags"]))).read_all()["tags"].to_pylist()
        yield np.load(paths["ids"]), np.load(paths["vectors"]), sparse.load_npz(paths["sparse"]).tocsr(), tags


def _build_sparse_part(output: Path, count: int, shard_size: int, engine: str) -> dict[str, Any]:
    """Write ``sparse.npz`` (and the Seismic index, for that ``engine``) from the shards' sparse vectors;
    return their figures."""
    from scipy import sparse

    started = time.perf_counter()
    shards = (sparse.load_npz(shard_paths(output, n)["sparse"]) for n in range(math.ceil(count / shard_size)))
    return {"file": SPARSE_FILE, **save_postings(output, shards, engine),
            "seconds": round(time.perf_counter() - started, 2)}


# ----------------------------------------------------------------------------------------------
# Searching
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One search result: the post id, its score (the dense or sparse cosine, or the hybrid's fused score), its tags."""

    id: int
    score: float
    tags: str


class PostIndex:
    """An INDEX_DIR loaded for search: ``PostIndex.load(INDEX_DIR).search(tagsets, top_k)``."""

    def __init__(self, folder: Path, info: dict[str, Any], index: Any, ids: np.ndarray,
                 model_dir: str, device: str | None, postings: SparsePostings | SeismicPostings | None = None) -> None:
        """Wrap loaded parts (use ``load``); the model is loaded on the first ``search``.

        ``postings`` is the sparse half (None for an index built before it existed: dense search only).
        """
        self.folder, self.info, self.index, self.ids = folder, info, index, ids
        self.dim, self.kind = int(info["dim"]), str(info["kind"])
        self.model_dir, self.device = model_dir, device
        self.postings = postings
        self.fusion_weight = float(info.get("fusion_weight", 0.0))
        self._embedder: BooruEmbedder | None = None
        self._tags: dict[int, pa.Table] = {}
        self._vectors: list[np.ndarray] | None = None
        self._lift_weights: np.ndarray | None = None

    @classmethod
    def load(cls, folder: str | Path, model_dir: str | Path | None = None, device: str | None = None) -> PostIndex:
        """Open INDEX_DIR ``folder``; ``model_dir`` replaces the model folder its info names (for queries)."""
        faiss = _faiss()
        folder = Path(folder)
        info_path = folder / "index_info.json"
        if not info_path.is_file():
            raise UsageError(f"{folder} is not an index folder (no index_info.json; build one with booru-embed index)")
        info = read_json_file(info_path)
        if info.get("format") != FORMAT:
            raise UsageError(f"{info_path} does not describe a booru-embed index")
        for name in ("index.faiss", "ids.npy"):
            if not (folder / name).is_file():
                raise UsageError(f"{folder} is an unfinished index ({name} is missing): run booru-embed index --resume")
        index = faiss.read_index(str(folder / "index.faiss"))
        ids = np.load(folder / "ids.npy")
        if index.ntotal != len(ids) or index.d != info["dim"]:
            raise UsageError(f"{folder}: index.faiss, ids.npy and index_info.json disagree: rebuild the index")
        if info["kind"] == "hnsw":
            index.hnsw.efSearch = info["parameters"]["ef_search"]
        elif info["kind"] == "ivf":
            index.nprobe = info["parameters"]["nprobe"]
        postings = None
        if "sparse" in info:
            if not (folder / SPARSE_FILE).is_file():
                raise UsageError(f"{folder} is an unfinished index ({SPARSE_FILE} is missing): run booru-embed index --resume")
            lift_file = info["sparse"].get("lift_file", LIFT_FILE)
            if info["sparse"].get("lift") and not (folder / lift_file).is_file():
                raise UsageError(f"{folder} lacks {lift_file}, the subject lift its sparse vectors were built with: "
                                 "rebuild the index")
            postings = load_postings(folder, info["sparse"])
            if len(postings) != len(ids):
                raise UsageError(f"{folder}: {SPARSE_FILE} and ids.npy disagree: rebuild the index")
        return cls(folder, info, index, ids, str(model_dir or info["model_dir"]), device, postings)

    def __len__(self) -> int:
        """Number of posts in the index."""
        return len(self.ids)

    @property
    def embedder(self) -> BooruEmbedder:
        """The model that embeds queries (loaded on first use; its size must cover the index's dim)."""
        if self._embedder is None:
            from .embedder import load_for_command

            self.embedder = load_for_command(self.model_dir, self.device)
        return self._embedder

    @embedder.setter
    def embedder(self, embedder: BooruEmbedder) -> None:
        """Embed queries with an already loaded model (its size must cover the index's dim)."""
        if embedder.embedding_dim < self.dim:
            raise UsageError(f"the model embeds {embedder.embedding_dim} dims, the index {self.folder} holds {self.dim}")
        self._embedder = embedder

    @property
    def default_mode(self) -> str:
        """``hybrid``, or ``dense`` for an index built without sparse vectors."""
        return "dense" if self.postings is None else "hybrid"

    def search(self, tagsets: TagSet | Iterable[TagSet], top_k: int = 10, mode: str | None = None) -> list[list[Hit]]:
        """The ``top_k`` posts nearest to each tag set, best first (one list per tag set).

        ``mode`` (default ``default_mode``): ``dense`` ranks by the embedding's cosine (faiss), ``sparse``
        by the sparse tag vectors' cosine (the index's sparse engine, ``sparse_index``: exact over the
        inverted index, or Seismic's candidates scored exactly; only posts sharing a weighted tag are
        returned), ``hybrid`` by ``(1 - a) cos_dense + a cos_sparse`` with the index's ``fusion_weight``
        ``a``. An exact index fuses the scores of every post; the approximate kinds fuse those of the
        ``HYBRID_CANDIDATES`` best posts of each side, both scores computed exactly.
        """
        mode = self.default_mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "dense" and self.postings is None:
            raise UsageError(f"{self.folder} was built without sparse vectors, so only --mode dense works: "
                             "rebuild it with booru-embed index to search in hybrid or sparse mode")
        _check_top_k(top_k)
        if mode == "dense":
            return self.search_embeddings(self.embedder.embed(tagsets, dim=self.dim), top_k)
        queries = self.sparse_queries(tagsets)
        dense = self.embedder.embed(tagsets, dim=self.dim) if mode == "hybrid" else None
        results = []
        for row in range(queries.shape[0]):
            if dense is None:
                results.append(self._hits(*self.postings.top(queries[row], top_k)))
            else:
                results.append(self._hits(*self._hybrid(dense[row], queries[row], top_k)))
        return results

    def sparse_queries(self, tagsets: TagSet | Iterable[TagSet]) -> Any:
        """Unit sparse vectors (n, vocab) CSR of tag sets with the index's settings (idf power, expansion terms,
        subject weight and, where it chose one, its training posts' subject lift), as its posts have them."""
        sparse_info = self.info["sparse"]
        return unit_rows(self.embedder.embed_sparse(tagsets, terms=sparse_info["terms"], scale=sparse_info["scale"],
                                                    power=sparse_info["idf_power"],
                                                    subject_weight=sparse_info.get("subject_weight", 1.0),
                                                    lift_weights=self.lift_weights))

    @property
    def lift_weights(self) -> np.ndarray | None:
        """The subject lift weights the index's sparse vectors were built with (read once), or None when its
        validation posts chose none (or it was built before the lift)."""
        if self._lift_weights is None and self.info["sparse"].get("lift"):
            self._lift_weights = np.load(self.folder / self.info["sparse"]["lift_file"])
        return self._lift_weights

    def _hybrid(self, query: np.ndarray, sparse_query: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``top_k`` rows by fused score and their scores, for one dense query and its sparse row."""
        # the exact engine gets every post's sparse cosine in one pass; Seismic scores only the candidates
        every = isinstance(self.postings, SparsePostings) or self.kind == "exact"
        lexical = self.postings.scores(sparse_query) if every else None
        if self.kind == "exact":
            candidates = np.arange(len(self))
            dense = np.concatenate([shard @ query for shard in self._shard_vectors()])  # every post's cosine
        else:
            _, found = self.index.search(query[None].astype(np.float32), min(HYBRID_CANDIDATES, len(self)))
            best_sparse = top_rows(lexical, HYBRID_CANDIDATES) if every else self.postings.top(sparse_query,
                                                                                              HYBRID_CANDIDATES)[0]
            candidates = np.union1d(found[0][found[0] >= 0], best_sparse)
            dense = _gather(self._shard_vectors(), candidates) @ query
        fused = fuse(dense, lexical[candidates] if every else self.postings.scores_at(sparse_query, candidates),
                     self.fusion_weight)
        best = top_rows(fused, top_k)
        return candidates[best], fused[best]

    def _shard_vectors(self) -> list[np.ndarray]:
        """The stored unit embeddings, one memory-mapped (rows, dim) array per shard."""
        if self._vectors is None:
            shards = math.ceil(len(self) / int(self.info["shard_size"]))
            self._vectors = [np.load(shard_paths(self.folder, n)["vectors"], mmap_mode="r") for n in range(shards)]
        return self._vectors

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits of index rows with their scores, in the given order."""
        return [Hit(int(self.ids[row]), float(score), self._tag_string(int(row))) for row, score in zip(rows, scores)]

    def search_embeddings(self, vectors: np.ndarray, top_k: int = 10) -> list[list[Hit]]:
        """The ``top_k`` posts nearest to each row of ``vectors`` (n, dim), best first; rows are L2-normalised first."""
        _check_top_k(top_k)
        array = np.array(vectors, dtype=np.float32, ndmin=2)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {np.shape(vectors)}")
        array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
        scores, rows = self.index.search(array, min(int(top_k), len(self)))
        return [[Hit(int(self.ids[row]), float(score), self._tag_string(int(row)))
                 for score, row in zip(score_row, row_row) if row >= 0]
                for score_row, row_row in zip(scores, rows)]

    def _tag_string(self, row: int) -> str:
        """Tag string of index row ``row``, read from its shard's memory-mapped Arrow file."""
        import pyarrow as pa

        number, offset = divmod(row, int(self.info["shard_size"]))
        if number not in self._tags:
            path = shard_paths(self.folder, number)["tags"]
            if not path.is_file():
                raise UsageError(f"{self.folder}: {path.name} is missing from shards/ (the hits' tags live there)")
            self._tags[number] = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        return self._tags[number]["tags"][offset].as_py()


def _check_top_k(top_k: int) -> None:
    """ValueError unless ``top_k`` is an integer of at least 1."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer of at least 1, got {top_k!r}")


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed index``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("--dataset", required=True, type=Path, metavar="DATA_DIR", help="DATA_DIR to index")
    parser.add_argument("--output", required=True, type=Path, metavar="INDEX_DIR", help="folder to write")
    parser.add_argument("--split", default="train", help="split of DATA_DIR to index (default: train)")
    parser.add_argument("--dim", type=int, help="keep the first DIM embedding dimensions (default: all)")
    parser.add_argument("--kind", default="auto", choices=KINDS,
                        help=f"exact, ivf or hnsw (default auto: exact up to {EXACT_MAX_POSTS:,} posts, else ivf)")
    parser.add_argument("--batch-size", type=int, default=256, help="posts per forward pass (default: 256)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                        help=f"posts per resumable shard (default: {SHARD_SIZE})")
    parser.add_argument("--resume", action="store_true",
                        help="keep the shards already embedded in INDEX_DIR and (re)build the index")
    parser.add_argument("--hnsw-m", dest="m", type=int, help=f"hnsw: neighbours per node (default: {HNSW_M})")
    parser.add_argument("--ef-construction", type=int, help=f"hnsw: build beam (default: {HNSW_EF_CONSTRUCTION})")
    parser.add_argument("--ef-search", type=int, help=f"hnsw: search beam (default: {HNSW_EF_SEARCH})")
    parser.add_argument("--nlist", type=int, help="ivf: number of cells (default: 4 * sqrt(posts))")
    parser.add_argument("--nprobe", type=int, help=f"ivf: cells scanned per query (default: {IVF_NPROBE})")
    parser.add_argument("--fusion-weight", type=float,
                        help="sparse share a of the hybrid score (1 - a) cos_dense + a cos_sparse (default: chosen on "
                             f"the model's held-out validation posts; {FUSION_WEIGHT} for a model without them)")
    parser.add_argument("--qdrant", metavar="TARGET",
                        help="also write the dense and sparse vectors to a Qdrant collection: a server URL "
                             "(http://host:6333) or a local folder (qdrant-client's local mode)")
    parser.add_argument("--qdrant-collection", metavar="NAME", help="the collection (default: INDEX_DIR's folder name)")
    parser.add_argument("--sparse-engine", default="auto", choices=SPARSE_ENGINES,
                        help=f"sparse search: exact (scipy) or seismic (pyseismic-lsr, approximate, ~10 GB to build "
                             f"at 5.8M posts); auto: seismic above {SEISMIC_MIN_POSTS:,} posts when installed "
                             f"(default: auto)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_index(args: argparse.Namespace) -> int:
    """Run ``booru-embed index``."""
    info = build_index(args.model_dir, args.dataset, args.output, dim=args.dim, split=args.split, kind=args.kind,
                       fusion_weight=args.fusion_weight, qdrant=args.qdrant, qdrant_collection=args.qdrant_collection,
                       sparse_engine=args.sparse_engine,
                       batch_size=args.batch_size, resume=args.resume, shard_size=args.shard_size,
                       device=args.device, m=args.m, ef_construction=args.ef_construction,
                       ef_search=args.ef_search, nlist=args.nlist, nprobe=args.nprobe)
    parameters = ", ".join(f"{key}={value}" for key, value in info["parameters"].items())
    print(f"wrote {args.output}: {info['count']} posts, {info['dim']} dims, {info['kind']} index"
          + (f" ({parameters})" if parameters else "")
          + f"; embedded {info['shards_embedded_this_run']} shard(s) in {info['embed_seconds']} s, "
          f"index built in {info['index_seconds']} s; sparse vectors ({info['sparse']['engine']} engine): "
          f"{info['sparse']['nonzeros_per_post']} "
          f"non-zeros a post, idf power {info['sparse']['idf_power']:g}, {info['sparse']['terms']} expansion terms, "
          f"subject weight {info['sparse']['subject_weight']:g}, "
          f"{'with' if info['sparse']['lift'] else 'without'} the subject lift and "
          f"hybrid weight {info['fusion_weight']:g} "
          f"(chosen on {info['sparse']['validation']} posts)")
    if "qdrant" in info:
        print(f"wrote {info['qdrant']['points']} points to Qdrant collection {info['qdrant']['collection']!r} "
              f"at {info['qdrant']['target']}")
    return 0


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed search``."""
    parser.add_argument("index_dir", metavar="INDEX_DIR", help="folder written by booru-embed index")
    parser.add_argument("tags", metavar="TAGS", nargs="?",
                        help='query tag set: "1girl solo long_hair" or "1girl, long hair" (or --embedding)')
    parser.add_argument("--top-k", type=int, default=10, help="number of posts (default: 10)")
    parser.add_argument("--mode", choices=MODES,
                        help="hybrid (dense + sparse, the default), dense (embedding) or sparse (tag vectors); "
                             "an index built without sparse vectors searches dense")
    parser.add_argument("--json", action="store_true", help='print [{"id", "score", "tags"}, ...]')
    parser.add_argument("--model", help="model folder for the query (default: the one the index was built with)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    add_embedding_query_arguments(parser)


def add_embedding_query_arguments(parser: argparse.ArgumentParser) -> None:
    """``--embedding FILE.npy`` and ``--aligner NAME`` of ``booru-embed search``: query with vectors, not tags."""
    parser.add_argument("--embedding", type=Path, metavar="FILE.npy",
                        help="query with the rows of this .npy file instead of TAGS (one result list per row)")
    parser.add_argument("--aligner", metavar="NAME",
                        help="the --embedding rows are external (image) embeddings: map them with this aligner")


def search_embedding_file(args: argparse.Namespace) -> list[list[Hit]]:
    """The hits of each row of ``--embedding`` (mapped by ``--aligner`` when given)."""
    from .decode import load_embedding_file

    if args.embedding is None:
        raise UsageError("--aligner needs --embedding FILE.npy (the external vectors to map)")
    if args.tags is not None:
        raise UsageError("give TAGS or --embedding, not both")
    vectors = load_embedding_file(args.embedding)
    index = PostIndex.load(args.index_dir, model_dir=args.model, device=args.device)
    try:
        if args.aligner is not None:
            vectors = index.embedder.embed_external(vectors, aligner=args.aligner, dim=index.dim)
        elif vectors.shape[1] > index.dim:  # a full-size booru-embed embedding: its nested prefix
            vectors = vectors[:, : index.dim]
        return index.search_embeddings(vectors, top_k=args.top_k)
    except ValueError as error:
        raise UsageError(str(error)) from None


def run_search(args: argparse.Namespace) -> int:
    """Run ``booru-embed search``."""
    from .embedder import print_unknown_note

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.embedding is not None or args.aligner is not None:
        return _print_hit_lists(search_embedding_file(args), args)
    if args.tags is None:
        raise UsageError("give a query: TAGS, or --embedding FILE.npy")
    if not args.tags.replace(",", " ").split():
        raise UsageError("the tag set is empty: give at least one tag")
    index = PostIndex.load(args.index_dir, model_dir=args.model, device=args.device)
    unknown = index.embedder.unknown_tags(args.tags)
    try:
        hits = index.search([args.tags], top_k=args.top_k, mode=args.mode)[0]
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps([{"id": hit.id, "score": round(hit.score, 6), "tags": hit.tags} for hit in hits],
                         ensure_ascii=False))
        return 0
    print_unknown_note(unknown)
    for hit in hits:
        print(f"{hit.score:.4f}  {hit.id}  {hit.tags}")
    return 0


def _print_hit_lists(hit_lists: list[list[Hit]], args: argparse.Namespace) -> int:
    """Print the hits of several queries: a JSON list of lists, or blocks separated by a ``# row N`` line."""
    if args.json:
        print(json.dumps([[{"id": h.id, "score": round(h.score, 6), "tags": h.tags} for h in hits] for hits in hit_lists],
                         ensure_ascii=False))
        return 0
    for number, hits in enumerate(hit_lists):
        print(f"# row {number}")
        for hit in hits:
            print(f"{hit.score:.4f}  {hit.id}  {hit.tags}")
    return 0
