"""What an aligner reaches on generated corpora: tag F1 (ceiling, aligned, probe) and nearest-post hits.

For each corpus setting and seed: generate a corpus (made-up tag names), train a small model briefly
(hidden 64, 2 layers, 32-d embedding; ``--model-steps`` steps of 64 posts), write synthetic image
embeddings (``alignment/synthetic.py``, ``--dim``) for every post, and run ``booru-embed align``'s
function on them for each ``--arch``. Prints one row per run and the mean and spread per setting; the ratios are the
issue's targets: aligned F1 / ceiling F1 (>= 0.9) and aligned hit@10 / tag-set hit@10 (>= 0.8).

    python bench/bench_align_quality.py [--settings default sparse-traits] [--seeds 0 1] [--posts 8000] [--arch tags mlp]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

MICRO_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
               "embedding_dim": 32, "nested_dims": [8, 16], "pooling": "attention", "pooler_input_skip": True}
COLUMNS = ("ceiling.f1", "aligned.f1", "probe.f1", "aligned.f1.character", "aligned.f1.artist", "aligned.cosine",
           "tagset.hit@10", "aligned.hit@10", "tagset.character_hit@10", "aligned.character_hit@10")


def trained_corpus(root: Path, setting_name: str, seed: int, posts: int, steps: int) -> tuple[Path, Path]:
    """(MODEL_DIR, DATA_DIR) of a generated corpus and a small model trained on it for ``steps`` steps."""
    from booru_embed.data.ingest import build_dataset
    from booru_embed.data.synthetic import generate_corpus
    from booru_embed.data.synthetic_settings import setting
    from booru_embed.data.tokenizer_build import build_tokenizer
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import train

    root.mkdir(parents=True, exist_ok=True)
    generate_corpus(root / "corpus.csv", posts, seed=seed, tag_data=None, spec=setting(setting_name))
    build_dataset([root / "corpus.csv"], root / "data", progress=False)
    build_tokenizer(root / "data", root / "tokenizer")
    (root / "micro.json").write_text(json.dumps(MICRO_MODEL))
    config = TrainingConfig(dataset=str(root / "data"), tokenizer=str(root / "tokenizer"), output=str(root / "model"),
                            config=str(root / "micro.json"), batch_size=64, warmup_steps=10, num_workers=0,
                            eval_posts=0, progress=False, checkpoint_every=0, max_steps=steps, learning_rate=3e-3,
                            readback_negatives=64, masked_negatives=64, seed=seed)
    return train(config), root / "data"


def run(root: Path, setting_name: str, seed: int, posts: int, steps: int, dim: int, archs: tuple[str, ...],
        epochs: int) -> dict[str, dict[str, float]]:
    """One corpus, model and pair file, and an aligner of each of ``archs`` on them; returns each one's metrics."""
    from booru_embed.alignment.command import align
    from booru_embed.alignment.fit import FitSettings
    from booru_embed.alignment.synthetic import write_synthetic_pairs

    model_dir, data_dir = trained_corpus(root, setting_name, seed, posts, steps)
    pairs = write_synthetic_pairs(data_dir, root / "pairs.npz", dim=dim, seed=seed)
    return {arch: align(model_dir, pairs, data_dir, f"img-{arch}", FitSettings(arch=arch, epochs=epochs, seed=seed))
            for arch in archs}


def main() -> None:
    """Print the table described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["default", "sparse-traits"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--posts", type=int, default=8000)
    parser.add_argument("--model-steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--arch", nargs="+", default=["tags", "mlp"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--output", type=Path, help="also write every run's metrics to this JSON file")
    args = parser.parse_args()
    print(f"{args.posts} posts, model {args.model_steps} steps, external {args.dim}-d, epochs <= {args.epochs}")
    print(f"{'setting':14} {'seed':>4} {'arch':6} " + " ".join(f"{c:>24}" for c in COLUMNS) + f" {'s':>5}")
    results: list[dict] = []
    with TemporaryDirectory() as folder:
        for name in args.settings:
            for seed in args.seeds:
                started = time.perf_counter()
                by_arch = run(Path(folder) / f"{name}-{seed}", name, seed, args.posts, args.model_steps, args.dim,
                              tuple(args.arch), args.epochs)
                for arch, metrics in by_arch.items():
                    results.append({"setting": name, "seed": seed, "arch": arch, **metrics})
                    print(f"{name:14} {seed:>4} {arch:6} " + " ".join(f"{metrics[c]:24.3f}" for c in COLUMNS)
                          + f" {time.perf_counter() - started:5.0f}", flush=True)
    print("mean ± std over seeds: aligned/ceiling F1, aligned/tag-set hit@10, aligned/tag-set character hit@10")
    for name in args.settings:
        for arch in args.arch:
            rows = [r for r in results if r["setting"] == name and r["arch"] == arch]
            ratios = [[r["aligned.f1"] / r["ceiling.f1"], r["aligned.hit@10"] / r["tagset.hit@10"],
                       r["aligned.character_hit@10"] / r["tagset.character_hit@10"]] for r in rows]
            mean, std = np.mean(ratios, axis=0), np.std(ratios, axis=0)
            print(f"{name:14} {arch:6} " + "  ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
