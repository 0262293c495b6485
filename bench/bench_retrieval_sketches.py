"""How much of TF-IDF's retrieval a dense vector of a given width can keep: static sketches vs the model.

    python bench/bench_retrieval_sketches.py --workdir runs/recipe --settings default,sparse-traits,many-characters \
        --seeds 0,1,2 [--run F900-default-recipe]

For each cached (setting, seed) corpus of `bench/bench_recipe.py` (and its trained run ``--run``), the
evaluation's retrieval cases (test posts with their character / artist tags removed; a hit is a
neighbour among the 10 nearest sharing one) are scored by:
- ``tfidf``: the sparse TF-IDF vectors (the evaluation's baseline);
- ``random-D``: the idf-weighted mean of random Gaussian tag vectors of width D, a Johnson-Lindenstrauss
  sketch of the TF-IDF vector (what a dense vector of width D keeps without learning what matters);
- ``svd-128``: the idf-weighted mean of the co-occurrence SVD rows (the ``tagvec`` baseline);
- ``model``: the run's embedding;
- ``hybrid-L``: cosine of the model's embedding + L x cosine of TF-IDF (a dense + sparse search).
Prints recall@10 per setting as mean ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANDOM_WIDTHS = (64, 128, 256)
HYBRID_WEIGHTS = (1.0, 2.0, 4.0)


def unit_rows(matrix):
    """Rows scaled to unit L2 norm, as a sparse CSR matrix (dense input is converted)."""
    from scipy import sparse

    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ matrix


def corpus_recalls(folder: Path, run: str, seed: int) -> dict[str, float]:
    """``{side}.{character|artist}`` -> recall@10 on one cached corpus."""
    import datasets
    from scipy import sparse
    from transformers import AutoModelForPreTraining

    from booru_embed.evaluation.evaluator import Evaluator, encode_sample
    from booru_embed.evaluation.metrics import retrieval_recall_at_k
    from booru_embed.evaluation.runner import ModelRunner
    from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from booru_embed.sequences import TokenInfo

    model_dir = folder / run / "model"
    tokenizer = BooruEmbedTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForPreTraining.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    info = TokenInfo.from_tokenizer(tokenizer)
    splits = datasets.load_from_disk(str(folder / "data"))
    evaluator = Evaluator(info, encode_sample(tokenizer, splits["train"], None, "train"),
                          encode_sample(tokenizer, splits["test"], None, "test"), tokenizer.tag_to_id,
                          train_total=len(splits["train"]))
    baseline, runner = evaluator.baseline, ModelRunner(model, info)
    rng = np.random.default_rng(seed)
    random_rows = {d: rng.standard_normal((baseline.vocab_size, d)).astype(np.float32) for d in RANDOM_WIDTHS}
    svd_rows = baseline.tag_vectors(128, seed)
    out = {}
    for name in ("character", "artist"):
        category, categories = CATEGORY_IDS[name], info.token_categories
        posts, labels = [], []
        for post in evaluator.test:  # the evaluation's retrieval cases (Evaluator.retrieval)
            known = evaluator._known(post)
            removed = known[categories[known] == category]
            if len(removed):
                posts.append((post, post.tags[~np.isin(post.tags, removed)]))
                labels.append(set(removed.tolist()))
        visible = [tags[evaluator.candidates[tags]] for _, tags in posts]
        tfidf = baseline.tfidf(visible)
        embeddings = runner.run([evaluator._sequence(p, tags) for p, tags in posts], "embeddings")["embeddings"]
        sides = {"tfidf": tfidf, "svd-128": baseline.mean_tag_vectors(visible, svd_rows), "model": embeddings}
        sides.update({f"random-{d}": baseline.mean_tag_vectors(visible, rows) for d, rows in random_rows.items()})
        dense, lexical = unit_rows(embeddings), unit_rows(tfidf)
        sides.update({f"hybrid-{w:g}": sparse.hstack([dense, np.sqrt(w) * lexical]).tocsr() for w in HYBRID_WEIGHTS})
        for side, vectors in sides.items():
            out[f"{side}.{name}"] = retrieval_recall_at_k(vectors, labels)[0]
    return out


def main() -> None:
    """Print one table per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="bench_recipe.py's workdir (cached corpora and runs)")
    parser.add_argument("--settings", default="default,sparse-traits,many-characters")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--run", default="F900-default-recipe", help="the trained run whose embedding is compared")
    args = parser.parse_args()
    for setting in args.settings.split(","):
        results = []
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = args.workdir / f"{setting}-{args.posts}-s{seed}"
            if not (folder / args.run / "model").is_dir():
                raise SystemExit(f"no run {args.run} in {folder}: run bench/bench_recipe.py first")
            results.append(corpus_recalls(folder, args.run, seed))
        print(f"\n{setting} ({len(results)} seed(s)), retrieval recall@10, mean ± sd")
        print("| side | character | artist |\n|---|---|---|")
        for side in [k.rsplit(".", 1)[0] for k in results[0] if k.endswith(".character")]:
            cells = []
            for name in ("character", "artist"):
                values = np.array([r[f"{side}.{name}"] for r in results])
                cells.append(f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
            print(f"| {side} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
