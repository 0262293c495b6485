"""The training loop: plain Accelerate (one prepare, accumulate, save_state / load_state).

``python train_hf.py ...`` runs on one CPU; ``accelerate launch train_hf.py ...`` on many processes
or machines (DDP, FSDP as Accelerate provides). ``booru-embed train`` is the same command.
Python: ``train(TrainingConfig(dataset=..., tokenizer=..., output=..., config="tiny"))``.

MODEL_DIR after a run: the model (safetensors, config.json with auto_map, remote code), the
tokenizer, ``training_config.json``, ``eval_metrics.json``, ``checkpoints/step_N/`` and ``logs/``
(TensorBoard, plus ``logs/train_loss.jsonl``: one line of losses per optimizer step).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .checkpointing import StopSignal, TrainState, checkpoints, ignore_sigterm, load_last_checkpoint, save_checkpoint
from .config import TrainingConfig, add_config_arguments, config_from_args, read_model_config
from .loss_log import LOGGED, LossLog, RunningSums

EVAL_BASELINE_POSTS = 50_000  # training posts the evaluations during training count (seconds, not minutes)


def lr_factor(step: int, total: int, config: TrainingConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` of ``total``: linear warm-up, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max(config.warmup_steps, total - round(config.decay_fraction * total))  # wsd
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - floor) * min(1.0, (step - decay_start) / max(1, total - decay_start))


def load_tokenizer(path: str | Path) -> Any:
    """The ``BooruEmbedTokenizer`` of TOKENIZER_DIR (the package class, so nothing is imported twice)."""
    from ..modeling.tokenization_booru_embed import BooruEmbedTokenizer

    if not Path(path, "vocab.json").is_file():
        raise UsageError(f"not a tokenizer folder (no vocab.json): {path}")
    return BooruEmbedTokenizer.from_pretrained(str(path))


def build_model(config: TrainingConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``BooruEmbedForPreTraining``; vocabulary sizes come from the tokenizer."""
    import torch

    from ..modeling.configuration_booru_embed import BooruEmbedConfig
    from ..modeling.modeling_booru_embed import BooruEmbedForPreTraining

    values = read_model_config(config.config)[0] if config.config else {}
    for key in ("auto_map", "architectures", "model_type", "transformers_version"):
        values.pop(key, None)
    values.update(
        vocab_size=len(tokenizer.token_categories),
        num_ratings=len(tokenizer.rating_token_ids),
        num_score_buckets=len(tokenizer.score_token_ids),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    try:
        model_config = BooruEmbedConfig(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad model config {config.config}: {error}") from None
    torch.manual_seed(config.seed)
    model = BooruEmbedForPreTraining(model_config)
    if config.attn_implementation:
        try:
            model.set_attn_implementation(config.attn_implementation)
        except (ImportError, ValueError) as error:
            raise UsageError(f"--attn-implementation {config.attn_implementation}: {error}") from None
    return model


def encoded_train_split(config: TrainingConfig, tokenizer: Any, accelerator: Any) -> Any:
    """The tokenized training split less the validation slice (``data.validation_slice``, its ids written to
    MODEL_DIR), cached under MODEL_DIR/cache and memory-mapped from there."""
    import datasets
    import numpy as np

    from ..data.bulk_encoding import encode_dataset
    from ..data.validation_slice import held_out_rows, write_validation_ids

    try:
        splits = datasets.load_from_disk(str(config.dataset))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"cannot read dataset {config.dataset}: {error}") from None
    if "train" not in splits:
        raise UsageError(f"{config.dataset} has no `train` split")
    train = splits["train"]
    held_out = held_out_rows(len(train), config.validation_posts, config.seed)
    cache = Path(config.output) / "cache" / "train_encoded"
    key = {"dataset": str(Path(config.dataset).resolve()), "fingerprint": train._fingerprint,
           "vocab": len(tokenizer), "tokenizer": str(Path(config.tokenizer).resolve()),
           "held_out": [len(held_out), config.seed]}
    key_file = cache / "cache_key.json"
    if accelerator.is_main_process:
        ids = train.select(held_out).select_columns(["id"])["id"] if len(held_out) else []
        write_validation_ids(Path(config.output), np.asarray(ids, dtype=np.int64), config.seed)
        if len(held_out):
            train = train.select(np.setdiff1d(np.arange(len(train)), held_out))
        if not (key_file.is_file() and json.loads(key_file.read_text()) == key):
            shutil.rmtree(cache, ignore_errors=True)
            tmp = cache.with_name(cache.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            encode_dataset(tokenizer, train).save_to_disk(str(tmp))
            (tmp / "cache_key.json").write_text(json.dumps(key))
            tmp.rename(cache)
    accelerator.wait_for_everyone()
    encoded = datasets.load_from_disk(str(cache))
    if len(encoded) == 0:
        raise UsageError(f"{config.dataset}: the train split is empty")
    return encoded


def subject_draws(train_encoded: Any, info: Any, config: TrainingConfig) -> tuple[Any, Any]:
    """(draws per epoch, rarest-subject groups) of the training posts for ``EpochBatchSampler``.

    Each is None when its option is off (``rare_subject_oversampling``, ``subject_pair_batches``); the
    split is laid flat once for both (``rare_subject_weights``, ``rarest_subject_groups``).
    """
    from ..modeling.categories_booru_embed import CATEGORY_IDS
    from ..sequences import flat_posts
    from .collator import SUBJECT_CATEGORIES, rare_subject_weights, rarest_subject_groups

    if not (config.rare_subject_oversampling or config.subject_pair_batches):
        return None, None
    flat = flat_posts(train_encoded.data)
    subjects = (tuple(CATEGORY_IDS[name] for name in SUBJECT_CATEGORIES), info.unk_token_ids)
    weights = rare_subject_weights(*flat, *subjects, config.rare_subject_oversampling) \
        if config.rare_subject_oversampling else None
    partners = rarest_subject_groups(*flat, *subjects) if config.subject_pair_batches else None
    return weights, partners


def optimizer_for(model: Any, config: TrainingConfig, fused: bool) -> Any:
    """AdamW with weight decay on matrices only (no decay on norms, biases, embeddings)."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "embeddings" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
        fused=fused or None,
    )


def check_inputs(config: TrainingConfig) -> Path:
    """MODEL_DIR, created, once the inputs exist and it may be trained into (``UsageError`` otherwise)."""
    for name in ("dataset", "tokenizer", "output"):
        if not getattr(config, name):
            raise UsageError(f"--{name} is required")
    if not Path(config.dataset).is_dir():
        raise UsageError(f"cannot read dataset {config.dataset}: no such folder")
    if not Path(config.tokenizer, "vocab.json").is_file():
        raise UsageError(f"not a tokenizer folder (no vocab.json): {config.tokenizer}")
    if config.eval_truth and not Path(config.eval_truth).is_file():
        raise UsageError(f"ground-truth file not found: {config.eval_truth}")
    output = Path(config.output)
    if checkpoints(output) and not config.resume:
        raise UsageError(f"{output} already holds checkpoints: pass --resume to continue, or choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    return output


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA, XPU, MPS, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def make_accelerator(config: TrainingConfig, output: Path) -> Any:
    """The run's ``Accelerator``: accumulation, mixed precision, TensorBoard under MODEL_DIR/logs."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    return Accelerator(
        cpu=not has_accelerator(),  # lets torchrun / accelerate launch run several CPU processes (gloo)
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        step_scheduler_with_optimizer=False,
    )


def initialise_weights(model: Any, config: TrainingConfig, tokenizer: Any, train_encoded: Any, accelerator: Any) -> None:
    """A fresh run's start: co-occurrence token embeddings (``--embedding-init``) and prior tag biases.

    The co-occurrence rows take minutes at a million posts, so only the main process computes them;
    the others wait and receive its weights (``broadcast``).
    """
    import torch
    from accelerate.utils import broadcast

    from .cooccurrence_init import initialise_from_cooccurrence

    if config.embedding_init in ("cooccurrence", "lift"):
        started = time.perf_counter()
        rows = initialise_from_cooccurrence(model, train_encoded, config.seed, lift=config.embedding_init == "lift") \
            if accelerator.is_main_process else 0
        if accelerator.num_processes > 1:
            with torch.no_grad():
                for param in model.parameters():
                    param.copy_(broadcast(param.detach().to(accelerator.device), from_process=0))
        accelerator.print(f"token embeddings: {rows} rows from the SVD of the training split's co-counts "
                          f"in {time.perf_counter() - started:.1f} s")
    if config.tag_bias_init == "prior":
        model.initialise_tag_biases(tokenizer.token_counts, len(train_encoded))


def make_loader(config: TrainingConfig, train_encoded: Any, info: Any, accelerator: Any) -> tuple[Any, Any, Any]:
    """The training ``DataLoader`` and the two parts of it that learn the epoch: its batch sampler and collator."""
    import torch
    from torch.utils.data import DataLoader

    from .collator import EpochBatchSampler, PretrainingCollator

    weights, partners = subject_draws(train_encoded, info, config)
    sampler = EpochBatchSampler(
        len(train_encoded), config.batch_size, config.seed,
        lengths=train_encoded.data.column("length").to_numpy() if config.length_buckets else None,
        weights=weights,
        partners=partners,
    )
    if len(sampler) < accelerator.num_processes:
        raise UsageError(f"the train split ({len(train_encoded)} posts) is smaller than one batch per process")
    collator = PretrainingCollator(info, config)
    loader = DataLoader(
        train_encoded.with_format(None, columns=["id", "input_ids", "category_ids"]),
        batch_sampler=sampler, collate_fn=collator, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # worker seeds must not touch the global RNG
        worker_init_fn=ignore_sigterm,
    )
    return loader, sampler, collator


def build_evaluator(config: TrainingConfig, tokenizer: Any, info: Any, train_encoded: Any) -> Any:
    """An ``Evaluator`` over ``eval_posts`` test posts, its baseline counted on a seeded sample of
    ``EVAL_BASELINE_POSTS`` training posts (straight from the encoded Arrow columns), its search settings
    chosen on the validation slice held out of training, or None."""
    import datasets

    from ..data.validation_slice import read_validation_ids
    from ..evaluation import Evaluator, encode_sample
    from ..evaluation.command import held_out_posts

    splits = datasets.load_from_disk(str(config.dataset))
    test = splits.get("test")
    if test is None or len(test) == 0 or config.eval_posts == 0:
        return None
    held_out_ids = read_validation_ids(config.output)
    return Evaluator(
        info, train_encoded, encode_sample(tokenizer, test, config.eval_posts, "test"), tokenizer.tag_to_id,
        max_posts=config.eval_posts, baseline_posts=EVAL_BASELINE_POSTS,
        validation_posts=held_out_posts(tokenizer, splits["train"], held_out_ids),
        held_out_ids=held_out_ids,
    )


@dataclass
class Session:
    """What ``setup`` prepares for ``fit``: the prepared Accelerate objects, the run's position, its logs."""

    config: TrainingConfig
    output: Path
    accelerator: Any
    tokenizer: Any
    model: Any  # as prepared (wrapped); ``accelerator.unwrap_model`` gives the BooruEmbedForPreTraining
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: Any
    collator: Any
    total_steps: int
    candidates: Any  # (group, vocab) bool: the tokens each masked-slot kind chooses among
    negative_proposal: Any  # (vocab,) distribution of the tag heads' sampled negatives, or None (both exact)
    dims: list[int]  # nested embedding sizes, then the full size
    state: TrainState
    sums: RunningSums
    loss_log: LossLog
    evaluator: Any
    truth: dict | None


def setup(config: TrainingConfig) -> Session:
    """Everything before the first step: accelerator, tokenizer, data, model, optimizer, schedule, one ``prepare``, resume."""
    import torch
    from accelerate.utils import set_seed

    from ..sequences import TokenInfo

    output = check_inputs(config)
    resuming = bool(config.resume and checkpoints(output))
    accelerator = make_accelerator(config, output)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.tokenizer)
    info = TokenInfo.from_tokenizer(tokenizer)
    train_encoded = encoded_train_split(config, tokenizer, accelerator)
    model = build_model(config, tokenizer)
    if not resuming:
        initialise_weights(model, config, tokenizer, train_encoded, accelerator)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    loader, sampler, collator = make_loader(config, train_encoded, info, accelerator)
    batches_per_epoch = math.ceil(len(sampler) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    # fused AdamW: one pass per tensor; on CPU 5x faster than foreach on a 150k-row embedding matrix
    optimizer = optimizer_for(model, config, fused=accelerator.device.type in ("cuda", "cpu"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    if config.torch_compile:
        model = torch.compile(model)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model_config = accelerator.unwrap_model(model).config

    state = load_last_checkpoint(accelerator, output) if resuming else TrainState()
    loss_log = LossLog(output / "logs", accelerator.is_main_process)
    loss_log.keep_until(state.step)
    if accelerator.is_main_process:
        config.save(output / "training_config.json")
    accelerator.init_trackers("train", config={k: v for k, v in config.to_dict().items() if v is not None})
    evaluator = build_evaluator(config, tokenizer, info, train_encoded) if accelerator.is_main_process else None
    posts_per_step = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    accelerator.print(
        f"running training: {len(train_encoded)} posts ({len(sampler.items)} draws per epoch"
        f"{', each with a same-subject partner' if config.subject_pair_batches else ''}), "
        f"{accelerator.num_processes} process(es), "
        f"{config.batch_size} posts x {config.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} = {posts_per_step} posts per step, "
        f"{total_steps} steps ({steps_per_epoch} per epoch), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    return Session(
        config, output, accelerator, tokenizer, model, optimizer, scheduler, loader, sampler, collator,
        total_steps, info.candidates_by_group().to(accelerator.device),
        negative_proposal_for(config, tokenizer, accelerator.device),
        [*model_config.nested_dims, model_config.embedding_dim], state, RunningSums(accelerator), loss_log,
        evaluator, json.loads(Path(config.eval_truth).read_text()) if config.eval_truth else None,
    )


def epoch_batches(run: Session) -> Any:
    """The current epoch's batches: every part told the epoch, the batches a resumed run already trained skipped."""
    for part in (run.loader, run.sampler, run.collator):
        part.set_epoch(run.state.epoch)
    if not run.state.batches_in_epoch:
        return run.loader
    rest = run.accelerator.skip_first_batches(run.loader, run.state.batches_in_epoch)
    rest.set_epoch(run.state.epoch)
    return rest


def negative_proposal_for(config: TrainingConfig, tokenizer: Any, device: Any) -> Any:
    """The sampling distribution of the tag heads' sampled negatives on ``device``, or None when both heads are exact."""
    from .objectives import negative_proposal

    if not (config.readback_negatives or config.masked_negatives):
        return None
    return negative_proposal(tokenizer.token_counts).to(device)


def forward_and_losses(
    model: Any, batch: dict[str, Any], config: TrainingConfig, candidates: Any, dims: list[int], proposal: Any
) -> tuple[Any, dict[str, Any]]:
    """Forward one collated batch and return ``pretraining_losses``.

    With ``config.readback_negatives`` the read-back heads score only the batch's tags and that many
    sampled negatives; with ``config.masked_negatives`` the masked-tag head scores its targets, the
    rating and score tokens and that many sampled tags (negatives drawn from ``proposal``).
    """
    import torch

    from ..sequences import model_inputs
    from .objectives import pretraining_losses, sample_columns

    readback = masked = None
    if config.readback_negatives:
        readback = sample_columns(batch["readback_ids"], proposal, config.readback_negatives)
    if config.masked_negatives:
        metadata = torch.nonzero(candidates[1:].any(dim=0)).reshape(-1)  # rating and score tokens: always exact
        masked = sample_columns(torch.cat([batch["mlm_target_ids"], metadata]), proposal, config.masked_negatives)
    outputs = model(
        **model_inputs(batch),
        readback_columns=None if readback is None else readback.columns,
        masked_columns=None if masked is None else masked.columns,
    )
    return pretraining_losses(outputs, batch, config, candidates, dims, readback_sample=readback, masked_sample=masked)


def train_micro_batch(run: Session, batch: dict[str, Any]) -> None:
    """Forward, losses and backward of one batch; on a step's last micro-batch also clip and step (``accumulate``)."""
    accelerator, config = run.accelerator, run.config
    with accelerator.accumulate(run.model):
        loss, parts = forward_and_losses(run.model, batch, config, run.candidates, run.dims, run.negative_proposal)
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    run.sums.add(**{name: parts[name] for name in LOGGED}, tokens=batch["num_tokens"], micro_batches=1)


def end_step(run: Session, stop_received: bool) -> tuple[dict[str, float], int, bool]:
    """After a step's last micro-batch: advance the schedule and the step count, add up every process's sums.

    Returns the step's mean losses, its tokens (all processes) and whether any process received
    SIGTERM (the flag travels with the sums: one collective per step).
    """
    run.scheduler.step()
    run.state.step += 1
    run.sums.add(stop=float(stop_received))
    totals = run.sums.reduce()
    tokens = int(totals["tokens"])
    run.state.tokens += tokens
    return {name: totals[name] / totals["micro_batches"] for name in LOGGED}, tokens, totals["stop"] > 0


class Throughput:
    """Tokens per second since the session started or last checkpointed; ``bank`` adds the time to ``state.seconds``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.tokens = 0

    def per_second(self) -> float:
        """Tokens per second so far."""
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)

    def bank(self, state: TrainState) -> None:
        """Add the elapsed time to ``state.seconds`` and start counting again."""
        state.seconds += time.perf_counter() - self.started
        self.started, self.tokens = time.perf_counter(), 0


def log_step(run: Session, losses: dict[str, float], bar: Any, clock: Throughput) -> None:
    """The step's line in the loss log; every ``log_every`` steps (and the last) the trackers and the bar's postfix."""
    step, lr = run.state.step, run.scheduler.get_last_lr()[0]
    run.loss_log.append(step, lr, losses)
    if step % run.config.log_every == 0 or step == run.total_steps:
        run.accelerator.log({f"train/{k}": v for k, v in losses.items()} | {"train/lr": lr}, step=step)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", mlm=f"{losses['mlm']:.3f}", tok_s=f"{clock.per_second():,.0f}")
    bar.update(1)


def every(period: int, step: int) -> bool:
    """Whether a hook with this period (0: never) runs at ``step``."""
    return bool(period) and step % period == 0


def run_evaluation(run: Session) -> dict[str, float]:
    """Evaluate on the main process, log ``eval/*`` to the trackers and print a summary; the others wait."""
    accelerator, step = run.accelerator, run.state.step
    metrics: dict[str, float] = {}
    if run.evaluator is not None and accelerator.is_main_process:
        started = time.perf_counter()
        metrics = run.evaluator.run(accelerator.unwrap_model(run.model), truth=run.truth)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items() if math.isfinite(v)}, step=step)
        shown = ("masked.micro_f1", "retrieval.character.recall@10", "traits.r_precision")
        accelerator.print(f"step {step} (evaluated in {time.perf_counter() - started:.1f} s): " + ", ".join(
            f"{name} {metrics[f'model.{name}']:.4f} (baseline {metrics[f'baseline.{name}']:.4f})"
            for name in shown if f"model.{name}" in metrics
        ))
    accelerator.wait_for_everyone()
    return metrics


@dataclass
class TrainingResult:
    """What ``fit`` leaves: MODEL_DIR, the trained (unwrapped) model, the final state, the last metrics."""

    output: Path
    model: Any
    state: TrainState
    metrics: dict[str, float]
    finished: bool  # False when stopped early (SIGTERM or stop_after_steps) with a checkpoint to resume


def save_model(accelerator: Any, model: Any, tokenizer: Any, output: Path) -> None:
    """Write the loadable model folder: safetensors, config with auto_map, remote code, tokenizer."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(output), save_function=accelerator.save, safe_serialization=True)
        tokenizer.save_pretrained(str(output))
    accelerator.wait_for_everyone()


def finish(run: Session) -> TrainingResult:
    """The end of a complete run: the last checkpoint, the model folder, the final evaluation, the summary."""
    accelerator, state, output = run.accelerator, run.state, run.output
    save_checkpoint(accelerator, output, state, run.config.keep_checkpoints)
    save_model(accelerator, run.model, run.tokenizer, output)
    metrics = run_evaluation(run)
    if accelerator.is_main_process and metrics:
        (output / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    accelerator.print(
        f"done: {state.step} steps, {state.tokens:,} tokens in {state.seconds:,.1f} s "
        f"({state.tokens / max(state.seconds, 1e-9):,.0f} tokens/s); model in {output}"
    )
    accelerator.end_training()
    return TrainingResult(output, accelerator.unwrap_model(run.model), state, metrics, finished=True)


def train(config: TrainingConfig) -> Path:
    """Train (or resume) as configured and return MODEL_DIR (see ``fit``)."""
    return fit(config).output


def fit(config: TrainingConfig) -> TrainingResult:
    """Train (or resume) as configured: ``setup``, then the Accelerate loop. Raises ``UsageError`` for bad inputs.

    Stops early, with a checkpoint to ``--resume`` from, on SIGTERM or after ``stop_after_steps``.
    """
    from tqdm.auto import tqdm

    run = setup(config)
    accelerator, state = run.accelerator, run.state
    bar = tqdm(total=run.total_steps, initial=state.step, desc="training", unit="step", dynamic_ncols=True,
               disable=not (config.progress and accelerator.is_local_main_process))
    clock = Throughput()
    session_start, stopping = state.step, False
    run.model.train()
    with StopSignal() as stop:
        while state.step < run.total_steps and not stopping:
            for batch in epoch_batches(run):
                train_micro_batch(run, batch)
                state.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                losses, tokens, stop_seen = end_step(run, stop.received)
                clock.tokens += tokens
                done = state.step >= run.total_steps
                stopping = not done and (stop_seen or 0 < config.stop_after_steps <= state.step - session_start)
                log_step(run, losses, bar, clock)
                if stopping or (every(config.checkpoint_every, state.step) and not done):
                    clock.bank(state)
                    path = save_checkpoint(accelerator, run.output, state, config.keep_checkpoints)
                    if stopping:
                        accelerator.print(f"stopped at step {state.step}: saved {path}; continue with --resume")
                if every(config.eval_every, state.step) and not (done or stopping):
                    run_evaluation(run)
                if done or stopping:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
    bar.close()
    clock.bank(state)
    if stopping:
        accelerator.end_training()
        return TrainingResult(run.output, accelerator.unwrap_model(run.model), state, {}, finished=False)
    return finish(run)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed train`` / ``train_hf.py`` (one flag per ``TrainingConfig`` field)."""
    add_config_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    """Run ``booru-embed train``."""
    train(config_from_args(args))
    return 0
