"""BooruEmbed: a transformer over unordered Danbooru tag sets (remote code, loadable with trust_remote_code).

Reads top to bottom: outputs, embeddings, attention (the packed-post layouts and the `AttentionPlan` that
every block follows), MLP, block, pretrained base, encoder, heads. `BooruEmbedForPreTraining` answers what
users ask without reaching into its parts: `encode`, `embed`, `masked_tag_logits`, `rating_and_score_logits`,
`readback`.

Inputs come in one of two layouts:
- padded: `input_ids`/`category_ids` (posts, tokens) with `attention_mask` (1 = real token);
- packed: `input_ids`/`category_ids` (1, total_tokens), posts back to back, with `cu_seqlens` (int32,
  posts + 1, starting at 0) and optionally `max_seqlen`, or `position_ids` restarting at 0 for every post.

Every post starts with its `<cls>` token, whose final hidden state is projected to the pooled embedding
(`pooling="cls"`), or all its tokens' states are averaged with learned softmax weights first
(`pooling="attention"`). With `pooler_input_skip`, the plain mean of the post's input embeddings, projected
by a second matrix, is added to it: a bag-of-tags path around the blocks.
Packed posts attend only within themselves on every attention backend:
- `flash_attention_2` (flash_attn installed and CUDA) and `booru_varlen` get `cu_seqlens` directly;
- `flex_attention` gets a document `BlockMask`;
- `eager`, `sdpa` and any other backend see each post regrouped into its own row of a (posts, length)
  batch with a key padding mask, for the attention product only: the block-diagonal mask without
  materialising it. Posts of similar length share a batch (`LengthGroups`), so the cost is about
  sum(length^2) over the posts instead of total_tokens^2, or posts x max_seqlen^2 for one batch of all.
`booru_varlen` is flash_attn's varlen kernel if installed, else PyTorch's `torch.nn.attention.varlen.varlen_attn`
(CUDA, half precision; torch >= 2.10, and for training a torch whose varlen_attn has a backward), else the
regrouped SDPA above. Asking for `flash_attention_2` where flash_attn or CUDA is missing loads the model with
`booru_varlen` instead of failing.

What importing this file does besides defining classes (nothing else in the process is touched):
- it checks the transformers release (`versions_booru_embed`) and raises one line if it is too old;
- it registers one attention function, named `booru_varlen`, in transformers' process-wide
  `AttentionInterface` registry, so `attn_implementation="booru_varlen"` and the flash fallback resolve to it
  (this file's models call their own copy, whatever another copy registered later);
- it tries to import flash_attn, and reads whether torch's varlen attention exists and has a backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .versions_booru_embed import require_transformers

require_transformers()  # first: on an older transformers, one line naming the release needed

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_booru_embed import BooruEmbedConfig

try:
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
except (ImportError, OSError):  # not installed, or built for another CUDA/torch
    _flash_attn_varlen_func = None

try:
    from torch.nn.attention import varlen as _torch_varlen_module
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # torch < 2.10
    _torch_varlen_module = _torch_varlen_attn = None
# The first releases of `varlen_attn` had a forward only; later ones register a backward on the custom op.
# Read once: without a backward, training falls back to the regrouped SDPA instead of failing in backward.
_TORCH_VARLEN_HAS_BACKWARD = getattr(getattr(_torch_varlen_module, "_varlen_attn", None), "_backward_fn", None) is not None

VARLEN_ATTENTION = "booru_varlen"
# Backends that take cu_seqlens instead of a mask; a padded batch is unpadded once before the first block.
_VARLEN_BACKENDS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", VARLEN_ATTENTION)
# Devices on which the varlen kernels run (both flash_attn and PyTorch's varlen_attn are CUDA kernels).
_KERNEL_DEVICES = ("cuda",)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
# Devices on which flex attention's document mask is built compiled: block by block, in memory that grows with
# (total_tokens / 128)^2 instead of the ~10 bytes per token pair (total_tokens^2) of the uncompiled build.
_MASK_COMPILE_DEVICES = ("cuda",)
# Posts share a regrouped attention batch while the shortest is at least this share of the longest.
GROUP_LENGTH_RATIO = 0.7


# ----------------------------------------------------------------------------------------------------- outputs


@dataclass
class BooruEmbedModelOutput(ModelOutput):
    """Output of [`BooruEmbedModel`].

    Args:
        last_hidden_state: (posts, tokens, hidden) padded, or (1, total_tokens, hidden) packed; padding rows are 0.
        pooler_output: (posts, embedding_dim), L2-normalised only when `normalize_embeddings=True`.
        hidden_states: the input of every block and the final output, when `output_hidden_states=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BooruEmbedForPreTrainingOutput(ModelOutput):
    """Output of [`BooruEmbedForPreTraining`]; the training code computes the losses from it.

    Args:
        mlm_logits: (selected tokens, vocab) for the tokens where `mlm_positions` is True, row-major order
            ((selected tokens, len(masked_columns)) with `masked_columns`); None without `mlm_positions`.
        embeddings: (posts, embedding_dim) pooled embedding, not normalised.
        readback_logits: (len(nested_dims) + 1, posts, vocab) tags read back from the first d dims of the
            embedding for d in `nested_dims + [embedding_dim]`; (…, posts, len(readback_columns)) when the
            forward got `readback_columns`.
        rating_logits: (posts, num_ratings).
        score_logits: (posts, num_score_buckets).
        last_hidden_state: as in [`BooruEmbedModelOutput`].
    """

    mlm_logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    readback_logits: torch.FloatTensor | None = None
    rating_logits: torch.FloatTensor | None = None
    score_logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# -------------------------------------------------------------------------------------------------- embeddings


class BooruEmbedEmbeddings(nn.Module):
    """Token embedding plus category embedding; no positions, since a tag set has no order."""

    def __init__(self, config: BooruEmbedConfig) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.category_embeddings = nn.Embedding(config.num_categories, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """(…, tokens) ids -> (…, tokens, hidden)."""
        return self.token_embeddings(input_ids) + self.category_embeddings(category_ids.long())


# --------------------------------------------------------------------------------------------------- attention


@dataclass
class PostLayout:
    """Where the posts of a packed row are, computed once per forward and shared by every block.

    Attributes:
        cu_seqlens: (posts + 1,) int32 offsets of the posts in the packed row.
        max_seqlen: length of the longest post.
        slots: (total_tokens,) index of each packed token in a (posts * max_seqlen) grid of rows.
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    slots: torch.Tensor

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: torch.Tensor, max_seqlen: int | None, total_tokens: int) -> PostLayout:
        """Build the layout of `total_tokens` packed tokens split at `cu_seqlens`.

        Checks that `cu_seqlens` starts at 0 and ends at `total_tokens` (one host read): CUDA's
        `repeat_interleave` does not check `output_size`, so a packed row with trailing padding would
        otherwise give its tokens to the wrong posts in pooling.
        """
        cu_seqlens = cu_seqlens.to(torch.int32)
        first, last = cu_seqlens[[0, -1]].tolist()
        if first != 0 or last != total_tokens:
            raise ValueError(
                f"cu_seqlens must run from 0 to the packed row's {total_tokens} tokens, got {first}..{last} "
                "(a packed row holds no padding: drop the trailing tokens or add them to the last post)"
            )
        lengths = cu_seqlens.diff()
        if max_seqlen is None:
            max_seqlen = int(lengths.max())
        device = cu_seqlens.device
        post = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths.long(),
                                       output_size=total_tokens)  # (total_tokens,) post of each token
        offset = torch.arange(total_tokens, device=device) - cu_seqlens[:-1].long()[post]
        return cls(cu_seqlens=cu_seqlens, max_seqlen=int(max_seqlen), slots=post * max_seqlen + offset)

    @classmethod
    def from_position_ids(cls, position_ids: torch.Tensor) -> PostLayout:
        """Build the layout from (1, total_tokens) positions that restart at 0 for every post."""
        flat = position_ids.reshape(-1)
        starts = torch.nonzero(flat == 0).reshape(-1)
        end = torch.tensor([flat.numel()], device=flat.device)
        return cls.from_cu_seqlens(torch.cat([starts, end]), None, flat.numel())

    def document_block_mask(self, total_tokens: int) -> object:
        """A flex-attention BlockMask letting each token attend only to tokens of its own post.

        Built once per forward. On `_MASK_COMPILE_DEVICES` the build is compiled and works block by block;
        elsewhere it evaluates every token pair, ~10 bytes each (measured on CPU with torch 2.13): 80 GB
        would hold a batch of ~89k tokens, ~2,400 posts of Danbooru's mean length.
        """
        from torch.nn.attention.flex_attention import create_block_mask

        document = torch.div(self.slots, self.max_seqlen, rounding_mode="floor")  # (total_tokens,) post of each token

        def same_post(batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
                      ) -> torch.Tensor:
            return document[q_idx] == document[kv_idx]

        return create_block_mask(same_post, None, None, total_tokens, total_tokens, device=document.device,
                                 _compile=document.device.type in _MASK_COMPILE_DEVICES)


@dataclass
class LengthGroups:
    """The posts of a packed row regrouped into batches of similar length, for backends that take a key mask.

    One (posts, max_seqlen) batch makes every post pay for the longest: with 5 to 150 tags a post, most of it
    is padding (3.3 slots per token in `tiny`'s training batches), and the attention product grows with the
    square of the row length. Posts sorted by length are cut into groups whose shortest post is at least
    `GROUP_LENGTH_RATIO` of their longest, and each group is a (posts, its longest) batch of its own.

    Attributes:
        slots: (total_tokens,) index of each packed token in the groups' batches laid end to end.
        shapes: (posts, length) of each group's batch, longest posts first.
        masks: (posts, 1, 1, length) key masks of the groups: True where a key may be attended.
    """

    slots: torch.Tensor
    shapes: list[tuple[int, int]]
    masks: list[torch.Tensor]

    @classmethod
    def from_layout(cls, layout: PostLayout) -> LengthGroups:
        """Group the posts of `layout` by length (one host read of the lengths)."""
        lengths = layout.cu_seqlens.diff().long()
        device = lengths.device
        order = torch.argsort(lengths, descending=True, stable=True)
        sorted_lengths = lengths[order].tolist()
        shapes, start = [], 0
        while start < len(sorted_lengths):
            end, longest = start + 1, sorted_lengths[start]
            while end < len(sorted_lengths) and sorted_lengths[end] >= GROUP_LENGTH_RATIO * longest:
                end += 1
            shapes.append((end - start, longest))
            start = end
        row_starts, base = [], 0
        for count, length in shapes:
            row_starts.extend(range(base, base + count * length, length))
            base += count * length
        row_start = torch.empty_like(lengths)
        row_start[order] = torch.tensor(row_starts, dtype=torch.long, device=device)
        post = torch.div(layout.slots, layout.max_seqlen, rounding_mode="floor")
        slots = row_start[post] + layout.slots - post * layout.max_seqlen
        masks, first = [], 0
        for count, length in shapes:
            rows = lengths[order[first : first + count]]
            masks.append((torch.arange(length, device=device)[None, :] < rows[:, None])[:, None, None, :])
            first += count
        return cls(slots=slots, shapes=shapes, masks=masks)

    def regroup(self, states: torch.Tensor) -> list[torch.Tensor]:
        """(total_tokens, features) -> one (posts, length, features) batch per group, zeros in the empty slots.

        index_copy / index_select rather than boolean indexing: their backward passes are a plain gather and
        scatter-add, where boolean indexing falls back to a slow accumulating index_put on CPU.
        """
        sizes = [count * length for count, length in self.shapes]
        grid = states.new_zeros(sum(sizes), states.shape[-1]).index_copy(0, self.slots, states)
        return [part.view(count, length, -1) for part, (count, length) in zip(grid.split(sizes), self.shapes)]

    def ungroup(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of `regroup`: the groups' (posts, length, features) batches -> (total_tokens, features)."""
        return torch.cat([batch.flatten(0, 1) for batch in batches]).index_select(0, self.slots)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention; `attention_mask` is boolean (True = attend) or additive. Returns (batch, tokens, heads, dim)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, queries, keys)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (batch, queries, heads, head_dim)
    return output, weights


def _varlen_kernel(device_type: str, dtype: torch.dtype, needs_grad: bool) -> Callable[..., torch.Tensor] | None:
    """The fused varlen kernel for attention in `dtype` on `device_type`, with flash_attn's calling convention,
    or None where none runs (then `booru_varlen` regroups the posts for SDPA)."""
    if device_type not in _KERNEL_DEVICES or dtype not in _KERNEL_DTYPES:
        return None
    if _flash_attn_varlen_func is not None:
        return _flash_attn_varlen_func
    if _torch_varlen_attn is not None and (_TORCH_VARLEN_HAS_BACKWARD or not needs_grad):
        return _torch_varlen_kernel
    return None


def _attention_dtype(hidden_states: torch.Tensor) -> torch.dtype:
    """The dtype the attention product will run in: autocast's where it is on, else the states' own."""
    device_type = hidden_states.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden_states.dtype


def _torch_varlen_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """PyTorch's varlen attention behind flash_attn's signature (no dropout, never causal here).

    `varlen_attn` gets only the seven positional arguments that every release takes: torch 2.10's first form
    continued with `is_causal, return_aux`, later ones with keyword-only `scale`, `window_size`, ... A scale
    other than its default 1/sqrt(head_dim) is folded into the query instead.
    """
    if softmax_scale is not None:
        factor = softmax_scale * q.shape[-1] ** 0.5
        if abs(factor - 1.0) > 1e-6:
            q = q * factor
    return _torch_varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    length_groups: LengthGroups | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The `booru_varlen` backend: attention within each packed post given by `cu_seq_lens_q`.

    `query`/`key`/`value` are (1, heads, total_tokens, head_dim); returns (1, total_tokens, heads, head_dim).
    Uses flash_attn's or PyTorch's varlen kernel where one runs, else SDPA on the posts regrouped into rows
    (`length_groups`, built here when not given).
    """
    kernel = _varlen_kernel(query.device.type, query.dtype, query.requires_grad)
    if kernel is not None:
        q, k, v = (states[0].transpose(0, 1) for states in (query, key, value))  # (total_tokens, heads, head_dim)
        output = kernel(
            q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q,
            dropout_p=dropout, softmax_scale=scaling, causal=False,
        )
        return output.unsqueeze(0), None
    if length_groups is None:
        length_groups = LengthGroups.from_layout(PostLayout.from_cu_seqlens(cu_seq_lens_q, max_length_q, query.shape[2]))
    heads, head_dim = query.shape[1], query.shape[3]
    grouped = [length_groups.regroup(states[0].transpose(0, 1).reshape(-1, heads * head_dim))
               for states in (query, key, value)]  # per projection, one (posts, length, hidden) batch per group
    outputs = []
    for q, k, v, mask in zip(*grouped, length_groups.masks):
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))  # (posts, heads, length, dim)
        output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        outputs.append(output.transpose(1, 2).flatten(2))  # (posts, length, heads * head_dim)
    output = length_groups.ungroup(outputs)  # (total_tokens, heads * head_dim)
    return output.unflatten(-1, (heads, head_dim)).unsqueeze(0), None


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)


@dataclass
class AttentionPlan:
    """How every block runs attention in one forward, chosen once from the input layout and the backend.

    The only place that looks at backend names. Padded rows go to the backend with the bidirectional mask;
    packed posts (or padded rows unpadded for the varlen backends, which take no mask) go with `cu_seqlens`
    (varlen backends), a document `BlockMask` (flex) or, for every other backend, regrouped into one row per
    post with a key padding mask.

    Attributes:
        attention: the attention function of the configured backend.
        kwargs: what it receives besides query/key/value: `attention_mask`, and cu_seqlens for varlen backends.
        layout: where the posts are when the blocks run on one packed row; None for padded rows.
        groups: the packed row regrouped into batches of similar-length posts, one row per post, for the
            attention product only (backends that take a key mask); None when the backend takes the row.
        padding_mask: (posts, tokens), 1 for the real tokens of a padded input; None for packed input.
        unpad: (real tokens,) position of every real token of a padded input in its flattened batch, when the
            padded input runs packed; None otherwise.
    """

    attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    kwargs: dict[str, object]
    layout: PostLayout | None = None
    groups: LengthGroups | None = None
    padding_mask: torch.Tensor | None = None
    unpad: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        config: BooruEmbedConfig,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        max_seqlen: int | None,
        position_ids: torch.Tensor | None,
    ) -> AttentionPlan:
        """The plan for embedded inputs `hidden_states` (rows, tokens, hidden) in one of the layouts."""
        implementation = config._attn_implementation
        if implementation == VARLEN_ATTENTION:
            # This file's own function: another copy of this remote code loaded in the same process (a Hub
            # snapshot, say) registers the same name in the global registry, possibly from another version.
            attention = varlen_attention_forward
        elif hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers reads this call in the source to
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)  # allow switching
        else:  # releases before get_interface (5.3): the registry is a plain mapping, eager not in it
            attention = ALL_ATTENTION_FUNCTIONS.get(implementation, eager_attention_forward)
        varlen = implementation in _VARLEN_BACKENDS
        unpad = None
        if cu_seqlens is not None:
            layout = PostLayout.from_cu_seqlens(cu_seqlens, max_seqlen, hidden_states.shape[1])
        elif position_ids is not None:
            layout = PostLayout.from_position_ids(position_ids)
        elif varlen:  # varlen kernels take no mask: a padded batch is unpadded once and runs packed
            real = attention_mask.bool() if attention_mask is not None else torch.ones(
                hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            lengths = real.sum(dim=1, dtype=torch.int32)
            cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
            layout = PostLayout.from_cu_seqlens(cu, int(lengths.max()), int(cu[-1]))
            unpad = real.flatten().nonzero().squeeze(1)  # (total_tokens,) position of each real token in the batch
        else:
            # positional: the embeddings' keyword was `input_embeds` in 5.0, `inputs_embeds` later
            mask = create_bidirectional_mask(config, hidden_states, attention_mask)
            return cls(attention, {"attention_mask": mask}, padding_mask=attention_mask)

        if varlen:
            kwargs: dict[str, object] = {
                "attention_mask": None,
                "cu_seq_lens_q": layout.cu_seqlens,
                "cu_seq_lens_k": layout.cu_seqlens,
                "max_length_q": layout.max_seqlen,
                "max_length_k": layout.max_seqlen,
            }
            if implementation == VARLEN_ATTENTION and _varlen_kernel(
                hidden_states.device.type, _attention_dtype(hidden_states), torch.is_grad_enabled()
            ) is None:  # the SDPA fallback, wherever it runs: group once per forward, not in every layer
                kwargs["length_groups"] = LengthGroups.from_layout(layout)
            return cls(attention, kwargs, layout=layout, padding_mask=real if unpad is not None else None, unpad=unpad)
        if implementation == "flex_attention":
            return cls(attention, {"attention_mask": layout.document_block_mask(layout.slots.numel())}, layout=layout)
        return cls(attention, {}, layout=layout, groups=LengthGroups.from_layout(layout))

    def enter(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The embedded input as the blocks see it: a padded input that runs packed becomes one packed row."""
        if self.unpad is None:
            return hidden_states
        return hidden_states.flatten(0, 1).index_select(0, self.unpad)[None]  # (1, total_tokens, hidden)

    def leave(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Block states back in the input's layout, padding rows set to 0."""
        if self.unpad is not None:
            packed = hidden_states[0]  # (total_tokens, hidden)
            padded = packed.new_zeros(self.padding_mask.numel(), packed.shape[-1]).index_copy(0, self.unpad, packed)
            return padded.view(*self.padding_mask.shape, -1)
        if self.padding_mask is not None:
            return hidden_states * self.padding_mask[..., None].to(hidden_states.dtype)
        return hidden_states

    def first_tokens(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(posts, hidden) final states of every post's first (`<cls>`) token, from the blocks' output."""
        if self.layout is not None:
            return hidden_states[0, self.layout.cu_seqlens[:-1].long()]
        first = self.padding_mask.int().argmax(dim=1) if self.padding_mask is not None else 0
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), first]

    def weighted_mean(self, hidden_states: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(posts, hidden) mean of each post's token states from the blocks' output, weighted by softmax(scores).

        `scores` (rows, tokens) is one score per token in the blocks' layout; the softmax runs within each post.
        """
        if self.layout is not None:
            layout = self.layout
            post = torch.div(layout.slots, layout.max_seqlen, rounding_mode="floor")  # (total_tokens,)
            posts = layout.cu_seqlens.numel() - 1
            score = scores[0].float()
            post_max = score.new_full((posts,), float("-inf")).scatter_reduce(0, post, score, reduce="amax")
            weight = torch.exp(score - post_max[post])
            totals = weight.new_zeros(posts).index_add(0, post, weight)
            states = hidden_states[0].float()
            summed = states.new_zeros(posts, states.shape[-1]).index_add(0, post, weight[:, None] * states)
            return (summed / totals[:, None]).to(hidden_states.dtype)
        score = scores.float()
        if self.padding_mask is not None:
            score = score.masked_fill(~self.padding_mask.bool(), float("-inf"))
        weight = torch.softmax(score, dim=1)
        return (weight[..., None] * hidden_states.float()).sum(dim=1).to(hidden_states.dtype)



class BooruEmbedAttention(nn.Module):
    """Bidirectional multi-head self-attention without biases, dispatched to the backend of the plan."""

    def __init__(self, config: BooruEmbedConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, attention_plan: AttentionPlan) -> torch.Tensor:
        """(batch, tokens, hidden) -> (batch, tokens, hidden)."""
        qkv = self.qkv_proj(hidden_states)  # (batch, tokens, 3 * hidden)
        groups = attention_plan.groups
        if groups is None:
            output = self._attend(qkv, attention_plan.attention, attention_plan.kwargs)
        else:  # one (posts, length) batch per group of similar-length posts
            batches = groups.regroup(qkv[0])
            output = groups.ungroup([
                self._attend(batch, attention_plan.attention, {**attention_plan.kwargs, "attention_mask": mask})
                for batch, mask in zip(batches, groups.masks)
            ])[None]
        return self.o_proj(output)

    def _attend(self, qkv: torch.Tensor, attention: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
                kwargs: dict[str, object]) -> torch.Tensor:
        """(rows, length, 3 * hidden) projections -> (rows, length, hidden) attention output of the backend."""
        rows, length = qkv.shape[:2]
        qkv = qkv.view(rows, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (rows, heads, length, head_dim)
        output, _ = attention(
            self, query, key, value, scaling=self.scaling, dropout=0.0, is_causal=False, **kwargs
        )  # (rows, length, heads, head_dim)
        return output.reshape(rows, length, -1)


# --------------------------------------------------------------------------------------------------- MLP, block


class BooruEmbedMLP(nn.Module):
    """SwiGLU feed-forward without biases."""

    def __init__(self, config: BooruEmbedConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(…, hidden) -> (…, hidden)."""
        gate, up = self.gate_up_proj(hidden_states).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class BooruEmbedLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: BooruEmbedConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention = BooruEmbedAttention(config, layer_idx)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = BooruEmbedMLP(config)

    def forward(self, hidden_states: torch.Tensor, attention_plan: AttentionPlan) -> torch.Tensor:
        """(batch, tokens, hidden) -> (batch, tokens, hidden)."""
        hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), attention_plan)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


# ------------------------------------------------------------------------------------------- pretrained base


class BooruEmbedPreTrainedModel(PreTrainedModel):
    """Weight initialisation, attention-backend flags and loading for all BooruEmbed models."""

    config_class = BooruEmbedConfig
    config: BooruEmbedConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BooruEmbedLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # Where flash_attn or CUDA is missing, transformers serves `flash_attention_*` requests with the first of these
    # (a model-author flag, read by `from_pretrained` and `set_attn_implementation`): booru_varlen, not a load error.
    _compatible_flash_implementations = (
        ["flash_attention_2", VARLEN_ATTENTION] if _flash_attn_varlen_func is not None and torch.cuda.is_available()
        else [VARLEN_ATTENTION]
    )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) weights; residual output projections scaled by 1/sqrt(2 * layers)."""
        super()._init_weights(module)
        residual_std = self.config.initializer_range / (2 * self.config.num_hidden_layers) ** 0.5
        if isinstance(module, BooruEmbedAttention):
            init.normal_(module.o_proj.weight, mean=0.0, std=residual_std)
        elif isinstance(module, BooruEmbedMLP):
            init.normal_(module.down_proj.weight, mean=0.0, std=residual_std)
        elif isinstance(module, BooruEmbedTagHead):
            init.zeros_(module.bias)
        elif isinstance(module, BooruEmbedPoolingScore):
            init.zeros_(module.weight)  # attention pooling starts as a plain mean of the states
            init.zeros_(module.bias)

    def _init_output_embeddings(self, config: BooruEmbedConfig) -> None:
        """Models with tag heads: their own output matrix when `config.tie_output_embeddings` is False."""
        self.output_embeddings = (
            None if config.tie_output_embeddings else nn.Embedding(config.vocab_size, config.hidden_size)
        )

    def tag_output_matrix(self) -> torch.Tensor:
        """Models with tag heads: the (vocab, hidden) matrix they score against (token or output embeddings)."""
        if self.output_embeddings is not None:
            return self.output_embeddings.weight
        return self.model.embeddings.token_embeddings.weight


# ----------------------------------------------------------------------------------------------------- encoder


class BooruEmbedPoolingScore(nn.Linear):
    """The per-token score of attention pooling (`config.pooling="attention"`); starts at 0, a plain mean."""


class BooruEmbedModel(BooruEmbedPreTrainedModel):
    """The encoder: per-tag hidden states and the pooled, Matryoshka-nested tag-set embedding."""

    # the heads of a BooruEmbedForPreTraining checkpoint, which AutoModel loads without
    _keys_to_ignore_on_load_unexpected = [r"^(mlm_head|readback_heads|rating_head|score_head|output_embeddings)\."]

    def __init__(self, config: BooruEmbedConfig) -> None:
        super().__init__(config)
        self.embeddings = BooruEmbedEmbeddings(config)
        self.layers = nn.ModuleList(BooruEmbedLayer(config, index) for index in range(config.num_hidden_layers))
        self.final_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # config.pooling "attention": one learned score per token, softmax-weighted mean of the post's states
        self.pooling_score = BooruEmbedPoolingScore(config.hidden_size, 1) if config.pooling == "attention" else None
        self.pooler = nn.Linear(config.hidden_size, config.embedding_dim, bias=False)
        # config.pooler_input_skip: the mean of the input embeddings, RMS-normalised like the final states (else it
        # is ~20x smaller than they are and the read-back ignores it), projected and added: a bag-of-tags path
        self.input_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if config.pooler_input_skip else None
        self.input_pooler = (
            nn.Linear(config.hidden_size, config.embedding_dim, bias=False) if config.pooler_input_skip else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding matrix (also the output matrix of the tag-predicting heads)."""
        return self.embeddings.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding matrix."""
        self.embeddings.token_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        category_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        normalize_embeddings: bool = False,
        output_hidden_states: bool = False,
        **kwargs: object,
    ) -> BooruEmbedModelOutput:
        """Encode padded posts (`attention_mask`) or packed posts (`cu_seqlens` or `position_ids`).

        Args:
            input_ids: (posts, tokens) padded or (1, total_tokens) packed token ids; each post starts with `<cls>`.
            category_ids: category of every token, same shape.
            attention_mask: (posts, tokens), 1 for real tokens; padded layout only (default: no padding).
            cu_seqlens: (posts + 1,) int32 offsets of the packed posts, starting at 0.
            max_seqlen: length of the longest packed post (computed from `cu_seqlens` when omitted).
            position_ids: (1, total_tokens) restarting at 0 for every post; an alternative to `cu_seqlens`.
            normalize_embeddings: L2-normalise `pooler_output`.
            output_hidden_states: also return the input of every block and the final hidden states.
        """
        if category_ids.shape != input_ids.shape:
            raise ValueError(
                f"category_ids {tuple(category_ids.shape)} must have the shape of input_ids {tuple(input_ids.shape)}"
            )
        packed = cu_seqlens is not None or position_ids is not None
        if packed and attention_mask is not None:
            raise ValueError("give either attention_mask (padded posts) or cu_seqlens/position_ids (packed posts)")
        if packed and input_ids.shape[0] != 1:
            raise ValueError(f"packed posts must be one row of shape (1, total_tokens), got {tuple(input_ids.shape)}")
        hidden_states = self.embeddings(input_ids, category_ids)
        plan = AttentionPlan.build(self.config, hidden_states, attention_mask, cu_seqlens, max_seqlen, position_ids)
        hidden_states = plan.enter(hidden_states)
        inputs = hidden_states
        all_states = [] if output_hidden_states else None
        for layer in self.layers:
            if all_states is not None:
                all_states.append(plan.leave(hidden_states))
            hidden_states = layer(hidden_states, attention_plan=plan)
        hidden_states = self.final_norm(hidden_states)
        if self.pooling_score is None:
            pooled = self.pooler(plan.first_tokens(hidden_states))
        else:
            pooled = self.pooler(plan.weighted_mean(hidden_states, self.pooling_score(hidden_states).squeeze(-1)))
        if self.input_pooler is not None:
            bag = plan.weighted_mean(inputs, inputs.new_zeros(inputs.shape[:-1]))  # the plain mean
            pooled = pooled + self.input_pooler(self.input_norm(bag))
        if normalize_embeddings:
            pooled = F.normalize(pooled, dim=-1)
        hidden_states = plan.leave(hidden_states)
        if all_states is not None:
            all_states = (*all_states, hidden_states)
        return BooruEmbedModelOutput(last_hidden_state=hidden_states, pooler_output=pooled, hidden_states=all_states)


# ------------------------------------------------------------------------------------------------------- heads


class BooruEmbedTagHead(nn.Module):
    """Scores every tag from a vector: dense -> GELU -> RMSNorm -> dot with the output matrix + bias.

    The output matrix is passed in: the token embedding matrix itself (tied by construction, nothing to
    re-tie on load) or the model's separate output embeddings (`config.tie_output_embeddings=False`).
    With `normalize_input`, the input is RMS-normalised first, so the logits do not depend on its scale:
    read-back works the same on raw and on L2-normalised (truncated) embeddings.
    """

    def __init__(self, input_dim: int, config: BooruEmbedConfig, normalize_input: bool = False) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.normalize_input = normalize_input
        self.eps = config.rms_norm_eps
        self.dense = nn.Linear(input_dim, config.hidden_size, bias=False)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(
        self, features: torch.Tensor, output_matrix: torch.Tensor, columns: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(…, input_dim) -> (…, vocab) logits against `output_matrix` (vocab, hidden).

        With `columns` (token ids), `output_matrix` holds only their rows, (len(columns), hidden), e.g.
        `output_matrix.index_select(0, columns)` gathered once for several heads, and the logits are
        (…, len(columns)): the cost follows the number of columns, not the vocabulary.
        """
        if self.normalize_input:
            features = F.rms_norm(features, (self.input_dim,), eps=self.eps)
        hidden = self.norm(F.gelu(self.dense(features)))
        return F.linear(hidden, output_matrix, self.bias if columns is None else self.bias.index_select(0, columns))


class BooruEmbedForMaskedLM(BooruEmbedPreTrainedModel):
    """The encoder with the masked-tag prediction head."""

    # the other heads of a BooruEmbedForPreTraining checkpoint
    _keys_to_ignore_on_load_unexpected = [r"^(readback_heads|rating_head|score_head)\."]

    def __init__(self, config: BooruEmbedConfig) -> None:
        super().__init__(config)
        self.model = BooruEmbedModel(config)
        self._init_output_embeddings(config)
        self.mlm_head = BooruEmbedTagHead(config.hidden_size, config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        category_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: object,
    ) -> MaskedLMOutput:
        """Masked-tag logits, and the cross-entropy `loss` when `labels` (-100 = ignore) are given.

        Logits cover every token, or only the tokens where `mlm_positions` is True (row-major), or, with
        `labels` and no `mlm_positions`, only the labelled tokens (which is all the loss needs).
        """
        outputs = self.model(
            input_ids, category_ids, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, position_ids=position_ids, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if mlm_positions is None and labels is not None:
            mlm_positions = labels != -100
        if mlm_positions is not None:
            hidden_states = hidden_states[mlm_positions]
        logits = self.mlm_head(hidden_states, self.tag_output_matrix())
        loss = None
        if labels is not None:
            targets = labels[mlm_positions] if mlm_positions is not None else labels
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class BooruEmbedForPreTraining(BooruEmbedPreTrainedModel):
    """The encoder with every training head: masked tags, tag read-back per nested size, rating, score bucket."""

    def __init__(self, config: BooruEmbedConfig) -> None:
        super().__init__(config)
        self.model = BooruEmbedModel(config)
        self._init_output_embeddings(config)
        self.mlm_head = BooruEmbedTagHead(config.hidden_size, config)
        self.readback_dims = [*config.nested_dims, config.embedding_dim]
        # One decoder per nested size: each prefix of the embedding gets a read-back head of its own.
        self.readback_heads = nn.ModuleList(
            BooruEmbedTagHead(dim, config, normalize_input=True) for dim in self.readback_dims
        )
        self.rating_head = nn.Linear(config.embedding_dim, config.num_ratings)
        self.score_head = nn.Linear(config.embedding_dim, config.num_score_buckets)
        self.post_init()

    @torch.no_grad()
    def initialise_tag_biases(self, token_counts: Sequence[int], num_posts: int) -> None:
        """Start the tag heads at the tags' base rates: untrained logits then predict the prior, not 1/2.

        With p = (count + 0.5) / (num_posts + 1), the share of training posts with the token (smoothed, so
        never-seen tokens get a large negative bias rather than -inf): each read-back head's bias is
        log(p / (1 - p)), so sigmoid(bias) = p; the masked-tag head's bias is log p, so its softmax over
        any candidate set starts proportional to popularity. See `readback_loss` of the training
        objectives for what this does to the loss scale.
        """
        if len(token_counts) != self.config.vocab_size:
            raise ValueError(f"{len(token_counts)} token counts for a vocabulary of {self.config.vocab_size}")
        if num_posts < 1:
            raise ValueError(f"num_posts must be at least 1, got {num_posts}")
        counts = torch.as_tensor(list(token_counts), dtype=torch.float64)
        share = ((counts + 0.5) / (num_posts + 1)).clamp(max=1 - 0.5 / (num_posts + 1))
        for head in self.readback_heads:
            head.bias.copy_(torch.log(share) - torch.log1p(-share))
        self.mlm_head.bias.copy_(torch.log(share))

    def encode(self, input_ids: torch.Tensor, category_ids: torch.Tensor, **layout: object) -> BooruEmbedModelOutput:
        """The encoder alone: per-tag hidden states and pooled embeddings.

        `layout` is `attention_mask` (padded posts) or `cu_seqlens`/`max_seqlen`/`position_ids` (packed posts),
        and any other argument of [`BooruEmbedModel.forward`].
        """
        return self.model(input_ids, category_ids, **layout)

    def embed(
        self, input_ids: torch.Tensor, category_ids: torch.Tensor, normalize_embeddings: bool = False, **layout: object
    ) -> torch.Tensor:
        """(posts, embedding_dim) pooled embeddings of padded or packed posts (`layout` as in `encode`); no head runs."""
        return self.encode(input_ids, category_ids, normalize_embeddings=normalize_embeddings, **layout).pooler_output

    def masked_tag_logits(
        self, hidden_states: torch.Tensor, mlm_positions: torch.Tensor | None = None, columns: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Masked-tag logits (…, vocab) from encoder hidden states (…, hidden), e.g. `encode(...).last_hidden_state`.

        With `mlm_positions` (boolean, the leading shape of `hidden_states`), only the selected tokens are scored,
        in row-major order: (selected tokens, vocab). With `columns` (token ids), only those are: (…, columns).
        """
        if mlm_positions is not None:
            hidden_states = hidden_states[mlm_positions]
        output_matrix = self.tag_output_matrix()
        if columns is not None:
            output_matrix = output_matrix.index_select(0, columns)
        return self.mlm_head(hidden_states, output_matrix, columns)

    def rating_and_score_logits(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(posts, num_ratings) rating and (posts, num_score_buckets) score-bucket logits of full-size embeddings."""
        return self.rating_head(embeddings), self.score_head(embeddings)

    def readback(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Tag logits (…, vocab) read back from embeddings whose width is one of `nested_dims + [embedding_dim]`.

        The embeddings may be raw or L2-normalised: the head RMS-normalises its input.
        """
        width = embeddings.shape[-1]
        if width not in self.readback_dims:
            raise ValueError(f"embeddings of width {width} cannot be read back; widths: {self.readback_dims}")
        head = self.readback_heads[self.readback_dims.index(width)]
        return head(embeddings, self.tag_output_matrix())

    def forward(
        self,
        input_ids: torch.Tensor,
        category_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        position_ids: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        readback_columns: torch.Tensor | None = None,
        masked_columns: torch.Tensor | None = None,
        **kwargs: object,
    ) -> BooruEmbedForPreTrainingOutput:
        """All head outputs for padded or packed posts (see [`BooruEmbedModel.forward`]).

        Args:
            mlm_positions: boolean, shape of `input_ids`: the tokens to score for masked-tag prediction.
            readback_columns: (columns,) token ids: the read-back heads score only these (a sampled
                read-back loss); None scores the whole vocabulary.
            masked_columns: (columns,) token ids: the masked-tag head scores only these (a sampled softmax).
        """
        outputs = self.encode(
            input_ids, category_ids, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, position_ids=position_ids, **kwargs,
        )
        mlm_logits = None
        if mlm_positions is not None:
            mlm_logits = self.masked_tag_logits(outputs.last_hidden_state, mlm_positions, masked_columns)
        embeddings = outputs.pooler_output
        output_matrix = self.tag_output_matrix()
        if readback_columns is not None:  # one gather for every head: one sparse-row gradient, not one per head
            output_matrix = output_matrix.index_select(0, readback_columns)
        readback_logits = torch.stack(
            [head(embeddings[:, : head.input_dim], output_matrix, readback_columns) for head in self.readback_heads]
        )  # (len(nested_dims) + 1, posts, vocab or columns)
        rating_logits, score_logits = self.rating_and_score_logits(embeddings)
        return BooruEmbedForPreTrainingOutput(
            mlm_logits=mlm_logits,
            embeddings=embeddings,
            readback_logits=readback_logits,
            rating_logits=rating_logits,
            score_logits=score_logits,
            last_hidden_state=outputs.last_hidden_state,
        )


BooruEmbedConfig.register_for_auto_class()
BooruEmbedModel.register_for_auto_class("AutoModel")
BooruEmbedForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
BooruEmbedForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "BooruEmbedForMaskedLM",
    "BooruEmbedForPreTraining",
    "BooruEmbedModel",
    "BooruEmbedModelOutput",
    "BooruEmbedForPreTrainingOutput",
    "BooruEmbedPreTrainedModel",
]
