"""CPU serving throughput: PyTorch vs ONNX Runtime (fp32 and int8) on the same posts, in one process.

Builds a generated corpus, its tokenizer and a randomly initialised model of a hub config (speed does
not depend on the weights; ``bench_embed.make_model``), exports it with ``export-onnx --quantize int8``,
then times with the same posts, batch size and thread count:
  embed      BooruEmbedder.embed over all posts (posts/s)
  suggest    BooruEmbedder.suggest on single posts (calls/s; one forward pass each)
for the torch backend (the baseline), ONNX Runtime on model.onnx and on model_quantized.onnx, and
prints the ratios to PyTorch with the agreement of the vectors (max abs diff, least cosine).

    python bench/bench_onnx.py [--posts 2000] [--config hub_configs/tiny.json] [--batch-size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_embed import make_model

from booru_embed.embedder import BooruEmbedder
from booru_embed.export import export_onnx
from booru_embed.onnx_backend import ONNX_FILE, QUANTIZED_FILE, OnnxModel


def rate(function, count: int) -> tuple[object, float]:
    """Result of ``function()`` after one warm-up call, and ``count`` divided by the seconds it took."""
    function()
    start = time.perf_counter()
    result = function()
    return result, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "hub_configs" / "tiny.json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--suggest-calls", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ONNX Runtime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model_dir, posts = make_model(Path(folder), args.posts, args.config)
        export_onnx(model_dir, quantize="int8", progress=False)
        baseline = BooruEmbedder.from_pretrained(model_dir, device="cpu")
        embedders = {"pytorch (baseline)": baseline}
        for name, file in (("onnxruntime fp32", ONNX_FILE), ("onnxruntime int8", QUANTIZED_FILE)):
            embedders[name] = BooruEmbedder(OnnxModel.from_pretrained(str(model_dir), True, file, threads=args.threads),
                                            baseline.tokenizer)
        lengths = np.array([len(s) for s in baseline._ids(posts)])
        sizes = ", ".join(f"{f} {(model_dir / 'onnx' / f).stat().st_size / 2**20:.1f} MiB" for f in (ONNX_FILE, QUANTIZED_FILE))
        print(f"{len(posts)} posts, tokens per post: mean {lengths.mean():.1f}, max {lengths.max()}; config "
              f"{args.config.name}; batch {args.batch_size}; threads {args.threads}; {sizes}")
        single = posts[: args.suggest_calls]
        results = {}
        for name, embedder in embedders.items():
            vectors, embed_rate = rate(lambda: embedder.embed(posts, batch_size=args.batch_size, progress=False), len(posts))
            top, suggest_rate = rate(lambda: [embedder.suggest(p, top_k=10, expand_implications=False)[0][0]
                                              for p in single], len(single))
            results[name] = (vectors, top, embed_rate, suggest_rate)
    reference, reference_top, base_embed, base_suggest = results["pytorch (baseline)"]
    print(f"{'backend':<20} {'embed posts/s':>14} {'ratio':>7} {'suggest calls/s':>16} {'ratio':>7} "
          f"{'max |diff|':>11} {'min cosine':>11} {'same top-1':>11}")
    for name, (vectors, top, embed_rate, suggest_rate) in results.items():
        cosine = (vectors * reference).sum(axis=1).min()
        same = np.mean([a == b for a, b in zip(top, reference_top)])
        print(f"{name:<20} {embed_rate:>14.0f} {embed_rate / base_embed:>6.2f}x {suggest_rate:>16.0f} "
              f"{suggest_rate / base_suggest:>6.2f}x {np.abs(vectors - reference).max():>11.2e} {cosine:>11.6f} {same:>10.0%}")


if __name__ == "__main__":
    main()
