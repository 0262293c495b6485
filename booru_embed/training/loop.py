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
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .config import TrainingConfig, add_config_arguments, config_from_args, read_model_config

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "trainer_state.json"
LOSS_LOG = "train_loss.jsonl"
EVAL_BASELINE_POSTS = 50_000  # training posts the evaluations during training count (seconds, not minutes)
LOGGED = ("loss", "mlm", "contrastive", "readback", "rating", "score", "view_accuracy")


@dataclass
class TrainState:
    """Where the run is: saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed (per process)
    tokens: int = 0  # tokens seen, all processes together
    seconds: float = 0.0  # training time before this session


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
    """The tokenized training split, cached under MODEL_DIR/cache and memory-mapped from there."""
    import datasets

    from ..data.bulk_encoding import encode_dataset

    try:
        splits = datasets.load_from_disk(str(config.dataset))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"cannot read dataset {config.dataset}: {error}") from None
    if "train" not in splits:
        raise UsageError(f"{config.dataset} has no `train` split")
    train = splits["train"]
    cache = Path(config.output) / "cache" / "train_encoded"
    key = {"dataset": str(Path(config.dataset).resolve()), "fingerprint": train._fingerprint,
           "vocab": len(tokenizer), "tokenizer": str(Path(config.tokenizer).resolve())}
    key_file = cache / "cache_key.json"
    if accelerator.is_main_process:
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


def post_weights(train_encoded: Any, info: Any, exponent: float) -> Any:
    """Draws per epoch of every training post (``rare_subject_weights``), or None when not oversampling."""
    from ..modeling.categories_booru_embed import CATEGORY_IDS
    from ..sequences import flat_posts
    from .collator import rare_subject_weights

    if exponent == 0:
        return None
    return rare_subject_weights(
        *flat_posts(train_encoded.data),
        (CATEGORY_IDS["character"], CATEGORY_IDS["artist"]), info.unk_token_ids, exponent,
    )


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


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints of MODEL_DIR, oldest first."""
    folder = output / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator: Any, output: Path, state: TrainState, keep: int) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed when complete (atomic)."""
    final = output / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which saves a checkpoint and stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _StopSignal:
    """Remembers a SIGTERM so the loop can save a checkpoint and exit at the next step boundary."""

    def __init__(self) -> None:
        self.received = False
        self.previous = None

    def __enter__(self) -> _StopSignal:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self.previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _evaluator(config: TrainingConfig, tokenizer: Any, info: Any, train_encoded: Any) -> Any:
    """An ``Evaluator`` over ``eval_posts`` test posts, its baseline counted on a seeded sample of
    ``EVAL_BASELINE_POSTS`` training posts (straight from the encoded Arrow columns)."""
    import datasets

    from ..evaluation import Evaluator, encode_sample

    test = datasets.load_from_disk(str(config.dataset)).get("test")
    if test is None or len(test) == 0 or config.eval_posts == 0:
        return None
    return Evaluator(
        info, train_encoded, encode_sample(tokenizer, test, config.eval_posts, "test"), tokenizer.tag_to_id,
        max_posts=config.eval_posts, baseline_posts=EVAL_BASELINE_POSTS,
    )


def _run_evaluation(accelerator: Any, evaluator: Any, model: Any, step: int, truth: dict | None) -> dict[str, float]:
    """Evaluate on the main process, log ``eval/*`` to the trackers; the others wait."""
    metrics: dict[str, float] = {}
    if evaluator is not None and accelerator.is_main_process:
        metrics = evaluator.run(accelerator.unwrap_model(model), truth=truth)
        accelerator.log({f"eval/{k}": v for k, v in metrics.items() if math.isfinite(v)}, step=step)
        shown = ("masked.micro_f1", "retrieval.character.recall@10", "traits.r_precision")
        accelerator.print(f"step {step}: " + ", ".join(
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


def _has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA, XPU, MPS, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def train(config: TrainingConfig) -> Path:
    """Train (or resume) as configured and return MODEL_DIR (see ``fit``)."""
    return fit(config).output


def fit(config: TrainingConfig) -> TrainingResult:
    """Train (or resume) as configured. Raises ``UsageError`` for bad inputs."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..sequences import TokenInfo, model_inputs
    from .collator import EpochBatchSampler, PretrainingCollator
    from .cooccurrence_init import initialise_from_cooccurrence
    from .objectives import pretraining_losses

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
    accelerator = Accelerator(
        cpu=not _has_accelerator(),  # lets torchrun / accelerate launch run several CPU processes (gloo)
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.tokenizer)
    info = TokenInfo.from_tokenizer(tokenizer)
    train_encoded = encoded_train_split(config, tokenizer, accelerator)
    model = build_model(config, tokenizer)
    if config.embedding_init == "cooccurrence" and not (config.resume and checkpoints(output)):
        rows = initialise_from_cooccurrence(model, train_encoded, config.seed)
        accelerator.print(f"token embeddings: {rows} rows from the SVD of the training split's co-counts")
    if config.tag_bias_init == "prior" and not (config.resume and checkpoints(output)):
        model.initialise_tag_biases(tokenizer.token_counts, len(train_encoded))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    sampler = EpochBatchSampler(
        len(train_encoded), config.batch_size, config.seed,
        lengths=train_encoded.data.column("length").to_numpy() if config.length_buckets else None,
        weights=post_weights(train_encoded, info, config.rare_subject_oversampling),
    )
    if len(sampler) < accelerator.num_processes:
        raise UsageError(f"the train split ({len(train_encoded)} posts) is smaller than one batch per process")
    collator = PretrainingCollator(info, config)
    loader = DataLoader(
        train_encoded.with_format(None, columns=["id", "input_ids", "category_ids"]),
        batch_sampler=sampler, collate_fn=collator, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # worker seeds must not touch the global RNG
        worker_init_fn=_ignore_sigterm,
    )
    batches_per_epoch = math.ceil(len(sampler) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    optimizer = optimizer_for(model, config, fused=accelerator.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    if config.torch_compile:
        model = torch.compile(model)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    candidates = info.candidates_by_group().to(accelerator.device)
    unwrapped_config = accelerator.unwrap_model(model).config
    dims = [*unwrapped_config.nested_dims, unwrapped_config.embedding_dim]

    state = TrainState()
    loss_log = output / "logs" / LOSS_LOG
    if config.resume and checkpoints(output):
        last = checkpoints(output)[-1]
        accelerator.load_state(str(last))
        state = TrainState(**json.loads((last / STATE_FILE).read_text()))
        accelerator.print(f"resumed from {last} (step {state.step}, epoch {state.epoch})")
    if accelerator.is_main_process:
        loss_log.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in loss_log.read_text().splitlines() if json.loads(line)["step"] <= state.step] if loss_log.is_file() else []
        loss_log.write_text("".join(line + "\n" for line in kept))
        config.save(output / "training_config.json")
    accelerator.init_trackers("train", config={k: v for k, v in config.to_dict().items() if v is not None})
    evaluator = _evaluator(config, tokenizer, info, train_encoded) if accelerator.is_main_process else None
    truth = json.loads(Path(config.eval_truth).read_text()) if config.eval_truth else None

    accelerator.print(
        f"running training: {len(train_encoded)} posts ({len(sampler.items)} draws per epoch), "
        f"{accelerator.num_processes} process(es), "
        f"{config.batch_size} posts x {config.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} = {config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes} "
        f"posts per step, {total_steps} steps ({steps_per_epoch} per epoch), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    bar = tqdm(total=total_steps, initial=state.step, disable=not (config.progress and accelerator.is_local_main_process),
               desc="training", unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    session_tokens = 0
    running = torch.zeros(len(LOGGED) + 2, device=accelerator.device)  # losses, tokens, micro-batches
    stop_requested = False
    session_start = state.step
    model.train()
    with _StopSignal() as stop:
        while state.step < total_steps and not stop_requested:
            for part in (loader, sampler, collator):
                part.set_epoch(state.epoch)
            epoch_loader = loader
            if state.batches_in_epoch:
                epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
                epoch_loader.set_epoch(state.epoch)
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    outputs = model(**model_inputs(batch))
                    loss, parts = pretraining_losses(outputs, batch, config, candidates, dims)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                state.batches_in_epoch += 1
                running += torch.stack([*(parts[k].float() for k in LOGGED), batch["num_tokens"].float(),
                                        torch.ones((), device=accelerator.device)])
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state.step += 1
                flag = torch.tensor([float(stop.received)], device=accelerator.device)
                totals = accelerator.reduce(torch.cat([running, flag]), reduction="sum")
                running.zero_()
                count = float(totals[len(LOGGED) + 1])
                losses = {k: float(totals[i]) / count for i, k in enumerate(LOGGED)}
                state.tokens += int(totals[len(LOGGED)])
                session_tokens += int(totals[len(LOGGED)])
                done = state.step >= total_steps
                stop_requested = not done and (
                    bool(totals[-1] > 0)
                    or (config.stop_after_steps > 0 and state.step - session_start >= config.stop_after_steps)
                )
                lr = scheduler.get_last_lr()[0]
                if accelerator.is_main_process:
                    with loss_log.open("a") as handle:
                        handle.write(json.dumps({"step": state.step, "lr": lr, **losses}) + "\n")
                if state.step % config.log_every == 0 or state.step == total_steps:
                    elapsed = time.perf_counter() - started
                    accelerator.log({f"train/{k}": v for k, v in losses.items()} | {"train/lr": lr}, step=state.step)
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", mlm=f"{losses['mlm']:.3f}",
                                    tok_s=f"{session_tokens / max(elapsed, 1e-9):,.0f}")
                bar.update(1)
                if stop_requested or (config.checkpoint_every and state.step % config.checkpoint_every == 0 and not done):
                    state.seconds += time.perf_counter() - started
                    started, session_tokens = time.perf_counter(), 0
                    path = save_checkpoint(accelerator, output, state, config.keep_checkpoints)
                    if stop_requested:
                        accelerator.print(f"stopped at step {state.step}: saved {path}; continue with --resume")
                if config.eval_every and state.step % config.eval_every == 0 and not done and not stop_requested:
                    _run_evaluation(accelerator, evaluator, model, state.step, truth)
                if done or stop_requested:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
    bar.close()
    state.seconds += time.perf_counter() - started
    if stop_requested:
        accelerator.end_training()
        return TrainingResult(output, accelerator.unwrap_model(model), state, {}, finished=False)
    save_checkpoint(accelerator, output, state, config.keep_checkpoints)
    save_model(accelerator, model, tokenizer, output)
    metrics = _run_evaluation(accelerator, evaluator, model, state.step, truth)
    if accelerator.is_main_process and metrics:
        (output / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    accelerator.print(
        f"done: {state.step} steps, {state.tokens:,} tokens in {state.seconds:,.1f} s "
        f"({state.tokens / max(state.seconds, 1e-9):,.0f} tokens/s); model in {output}"
    )
    accelerator.end_training()
    return TrainingResult(output, accelerator.unwrap_model(model), state, metrics, finished=True)


def save_model(accelerator: Any, model: Any, tokenizer: Any, output: Path) -> None:
    """Write the loadable model folder: safetensors, config with auto_map, remote code, tokenizer."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(output), save_function=accelerator.save, safe_serialization=True)
        tokenizer.save_pretrained(str(output))
    accelerator.wait_for_everyone()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed train`` / ``train_hf.py`` (one flag per ``TrainingConfig`` field)."""
    add_config_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    """Run ``booru-embed train``."""
    train(config_from_args(args))
    return 0
