"""Embedding throughput of BooruEmbedder.embed against simpler ways to run the same model, in one process.

Builds a generated corpus, its tokenizer and a randomly initialised model of a hub config (speed does
not depend on the weights), then embeds the same posts with:
  one-by-one   one forward pass per post (the baseline)
  padded       batches in input order, padded to the longest post of the batch
  packed       batches in input order, packed into one row with cu_seqlens (no padding at all)
  embed()      BooruEmbedder.embed: batches of posts of similar length, padded
and prints posts/s and the ratio to the baseline. Checks that every variant gives the same vectors.

    python bench/bench_embed.py [--posts 4000] [--config tiny] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from booru_embed.data.ingest import build_dataset
from booru_embed.data.synthetic import generate_corpus
from booru_embed.embedder import BooruEmbedder
from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
from booru_embed.training.config import read_model_config
from booru_embed.data.tokenizer_build import build_tokenizer


def make_model(workdir: Path, posts: int, config_json: str) -> tuple[Path, list[dict]]:
    """Corpus -> DATA_DIR -> tokenizer -> random model folder; returns it and the posts to embed."""
    import datasets

    csv = workdir / "posts.csv"
    generate_corpus(csv, posts, seed=0)
    build_dataset([csv], workdir / "data")
    model_dir = workdir / "model"
    tokenizer = build_tokenizer(workdir / "data", model_dir)
    values, _ = read_model_config(config_json)
    values.update(vocab_size=len(tokenizer), num_score_buckets=len(tokenizer.score_token_ids))
    torch.manual_seed(0)
    BooruEmbedForPreTraining(BooruEmbedConfig(**values)).save_pretrained(model_dir)
    data = datasets.load_from_disk(str(workdir / "data"))
    columns = ["general", "artist", "copyright", "character", "meta", "rating", "score"]
    rows = data["train"].select_columns(columns).to_list() + data["test"].select_columns(columns).to_list()
    return model_dir, rows[:posts]


def padded_in_order(embedder: BooruEmbedder, sequences: list[list[int]], batch_size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = embedder._batch(sequences[start : start + batch_size])
            pooled = embedder.model.model(**{name: torch.from_numpy(value) for name, value in batch.items()}).pooler_output
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def packed_in_order(embedder: BooruEmbedder, sequences: list[list[int]], batch_size: int) -> np.ndarray:
    categories = torch.from_numpy(embedder._categories)
    out = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            ids = torch.tensor([i for s in chunk for i in s])[None]
            lengths = torch.tensor([len(s) for s in chunk], dtype=torch.int32)
            cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            pooled = embedder.model.model(ids, categories[ids], cu_seqlens=cu, max_seqlen=int(lengths.max())).pooler_output
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


def one_by_one(embedder: BooruEmbedder, sequences: list[list[int]]) -> np.ndarray:
    return padded_in_order(embedder, sequences, 1)


def timed(function, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--config", default="tiny", help="a shipped config name or the path of a config JSON")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--baseline-posts", type=int, default=1000, help="posts for the slow one-by-one baseline")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        model_dir, posts = make_model(Path(folder), args.posts, args.config)
        embedder = BooruEmbedder.from_pretrained(model_dir, device="cpu")
        sequences = embedder._ids(posts)
        lengths = np.array([len(s) for s in sequences])
        print(f"{len(posts)} posts, tokens per post: mean {lengths.mean():.1f}, max {lengths.max()}; "
              f"config {args.config}; batch {args.batch_size}; torch threads {torch.get_num_threads()}")
        embed_all = lambda: embedder.embed(posts, batch_size=args.batch_size, progress=False)  # noqa: E731
        embed_all()  # warm-up
        reference, embed_seconds = timed(embed_all)
        base_n = min(args.baseline_posts, len(posts))
        base, base_seconds = timed(one_by_one, embedder, sequences[:base_n])
        padded, padded_seconds = timed(padded_in_order, embedder, sequences, args.batch_size)
        packed, packed_seconds = timed(packed_in_order, embedder, sequences, args.batch_size)
        for name, vectors in (("one-by-one", base), ("padded", padded), ("packed", packed)):
            np.testing.assert_allclose(vectors, reference[: len(vectors)], atol=1e-4, err_msg=name)
    base_rate = base_n / base_seconds
    rows = [("one-by-one (baseline)", base_n, base_seconds), ("padded, input order", len(posts), padded_seconds),
            ("packed, input order", len(posts), packed_seconds), ("embed() length-sorted", len(posts), embed_seconds)]
    print(f"{'variant':<24} {'posts':>6} {'seconds':>8} {'posts/s':>9} {'vs baseline':>12}")
    for name, count, seconds in rows:
        print(f"{name:<24} {count:>6} {seconds:>8.2f} {count / seconds:>9.0f} {count / seconds / base_rate:>11.1f}x")


if __name__ == "__main__":
    main()
