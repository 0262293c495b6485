"""Configuration of the BooruEmbed tag-set transformer (remote code: torch-free, transformers only)."""

from __future__ import annotations

from typing import Any

from .versions_booru_embed import require_transformers

require_transformers()  # first: on an older transformers, one line naming the release needed

from transformers import PreTrainedConfig

# Every class the folder can be loaded with; written into config.json so one folder serves all Auto classes.
POOLING_MODES = ("cls", "attention")
AUTO_MAP = {
    "AutoConfig": "configuration_booru_embed.BooruEmbedConfig",
    "AutoModel": "modeling_booru_embed.BooruEmbedModel",
    "AutoModelForMaskedLM": "modeling_booru_embed.BooruEmbedForMaskedLM",
    "AutoModelForPreTraining": "modeling_booru_embed.BooruEmbedForPreTraining",
}


class BooruEmbedConfig(PreTrainedConfig):
    r"""Configuration of a [`BooruEmbedModel`]: an encoder over unordered Danbooru tag sets.

    Each token is a whole tag. Its input vector is the token embedding plus the embedding of its category;
    there is no positional embedding because a tag set has no order. Blocks are pre-norm (RMSNorm) with
    bidirectional multi-head attention and a SwiGLU MLP, all without biases. The first token of every post
    is `<cls>`; its final hidden state is projected to the pooled embedding of size `embedding_dim`.

    Args:
        vocab_size (`int`, defaults to 32000):
            Number of token ids (the tokenizer's vocabulary including padding rows). Training overwrites the
            value in a hub config with the size of the tokenizer it is given.
        num_categories (`int`, defaults to 8):
            Number of token categories (0 special, 1 rating, 2 score, 3 general, 4 artist, 5 copyright,
            6 character, 7 meta), each with its own learned embedding added to the token embedding.
        hidden_size (`int`, defaults to 512):
            Width of the hidden states.
        num_hidden_layers (`int`, defaults to 6):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to 8):
            Attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 1408):
            Width of the SwiGLU MLP (about 8/3 of `hidden_size`, which gives SwiGLU the parameters of a
            4x GELU MLP), rounded to a multiple of 64.
        embedding_dim (`int`, defaults to 256):
            Size of the pooled tag-set embedding.
        nested_dims (`list[int]`, defaults to `[32, 64, 128]`):
            Strictly increasing sizes below `embedding_dim` whose leading slices of the embedding are trained to
            be usable on their own (Matryoshka). The read-back head has one decoder per size in
            `nested_dims + [embedding_dim]`.
        rms_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the RMSNorm layers.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of weight matrices and embeddings; output projections
            of each block use `initializer_range / sqrt(2 * num_hidden_layers)` (GPT-2 style residual scaling).
        pad_token_id (`int`, defaults to 0):
            Id of `<pad>` (fixed by the tokenizer).
        cls_token_id (`int`, defaults to 1):
            Id of `<cls>`, the pooling token that starts every post.
        mask_token_id (`int`, defaults to 2):
            Id of `<mask>` used by masked-tag prediction.
        pooling (`str`, defaults to `"cls"`):
            How a post's final hidden states become its embedding before the projection: `"cls"` (the `<cls>`
            token's state) or `"attention"` (a mean of all its tokens' states, weighted by a softmax over a
            learned score per token, which starts at 0: a plain mean).
        pooler_input_skip (`bool`, defaults to `False`):
            Whether the embedding also gets a linear projection of the plain mean of the post's input embeddings
            (token + category, before any block), RMS-normalised like the final states: a bag-of-tags path around
            the encoder, added to the projected pooled states. It keeps what the tags themselves say (the
            read-back of a post) where the blocks smooth the token states into fewer directions than the
            embedding has (the shipped configs turn it on; see docs/readback.md).
        num_ratings (`int`, defaults to 4):
            Classes of the rating head (g, s, q, e).
        num_score_buckets (`int`, defaults to 5):
            Classes of the score-bucket head; training sets it from the tokenizer's score buckets.
        tie_output_embeddings (`bool`, defaults to `True`):
            Whether the tag-predicting heads (masked tags, read-back) score tags against the input token
            embedding matrix (`True`) or against an output matrix of their own (`False`). Every softmax and
            read-back step sends a gradient to every output row, so a tied row is updated densely even when
            its tag is absent; an untied input row is updated only by the posts that hold its tag, which
            lets a rare tag (a character with a few dozen posts) learn its associations in fewer epochs,
            for `vocab_size * hidden_size` more parameters.
        kwargs:
            Passed to [`PreTrainedConfig`] (for example `attn_implementation`).

    Example:

    ```python
    >>> config = BooruEmbedConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                           intermediate_size=192, embedding_dim=64, nested_dims=[16, 32])
    >>> model = BooruEmbedModel(config)
    ```
    """

    model_type = "booru_embed"

    def __init__(
        self,
        vocab_size: int = 32000,
        num_categories: int = 8,
        hidden_size: int = 512,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        intermediate_size: int = 1408,
        embedding_dim: int = 256,
        nested_dims: list[int] | tuple[int, ...] = (32, 64, 128),
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        cls_token_id: int = 1,
        mask_token_id: int = 2,
        num_ratings: int = 4,
        num_score_buckets: int = 5,
        tie_output_embeddings: bool = True,
        pooling: str = "cls",
        pooler_input_skip: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.num_categories = num_categories
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.embedding_dim = embedding_dim
        self.nested_dims = list(nested_dims)
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.cls_token_id = cls_token_id
        self.mask_token_id = mask_token_id
        self.num_ratings = num_ratings
        self.num_score_buckets = num_score_buckets
        self.tie_output_embeddings = tie_output_embeddings
        self.pooling = pooling
        self.pooler_input_skip = pooler_input_skip
        self._check_values(pad_token_id)
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        # The tag-predicting heads use the token embedding matrix directly (or their own output matrix,
        # see `tie_output_embeddings`), so there is nothing for transformers to tie.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def _check_values(self, pad_token_id: int) -> None:
        """Raise a one-line ValueError for any value the model cannot be built with."""
        positive = {
            "vocab_size": self.vocab_size,
            "num_categories": self.num_categories,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "embedding_dim": self.embedding_dim,
            "num_ratings": self.num_ratings,
            "num_score_buckets": self.num_score_buckets,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"BooruEmbedConfig: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BooruEmbedConfig: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        dims = self.nested_dims
        if any(isinstance(d, bool) or not isinstance(d, int) for d in dims) or dims != sorted(set(dims)):
            raise ValueError(f"BooruEmbedConfig: nested_dims must be strictly increasing integers, got {dims!r}")
        if dims and (dims[0] <= 0 or dims[-1] >= self.embedding_dim):
            raise ValueError(
                f"BooruEmbedConfig: nested_dims must lie between 1 and embedding_dim - 1 "
                f"({self.embedding_dim - 1}), got {dims!r}"
            )
        for name, value in (("rms_norm_eps", self.rms_norm_eps), ("initializer_range", self.initializer_range)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"BooruEmbedConfig: {name} must be a positive number, got {value!r}")
        ids = {"pad_token_id": pad_token_id, "cls_token_id": self.cls_token_id, "mask_token_id": self.mask_token_id}
        for name, value in ids.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"BooruEmbedConfig: {name} must be an id below vocab_size ({self.vocab_size}), got {value!r}"
                )
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"BooruEmbedConfig: pooling must be one of {', '.join(POOLING_MODES)}, got {self.pooling!r}")
        if not isinstance(self.pooler_input_skip, bool):
            raise ValueError(f"BooruEmbedConfig: pooler_input_skip must be true or false, got {self.pooler_input_skip!r}")
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"BooruEmbedConfig: special token ids must differ, got {ids}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


__all__ = ["BooruEmbedConfig"]
