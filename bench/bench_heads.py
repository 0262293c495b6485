"""Step time of `small` at a generated corpus's vocabulary and at Danbooru's (~150k), exact vs sampled tag heads.

    python bench/bench_heads.py [--posts 20000] [--steps 3] [--batch-size 32] [--vocab 150016] [--negatives 2048]

The batches come from a generated corpus (about 3.8k tokens); the large-vocabulary rows use the same
batches with the model's vocabulary padded to ``--vocab`` (the extra tokens are masked-tag candidates
that never occur, as Danbooru's rare tags mostly do not in one batch), so only the vocabulary-wide
parts change. Each row runs optimizer steps (collate + forward + losses + backward + AdamW) with
exact or sampled read-back (``readback_negatives``) and masked-tag (``masked_negatives``) heads and
AdamW's foreach or fused kernel, and reports the process CPU time per step (robust when other jobs
share the machine), split into forward + losses, backward and optimizer, plus the read-back columns
scored. Ratio columns: CPU time of the row / the first row (the former set-up: exact heads, foreach,
at the corpus's vocabulary), and a large-vocabulary row / the same set-up at the corpus's vocabulary
(the issue-14 target: at most 1.5 for the defaults). The last rows time
the masked-tag head alone (its logits, set loss and backward from fixed hidden states) at both
sizes: its share of a step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_training import encoded_corpus  # the generated corpus and its encoded training split


def padded_model(tokenizer, vocab: int):
    """A fresh `small` whose vocabulary is the tokenizer's padded to ``vocab`` tokens, with prior tag biases."""
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
    from booru_embed.training.config import read_model_config

    values = read_model_config("small")[0]
    for key in ("auto_map", "architectures", "model_type", "transformers_version"):
        values.pop(key, None)
    values.update(
        vocab_size=vocab, num_ratings=len(tokenizer.rating_token_ids), num_score_buckets=len(tokenizer.score_token_ids),
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, mask_token_id=tokenizer.mask_token_id,
    )
    torch.manual_seed(0)
    model = BooruEmbedForPreTraining(BooruEmbedConfig(**values))
    counts = list(tokenizer.token_counts) + [0] * (vocab - len(tokenizer.token_counts))
    model.initialise_tag_biases(counts, 20000)
    return model, counts


def time_steps(encoded, tokenizer, vocab: int, negatives: tuple[int, int], fused: bool, steps: int, batch_size: int
               ) -> dict[str, float]:
    """CPU seconds per step (total, forward + losses, backward, optimizer) and read-back columns of one row."""
    from booru_embed.sequences import TokenInfo
    from booru_embed.training.collator import EpochBatchSampler, PretrainingCollator
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import forward_and_losses, optimizer_for
    from booru_embed.training.objectives import negative_proposal

    config = TrainingConfig(config="small", batch_size=batch_size, readback_negatives=negatives[0],
                            masked_negatives=negatives[1])
    info = TokenInfo.from_tokenizer(tokenizer)
    model, counts = padded_model(tokenizer, vocab)
    optimizer = optimizer_for(model, config, fused=fused)
    base = info.candidates_by_group()
    candidates = torch.zeros(base.shape[0], vocab, dtype=torch.bool)
    candidates[:, : base.shape[1]] = base
    candidates[0, base.shape[1]:] = True
    dims = [*model.config.nested_dims, model.config.embedding_dim]
    proposal = negative_proposal(counts) if any(negatives) else None
    batches = iter(EpochBatchSampler(len(encoded), batch_size, seed=0, lengths=encoded.data.column("length").to_numpy()))
    collator = PretrainingCollator(info, config)
    totals = dict(step=0.0, forward=0.0, backward=0.0, optimizer=0.0, columns=0.0, masks=0.0)
    for step in range(steps + 1):  # the first step warms up and is not counted
        rows = encoded[next(batches)]
        batch = collator([dict(zip(rows, values)) for values in zip(*rows.values())])
        marks = [time.process_time()]
        loss, _ = forward_and_losses(model, batch, config, candidates, dims, proposal)
        marks.append(time.process_time())
        loss.backward()
        marks.append(time.process_time())
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.process_time())
        if step:
            totals["forward"] += marks[1] - marks[0]
            totals["backward"] += marks[2] - marks[1]
            totals["optimizer"] += marks[3] - marks[2]
            totals["step"] += marks[3] - marks[0]
            columns = len(torch.unique(batch["readback_ids"])) + negatives[0] if negatives[0] else vocab
            totals["columns"] += min(columns, vocab)
            totals["masks"] += int(batch["mlm_positions"].sum())
    return {k: v / steps for k, v in totals.items()}


def time_masked_head(vocab: int, groups: int, steps: int) -> float:
    """CPU seconds of the masked-tag head alone (logits, set loss, backward) for ``groups`` masks of `small`."""
    from booru_embed.training.objectives import set_prediction_loss

    torch.manual_seed(0)
    hidden = torch.randn(groups, 512, requires_grad=True)
    dense = torch.nn.Linear(512, 512, bias=False)
    matrix = torch.nn.Parameter(torch.randn(vocab, 512) * 0.02)
    bias = torch.nn.Parameter(torch.zeros(vocab))
    candidates = torch.ones(1, vocab, dtype=torch.bool)
    targets = torch.arange(groups).repeat_interleave(4)
    ids = torch.randint(3, vocab, (len(targets),))
    weights = torch.full((len(targets),), 0.25)
    none = torch.zeros(0, dtype=torch.long)
    start = time.process_time()
    for _ in range(steps):
        logits = torch.nn.functional.linear(torch.nn.functional.gelu(dense(hidden)), matrix, bias)
        set_prediction_loss(logits, torch.zeros(groups, dtype=torch.long), targets, ids, weights, none, none,
                            candidates).backward()
    return (time.process_time() - start) / steps


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=150_016)
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, _, encoded = encoded_corpus(Path(tmp), args.posts)
        small_vocab = len(tokenizer.token_categories)
        print(f"small, {args.posts} generated posts, batch {args.batch_size} posts (x3 sequences), {args.steps} steps "
              f"after one warm-up, {args.threads} threads; CPU seconds per step (time.process_time)")
        print(f"{'vocabulary':>10} {'read-back':<10} {'masked':<10} {'AdamW':<8} {'columns':>8} {'forward':>8} "
              f"{'backward':>8} {'optimizer':>9} {'step':>7} {'ratio':>6} {'vs small vocab':>14}")
        k = args.negatives
        setups = (((0, 0), False), ((k, 0), True), ((k, k), True))  # former, default, both heads sampled
        first, at_small, masks = None, {}, 0
        for vocab in (small_vocab, args.vocab):
            for negatives, fused in setups:
                row = time_steps(encoded, tokenizer, vocab, negatives, fused, args.steps, args.batch_size)
                first, masks = first or row["step"], round(row["masks"])
                versus = "" if vocab == small_vocab else f"{row['step'] / at_small[negatives, fused]:.2f}"
                at_small.setdefault((negatives, fused), row["step"])
                names = ["exact" if n == 0 else f"K={n}" for n in negatives]
                print(f"{vocab:>10,} {names[0]:<10} {names[1]:<10} {'fused' if fused else 'foreach':<8} "
                      f"{row['columns']:>8,.0f} {row['forward']:>8.3f} {row['backward']:>8.3f} {row['optimizer']:>9.3f} "
                      f"{row['step']:>7.3f} {row['step'] / first:>6.2f} {versus:>14}")
        for vocab in (small_vocab, args.vocab):
            print(f"{vocab:>10,} masked-tag head alone ({masks} masks, as in a batch): "
                  f"{time_masked_head(vocab, masks, args.steps):.3f} CPU s per forward + backward")


if __name__ == "__main__":
    main()
