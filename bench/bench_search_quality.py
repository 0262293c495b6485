"""Search quality of the dense, sparse and hybrid representations against TF-IDF and BM25, and the expansion sweep.

    python bench/bench_search_quality.py --workdir runs/recipe --run tiny-default \\
        --settings default,sparse-traits,many-characters --seeds 0,1,2 [--sweep]

Uses the corpora and trained runs cached by ``bench/bench_recipe.py`` (``WORKDIR/SETTING-20000-sSEED/RUN``).

- The table: every run is evaluated with ``booru-embed evaluate`` (cached as ``search_eval.json`` next to
  the model), and character / artist retrieval recall@10 is printed per setting as mean ± sd over the
  seeds for TF-IDF, BM25 (best b), the SVD of TF-IDF at the model's width, the tag-vector baseline, the
  dense embedding (and its 64-d prefix), the sparse vector and the hybrid, with the hybrid's margin over
  the best counting baseline, paired by seed.
- ``--sweep``: how the expansion's ``terms`` and ``scale`` change sparse and hybrid recall on the
  model's held-out validation slice (never the test split; the hybrid's weight is picked on the same
  posts), or, for a model trained without one, on seeded TRAINING posts, which favours the dense side
  (docs/search.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDES = (  # (label, key of evaluate's metrics with {name} for character / artist)
    ("TF-IDF", "baseline.retrieval.{name}.recall@10"),
    ("BM25 (best b)", "bm25.retrieval.{name}.recall@10"),
    ("TF-IDF x subject lift (no model)", "lift.retrieval.{name}.recall@10"),
    ("SVD of TF-IDF, model width", "svd.retrieval.{name}.recall@10"),
    ("tag vectors", "tagvec.retrieval.{name}.recall@10"),
    ("dense (model)", "model.retrieval.{name}.recall@10"),
    ("dense, 64-d prefix", "model.retrieval.{name}.dim64.recall@10"),
    ("sparse (model)", "sparse.retrieval.{name}.recall@10"),
    ("hybrid (model)", "hybrid.retrieval.{name}.recall@10"),
)
CHOSEN = ("hybrid.idf_power", "hybrid.expansion_terms", "hybrid.subject_weight", "hybrid.lift", "hybrid.fusion_weight")
SWEEP_TERMS = (0, 4, 16, 64)
SWEEP_SCALES = (1.0, 4.0, 16.0, 64.0)


def evaluated(corpus: Path, run: str, threads: int) -> dict[str, float]:
    """evaluate's metrics of one cached run (computed once into ``search_eval.json``; delete it after a change)."""
    path = corpus / run / "search_eval.json"
    if not path.is_file():
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "booru_embed.cli", "evaluate", str(corpus / run / "model"),
                        "--dataset", str(corpus / "data"), "--truth", str(corpus / "corpus.truth.json"),
                        "--output", str(path)], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` over seeds (ddof 1), the value alone for one seed, ``–`` for none."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return "–"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def table(setting: str, runs: list[dict[str, float]]) -> str:
    """One markdown table of retrieval recall@10 per side, and the hybrid's paired margins."""
    chosen = "; ".join(", ".join(f"{r[key]:g}" for key in CHOSEN if key in r) for r in runs)
    weight = mean_sd([r.get('hybrid.fusion_weight') for r in runs])
    lines = [f"\n{setting} ({len(runs)} seed(s)); hybrid weight: {weight}; "
             f"chosen (idf power, terms, subject weight, lift, weight) per seed: {chosen}",
             "| side | character r@10 | artist r@10 |", "|---|---|---|"]
    for label, key in SIDES:
        cells = [mean_sd([r.get(key.format(name=name)) for r in runs]) for name in ("character", "artist")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for label, side in (("hybrid - max(TF-IDF, BM25)", "hybrid"), ("sparse - max(TF-IDF, BM25)", "sparse")):
        cells = []
        for name in ("character", "artist"):
            margins = [r[f"{side}.retrieval.{name}.recall@10"] - max(r[f"baseline.retrieval.{name}.recall@10"],
                                                                      r[f"bm25.retrieval.{name}.recall@10"])
                       for r in runs if f"{side}.retrieval.{name}.recall@10" in r]
            cells.append(mean_sd(margins))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    cells = [mean_sd([r[f"hybrid.retrieval.{name}.recall@10"] - r[f"lift.retrieval.{name}.recall@10"]
                      for r in runs if f"lift.retrieval.{name}.recall@10" in r]) for name in ("character", "artist")]
    lines.append(f"| hybrid - TF-IDF x subject lift | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def sweep(corpus: Path, run: str) -> dict[tuple[int, float], dict[str, float]]:
    """(terms, scale) -> sparse and best-hybrid recall@10 per category on the training validation slice."""
    import datasets
    from transformers import AutoModelForPreTraining

    from booru_embed.data.validation_slice import read_validation_ids
    from booru_embed.evaluation.command import held_out_posts
    from booru_embed.evaluation.evaluator import Evaluator, encode_sample
    from booru_embed.evaluation.hybrid_retrieval import CASE_BATCH, choose_fusion_weight, slice_cases
    from booru_embed.evaluation.metrics import retrieval_recall_at_k
    from booru_embed.evaluation.runner import ModelRunner
    from booru_embed.modeling.tokenization_booru_embed import BooruEmbedTokenizer
    from booru_embed.sequences import TokenInfo
    from booru_embed.sparse_vectors import sparse_rows

    model_dir = corpus / run / "model"
    tokenizer = BooruEmbedTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForPreTraining.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    info = TokenInfo.from_tokenizer(tokenizer)
    splits = datasets.load_from_disk(str(corpus / "data"))
    evaluator = Evaluator(info, encode_sample(tokenizer, splits["train"], None, "train"),
                          encode_sample(tokenizer, splits["test"], 100, "test"), tokenizer.tag_to_id, max_posts=100,
                          validation_posts=held_out_posts(tokenizer, splits["train"], read_validation_ids(model_dir)))
    runner = ModelRunner(model, info)
    cases = {}
    for name, (posts, labels) in slice_cases(evaluator)[1].items():
        dense = runner.run([evaluator._sequence(p, tags) for p, tags in posts], "embeddings")["embeddings"]
        logits = np.concatenate([runner.run([evaluator._sequence(p, tags, mask=True) for p, tags in posts[s : s + CASE_BATCH]],
                                            "mlm")["mlm"] for s in range(0, len(posts), CASE_BATCH)])
        cases[name] = (posts, labels, dense, logits)
    out = {}
    for terms in SWEEP_TERMS:
        for scale in SWEEP_SCALES if terms else SWEEP_SCALES[:1]:
            lexical = {name: sparse_rows([tags for _, tags in posts], logits, evaluator.candidates, evaluator.baseline.idf,
                                         terms=terms, scale=scale)
                       for name, (posts, _, _, logits) in cases.items()}
            weight, means = choose_fusion_weight([c[2] for c in cases.values()], list(lexical.values()),
                                                 [c[1] for c in cases.values()])
            result = {f"sparse.{name}": retrieval_recall_at_k(lexical[name], cases[name][1])[0] for name in cases}
            result.update({"hybrid.mean": means[weight], "weight": weight,
                           "dense.mean": means[0.0], "nonzeros": float(np.mean([m.nnz / m.shape[0] for m in lexical.values()]))})
            out[terms, scale] = result
    return out


def main() -> None:
    """Print the tables (or the sweep)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--run", default="tiny-default")
    parser.add_argument("--settings", default="default,sparse-traits,many-characters")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="the expansion sweep on training posts instead of the table")
    args = parser.parse_args()
    for setting in args.settings.split(","):
        corpora = [args.workdir / f"{setting}-{args.posts}-s{seed}" for seed in args.seeds.split(",")]
        corpora = [c for c in corpora if (c / args.run / "model" / "config.json").is_file()]
        if not corpora:
            print(f"\n{setting}: no trained run {args.run} yet")
            continue
        if not args.sweep:
            print(table(setting, [evaluated(c, args.run, args.threads) for c in corpora]), flush=True)
            continue
        results = [sweep(c, args.run) for c in corpora]
        print(f"\n{setting} ({len(results)} seed(s)), training validation slice: mean over seeds")
        print("| terms | scale | non-zeros | sparse char | sparse artist | dense mean | hybrid mean | weight |")
        print("|---|---|---|---|---|---|---|---|")
        for key in results[0]:
            get = lambda name: np.mean([r[key][name] for r in results])  # noqa: E731
            print(f"| {key[0]} | {key[1]:g} | {get('nonzeros'):.1f} | {get('sparse.character'):.3f} | "
                  f"{get('sparse.artist'):.3f} | {get('dense.mean'):.3f} | {get('hybrid.mean'):.3f} | {get('weight'):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
