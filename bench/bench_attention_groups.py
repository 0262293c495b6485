"""Training-step time of `tiny`'s recipe with packed posts attended in length groups vs one batch of all.

    python bench/bench_attention_groups.py --workdir runs/recipe [--setting many-characters] [--seed 1] \
        [--steps 12] [--threads 2]

Takes (or makes, as `bench/bench_recipe.py` does) the generated corpus of (setting, seed), builds the
recipe's training session (`hub_configs/tiny.json`, so subject-pair batches, oversampling and views as
trained), collects ``--steps`` batches from its loader, and times forward + losses + backward + AdamW
on each batch twice, alternating: with ``GROUP_LENGTH_RATIO`` as shipped (posts of similar length share
an attention batch) and with it set to 0 (one (posts, max_seqlen) batch for all, the layout before
length groups). The ratio column is the one-batch wall time / this row's, from the same process; CPU
time is printed too, but with several threads it counts their spin-waiting and overstates the work.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipe import prepare_corpus  # noqa: E402


def attention_slots(batch: dict, ratio: float) -> int:
    """Slots of the regrouped attention batches of one collated batch at a given length ratio."""
    from booru_embed.modeling import modeling_booru_embed as modeling

    cu = batch["cu_seqlens"]
    layout = modeling.PostLayout.from_cu_seqlens(cu, None, int(cu[-1]))
    saved, modeling.GROUP_LENGTH_RATIO = modeling.GROUP_LENGTH_RATIO, ratio
    try:
        return sum(count * length for count, length in modeling.LengthGroups.from_layout(layout).shapes)
    finally:
        modeling.GROUP_LENGTH_RATIO = saved


def main() -> None:
    """Print the table."""
    from booru_embed.modeling import modeling_booru_embed as modeling
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import epoch_batches, forward_and_losses, setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the generated corpora are cached")
    parser.add_argument("--setting", default="many-characters")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = prepare_corpus(args.workdir, args.setting, args.seed, args.posts, args.threads)
    with tempfile.TemporaryDirectory() as output:
        config = TrainingConfig.from_sources(
            "tiny", dataset=str(corpus / "data"), tokenizer=str(corpus / "tokenizer"), output=output,
            seed=args.seed, eval_every=0,
        )
        run = setup(config)
        batches = list(itertools.islice(iter(epoch_batches(run)), args.steps + 1))
        shipped = modeling.GROUP_LENGTH_RATIO
        cpu = {shipped: 0.0, 0.0: 0.0}
        wall = {shipped: 0.0, 0.0: 0.0}
        for index, batch in enumerate(batches):  # the first batch warms up and is not counted
            for ratio in (shipped, 0.0) if index % 2 else (0.0, shipped):
                modeling.GROUP_LENGTH_RATIO = ratio
                start, start_wall = time.process_time(), time.perf_counter()
                loss, _ = forward_and_losses(run.model, batch, config, run.candidates, run.dims, run.negative_proposal)
                loss.backward()
                run.optimizer.step()
                run.optimizer.zero_grad()
                if index:
                    cpu[ratio] += time.process_time() - start
                    wall[ratio] += time.perf_counter() - start_wall
        modeling.GROUP_LENGTH_RATIO = shipped
    tokens = sum(int(b["cu_seqlens"][-1]) for b in batches[1:])
    print(f"tiny recipe, {args.setting} seed {args.seed} ({len(run.tokenizer):,} tokens), {args.steps} steps of "
          f"{config.batch_size} posts, {args.threads} threads")
    print(f"{'attention layout':<44} {'slots/token':>11} {'wall s/step':>11} {'CPU s/step':>10} {'ratio':>6}")
    for name, ratio in (("one (posts, max_seqlen) batch (before)", 0.0), (f"length groups, ratio {shipped}", shipped)):
        slots = sum(attention_slots(b, ratio) for b in batches[1:])
        print(f"{name:<44} {slots / tokens:>11.2f} {wall[ratio] / args.steps:>11.3f} {cpu[ratio] / args.steps:>10.3f} "
              f"{wall[0.0] / wall[ratio]:>6.2f}")


if __name__ == "__main__":
    main()
