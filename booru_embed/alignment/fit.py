"""Training an aligner (and the linear probe beside it): losses, epochs, checkpoint choice, resume.

The ``tags`` aligner (the default) is a ``model.TagHead`` trained with the tag BCE below; it is its own
probe. After training, ``tag_path.choose_threshold`` picks the probability threshold of its tag sets on
the held-out pairs (in ``command``).

The ``linear`` and ``mlp`` aligners' loss per batch: (1 - cosine to the post's own embedding) + ``bce_weight`` x the BCE of the tags
read back from the aligned vector by the model's frozen full-size read-back head, against the post's
tags + ``norm_weight`` x the squared relative difference of the norms. The BCE is the training
objective's ``readback_loss`` on the batch's tags plus ``negatives`` sampled columns (the exact loss
when the vocabulary is smaller), so its cost does not grow with the vocabulary.

The probe beside them is a ``TagHead`` over every vocabulary token, trained with the same BCE; it is what
a tagger head does, the reference for tagging.

Both train for up to ``epochs`` passes over the training pairs (the aligner with AdamW, the probe with
SparseAdam) and a cosine schedule; after
each epoch the loss on the held-out slice (fixed sampled columns, so epochs compare) picks the best
weights, and ``patience`` epochs without improvement stop early. The whole state (weights, optimiser,
best weights, position) goes to ``checkpoints/<phase>.pt`` every ``checkpoint_every`` steps and at each
epoch's end, written atomically; a resumed run continues from it on the same batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..training.objectives import negative_proposal, readback_loss, sample_columns
from .targets import PostTargets

VALIDATION_SEED = 12345  # the held-out loss uses the same sampled columns every epoch


@dataclass
class FitSettings:
    """Hyper-parameters of ``booru-embed align`` (the defaults are the recommendation)."""

    arch: str = "tags"
    hidden_dim: int = 1024
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    negatives: int = 2048
    bce_weight: float = 1.0
    norm_weight: float = 0.1
    patience: int = 5
    holdout: float = 0.05
    checkpoint_every: int = 1000
    seed: int = 0
    probe: bool = True
    min_tag_pairs: int = 5


@dataclass
class TrainingData:
    """Training and held-out rows of the pair table: external vectors and the posts' targets."""

    external: np.ndarray  # (n, input_dim) float32, train-split pairs
    targets: PostTargets  # the same n posts
    train_rows: np.ndarray  # rows used for the gradient
    holdout_rows: np.ndarray  # rows that choose the checkpoint


class ReadbackBCE:
    """The frozen full-size read-back head of a model, scoring sampled columns of a batch."""

    def __init__(self, model: Any, tag_counts: np.ndarray, is_tag: np.ndarray, negatives: int) -> None:
        """``tag_counts`` (vocab,) posts per tag in the training pairs; negatives drawn among ``is_tag``."""
        self.head = model.readback_heads[-1]
        self.output_matrix = model.tag_output_matrix().detach()
        self.device = self.output_matrix.device
        proposal = negative_proposal(tag_counts.tolist()) * torch.as_tensor(is_tag, dtype=torch.float64)
        self.proposal = proposal.to(self.device)
        self.negatives = negatives

    def loss(self, features: torch.Tensor, targets: PostTargets, rows: np.ndarray,
             generator: torch.Generator, scorer: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
        """BCE per positive of the tags of posts ``rows`` scored from ``features`` (read-back head, or ``scorer``)."""
        lengths = targets.offsets[rows + 1] - targets.offsets[rows]
        tag_ids = np.concatenate([targets.tags_of(int(r)) for r in rows]).astype(np.int64)
        sequence = torch.as_tensor(np.repeat(np.arange(len(rows)), lengths), device=self.device)
        sample = sample_columns(torch.as_tensor(tag_ids, device=self.device), self.proposal, self.negatives, generator)
        if scorer is None:
            logits = self.head(features, self.output_matrix.index_select(0, sample.columns), sample.columns)
        else:
            logits = scorer(features, sample.columns)
        return readback_loss(logits[None], sequence, sample.positive_columns, sample.weights)


def aligner_loss(aligner: nn.Module, bce: ReadbackBCE, settings: FitSettings) -> Callable[..., torch.Tensor]:
    """The aligner's loss on a batch (see the module docstring)."""
    def loss(external: torch.Tensor, target: torch.Tensor, targets: PostTargets, rows: np.ndarray,
             generator: torch.Generator) -> torch.Tensor:
        aligned = aligner(external)
        cosine = 1 - F.cosine_similarity(aligned, target, dim=1).mean()
        target_norm = target.norm(dim=1).clamp(min=1e-6)
        norm = (((aligned.norm(dim=1) - target_norm) / target_norm) ** 2).mean()
        return cosine + settings.bce_weight * bce.loss(aligned, targets, rows, generator) + settings.norm_weight * norm

    return loss


def probe_loss(probe: nn.Module, bce: ReadbackBCE) -> Callable[..., torch.Tensor]:
    """The probe's loss on a batch: the tag BCE of its logits."""
    def loss(external: torch.Tensor, target: torch.Tensor, targets: PostTargets, rows: np.ndarray,
             generator: torch.Generator) -> torch.Tensor:
        return bce.loss(external, targets, rows, generator, scorer=probe)

    return loss


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _save(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


class Phase:
    """One module's training run (``aligner`` or ``probe``) with its checkpoint in ``folder``."""

    def __init__(self, name: str, module: nn.Module, loss: Callable[..., torch.Tensor], data: TrainingData,
                 settings: FitSettings, folder: Path, device: torch.device) -> None:
        """Set up the optimiser; ``folder`` is the aligner's ``checkpoints/``."""
        self.name, self.module, self.loss, self.data, self.settings = name, module, loss, data, settings
        self.folder, self.device = folder, device
        make_optimizer = getattr(module, "make_optimizer", None)
        self.optimizer = make_optimizer(settings.learning_rate) if make_optimizer else torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=settings.learning_rate,
            weight_decay=settings.weight_decay)
        self.steps_per_epoch = max(1, math.ceil(len(data.train_rows) / settings.batch_size))
        self.state = {"phase": name, "epoch": 0, "step_in_epoch": 0, "step": 0, "best_loss": math.inf,
                      "best_epoch": -1, "stale_epochs": 0, "history": [], "done": False}
        self.best: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @property
    def path(self) -> Path:
        """This phase's checkpoint file, ``checkpoints/<phase>.pt``."""
        return self.folder / f"{self.name}.pt"

    def _tensors(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        external = torch.from_numpy(self.data.external[rows]).to(self.device)
        target = torch.from_numpy(self.data.targets.embeddings[rows]).to(self.device)
        return external, target

    def checkpoint(self) -> None:
        """Write the whole state to ``checkpoints/<phase>.pt`` (atomically)."""
        _save(self.path, {"state": self.state, "module": self.module.state_dict(),
                                               "optimizer": self.optimizer.state_dict(), "best": self.best,
                                               "settings": asdict(self.settings)})

    def restore(self) -> None:
        """Continue from this phase's checkpoint when there is one."""
        if not self.path.is_file():
            return
        saved = torch.load(self.path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(saved["module"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.best, self.state = saved["best"], saved["state"]

    @torch.no_grad()
    def holdout_loss(self) -> float:
        """Mean loss over the held-out rows, with the same sampled columns every time."""
        self.module.eval()
        generator = torch.Generator(device=self.device).manual_seed(VALIDATION_SEED)
        rows, total = self.data.holdout_rows, 0.0
        for start in range(0, len(rows), self.settings.batch_size):
            chunk = rows[start : start + self.settings.batch_size]
            total += float(self.loss(*self._tensors(chunk), self.data.targets, chunk, generator)) * len(chunk)
        self.module.train()
        return total / max(1, len(rows))

    def train_step(self, rows: np.ndarray, total_steps: int) -> float:
        """One optimiser step on the pairs ``rows`` (schedule over ``total_steps``); returns the loss."""
        settings, step = self.settings, self.state["step"]
        generator = torch.Generator(device=self.device).manual_seed(settings.seed * 1_000_003 + step)
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate * _lr_factor(step, total_steps, settings.warmup_steps)
        loss = self.loss(*self._tensors(rows), self.data.targets, rows, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.state["step"] = step + 1
        return float(loss.detach())

    def run(self, bar: Any = None) -> dict[str, Any]:
        """Train to the end (or early stop) from the current state; load the best weights; return the state."""
        settings, state = self.settings, self.state
        total = settings.epochs * self.steps_per_epoch
        self.module.train()
        while not state["done"] and state["epoch"] < settings.epochs:
            order = np.random.default_rng([settings.seed, len(self.name), state["epoch"]]).permutation(self.data.train_rows)
            for index in range(state["step_in_epoch"], self.steps_per_epoch):
                loss = self.train_step(order[index * settings.batch_size : (index + 1) * settings.batch_size], total)
                state["step_in_epoch"] = index + 1
                if bar is not None:
                    bar.update()
                    bar.set_postfix({"phase": self.name, "loss": f"{loss:.4f}"}, refresh=False)
                if settings.checkpoint_every and state["step"] % settings.checkpoint_every == 0:
                    self.checkpoint()
            self._end_epoch(bar)
        self.module.load_state_dict(self.best)
        self.module.eval()
        return state

    def _end_epoch(self, bar: Any) -> None:
        state = self.state
        held_out = self.holdout_loss()
        state["history"].append(held_out)
        if held_out < state["best_loss"]:
            state["best_loss"], state["best_epoch"], state["stale_epochs"] = held_out, state["epoch"], 0
            self.best = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            state["stale_epochs"] += 1
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        if state["stale_epochs"] >= self.settings.patience:
            state["done"] = True
        self.checkpoint()


def _moments(external: np.ndarray, rows: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of ``external[rows]``, accumulated in float64 chunks."""
    total = np.zeros(external.shape[1])
    squares = np.zeros(external.shape[1])
    for start in range(0, len(rows), chunk):
        part = external[rows[start : start + chunk]].astype(np.float64)
        total += part.sum(axis=0)
        squares += (part**2).sum(axis=0)
    mean = total / len(rows)
    return mean, np.sqrt(np.maximum(squares / len(rows) - mean**2, 0.0))


def make_phases(model: Any, is_tag: np.ndarray, external: np.ndarray, targets: PostTargets, train_rows: np.ndarray,
                holdout_rows: np.ndarray, settings: FitSettings, folder: Path) -> tuple[list[Phase], np.ndarray]:
    """The aligner's phase and (a ``linear`` or ``mlp`` aligner with ``settings.probe``) the probe's, ready
    to ``restore`` and ``run``, and the (vocab,) count of posts per tag in ``train_rows``.

    ``model`` is the frozen ``BooruEmbedForPreTraining`` whose read-back head scores the tags; the input
    standardisation and the tag counts (of the negatives' proposal and the tag heads' starting biases)
    come from ``train_rows``. A ``tags`` aligner is a tag head over the whole vocabulary here; ``command``
    keeps its rows of tags seen in at least ``min_tag_pairs`` training pairs.
    """
    from .model import TAG_ARCH, Aligner, TagHead, set_standardisation

    device = next(model.parameters()).device
    data = TrainingData(external, targets, train_rows, holdout_rows)
    mean, std = _moments(external, train_rows)
    vocab = int(model.config.vocab_size)
    in_train = np.zeros(len(external), dtype=bool)
    in_train[train_rows] = True
    post_of = np.repeat(np.arange(len(external)), np.diff(targets.offsets))
    counts = np.bincount(targets.tag_ids[in_train[post_of]], minlength=vocab)
    bce = ReadbackBCE(model, counts, is_tag, settings.negatives)
    torch.manual_seed(settings.seed)
    share = np.clip((counts + 0.5) / (len(train_rows) + 1), 1e-7, 1 - 1e-7)
    base_rates = torch.as_tensor(np.log(share) - np.log1p(-share), dtype=torch.float32)

    def tag_head() -> TagHead:
        head = TagHead(external.shape[1], vocab, base_rates)
        set_standardisation(head, mean, std)
        return head.to(device)

    if settings.arch == TAG_ARCH:
        head = tag_head()
        return [Phase("aligner", head, probe_loss(head, bce), data, settings, folder, device)], counts
    aligner = Aligner(settings.arch, external.shape[1], int(model.config.embedding_dim), settings.hidden_dim)
    set_standardisation(aligner, mean, std)
    aligner.to(device)
    phases = [Phase("aligner", aligner, aligner_loss(aligner, bce, settings), data, settings, folder, device)]
    if settings.probe:
        probe = tag_head()
        phases.append(Phase("probe", probe, probe_loss(probe, bce), data, settings, folder, device))
    return phases, counts
