"""Pre-training data path: posts/s of the collator + DataLoader per worker, against the rate a GPU needs.

    python bench/bench_loader.py --data DATA_DIR --tokenizer TOKENIZER_DIR \
        [--config small] [--batch-sizes 256,1024] [--workers 0,1,2] [--batches 6] \
        [--peak-tflops 790] [--mfu 0.4] [--cores 16] [--vocab 150000]

The loader is the one training builds (`training.loop.make_loader`: `EpochBatchSampler` with length
buckets, `PretrainingCollator`, torch `DataLoader` with `num_workers`) over the training split encoded
and memory-mapped as training caches it. Each row times `--batches` batches after a warm-up (the
first batch and each worker's prefetched ones), in wall time; the `workers=0` row also gives posts per
CPU-second of the main process (the per-core rate, robust on a shared machine).

The required rate: model FLOPs per post of one training step of `--config` (`training_flops.py`,
with tokens, sequences, `<mask>` tokens and squared sequence lengths measured from the batches), at
`--mfu` of `--peak-tflops` (H200 dense bf16: ~790 TFLOP/s measured), for the corpus's vocabulary and
for `--vocab` (Danbooru's real vocabulary). Workers needed = required / per-worker rate; a GPU machine
has `--cores` cores, one of which drives the training process.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from training_flops import BatchShape, training_flops  # noqa: E402


def encoded_split(data: Path, tokenizer: object, cache: Path) -> object:
    """The training split encoded and memory-mapped from ``cache``, as `training.loop` caches it."""
    import datasets

    from booru_embed.data.bulk_encoding import encode_dataset

    encode_dataset(tokenizer, datasets.load_from_disk(str(data))["train"]).save_to_disk(str(cache))
    return datasets.load_from_disk(str(cache))


def time_loader(encoded: object, info: object, config_name: str, batch_size: int, workers: int, batches: int
                ) -> tuple[float, float | None, BatchShape]:
    """(posts/s wall, posts per CPU-s of this process or None with workers, shape of the timed batches)."""
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import make_loader

    config = TrainingConfig.from_sources(config_name, batch_size=batch_size, num_workers=workers, progress=False)
    loader, _, _ = make_loader(config, encoded, info, SimpleNamespace(num_processes=1))
    warmup = 1 + 2 * workers  # the first batch (worker start) and what the workers prefetched meanwhile
    shape = BatchShape(0, 0, 0, 0, 0)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        shape = shape + BatchShape.of(next(iterator))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del iterator
    return shape.posts / wall, (shape.posts / cpu if workers == 0 else None), shape


def time_collators(encoded: object, info: object, batch_size: int, batches: int) -> tuple[float, float]:
    """Posts per CPU-second of the collator alone, batch-wide and per-post (the version before), same batches."""
    from collator_reference import ReferenceCollator

    from booru_embed.training.collator import PretrainingCollator
    from booru_embed.training.config import TrainingConfig

    config = TrainingConfig(batch_size=batch_size)
    rows = encoded.with_format(None, columns=["id", "input_ids", "category_ids"])
    examples = [rows.__getitems__(list(range(b * batch_size, (b + 1) * batch_size))) for b in range(batches)]
    rates = []
    for collator in (PretrainingCollator(info, config), ReferenceCollator(info, config)):
        started = time.process_time()
        for batch in examples:
            collator(batch)
        rates.append(batches * batch_size / (time.process_time() - started))
    return rates[0], rates[1]


def main() -> None:
    """Print the loader table and the rate `--config` needs on the GPU."""
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.resources import model_config_path
    from booru_embed.sequences import TokenInfo
    from booru_embed.training.config import read_model_config
    from booru_embed.training.loop import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=150_000)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer)
    info = TokenInfo.from_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        encoded = encoded_split(args.data, tokenizer, Path(tmp) / "encoded")
        print(f"{len(encoded):,} training posts, vocabulary {info.vocab_size:,}, config {args.config}, "
              f"{args.batches} timed batches per row")
        rows = []
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            for workers in (int(w) for w in args.workers.split(",")):
                rate, per_cpu, shape = time_loader(encoded, info, args.config, batch_size, workers, args.batches)
                rows.append((batch_size, workers, rate, per_cpu, shape))
        collators = {b: time_collators(encoded, info, b, args.batches) for b in sorted({r[0] for r in rows})}

    values = read_model_config(model_config_path(args.config))[0]
    values.pop("model_type", None)
    total = sum((r[4] for r in rows), BatchShape(0, 0, 0, 0, 0))
    print(f"per post: {total.tokens / total.posts:.1f} tokens in {total.sequences / total.posts:.0f} sequences, "
          f"{total.masks / total.posts:.2f} <mask> tokens, mean sequence {total.tokens / total.sequences:.1f} tokens")
    required = {}
    for vocab in dict.fromkeys((info.vocab_size, args.vocab)):
        flops = training_flops(BooruEmbedConfig(**{**values, "vocab_size": vocab}), total)
        per_post = flops["total"] / total.posts
        required[vocab] = args.mfu * args.peak_tflops * 1e12 / per_post
        shares = ", ".join(f"{k} {v / flops['total']:.0%}" for k, v in flops.items() if k != "total")
        print(f"vocab {vocab:,}: {per_post / 1e9:.2f} GFLOP per post per training step ({shares}); "
              f"{args.mfu:.0%} MFU of {args.peak_tflops:.0f} TFLOP/s needs {required[vocab]:,.0f} posts/s")

    print()
    print("| batch (posts) | workers | posts/s (wall) | vs 1 worker | posts per CPU-s (main process) |")
    print("|---|---|---|---|---|")
    for batch_size, workers, rate, per_cpu, _ in rows:
        one = next((r[2] for r in rows if r[0] == batch_size and r[1] == 1), None)
        ratio = f"{rate / one:.2f}" if one else ""
        print(f"| {batch_size} | {workers} | {rate:,.0f} | {ratio} | {'' if per_cpu is None else f'{per_cpu:,.0f}'} |")

    print()
    print("| batch (posts) | collator alone: batch-wide, posts per CPU-s | per-post (before) | ratio |")
    print("|---|---|---|---|")
    for batch_size, (fast, reference) in collators.items():
        print(f"| {batch_size} | {fast:,.0f} | {reference:,.0f} | {fast / reference:.2f} |")

    print()
    print(f"| batch (posts) | vocab | required posts/s | workers needed at the 1-worker wall rate "
          f"| at the per-core rate (posts per CPU-s) | of {args.cores - 1} free cores |")
    print("|---|---|---|---|---|---|")
    for batch_size in sorted({r[0] for r in rows}):
        wall = next((r[2] for r in rows if r[0] == batch_size and r[1] == 1), None)
        core = next((r[3] for r in rows if r[0] == batch_size and r[1] == 0), None)
        for vocab, need in required.items():
            at_wall = f"{math.ceil(need / wall)} ({wall:,.0f}/worker)" if wall else ""
            at_core = f"{math.ceil(need / core)} ({core:,.0f}/worker)" if core else ""
            worst = max(math.ceil(need / r) for r in (wall, core) if r)
            print(f"| {batch_size} | {vocab:,} | {need:,.0f} | {at_wall} | {at_core} | "
                  f"{'fits' if worst <= args.cores - 1 else 'does not fit'} |")

if __name__ == "__main__":
    main()
