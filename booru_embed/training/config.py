"""The training hyper-parameters: one typed dataclass, read from a config JSON and from flags.

Precedence, lowest first: the defaults below, the ``"training"`` block of the model config JSON
(a shipped name such as ``tiny`` for ``hub_configs/tiny.json``, or a path), then the command-line flags given explicitly. The resolved values are
written to ``MODEL_DIR/training_config.json`` so every model can be reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, read_json_file
from ..resources import model_config_names, model_config_path

LR_SCHEDULES = ("cosine", "wsd", "constant")
EMBEDDING_INITS = ("random", "cooccurrence", "lift")
TAG_BIAS_INITS = ("prior", "zero")
READBACK_TARGETS = ("post", "own")
READBACK_SIZE_WEIGHTS = ("uniform", "width")
CONTRASTIVE_SIZES = ("all", "nested")
MIXED_PRECISION = ("no", "bf16", "fp16")


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    """A dataclass field with its ``--help`` text kept in the field metadata."""
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class TrainingConfig:
    """Everything a training run depends on (paths, optimisation, objectives, logging)."""

    # paths
    dataset: str | None = _opt(None, "DATA_DIR written by `booru-embed build-dataset` (split `train`, `test`)")
    tokenizer: str | None = _opt(None, "TOKENIZER_DIR written by `booru-embed build-tokenizer`")
    output: str | None = _opt(None, "MODEL_DIR to write (model, tokenizer, checkpoints/, logs/)")
    config: str | None = _opt(None, f"model config: a shipped name ({', '.join(model_config_names())}) or the path "
                                    "of a config JSON; its `training` block sets defaults")
    resume: bool = _opt(False, "continue from the last checkpoint in MODEL_DIR/checkpoints")
    # length of the run
    max_steps: int = _opt(0, "optimizer steps to run; 0 means `num_epochs` full epochs")
    num_epochs: int = _opt(1, "epochs over the training split when --max-steps is 0")
    stop_after_steps: int = _opt(0, "save a checkpoint and stop after this many steps of this session "
                                    "(preemptible or time-sliced jobs; continue with --resume); 0 runs to the end")
    # batches
    batch_size: int = _opt(64, "posts per micro-batch per process (each post gives 3 sequences: masked, 2 views)")
    gradient_accumulation_steps: int = _opt(1, "micro-batches per optimizer step")
    max_tags: int = _opt(128, "posts with more tags keep a fresh random subset of this many each epoch")
    packed: bool = _opt(True, "pack the sequences of a batch into one row with cu_seqlens (else padded)")
    length_buckets: bool = _opt(True, "batch posts of similar length together (batches in random order): less "
                                      "padding, and smaller per-post attention grids for sdpa/eager on CPU")
    num_workers: int = _opt(1, "DataLoader worker processes")
    rare_subject_oversampling: float = _opt(0.0, "draw a post whose rarest character or artist has n < median "
                                                 "posts (median / n) ** x times per epoch (at most 4); 0 turns "
                                                 "it off. Gives rare characters and artists more passes")
    # optimisation
    learning_rate: float = _opt(1e-3, "peak learning rate of AdamW")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to norms, biases and embeddings)")
    adam_beta1: float = _opt(0.9, "AdamW beta1")
    adam_beta2: float = _opt(0.98, "AdamW beta2")
    adam_epsilon: float = _opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm; 0 disables clipping")
    lr_schedule: str = _opt("cosine", "learning-rate schedule after warm-up", choices=LR_SCHEDULES)
    warmup_steps: int = _opt(100, "linear warm-up steps")
    decay_fraction: float = _opt(0.2, "wsd: share of the steps spent in the final linear decay")
    min_lr_ratio: float = _opt(0.1, "final learning rate as a share of the peak")
    mixed_precision: str = _opt("no", "autocast precision", choices=MIXED_PRECISION)
    torch_compile: bool = _opt(False, "compile the model with torch.compile")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory")
    attn_implementation: str | None = _opt(None, "attention backend (eager, sdpa, flex_attention, flash_attention_2)")
    seed: int = _opt(0, "seed of weights, data order and masks (a resumed run repeats them exactly)")
    embedding_init: str = _opt("cooccurrence", "start of the token embeddings: cooccurrence (rows from the SVD of "
                                               "the training split's tag co-counts: related tags start close, which "
                                               "rare tags with few gradient steps need), lift (rows from the SVD of "
                                               "the posts' TF-IDF vectors times the subject lift, each row times its "
                                               "tag's weight: a post's mean row starts at that vector's code) or random",
                               choices=EMBEDDING_INITS)
    tag_bias_init: str = _opt("prior", "start of the tag heads' biases: prior (each tag's base rate in the training "
                                       "split: log odds for read-back, log share for masked tags, so the read-back "
                                       "loss starts near the tags' entropy whatever the vocabulary) or zero",
                              choices=TAG_BIAS_INITS)
    # objectives
    mask_fraction_min: float = _opt(0.15, "smallest share of a post's tags hidden for masked-tag prediction")
    mask_fraction_max: float = _opt(0.95, "largest share of a post's tags hidden for masked-tag prediction")
    metadata_mask_probability: float = _opt(0.25, "chance to mask the rating / score token of a masked post")
    metadata_drop_probability: float = _opt(0.25, "chance to leave the rating / score token out of a masked post "
                                                   "(suggestions are often asked without them)")
    view_keep_min: float = _opt(0.3, "smallest share of tags kept in a contrastive view")
    view_keep_max: float = _opt(0.8, "largest share of tags kept in a contrastive view")
    view_drop_category_probability: float = _opt(0.0, "chance that a contrastive view leaves out all its character "
                                                      "(artist, copyright, meta) tags, drawn per category")
    full_post_view: bool = _opt(True, "the first view of every post keeps all its tags (the second is drawn as "
                                       "above): read-back sees whole posts, as it is used, not only parts")
    view_metadata_probability: float = _opt(0.5, "chance that a view keeps the rating / score token")
    temperature: float = _opt(0.05, "InfoNCE temperature of the contrastive objective")
    contrastive_subject_positives: bool = _opt(False, "posts of a batch that share a character or artist are "
                                                       "contrastive positives too, not only two views of one post")
    subject_pair_batches: bool = _opt(False, "half of every batch is partners: for each drawn post another post of "
                                              "its rarest character or artist (with --contrastive-subject-positives, "
                                              "rare subjects get positives too)")
    contrastive_across_processes: bool = _opt(True, "with several processes, the other processes' posts are "
                                                     "contrastive negatives too (gathered, no gradient to them)")
    mlm_weight: float = _opt(1.0, "weight of masked-tag (set) prediction")
    contrastive_weight: float = _opt(1.0, "weight of the contrastive (two views) objective")
    readback_weight: float = _opt(3.0, "weight of reading the tags back from the pooled embedding (0.3 -> 1 -> 3 "
                                       "raised the read-back F1 at every width; see docs/readback.md)")
    readback_negatives: int = _opt(2048, "read-back loss over the batch's tags plus this many sampled negative tags "
                                         "(importance-weighted, an unbiased estimate of the whole-vocabulary "
                                         "loss); 0 scores the whole vocabulary for every sequence")
    masked_negatives: int = _opt(0, "masked-tag softmax over the batch's hidden tags plus this many sampled tags "
                                     "(logQ-corrected estimate of its normaliser); 0 takes every candidate")
    readback_target: str = _opt("own", "what each sequence's embedding is read back to: post (all the post's tags, "
                                        "also from the masked post and the partial views: completion) or own (the "
                                        "tags the sequence shows: a code of its input)", choices=READBACK_TARGETS)
    readback_size_weights: str = _opt("width", "weights of the nested sizes' read-back losses: uniform (each size "
                                                 "the same) or width (proportional to the size, so the full width "
                                                 "weighs more than all prefixes together)",
                                      choices=READBACK_SIZE_WEIGHTS)
    contrastive_sizes: str = _opt("all", "embedding sizes the contrastive objective pulls views together at: all "
                                         "(every nested size and the full width) or nested (the nested sizes only: "
                                         "the dims past the largest nested size are left to read-back, which "
                                         "wants what tells a post from its views)", choices=CONTRASTIVE_SIZES)
    decorrelation_weight: float = _opt(0.0, "weight of a penalty on the correlations between embedding dimensions "
                                            "over the batch (mean squared off-diagonal correlation), against a "
                                            "collapse of the embedding into a few directions; 0 turns it off")
    rating_weight: float = _opt(0.1, "weight of the rating head")
    score_weight: float = _opt(0.1, "weight of the score-bucket head")
    # logging, checkpoints, evaluation
    log_every: int = _opt(10, "optimizer steps between TensorBoard / progress-bar loss updates")
    checkpoint_every: int = _opt(500, "optimizer steps between checkpoints; 0 saves only at the end")
    keep_checkpoints: int = _opt(2, "checkpoints kept (older ones are deleted)")
    eval_every: int = _opt(0, "optimizer steps between evaluations on the test split; 0 evaluates only at the end")
    eval_posts: int = _opt(1000, "test posts used by the evaluations during and at the end of training; 0 skips")
    validation_posts: int = _opt(2000, "training posts held out of training (at most a twentieth of the train split; ids in "
                                       "MODEL_DIR/validation_posts.json): index and evaluate choose the hybrid "
                                       "search's settings on them; 0 holds none out")
    eval_truth: str | None = _opt(None, "ground-truth JSON of a generated corpus: the evaluations add trait recovery")
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``UsageError`` for a value that cannot work (one line naming the field)."""
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.num_epochs >= 1, "num_epochs must be >= 1"),
            (self.stop_after_steps >= 0, "stop_after_steps must be >= 0"),
            (self.max_tags >= 1, "max_tags must be >= 1"),
            (self.validation_posts >= 0, "validation_posts must be >= 0"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.rare_subject_oversampling >= 0, "rare_subject_oversampling must be >= 0"),
            (self.embedding_init in EMBEDDING_INITS, f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}"),
            (self.tag_bias_init in TAG_BIAS_INITS, f"tag_bias_init must be one of {', '.join(TAG_BIAS_INITS)}"),
            (self.readback_target in READBACK_TARGETS, f"readback_target must be one of {', '.join(READBACK_TARGETS)}"),
            (self.readback_size_weights in READBACK_SIZE_WEIGHTS,
             f"readback_size_weights must be one of {', '.join(READBACK_SIZE_WEIGHTS)}"),
            (self.contrastive_sizes in CONTRASTIVE_SIZES,
             f"contrastive_sizes must be one of {', '.join(CONTRASTIVE_SIZES)}"),
            (self.decorrelation_weight >= 0, "decorrelation_weight must be >= 0"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}"),
            (0 <= self.decay_fraction <= 1, "decay_fraction must be in [0, 1]"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 < self.mask_fraction_min <= self.mask_fraction_max <= 1, "need 0 < mask_fraction_min <= mask_fraction_max <= 1"),
            (0 < self.view_keep_min <= self.view_keep_max <= 1, "need 0 < view_keep_min <= view_keep_max <= 1"),
            (0 <= self.metadata_mask_probability <= 1, "metadata_mask_probability must be in [0, 1]"),
            (0 <= self.metadata_drop_probability <= 1, "metadata_drop_probability must be in [0, 1]"),
            (0 <= self.view_drop_category_probability <= 1, "view_drop_category_probability must be in [0, 1]"),
            (0 <= self.view_metadata_probability <= 1, "view_metadata_probability must be in [0, 1]"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.readback_negatives >= 0, "readback_negatives must be >= 0"),
            (self.masked_negatives >= 0, "masked_negatives must be >= 0"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def to_dict(self) -> dict[str, Any]:
        """The resolved values, as written to ``training_config.json``."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write the values as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Build from a mapping; an unknown key is a ``UsageError`` (a typo must not be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_sources(cls, config_json: str | None = None, **overrides: Any) -> TrainingConfig:
        """Defaults, then the ``training`` block of ``config_json``, then ``overrides`` (None = not given)."""
        values: dict[str, Any] = {}
        if config_json:
            values.update(read_model_config(config_json)[1])
            values["config"] = str(config_json)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


def read_model_config(config: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a model config JSON into (model config values, ``training`` block).

    ``config`` is a shipped name (``tiny``) or a path; a wrong one is a one-line ``UsageError``.
    """
    path = model_config_path(config)
    values = read_json_file(path)
    if not isinstance(values, dict):
        raise UsageError(f"{path} must hold a JSON object")
    training = values.pop("training", {}) or {}
    if not isinstance(training, dict):
        raise UsageError(f"{path}: `training` must be a JSON object")
    return values, training


def _base_type(hint: Any) -> type:
    """``int | None`` -> ``int``; ``str`` -> ``str``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, positional: tuple[str, ...] = ()) -> None:
    """Add one flag per ``TrainingConfig`` field; flags default to None so unset ones don't override."""
    group = parser.add_argument_group("training hyper-parameters (defaults shown; a config's `training` block overrides them)")
    hints = typing.get_type_hints(TrainingConfig)
    for f in dataclasses.fields(TrainingConfig):
        if f.name in positional:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        kind = _base_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(
                flag, dest=f.name, type=kind, default=None, choices=f.metadata.get("choices"), help=help_text
            )


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The ``TrainingConfig`` of parsed command-line arguments."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainingConfig)}
    config_json = values.pop("config")
    return TrainingConfig.from_sources(config_json, **values)
