"""Aligner training cost at a million pairs: memory of the training data and time per step and per epoch.

Embedding a million posts with a model (the targets) would take far longer on a small CPU machine than
the aligner itself, so the pairs are synthetic: external vectors (Gaussian, ``--input-dim``, 1024 as
a WD v3 tagger's), targets (Gaussian, the model's ``embedding_dim``) and tag sets of ``--tags`` tags a post
drawn by Zipf's law from a ``--vocab`` vocabulary. The frozen read-back head is that of an untrained model
of the ``base`` sizes (hidden 768, embedding 256, vocabulary 32,000); its cost does not depend on its weights.

Every row trains with the code ``booru-embed align`` runs (``alignment.fit.make_phases`` and
``Phase.train_step``) on ``--steps`` batches, after ``--warmup`` untimed ones. Rows:

  mlp / linear        the aligner (sampled read-back BCE: the batch's tags + 2048 negatives)
  mlp, exact BCE      the same with every tag scored (the baseline the sampling is compared with)
  probe               the linear probe (external vector -> every tag), trained beside the aligner

  ms/step     median wall time of one step of 256 pairs (the machine may be shared: see the ratio)
  ratio       ms/step / the mlp row's, measured in the same process
  s/epoch     ms/step x steps in one epoch over --pairs pairs
  data MB     resident memory the pairs and targets take (measured), and the process' peak

    python bench/bench_align.py [--pairs 1000000] [--input-dim 1024] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from booru_embed.alignment.fit import FitSettings, make_phases
from booru_embed.alignment.targets import PostTargets


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def synthetic_targets(count: int, width: int, vocab: int, tags: int, rng: np.random.Generator) -> PostTargets:
    """Random targets: Gaussian embeddings and ``tags`` distinct Zipf-drawn tag ids a post (ids 10 and up)."""
    weights = 1.0 / np.arange(1, vocab - 9) ** 1.0
    draws = rng.choice(vocab - 10, size=(count, tags), p=weights / weights.sum()).astype(np.int32) + 10
    draws.sort(axis=1)
    keep = np.ones_like(draws, dtype=bool)
    keep[:, 1:] = draws[:, 1:] != draws[:, :-1]
    lengths = keep.sum(axis=1)
    return PostTargets(embeddings=rng.standard_normal((count, width), dtype=np.float32),
                       offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), tag_ids=draws[keep],
                       character_offsets=np.zeros(count + 1, dtype=np.int64), characters=np.zeros(0, dtype=str))


def base_model(vocab: int) -> torch.nn.Module:
    """An untrained model of the base sizes (one layer: the encoder is not used), frozen."""
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    config = BooruEmbedConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                              intermediate_size=2048, embedding_dim=256, nested_dims=[32, 64, 128])
    return BooruEmbedForPreTraining(config).eval().requires_grad_(False)


def time_steps(phase, rows: np.ndarray, batch: int, steps: int, warmup: int) -> float:
    """Median seconds of one ``train_step`` over ``steps`` timed batches."""
    times = []
    for number in range(warmup + steps):
        chunk = rows[number * batch : (number + 1) * batch]
        started = time.perf_counter()
        phase.train_step(chunk, 10_000)
        if number >= warmup:
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    """Print the table described in the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--input-dim", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--tags", type=int, default=30, help="tags drawn per post (duplicates merged)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    before = rss_mb()
    external = rng.standard_normal((args.pairs, args.input_dim), dtype=np.float32)
    targets = synthetic_targets(args.pairs, 256, args.vocab, args.tags, rng)
    data_mb = rss_mb() - before
    model = base_model(args.vocab)
    is_tag = np.zeros(args.vocab, dtype=bool)
    is_tag[10:] = True
    holdout = max(1, args.pairs // 20)
    train_rows, holdout_rows = np.arange(holdout, args.pairs), np.arange(holdout)
    order = np.random.default_rng(1).permutation(train_rows)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, overrides in (("mlp", {}), ("linear", {"arch": "linear"}), ("mlp, exact BCE", {"negatives": args.vocab}),
                                 ("probe", {"probe": True})):
            settings = FitSettings(**{"probe": False, **overrides})
            phases, _ = make_phases(model, is_tag, external, targets, train_rows, holdout_rows, settings, Path(folder))
            phase = phases[-1]
            rows.append((label, time_steps(phase, order, settings.batch_size, args.steps, args.warmup), settings))
    base = rows[0][1]
    print(f"{args.pairs:,} pairs, external {args.input_dim}-d, embedding 256-d, vocabulary {args.vocab:,}, "
          f"{len(targets.tag_ids) / args.pairs:.1f} tags a post, {args.threads} thread(s)")
    print(f"training data in memory: {data_mb:,.0f} MB (external {external.nbytes / 2**20:,.0f} MB); "
          f"process peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(f"{'':16} {'ms/step':>8} {'ratio':>6} {'s/epoch':>8}")
    for label, seconds, settings in rows:
        epoch = math.ceil(len(train_rows) / settings.batch_size) * seconds
        print(f"{label:16} {seconds * 1000:8.1f} {seconds / base:6.2f} {epoch:8.0f}")


if __name__ == "__main__":
    main()
