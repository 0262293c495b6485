"""The pre-training losses, on plain tensors (the model's forward returns logits, not losses).

* ``set_prediction_loss``: masked-tag prediction as a set. A post's hidden tags sit behind one
  ``<mask>`` (see ``collator``), so the target is a set, not a token. We use a softmax over the
  candidate vocabulary with a target distribution uniform over the hidden set (cross-entropy against
  it). Why this rather than a multi-label BCE: the optimum of this loss is p(t) = P(t is one of the
  hidden tags, drawn uniformly), which ranks tags exactly by how likely they are missing; it costs one
  softmax per post (BCE needs a sigmoid per vocabulary entry with heavy class imbalance); and its scale
  (about log of the candidate count) sits well beside the other losses. Visible tags are removed from
  the candidates (logit -inf): repeating a tag already present is never rewarded.
* ``info_nce``: two views of a post close, the other posts of the batch apart (of every process's
  batch when training on several), at every nested size; optionally posts sharing a character or
  artist count as positives too.
* ``readback_loss``: the post's tags from the pooled embedding alone, multi-label BCE at every nested
  size, summed over the vocabulary and divided by the number of positive (post, tag) pairs. The
  division alone does not make the scale vocabulary-free: with zero biases every logit starts near 0,
  so the loss starts at log 2 * vocab / tags-per-post (133 for 3.8k tokens, ~3,000 for 112k) and
  swamps the other objectives under gradient clipping. The heads therefore start at the tags' base
  rates (``BooruEmbedForPreTraining.initialise_tag_biases``, bias log(p_t / (1 - p_t))); see
  ``readback_loss`` for the resulting scale.
* Sampled forms (``--readback-negatives K``, ``--masked-negatives K``; ``sample_columns``): the tags
  that must be exact (the batch's tags; for the masked head its targets and the rating / score
  tokens) are scored exactly, the rest of the vocabulary is estimated from K draws (with
  replacement) from a proposal q restricted to it, each draw weighted 1 / (K q). For the read-back
  BCE the weighted softplus sum is an unbiased estimate of the exact one (and so is its gradient);
  for the masked-tag softmax the weights estimate its normaliser (the logQ correction: log weight
  added to a sampled logit). The heads then score a few thousand columns instead of the vocabulary.
  The proposal (``negative_proposal``) mixes the tags' frequencies with a uniform share, so no weight
  exceeds 2 x vocab / K.
* ``classification_loss``: rating and score-bucket heads (cross-entropy, -100 ignored).
* ``decorrelation_loss`` (``--decorrelation-weight``): the mean squared correlation between embedding
  dimensions over the batch, against an embedding that spends its width on a few directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .collator import IGNORE_INDEX


@dataclass
class ColumnSample:
    """The columns a tag head scores for one batch (a sampled loss) and how the loss weighs them.

    Attributes:
        columns: (columns,) distinct token ids: the exact ones (e.g. the batch's tags), then the sampled negatives.
        weights: (columns,) 1 for an exact column; draws / (K q) for a sampled negative.
        positive_columns: (ids,) the column of each id the sample was drawn for (e.g. each positive pair's tag).
    """

    columns: torch.Tensor
    weights: torch.Tensor
    positive_columns: torch.Tensor


def negative_proposal(token_counts: Sequence[int], uniform_share: float = 0.5) -> torch.Tensor:
    """(vocab,) float64 sampling distribution of sampled negatives: frequencies mixed with a uniform share.

    Frequent tags carry most of the softplus sum and of the softmax normaliser at the start (the heads
    sit at the base rates), so drawing by frequency keeps the estimates' variance low; the uniform
    share bounds every weight.
    """
    counts = torch.as_tensor(list(token_counts), dtype=torch.float64).clamp(min=0)
    uniform = torch.full_like(counts, 1 / len(counts))
    if counts.sum() == 0:
        return uniform
    return uniform_share * uniform + (1 - uniform_share) * counts / counts.sum()


def sample_columns(
    tag_ids: torch.Tensor, proposal: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> ColumnSample:
    """The distinct ``tag_ids`` (exact columns) plus ``num_negatives`` draws from ``proposal`` over the other tokens.

    The draws are with replacement and merged: a token drawn n times gets weight n / (K q'), q' the
    proposal renormalised over the tokens not in ``tag_ids``, so a weighted sum over the columns is an
    unbiased estimate of the sum over the vocabulary. When the other tokens are no more than K, all
    of them are taken with weight 1 (the exact loss).
    """
    present, positive_columns = torch.unique(tag_ids, return_inverse=True)
    rest = proposal.to(torch.float64).clone()
    rest[present.to(rest.device)] = 0
    others = torch.nonzero(rest).reshape(-1)
    if others.numel() <= num_negatives:
        negatives, weights = others, torch.ones(others.numel(), dtype=torch.float64, device=rest.device)
    else:
        total = rest.sum()
        draws = torch.multinomial(rest / total, num_negatives, replacement=True, generator=generator)
        negatives, counts = torch.unique(draws, return_counts=True)
        weights = counts * total / (num_negatives * rest[negatives])
    device = tag_ids.device
    columns = torch.cat([present, negatives.to(device)])
    weights = torch.cat([torch.ones(present.numel(), dtype=torch.float64, device=device), weights.to(device)])
    return ColumnSample(columns, weights.float(), positive_columns)


def set_prediction_loss(
    logits: torch.Tensor,
    group_kind: torch.Tensor,
    target_group: torch.Tensor,
    target_ids: torch.Tensor,
    target_weights: torch.Tensor,
    exclude_group: torch.Tensor,
    exclude_ids: torch.Tensor,
    candidates_by_kind: torch.Tensor,
    sample: ColumnSample | None = None,
) -> torch.Tensor:
    """Mean over mask groups of the cross-entropy between softmax(logits) and the uniform hidden set.

    ``logits`` (G, vocab), one row per ``<mask>``; ``group_kind`` (G,) indexes ``candidates_by_kind``
    (kinds, vocab) bool; targets are (group, id, weight) triples with weights summing to 1 per group;
    excluded (group, id) pairs (the visible tags) are not candidates. With ``sample``, ``logits`` are
    (G, columns) over ``sample.columns`` (every target among its exact columns) and the softmax
    normaliser is its importance-weighted estimate.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    if sample is None:
        allowed = candidates_by_kind[group_kind].clone()  # (G, vocab)
    else:
        position = torch.full((candidates_by_kind.shape[1],), -1, dtype=torch.long, device=logits.device)
        position[sample.columns] = torch.arange(len(sample.columns), device=logits.device)
        target_ids, exclude_ids = position[target_ids], position[exclude_ids]
        kept = exclude_ids >= 0  # visible tags outside the sample need no exclusion
        exclude_group, exclude_ids = exclude_group[kept], exclude_ids[kept]
        allowed = candidates_by_kind[:, sample.columns][group_kind]  # (G, columns)
        logits = logits + sample.weights.log()
    allowed[exclude_group, exclude_ids] = False
    log_probs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return -(target_weights * log_probs[target_group, target_ids]).sum() / logits.shape[0]


def gather_with_local_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tensor`` of every process concatenated in rank order, and where this process's rows start.

    Only this process's rows keep their gradient (the others arrive as copies), as in CLIP-style
    training: each process back-propagates its own queries against every key. One process (or no
    initialised process group) returns ``tensor`` itself.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = tensor
    return torch.cat(parts), rank * tensor.shape[0]


def info_nce(
    view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, dims: Sequence[int], across_processes: bool = False,
    subjects: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE between row i of ``view_a`` and row i of ``view_b``, averaged over ``dims``.

    Each size d uses the first d dimensions, L2-normalised (Matryoshka). With ``across_processes``
    the other views of every process's batch are negatives too (see ``gather_with_local_grad``).
    With ``subjects`` (posts, k) tag ids, -1 padded, posts that share one are positives of each other
    as well (supervised-contrastive form: the loss of a row is the mean of -log softmax over its
    positives), so posts of one character or artist are pulled together, not only two views of a post.
    Returns (loss, top-1 accuracy of finding the other view at the largest size).
    """
    all_a, offset = gather_with_local_grad(view_a) if across_processes else (view_a, 0)
    all_b, _ = gather_with_local_grad(view_b) if across_processes else (view_b, 0)
    local = slice(offset, offset + view_a.shape[0])  # this process's rows (they keep their gradient)
    labels = torch.arange(view_a.shape[0], device=view_a.device) + offset
    positives = None
    if subjects is not None:
        all_subjects = gather_with_local_grad(subjects)[0] if across_processes else subjects
        positives = shared_subjects(subjects, all_subjects)
        positives[torch.arange(len(labels), device=labels.device), labels] = True
    losses = []
    for d in dims:
        keys_a = F.normalize(all_a[:, :d].float(), dim=-1)
        keys_b = F.normalize(all_b[:, :d].float(), dim=-1)
        a, b = keys_a[local], keys_b[local]
        logits = a @ keys_b.T / temperature  # (posts here, posts everywhere)
        reverse = b @ keys_a.T / temperature
        if positives is None:
            losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(reverse, labels)) / 2)
        else:
            losses.append((multi_positive_cross_entropy(logits, positives)
                           + multi_positive_cross_entropy(reverse, positives)) / 2)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return torch.stack(losses).mean(), accuracy


def shared_subjects(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(len(rows), len(columns)) bool: the two posts share a tag id (ids (posts, k), -1 = none).

    One slot of ``rows`` at a time, so memory stays at rows x columns x k (gathered batches are large).
    """
    shared = torch.zeros(rows.shape[0], columns.shape[0], dtype=torch.bool, device=rows.device)
    for slot in range(rows.shape[1]):
        ids = rows[:, slot, None, None]
        shared |= ((ids == columns[None]) & (ids >= 0)).any(dim=-1)
    return shared


def multi_positive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the mean -log softmax(logits) over each row's positive columns (each row has one)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    per_row = -(log_probs * positives).sum(dim=-1) / positives.sum(dim=-1)
    return per_row.mean()


def readback_loss(
    logits: torch.Tensor, sequence_index: torch.Tensor, tag_ids: torch.Tensor, column_weights: torch.Tensor | None = None,
    size_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-label BCE of ``logits`` (sizes, sequences, vocab) against the (sequence, tag) positives.

    The nested sizes' losses are averaged, or weighted by ``size_weights`` (sizes,), summing to 1
    (``readback_size_weights``).

    The (sequence, tag) pairs must be distinct. The BCE of logit x is softplus(x) - y x, so the sum over
    the whole grid is the softplus of every logit minus the positives' logits: no dense target grid.
    With ``column_weights`` (columns,), ``logits`` cover sampled columns only (``ColumnSample``),
    ``tag_ids`` index those columns, and each column's softplus terms count ``column_weights`` times.

    Scale at the start. Let p_t be the share of posts with tag t and L = sum_t p_t the tags a post.
    Logits that sit at the base rate, sigmoid(x_t) = p_t (the prior bias initialisation), give an
    expected loss per positive of sum_t h(p_t) / L, h the binary entropy. For a rare tag
    h(p) ~ p (log(1/p) + 1), so the loss is about the positives' mean surprisal, mean_t[log(1/p_t)] + 1
    weighted by p_t: it grows with the log of the rarest tags' rarity, not with the vocabulary (the
    added tags are rare, so they carry little weight). Zero logits would give log 2 * vocab / L instead.
    """
    logits = logits.float()
    softplus = F.softplus(logits).sum((1, 2)) if column_weights is None else F.softplus(logits).sum(1) @ column_weights
    per_size = softplus - logits[:, sequence_index, tag_ids].sum(1)  # (sizes,)
    if size_weights is None:
        size_weights = per_size.new_full((logits.shape[0],), 1 / logits.shape[0])
    return per_size @ size_weights.to(per_size) / max(1, len(tag_ids))


def readback_size_weights(dims: Sequence[int], mode: str) -> torch.Tensor:
    """(len(dims),) weights of the nested sizes' read-back losses, summing to 1.

    ``uniform``: each size the same. ``width``: proportional to the size (32, 64, 128 -> 1/7, 2/7, 4/7), so
    the full width weighs at least as much as all prefixes together: with equal weights the first dims
    get a gradient from every head and the last ones from one, and the full width learns little beyond
    the first prefix.
    """
    if mode == "uniform":
        return torch.full((len(dims),), 1 / len(dims))
    if mode == "width":
        widths = torch.tensor([float(d) for d in dims])
        return widths / widths.sum()
    raise ValueError(f"unknown read-back size weighting {mode!r}")


def decorrelation_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation between the dimensions of ``embeddings`` (rows, dim) over the rows.

    0 when the dimensions are uncorrelated over the batch; near 1 when the embedding lies on one direction.
    """
    x = embeddings.float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    correlation = x.T @ x / max(1, x.shape[0] - 1)
    dim = correlation.shape[0]
    off_diagonal = correlation - torch.diag(torch.diagonal(correlation))
    return off_diagonal.pow(2).sum() / max(1, dim * (dim - 1))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled rows (label -100 = no label); 0 (with a graph) when none is."""
    count = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") / count


def pretraining_losses(
    outputs: Any, batch: dict[str, Any], config: Any, candidates_by_kind: torch.Tensor, dims: Sequence[int],
    readback_sample: ColumnSample | None = None, masked_sample: ColumnSample | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total and every objective on its own (detached) for one collated batch.

    ``outputs`` is a ``BooruEmbedForPreTrainingOutput``; ``dims`` the nested sizes plus the full size;
    ``readback_sample`` / ``masked_sample`` the columns the read-back / masked-tag logits cover when the
    forward got them (else the vocabulary).
    """
    posts = int(batch["num_posts"])
    embeddings = outputs.embeddings
    mlm = set_prediction_loss(
        outputs.mlm_logits,
        batch["mlm_group_kind"],
        batch["mlm_target_group"],
        batch["mlm_target_ids"],
        batch["mlm_target_weights"],
        batch["mlm_exclude_group"],
        batch["mlm_exclude_ids"],
        candidates_by_kind,
        masked_sample,
    )
    nested_only = getattr(config, "contrastive_sizes", "all") == "nested" and len(dims) > 1
    contrastive, view_accuracy = info_nce(
        embeddings[posts : 2 * posts], embeddings[2 * posts : 3 * posts], config.temperature,
        dims[:-1] if nested_only else dims,
        across_processes=config.contrastive_across_processes,
        subjects=batch["contrastive_subjects"] if config.contrastive_subject_positives else None,
    )
    size_weights = readback_size_weights(dims, getattr(config, "readback_size_weights", "uniform"))
    if readback_sample is None:
        readback = readback_loss(outputs.readback_logits, batch["readback_sequence"], batch["readback_ids"],
                                 size_weights=size_weights)
    else:
        readback = readback_loss(outputs.readback_logits, batch["readback_sequence"],
                                 readback_sample.positive_columns, readback_sample.weights, size_weights)
    decorrelation_weight = getattr(config, "decorrelation_weight", 0.0)
    decorrelation = decorrelation_loss(embeddings) if decorrelation_weight else embeddings.new_zeros(())
    rating = classification_loss(outputs.rating_logits, batch["rating_labels"])
    score = classification_loss(outputs.score_logits, batch["score_labels"])
    total = (
        config.mlm_weight * mlm
        + config.contrastive_weight * contrastive
        + config.readback_weight * readback
        + config.rating_weight * rating
        + config.score_weight * score
        + decorrelation_weight * decorrelation
    )
    parts = {
        "loss": total,
        "mlm": mlm,
        "contrastive": contrastive,
        "readback": readback,
        "rating": rating,
        "score": score,
        "decorrelation": decorrelation,
        "view_accuracy": view_accuracy,
    }
    return total, {k: v.detach() for k, v in parts.items()}
