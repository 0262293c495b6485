"""Training-step and evaluation speed of `tiny` on a generated corpus, with ratios to a baseline.

    python bench/bench_training.py [--posts 20000] [--steps 8] [--batch-size 64] [--threads 2]

Each row runs the same number of optimizer steps (collate + forward + losses + backward + AdamW) on
batches drawn the same way as training, and reports the process CPU time per step (robust when other
jobs share the machine), wall time per step and tokens/s; the ratio column is CPU time of the baseline
row (random batches, packed) / this row. The last rows time the evaluation (model + baseline) per 1000
test posts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def corpus(root: Path, posts: int) -> tuple[Path, Path]:
    """Generated corpus -> DATA_DIR and TOKENIZER_DIR under ``root``."""
    from booru_embed.data.ingest import build_dataset
    from booru_embed.data.synthetic import generate_corpus
    from booru_embed.data.tokenizer_build import build_tokenizer

    generate_corpus(root / "corpus.csv", posts, seed=0, tag_data=None)
    build_dataset([root / "corpus.csv"], root / "data", progress=False)
    build_tokenizer(root / "data", root / "tokenizer")
    return root / "data", root / "tokenizer"


def encoded_corpus(root: Path, posts: int) -> tuple[object, object, object]:
    """(tokenizer, splits, encoded training split) of a generated corpus of ``posts`` posts built under ``root``."""
    import datasets

    from booru_embed.data.bulk_encoding import encode_dataset
    from booru_embed.training.loop import load_tokenizer

    data, tokenizer_dir = corpus(root, posts)
    tokenizer = load_tokenizer(tokenizer_dir)
    splits = datasets.load_from_disk(str(data))
    encoded = encode_dataset(tokenizer, splits["train"]).with_format(None, columns=["id", "input_ids", "category_ids", "length"])
    return tokenizer, splits, encoded


def time_steps(encoded, tokenizer, steps: int, batch_size: int, **options) -> tuple[float, float, float]:
    """(CPU seconds per step, wall seconds per step, tokens per step) of one configuration."""
    from booru_embed.sequences import TokenInfo
    from booru_embed.training.collator import EpochBatchSampler, PretrainingCollator
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import build_model, forward_and_losses, negative_proposal_for, optimizer_for

    config = TrainingConfig(config="tiny", batch_size=batch_size, **options)
    info = TokenInfo.from_tokenizer(tokenizer)
    model = build_model(config, tokenizer)
    optimizer = optimizer_for(model, config, fused=True)
    candidates = info.candidates_by_group()
    proposal = negative_proposal_for(config, tokenizer, "cpu")
    dims = [*model.config.nested_dims, model.config.embedding_dim]
    lengths = encoded.data.column("length").to_numpy() if config.length_buckets else None
    batches = iter(EpochBatchSampler(len(encoded), batch_size, seed=0, lengths=lengths))
    collator = PretrainingCollator(info, config)
    cpu = wall = tokens = 0.0
    for step in range(steps + 1):  # the first step warms up and is not counted
        rows = encoded[next(batches)]
        examples = [dict(zip(rows, values)) for values in zip(*rows.values())]
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        batch = collator(examples)
        loss, _ = forward_and_losses(model, batch, config, candidates, dims, proposal)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            cpu += time.process_time() - start_cpu
            wall += time.perf_counter() - start_wall
            tokens += int(batch["num_tokens"])
    return cpu / steps, wall / steps, tokens / steps


def main() -> None:
    """Print the table."""
    from booru_embed.data.bulk_encoding import encode_dataset
    from booru_embed.evaluation import Evaluator, posts_from_encoded
    from booru_embed.sequences import TokenInfo
    from booru_embed.training.loop import build_model
    from booru_embed.training.config import TrainingConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, splits, encoded = encoded_corpus(Path(tmp), args.posts)
        rows = [
            ("random batches, packed (baseline)", dict(length_buckets=False)),
            ("random batches, padded", dict(length_buckets=False, packed=False)),
            ("length buckets, packed (default)", dict()),
            ("length buckets, padded", dict(packed=False)),
            ("length buckets, packed, eager", dict(attn_implementation="eager")),
        ]
        print(f"tiny, {args.posts} generated posts, batch {args.batch_size} posts (x3 sequences), "
              f"{args.steps} steps, {args.threads} threads")
        print(f"{'configuration':<36} {'CPU s/step':>10} {'wall s/step':>11} {'tokens/step':>11} {'tokens/CPU s':>12} {'ratio':>6}")
        base = None
        for name, options in rows:
            cpu, wall, tokens = time_steps(encoded, tokenizer, args.steps, args.batch_size, **options)
            base = base or cpu
            print(f"{name:<36} {cpu:>10.3f} {wall:>11.3f} {tokens:>11.0f} {tokens / cpu:>12,.0f} {base / cpu:>6.2f}")
        info = TokenInfo.from_tokenizer(tokenizer)
        test = posts_from_encoded(encode_dataset(tokenizer, splits["test"]))
        model = build_model(TrainingConfig(config="tiny"), tokenizer)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        evaluator = Evaluator(info, encoded, test, tokenizer.tag_to_id)
        setup_cpu, setup_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        evaluator.run(model)
        per = 1000 / len(evaluator.test)
        print(f"{'evaluation: baseline from train split':<36} {setup_cpu:>10.3f} {setup_wall:>11.3f}  (once, {len(encoded)} posts)")
        print(f"{'evaluation: per 1000 test posts':<36} {(time.process_time() - start_cpu) * per:>10.3f} "
              f"{(time.perf_counter() - start_wall) * per:>11.3f}  ({len(evaluator.test)} test posts)")


if __name__ == "__main__":
    main()
