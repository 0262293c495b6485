"""Benchmark the whole-tag tokenizer on generated posts.

Posts per second of (a) the tokenizer's ``__call__`` on batches of dicts with padding and PyTorch
tensors, (b) the bulk path ``encode_dataset`` over the Arrow split, and (c) a plain Python dict lookup
of the same tags (the baseline, run in the same process); then tokens per post of the whole-tag
tokenizer against byte-level BPEs trained with ``tokenizers`` on the same captions.

    python bench/bench_tokenizer.py [--posts 200000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from booru_embed.data.bulk_encoding import encode_dataset
from booru_embed.data.ingest import build_dataset
from booru_embed.data.synthetic import default_tag_data, generate_corpus
from booru_embed.modeling.categories_booru_embed import CATEGORY_IDS, TAG_CATEGORIES
from booru_embed.data.tokenizer_build import build_tokenizer


def best_seconds(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs of each path, run round-robin so that load from other processes on
    this shared machine falls on every path alike (the minimum is the least disturbed run)."""
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeats):
        for name, function in paths.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bpe_tokens_per_post(train_captions: list[str], captions: list[str], vocab_size: int) -> float:
    """Mean tokens per caption of a byte-level BPE with ``vocab_size`` trained on ``train_captions``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(train_captions, trainer)
    return float(np.mean([len(e.ids) for e in bpe.encode_batch(captions)]))


def main() -> None:
    """Generate the corpus (once per workdir), build the tokenizer, time the three paths, count tokens."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=200_000, help="generated posts (default 200000)")
    parser.add_argument("--workdir", type=Path, help="folder for the corpus, DATA_DIR and tokenizer (default: a temp folder)")
    parser.add_argument("--batch-size", type=int, default=1024, help="posts per __call__ batch (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the fastest counts (default 3)")
    parser.add_argument("--bpe-train-posts", type=int, default=50_000, help="captions to train the BPEs on (default 50000)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    data_dir = workdir / "data"
    if not (data_dir / "dataset_dict.json").is_file():
        csv = workdir / "corpus.csv"
        generate_corpus(csv, args.posts, seed=0, tag_data=default_tag_data())
        build_dataset([csv], data_dir, progress=False)
    tok = build_tokenizer(data_dir, workdir / "tokenizer")
    data = datasets.load_from_disk(str(data_dir))
    split = datasets.concatenate_datasets([data["train"], data["test"]]).flatten_indices()
    rows = split.to_list()
    n = len(rows)

    vocab = {tok.convert_ids_to_tokens(i): i for i in tok.tag_token_ids}
    unknown = tok.unk_token_ids["general"]

    def dict_lookup() -> list[list[int]]:
        get = vocab.get
        return [[get(tag, unknown) for c in TAG_CATEGORIES for tag in row[c]] for row in rows]

    def call() -> None:
        for start in range(0, n, args.batch_size):
            tok(rows[start : start + args.batch_size], padding=True, return_tensors="pt")

    encoded = encode_dataset(tok, split)
    assert encoded["input_ids"][:1000] == tok(rows[:1000])["input_ids"], "bulk path differs from __call__"
    timings = best_seconds(
        {
            "(c) plain Python dict lookup (baseline)": dict_lookup,
            f"(a) __call__, batches of {args.batch_size} dicts, padding + return_tensors='pt'": call,
            "(b) encode_dataset (bulk, Arrow + numpy)": lambda: encode_dataset(tok, split),
        },
        args.repeats,
    )
    baseline = timings["(c) plain Python dict lookup (baseline)"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{n} generated posts, vocabulary {len(tok)} tokens, {os.cpu_count()} CPU cores, load average after timing {load}\n")
    print("| path | posts/s | vs (c) |\n|---|---:|---:|")
    for name, seconds in timings.items():
        print(f"| {name} | {n / seconds:,.0f} | {baseline / seconds:.2f}x |")

    captions = [" ".join(tag for c in TAG_CATEGORIES for tag in row[c]) for row in rows]
    lengths = np.asarray(encoded["length"])
    categories = encoded.with_format("arrow")["category_ids"].combine_chunks().flatten().to_numpy()
    ours_tags = float((categories >= CATEGORY_IDS["general"]).sum() / n)  # tag tokens: no <cls>, rating or score
    print("\n| tokenizer | vocabulary | tokens per post | vs whole-tag |\n|---|---:|---:|---:|")
    print(f"| whole-tag (ours), tags only | {len(tok)} | {ours_tags:.1f} | 1.00x |")
    print(f"| whole-tag (ours), with <cls>, rating, score | {len(tok)} | {float(lengths.mean()):.1f} | {lengths.mean() / ours_tags:.2f}x |")
    for size in (len(tok), 32_000):
        per_post = bpe_tokens_per_post(captions[: args.bpe_train_posts], captions, size)
        print(f"| byte-level BPE (tokenizers), same captions | {size} | {per_post:.1f} | {per_post / ours_tags:.2f}x |")


if __name__ == "__main__":
    main()
