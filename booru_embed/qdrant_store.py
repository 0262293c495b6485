"""An INDEX_DIR's vectors in a Qdrant collection, for users who outgrow one machine.

``booru-embed index ... --qdrant TARGET`` writes, after the index is built, every post of INDEX_DIR as a
Qdrant point: its id is the post id, its named vectors are ``dense`` (the unit embedding, cosine
distance) and ``sparse`` (the unit sparse tag vector, the tag token ids as indices, dot product), and its
payload holds the post's ``tags``. ``TARGET`` is a server URL (``http://host:6333``; a sharded Qdrant
cluster serves the collection) or a local folder (qdrant-client's local mode, used by the tests).

``search_qdrant`` queries such a collection the way ``PostIndex.search`` queries an ``ivf`` or ``hnsw``
index: ``dense`` and ``sparse`` are one Qdrant query each; ``hybrid`` takes the ``HYBRID_CANDIDATES``
best points of each side with their vectors and ranks their union by
``(1 - a) cos_dense + a cos_sparse``, the index's fusion weight ``a``, computed exactly (Qdrant's own
fusions, RRF and DBSF, rank differently).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

DENSE, SPARSE = "dense", "sparse"
UPLOAD_BATCH = 512  # points per upsert request


def open_client(target: str) -> Any:
    """A ``QdrantClient`` for a server URL (``http(s)://...``) or a local folder (local mode)."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise UsageError("--qdrant needs qdrant-client: pip install 'booru-embed[index]'") from None
    if target.startswith(("http://", "https://")):
        return QdrantClient(url=target)
    return QdrantClient(path=str(Path(target).expanduser()))


def _sparse_vector(row: Any) -> Any:
    """A Qdrant ``SparseVector`` of one CSR row."""
    from qdrant_client import models

    return models.SparseVector(indices=row.indices.tolist(), values=row.data.astype(float).tolist())


def _ensure_collection(client: Any, collection: str, dim: int) -> None:
    """Create ``collection`` with the two named vectors, or check that an existing one has them at ``dim``."""
    from qdrant_client import models

    if client.collection_exists(collection):
        vectors = client.get_collection(collection).config.params.vectors
        size = vectors.get(DENSE).size if isinstance(vectors, dict) and DENSE in vectors else None
        if size != dim:
            raise UsageError(f"Qdrant collection {collection!r} exists with other vectors than {dim}-d {DENSE!r}: "
                             "choose another --qdrant-collection")
        return
    client.create_collection(
        collection, vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
        sparse_vectors_config={SPARSE: models.SparseVectorParams()})


def write_qdrant(shards: Iterable[tuple[np.ndarray, np.ndarray, Any, list[str]]], target: str, collection: str,
                 dim: int, total: int, progress: bool = True) -> dict[str, Any]:
    """Upsert an index's posts into a Qdrant collection (module docstring); returns its figures.

    ``shards`` yields, per index shard, the post ids, their unit embeddings (n, ``dim``), their sparse
    vectors (CSR) and their tag strings; ``total`` is the number of posts (for the progress bar).
    Upserting by post id makes a rerun rewrite the same points. Raises ``UsageError`` for a collection
    holding other vectors.
    """
    from qdrant_client import models
    from tqdm.auto import tqdm

    from .sparse_vectors import unit_rows

    client = open_client(target)
    try:
        _ensure_collection(client, collection, dim)
        with tqdm(total=total, desc="qdrant", unit="post", disable=not progress) as bar:
            for ids, dense, lexical, tags in shards:
                lexical = unit_rows(lexical.tocsr())
                for start in range(0, len(ids), UPLOAD_BATCH):
                    rows = range(start, min(start + UPLOAD_BATCH, len(ids)))
                    client.upsert(collection, points=[
                        models.PointStruct(id=int(ids[r]), vector={DENSE: dense[r].tolist(), SPARSE: _sparse_vector(lexical[r])},
                                           payload={"tags": tags[r]})
                        for r in rows])
                    bar.update(len(rows))
        points = client.count(collection, exact=True).count
    finally:
        client.close()
    return {"target": target, "collection": collection, "points": int(points)}


def search_qdrant(client: Any, collection: str, dense: np.ndarray, lexical: Any, weight: float, top_k: int = 10,
                  mode: str = "hybrid", candidates: int = 200) -> list[tuple[int, float, str]]:
    """(post id, score, tags) of the ``top_k`` best points for one query: ``dense`` a unit vector, ``lexical``
    a unit 1 x vocab CSR row, ``weight`` the fusion weight; ``mode`` hybrid, dense or sparse."""
    from .sparse_vectors import fuse

    def query(vector: Any, using: str, limit: int, with_vectors: bool) -> list[Any]:
        return client.query_points(collection, query=vector, using=using, limit=limit, with_payload=True,
                                   with_vectors=with_vectors).points

    if mode == "dense":
        return [(int(p.id), float(p.score), p.payload["tags"]) for p in query(dense.tolist(), DENSE, top_k, False)]
    if mode == "sparse":
        return [(int(p.id), float(p.score), p.payload["tags"]) for p in query(_sparse_vector(lexical), SPARSE, top_k, False)]
    found = {int(p.id): p for side in (query(dense.tolist(), DENSE, candidates, True),
                                       query(_sparse_vector(lexical), SPARSE, candidates, True)) for p in side}
    points = list(found.values())
    query_row = lexical.toarray().ravel()
    dense_scores = np.asarray([np.dot(p.vector[DENSE], dense) for p in points], dtype=np.float32)
    sparse_scores = np.asarray([float(np.dot(query_row[p.vector[SPARSE].indices], p.vector[SPARSE].values))
                                if SPARSE in p.vector else 0.0 for p in points], dtype=np.float32)
    fused = fuse(dense_scores, sparse_scores, weight)
    best = np.argsort(-fused, kind="stable")[:top_k]
    return [(int(points[i].id), float(fused[i]), points[i].payload["tags"]) for i in best]
