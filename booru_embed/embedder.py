"""BooruEmbedder, the high-level API: embed tag sets, suggest missing tags, read tags back from embeddings.

It loads any MODEL_DIR or Hub repository through ``AutoTokenizer`` and ``AutoModelForPreTraining``
(``trust_remote_code=True``), so it uses exactly the code published with the weights. Also the
``booru-embed suggest`` and ``booru-embed embed`` commands.

How ``suggest`` works: training hides a random share of a post's tags behind ONE category-less
``<mask>`` token whose target is the hidden set (see ``training/collator.py``). Suggesting is that
input: the visible tags plus one ``<mask>``; the masked-tag head's softmax over the tags that are not
present ranks the missing ones. ``score_tags`` runs the same input once per present tag, with that tag
left out, and reads the left-out tag's probability: its fit to the rest of the set.

Backends: the model calls go through a small object with ``pooled``, ``mask_logits`` and ``readback`` on
numpy arrays. ``TorchModel`` (below) wraps the PyTorch model; ``onnx_backend.OnnxModel`` runs the graphs
of ``booru-embed export-onnx`` with ONNX Runtime, without importing torch. Everything after the model
call (softmax, ranking, categories, implications) is numpy, so both backends share it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cooccurrence import incidence_matrix
from .data.splits import open_split
from .errors import UsageError
from .modeling.categories_booru_embed import CATEGORY_NAMES, SPECIAL_CATEGORY_ID, TAG_CATEGORIES
from .modeling.normalization_booru_embed import ParsedTagSet, parse_tagset
from .onnx_backend import ONNX_FILE, OnnxModel
from .ranking import distinctive_scores, masked_log_softmax, with_counts
from .sequences import padded_inputs
from .sparse_vectors import (EXPANSION_SCALE, EXPANSION_TERMS, IDF_POWER, idf_weights, setting_column_weights,
                             sparse_rows, subject_lift_weights)

if TYPE_CHECKING:
    import torch

    from .modeling.normalization_booru_embed import NormalizedTags
    from .related_tags import RelatedTags

TagSet = str | Sequence[str] | Mapping[str, Any]
PROGRESS_MIN_POSTS = 2048  # below this, embedding is quick and a progress bar is noise
SUGGEST_BATCH = 256  # tag sets per forward pass of suggest_many (bench/bench_suggest_many.py: 6x one at a time)
SCORE_BATCH = 256  # leave-one-out sequences per forward pass of score_tags (one post rarely has more tags)
BACKENDS = ("torch", "onnx")


def _first_line(error: Exception) -> str:
    """The first non-empty line of an error message (its type name when empty)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _is_local_path(name: str) -> bool:
    """Whether ``name`` means a folder rather than a Hub repo id (``OWNER/NAME`` or ``NAME``)."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values, largest first (ties in index order)."""
    return np.argsort(-values, kind="stable")[:count]


class TorchModel:
    """The PyTorch backend: a ``BooruEmbedForPreTraining`` answering the embedder's calls on numpy arrays.

    It calls the model's public methods (``embed``, ``encode``, ``masked_tag_logits``, ``readback``); remote
    code saved before ``embed`` existed answers through its forward pass instead, which runs every head.
    """

    def __init__(self, model: Any) -> None:
        """Wrap a loaded ``BooruEmbedForPreTraining`` (put in eval mode)."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.embedding_dim = int(model.config.embedding_dim)
        self.nested_dims = [int(d) for d in model.config.nested_dims]
        self._has_methods = hasattr(model, "embed")

    def _tensors(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        return {name: torch.as_tensor(value, device=self.device) for name, value in batch.items()}

    def pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, embedding_dim) float32 pooled embeddings, not normalised, of a right-padded batch."""
        import torch

        tensors = self._tensors(batch)
        with torch.inference_mode():
            pooled = self.model.embed(**tensors) if self._has_methods else self.model(**tensors).embeddings
            return pooled.float().cpu().numpy()

    def mask_logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, vocab) float32 masked-tag logits at the last real token of every row."""
        import torch

        tensors = self._tensors(batch)
        rows = torch.arange(tensors["input_ids"].shape[0], device=self.device)
        last = tensors["attention_mask"].sum(dim=1) - 1  # (n,) right padding: the last real token
        with torch.inference_mode():
            if self._has_methods:
                hidden = self.model.encode(**tensors).last_hidden_state[rows, last]  # (n, hidden)
                return self.model.masked_tag_logits(hidden).float().cpu().numpy()
            positions = torch.zeros_like(tensors["input_ids"], dtype=torch.bool)
            positions[rows, last] = True
            return self.model(**tensors, mlm_positions=positions).mlm_logits.float().cpu().numpy()

    def readback(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, vocab) float32 tag logits read back from (n, d) embeddings, d one of the trained sizes."""
        import torch

        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            return self.model.readback(torch.as_tensor(embeddings).to(self.device, dtype)).float().cpu().numpy()


class BooruEmbedder:
    """Embeds Danbooru tag sets and suggests missing tags with a trained booru-embed model.

    A tag set is a Danbooru tag string (``"1girl solo long_hair"``), a prompt-style comma list
    (``"1girl, long hair"``), a list of tags, or a dict by category with optional ``rating`` and ``score``.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        """Wrap a loaded ``BooruEmbedForPreTraining`` or an ``OnnxModel``, and its tokenizer.

        Use ``from_pretrained`` normally. ``backend`` is ``"torch"`` or ``"onnx"`` accordingly.
        """
        self.backend = "onnx" if isinstance(model, OnnxModel) else "torch"
        self._model = model if isinstance(model, OnnxModel) else TorchModel(model)
        self.model = model  # the PyTorch model (in eval mode) or the OnnxModel
        self.tokenizer = tokenizer
        self.device = self._model.device
        self.embedding_dim = self._model.embedding_dim
        self.dims = [*self._model.nested_dims, self.embedding_dim]
        self._categories = np.asarray(tokenizer.token_categories, dtype=np.int64)
        self._is_tag = np.zeros(len(self._categories), dtype=bool)
        self._is_tag[tokenizer.tag_token_ids] = True
        self._prior: np.ndarray | None = None  # log p(tag | no tags), on first use
        self._idf: np.ndarray | None = None  # the training split's idf of every token, on first use
        self._source: tuple[str, bool, dict[str, Any]] | None = None  # set by from_pretrained
        self._aligners: dict[str, Any] = {}  # name -> alignment.runtime.LoadedAligner, on first use

    @classmethod
    def from_pretrained(cls, model_dir_or_repo_id: str | Path, device: str | None = None,
                        dtype: str | torch.dtype | None = None, backend: str = "torch",
                        onnx_file: str = ONNX_FILE, **kwargs: Any) -> BooruEmbedder:
        """Load a MODEL_DIR or Hub repo id (``OWNER/NAME``); ``device`` defaults to CUDA when available.

        ``dtype`` is a torch dtype or its name (``"bfloat16"``); ``kwargs`` go to both ``from_pretrained``
        calls (``revision``, ``token``, ...). A missing folder or unreachable repository raises
        ``UsageError`` with one line.

        ``backend="onnx"`` runs ``onnx/<onnx_file>`` (written by ``booru-embed export-onnx``; pass
        ``onnx_file="model_quantized.onnx"`` for the int8 one) with ONNX Runtime on CPU and never imports
        torch; ``device`` and ``dtype`` do not apply to it (the file fixes the precision).
        """
        if backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        name = str(model_dir_or_repo_id)
        local = _is_local_path(name)
        if local:
            folder = Path(name).expanduser()
            if not (folder / "config.json").is_file():
                raise UsageError(f"not a model folder (no config.json): {folder}")
            name = str(folder)
        if backend == "onnx":
            if dtype is not None or device not in (None, "cpu"):
                raise UsageError("device and dtype are for backend='torch'; the ONNX file fixes the precision "
                                 "(onnx_file='model_quantized.onnx' for int8)")
            tokenizer = cls._load_tokenizer(name, **kwargs)
            onnx_model = OnnxModel.from_pretrained(name, local, onnx_file, **kwargs)
            return cls(onnx_model, tokenizer)._with_source(name, local, kwargs)
        import torch
        from transformers import AutoModelForPreTraining

        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise UsageError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
            dtype = getattr(torch, dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = cls._load_tokenizer(name, **kwargs)
        try:
            model = AutoModelForPreTraining.from_pretrained(name, trust_remote_code=True,
                                                            dtype=dtype or torch.float32, **kwargs)
        except OSError as error:
            raise UsageError(f"cannot load model {name}: {_first_line(error)}") from None
        return cls(model.to(device), tokenizer)._with_source(name, local, kwargs)

    def _with_source(self, name: str, local: bool, kwargs: dict[str, Any]) -> BooruEmbedder:
        """Remember where the model came from (aligners are read from the same folder or repository)."""
        self._source = (name, local, kwargs)
        return self

    @staticmethod
    def _load_tokenizer(name: str, **kwargs: Any) -> Any:
        """The model's own tokenizer (remote code); ``UsageError`` with one line when it cannot load."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=True, **kwargs)
        except OSError as error:
            raise UsageError(f"cannot load model {name}: {_first_line(error)}") from None

    # ------------------------------------------------------------------------------------------
    # Inputs
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _as_list(tagsets: TagSet | Iterable[TagSet]) -> list[TagSet]:
        """One tag set (string or dict) becomes a list of one; a list of tag strings is a list of tag sets."""
        if isinstance(tagsets, (str, Mapping)):
            return [tagsets]
        return list(tagsets)

    def _ids(self, tagsets: list[TagSet]) -> list[list[int]]:
        """Token ids of each tag set, ``<cls>`` first; ValueError for a bad form."""
        return [list(ids) for ids in self.tokenizer(tagsets)["input_ids"]] if tagsets else []

    def unknown_tags(self, tagset: TagSet) -> list[str]:
        """The tags of ``tagset`` that are not in the vocabulary (they are read as unknown-tag tokens).

        Parsed by the tokenizer's own rules (``normalization_booru_embed.parse_tagset``: every input form,
        prompt syntax, metatags set aside, spelling normalised) and looked up with ``tokenizer.tag_to_id``;
        input order, each once.
        """
        return [tag for tag in self._parse(tagset).tags if self.tokenizer.tag_to_id(tag) is None]

    def ignored_items(self, tagset: TagSet) -> list[tuple[str, str]]:
        """``(text, reason)`` of each piece of ``tagset`` read as no tag at all (LoRA, embeddings, a stray bracket)."""
        return list(self._parse(tagset).ignored)

    def _parse(self, tagset: TagSet) -> ParsedTagSet:
        return parse_tagset(tagset, self.tokenizer.tag_lookup)

    def _batch(self, sequences: list[list[int]], extra: list[int] | None = None) -> dict[str, np.ndarray]:
        """Right-padded int64 model inputs for token-id lists (``extra`` ids appended to every one, category 0)."""
        extra = extra or []
        rows = []
        for ids in sequences:
            row = np.asarray([*ids, *extra], dtype=np.int64)
            categories = self._categories[row]
            categories[len(ids):] = SPECIAL_CATEGORY_ID  # the <mask> of suggest has category 0, as in training
            rows.append((row, categories))
        return padded_inputs(rows, self.tokenizer.pad_token_id)

    def _pooled(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, embedding_dim) float32 pooled embeddings of a ``_batch``, not normalised (either backend)."""
        return self._model.pooled(batch)

    def _raw_pooled(self, sequences: list[list[int]], batch_size: int = 256) -> np.ndarray:
        """(n, embedding_dim) float32 raw pooled embeddings of token-id lists (``<cls>`` first), batched by length."""
        out = np.zeros((len(sequences), self.embedding_dim), dtype=np.float32)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._pooled(self._batch([sequences[i] for i in rows]))
        return out

    def _encode_tag_ids(self, tag_ids: list[list[int]]) -> np.ndarray:
        """Raw pooled embeddings of tag token-id lists read as tag-only posts (what a ``tags`` aligner predicts)."""
        return self._raw_pooled([[self.tokenizer.cls_token_id, *ids] for ids in tag_ids])

    def _mask_logits_batch(self, sequences: list[list[int]]) -> np.ndarray:
        """(n, vocab) float32 masked-tag logits of token-id lists (``<cls>`` first), one ``<mask>`` appended to each."""
        return self._model.mask_logits(self._batch(sequences, extra=[self.tokenizer.mask_token_id]))

    def _checked_ids(self, tagsets: TagSet | Iterable[TagSet], batch_size: int) -> list[list[int]]:
        """Token ids of each tag set for ``embed`` / ``embed_sparse``; ValueError for an empty one or a bad batch size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sequences = self._ids(self._as_list(tagsets))
        for index, ids in enumerate(sequences):
            if len(ids) == 1:
                raise ValueError(f"tag set {index} is empty")
        return sequences

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.embedding_dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= self.embedding_dim:
            raise ValueError(f"dim must be an integer from 1 to {self.embedding_dim} (trained sizes: "
                             f"{', '.join(map(str, self.dims))}), got {dim!r}")
        return int(dim)

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    def embed(self, tagsets: TagSet | Iterable[TagSet], dim: int | None = None, batch_size: int = 256,
              progress: bool | None = None) -> np.ndarray:
        """Embeddings (n, dim) float32 with L2-normalised rows, in the order of ``tagsets``.

        ``dim`` keeps the leading ``dim`` values before normalising; the trained (Matryoshka) sizes are
        ``self.dims``, other sizes up to ``embedding_dim`` work but were not trained on their own.
        Posts are batched by length; a progress bar shows for large inputs (``progress`` forces it).
        Raises ValueError for an empty tag set or a bad ``dim``.
        """
        from tqdm.auto import tqdm

        width = self._check_dim(dim)
        sequences = self._checked_ids(tagsets, batch_size)
        out = np.zeros((len(sequences), width), dtype=np.float32)
        order = np.argsort([len(s) for s in sequences], kind="stable")
        show = len(sequences) >= PROGRESS_MIN_POSTS if progress is None else progress
        with tqdm(total=len(sequences), desc="embed", unit="post", disable=not show) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                vectors = self._pooled(self._batch([sequences[i] for i in rows]))[:, :width]
                out[rows] = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                bar.update(len(rows))
        return out

    def embed_sparse(self, tagsets: TagSet | Iterable[TagSet], terms: int = EXPANSION_TERMS,
                     scale: float = EXPANSION_SCALE, power: float = IDF_POWER, subject_weight: float = 1.0,
                     lift_weights: np.ndarray | None = None, batch_size: int = 256,
                     progress: bool | None = None) -> Any:
        """Sparse tag vectors (n, vocab), a float32 ``scipy.sparse.csr_matrix`` with non-negative values.

        Each row weighs the post's vocabulary tags by ``idf^power`` (their training idf; power 1 is the
        TF-IDF weight, 0 the binary set) and adds the ``terms`` tags the masked-tag head expects most, at
        ``idf^power * min(1, scale * p(tag | tags))``,
        never a present tag (``sparse_vectors`` derives the weights); the character and artist columns are
        then multiplied by ``subject_weight`` (``sparse_vectors.subject_column_weights``; the index stores the
        weight its validation posts chose), and, with ``lift_weights`` (vocab,), every column by its weight:
        the subject lift counted on a collection's posts (``sparse_vectors.subject_lift_weights``; an index
        stores the lift of its training posts, ``PostIndex.sparse_queries`` applies it). One forward pass per
        tag set: its tags plus one ``<mask>``, the input of ``suggest``. Tags outside the vocabulary have no column
        (they still shape the expansion through their unknown-tag token); a tag set without a single
        vocabulary tag gets an all-zero row. Raises ValueError for an empty tag set.
        """
        from scipy import sparse
        from tqdm.auto import tqdm

        sequences = self._checked_ids(tagsets, batch_size)
        if lift_weights is not None and np.shape(lift_weights) != (len(self._is_tag),):
            raise ValueError(f"lift_weights must have one weight per token ({len(self._is_tag)}), "
                             f"got shape {np.shape(lift_weights)}")
        column_weights = setting_column_weights(self._categories, subject_weight, lift_weights,
                                                1.0 if lift_weights is not None else 0.0)
        parts, rows = [], []
        order = np.argsort([len(s) for s in sequences], kind="stable")
        show = len(sequences) >= PROGRESS_MIN_POSTS if progress is None else progress
        with tqdm(total=len(sequences), desc="embed sparse", unit="post", disable=not show) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = [sequences[i] for i in chunk]
                logits = self._mask_logits_batch(batch) if terms else None
                parts.append(sparse_rows([np.asarray(ids) for ids in batch], logits, self._is_tag,
                                         self.idf, terms=terms, scale=scale, power=power,
                                         column_weights=column_weights))
                rows.append(chunk)
                bar.update(len(chunk))
        if not parts:
            return sparse.csr_matrix((0, len(self._is_tag)), dtype=np.float32)
        inverse = np.argsort(np.concatenate(rows), kind="stable")
        return sparse.vstack(parts).tocsr()[inverse]

    def subject_lift(self, tagsets: TagSet | Iterable[TagSet]) -> np.ndarray:
        """(vocab,) float32 subject lift weights counted on ``tagsets`` (``sparse_vectors.subject_lift_weights``:
        how much more often posts sharing a tag share a character or artist), for ``embed_sparse(lift_weights=...)``.

        Count them on the posts that will be searched (as ``booru-embed index`` counts its training posts);
        tags outside the vocabulary are not counted.
        """
        sequences = [np.asarray(ids, dtype=np.int64) for ids in self._ids(self._as_list(tagsets))]
        ids = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
        incidence = incidence_matrix(ids, np.array([len(s) for s in sequences], dtype=np.int64), len(self._is_tag),
                                     counted=self._is_tag[ids])
        return subject_lift_weights(incidence, self._categories)

    @property
    def idf(self) -> np.ndarray:
        """(vocab,) float32 idf of every token from the tokenizer's training counts (``sparse_vectors.idf_weights``).

        The number of training posts is not stored with the tokenizer: it is taken as the larger of
        the rating and score-bucket token counts (every post has one of each), at least the largest count.
        """
        if self._idf is None:
            counts = np.asarray(self.tokenizer.token_counts, dtype=np.int64)
            posts = max(int(counts[list(self.tokenizer.rating_token_ids.values())].sum()),
                        int(counts[list(self.tokenizer.score_token_ids)].sum()), int(counts.max(initial=0)), 1)
            self._idf = idf_weights(counts, posts)
        return self._idf

    def suggest(self, tagset: TagSet, top_k: int = 10, categories: Iterable[str] | None = None,
                expand_implications: bool = True, distinctive: bool = False,
                related: RelatedTags | None = None) -> list[tuple[str, float]]:
        """Missing tags for ``tagset``, ranked: ``[(tag, score), ...]`` with ``score`` a probability.

        Never returns a tag already present, nor special, unknown, rating or score tokens. ``categories``
        (e.g. ``["general"]``) restricts the answers. When the model stores an implication table, tags
        implied by present tags come first (score 1.0), and each suggested tag is followed by the
        missing tags it implies (with its score), so the list can be longer than ``top_k``.
        ``distinctive`` ranks like Danbooru's related tags instead of by probability: by
        p(tag | tagset) / sqrt(p(tag | no tags)), the model's counterpart of the co-occurrence cosine,
        so tags typical of this tag set come before tags common everywhere (``highres``, ``1girl``);
        the scores stay probabilities. ``related`` (a ``related_tags.RelatedTags`` counted from your posts,
        with ``distinctive``) ranks by the mean of that score and the log of the counts' related-tags
        score (``ranking.with_counts``): the counts add partners the model has not learned.
        """
        if isinstance(tagset, (list, tuple)) and not all(isinstance(tag, str) for tag in tagset):
            raise ValueError("suggest takes one tag set; a list must hold tag strings")
        return self.suggest_many([tagset], top_k, categories, expand_implications, distinctive, related=related)[0]

    def suggest_many(self, tagsets: Iterable[TagSet], top_k: int = 10, categories: Iterable[str] | None = None,
                     expand_implications: bool = True, distinctive: bool = False,
                     batch_size: int = SUGGEST_BATCH, related: RelatedTags | None = None) -> list[list[tuple[str, float]]]:
        """``suggest`` for each of ``tagsets`` (same arguments, same answers), the model run on
        ``batch_size`` tag sets per forward pass instead of one: what a tool completing many posts calls."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if related is not None and not distinctive:
            raise ValueError("related= ranks on the related-tags scale: pass distinctive=True with it")
        allowed = self._category_filter(categories)
        sequences = self._ids(list(tagsets))
        if any(len(ids) == 1 for ids in sequences):
            raise ValueError("the tag set is empty: give at least one tag")
        answers = []
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start: start + batch_size]
            for ids, logits in zip(chunk, self._mask_logits_batch(chunk)):
                counted = None if related is None else related.scores(ids)
                answers.append(self._ranked_suggestions(ids, logits, top_k, allowed, expand_implications,
                                                        distinctive, counted))
        return answers

    def _ranked_suggestions(self, ids: list[int], logits: np.ndarray, top_k: int, allowed: np.ndarray,
                            expand_implications: bool, distinctive: bool,
                            related: np.ndarray | None = None) -> list[tuple[str, float]]:
        """suggest's answer for one tag set's token ids, from its masked-tag logits (and its related-tags
        scores, ``related``, to average in)."""
        candidates = self._is_tag.copy()
        candidates[ids] = False
        log_probabilities = masked_log_softmax(logits.astype(np.float64), candidates)
        usable = candidates & allowed
        ranking = log_probabilities.copy()
        if distinctive:
            ranking[usable] = distinctive_scores(ranking[usable], self._log_prior()[usable])
        if related is not None:
            ranking[usable] = with_counts(ranking[usable], related[usable])
        ranking[~usable] = -np.inf
        chosen = _top(ranking, int(min(top_k, usable.sum())))
        ranked = [(self.tokenizer.convert_ids_to_tokens(int(i)), float(np.exp(log_probabilities[i]))) for i in chosen]
        if not expand_implications or not self.tokenizer.implications:
            return ranked
        present = {self.tokenizer.convert_ids_to_tokens(i) for i in ids}
        return self._with_implications(ranked, present, allowed)

    def _log_prior(self) -> np.ndarray:
        """(vocab,) log p(tag | no tags): the masked-tag head on ``<cls> <mask>`` (computed once)."""
        if self._prior is None:
            logits = self._mask_logits([self.tokenizer.cls_token_id])
            self._prior = masked_log_softmax(logits.astype(np.float64), self._is_tag)
        return self._prior

    def _mask_logits(self, ids: list[int]) -> np.ndarray:
        """(vocab,) float32 masked-tag logits of ``ids`` (``<cls>`` first) with one ``<mask>`` appended."""
        return self._mask_logits_batch([ids])[0]

    def score_tags(self, tagset: TagSet, distinctive: bool = False,
                   batch_size: int = SCORE_BATCH) -> dict[str, float | None]:
        """Fit of each present tag: how strongly the rest of ``tagset`` predicts it (low = implausible).

        Leave-one-out through the masked-tag head: for each of the n present vocabulary tags, the other
        tags (with the rating and score, if given) plus one ``<mask>``, exactly suggest's input; all n
        sequences go through the model in batches of ``batch_size``. The score is the probability
        p(tag | rest) of the left-out tag under the head's softmax over the tags absent from that input,
        so it lies in [0, 1]. ``distinctive`` divides by sqrt(p(tag | no tags)), as suggest's
        ``distinctive`` ranks, so a rare tag is not suspicious for being rare; those scores are >= 0 but
        not probabilities. Keys are vocabulary names (aliases resolved) in the tokenizer's order, then
        tags outside the vocabulary with the score None. Raises ValueError when there is no tag.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(tagset, (list, tuple)) and not all(isinstance(tag, str) for tag in tagset):
            raise ValueError("score_tags takes one tag set; a list must hold tag strings")
        ids = self._ids([tagset])[0]
        unknown = self.unknown_tags(tagset)
        is_tag = self._is_tag
        positions = [i for i, token in enumerate(ids) if is_tag[token]]
        if not positions and not unknown:
            raise ValueError("the tag set holds no tags: give at least one tag")
        targets = np.asarray([ids[i] for i in positions], dtype=np.int64)
        log_fit = np.zeros(len(positions))
        for start in range(0, len(positions), batch_size):
            sequences = [ids[:i] + ids[i + 1 :] for i in positions[start : start + batch_size]]
            candidates = np.repeat(is_tag[None], len(sequences), axis=0)  # (chunk, vocab)
            for row, sequence in enumerate(sequences):
                candidates[row, sequence] = False
            log_probabilities = masked_log_softmax(self._mask_logits_batch(sequences).astype(np.float64), candidates)
            log_fit[start : start + len(sequences)] = log_probabilities[np.arange(len(sequences)), targets[start : start + len(sequences)]]
        if distinctive:
            log_fit = distinctive_scores(log_fit, self._log_prior()[targets])
        names = self.tokenizer.convert_ids_to_tokens(targets.tolist())
        out: dict[str, float | None] = {name: float(value) for name, value in zip(names, np.exp(log_fit))}
        out.update((tag, None) for tag in unknown)
        return out

    def _category_filter(self, categories: Iterable[str] | None) -> np.ndarray:
        """(vocab,) bool of the tokens whose category is in ``categories`` (all when None)."""
        if categories is None:
            return np.ones_like(self._is_tag)
        names = [categories] if isinstance(categories, str) else list(categories)
        wrong = [name for name in names if name not in TAG_CATEGORIES]
        if wrong or not names:
            raise ValueError(f"categories must be among {', '.join(TAG_CATEGORIES)}, got {names!r}")
        return np.isin(self._categories, [CATEGORY_NAMES.index(name) for name in names])

    def _implied(self, tags: Iterable[str]) -> list[str]:
        """Every tag implied by ``tags``, transitively, in a stable order."""
        table, found, stack = self.tokenizer.implications, {}, list(tags)
        while stack:
            for consequent in table.get(stack.pop(0), []):
                if consequent not in found:
                    found[consequent] = None
                    stack.append(consequent)
        return list(found)

    def _with_implications(self, ranked: list[tuple[str, float]], present: set[str],
                           allowed: np.ndarray) -> list[tuple[str, float]]:
        """Put tags implied by present tags first, and each suggestion's implied tags right after it."""
        def usable(tag: str) -> bool:
            index = self.tokenizer.tag_to_id(tag)
            return tag not in present and (index is None or bool(allowed[index]))

        out: dict[str, float] = {tag: 1.0 for tag in self._implied(present) if usable(tag)}
        for tag, score in ranked:
            for name in [tag, *self._implied([tag])]:
                if usable(name) and name not in out:
                    out[name] = score
        return list(out.items())

    def decode(self, embeddings: np.ndarray | torch.Tensor, top_k: int | None = None,
               threshold: float = 0.5) -> list[list[str]]:
        """Tags read back from embeddings (n, d) with d one of ``self.dims`` (raw or L2-normalised).

        With ``top_k`` the ``top_k`` most likely tags of each row, else every tag whose probability
        exceeds ``threshold``; most likely first. Embeddings from ``embed`` or from elsewhere work alike.
        """
        array = np.asarray(embeddings, dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] not in self.dims:
            raise ValueError(f"embeddings must have shape (n, d) with d in {self.dims}, got {tuple(array.shape)}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        logits = self._model.readback(np.ascontiguousarray(array)).astype(np.float64)
        probabilities = np.where(self._is_tag, 1.0 / (1.0 + np.exp(-logits)), 0.0)
        rows = []
        for row in probabilities:
            if top_k is not None:
                chosen = _top(row, min(top_k, int(self._is_tag.sum())))
            else:
                chosen = np.flatnonzero(row > threshold)
                chosen = chosen[_top(row[chosen], len(chosen))]
            rows.append(self.tokenizer.convert_ids_to_tokens([int(i) for i in chosen]))
        return rows

    def embed_external(self, vectors: np.ndarray, aligner: str, dim: int | None = None) -> np.ndarray:
        """External (image) embeddings (n, input_dim) mapped into this model's space: (n, dim) float32, rows
        L2-normalised like ``embed``, ready for ``decode`` and ``PostIndex.search_embeddings``.

        ``aligner`` names a folder of ``MODEL_DIR/aligners/`` (``booru-embed align``); the ONNX backend runs
        ``onnx/aligners/NAME.onnx``. A ``tags`` aligner (the default kind) reads each row's tags and this
        model embeds them as a tag-only post; a ``mlp`` or ``linear`` one maps the row to the embedding.
        A missing aligner is a ``UsageError``; a wrong width or NaN/inf rows a ValueError.
        """
        from .alignment.runtime import LoadedAligner
        from .alignment.store import check_name, unit_rows

        width = self._check_dim(dim)
        if check_name(aligner) not in self._aligners:
            name, local, kwargs = self._source or (str(getattr(self.model.config, "_name_or_path", "")), True, {})
            self._aligners[aligner] = LoadedAligner.load(name, local, aligner, self.backend, self._encode_tag_ids,
                                                         self.device, **kwargs)
        return unit_rows(self._aligners[aligner](vectors), width)

    def category_of(self, tag: str) -> str | None:
        """Category name of a vocabulary tag, None when the tag is unknown."""
        index = self.tokenizer.tag_to_id(tag)
        return None if index is None else CATEGORY_NAMES[int(self._categories[index])]

    def normalize(self, tagset: TagSet, implications: str = "keep") -> NormalizedTags:
        """The tag set normalised by the model's tokenizer (``tokenizer.normalize``, no model call).

        Aliases resolved, duplicates removed, unknown tags kept and listed, implications ``keep``,
        ``minimal`` or ``complete``, canonical order (``modeling/normalization_booru_embed.py``).
        """
        return self.tokenizer.normalize(tagset, implications=implications)


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def load_for_command(model_dir: str, device: str | None) -> BooruEmbedder:
    """A model loaded for a command-line tool (embed, suggest, audit, index, app), without transformers'
    weight-loading progress bar (noise for a small model)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    return BooruEmbedder.from_pretrained(model_dir, device=device)


def _categories_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    wrong = [name for name in names if name not in TAG_CATEGORIES]
    if wrong or not names:
        raise UsageError(f"--categories takes a comma list of {', '.join(TAG_CATEGORIES)}, got {value!r}")
    return names


def print_unknown_note(unknown: list[str]) -> None:
    """Name the input tags that are not in the vocabulary on stderr (nothing when there are none)."""
    if unknown:
        print(f"note: not in the vocabulary (read as unknown tags): {', '.join(unknown)}", file=sys.stderr)


def add_suggest_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed suggest``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("tags", metavar="TAGS", help='tag set: "1girl solo long_hair" or "1girl, long hair"')
    parser.add_argument("--top-k", type=int, default=10, help="number of suggestions (default: 10)")
    parser.add_argument("--categories", help="only these categories, comma separated (e.g. general,character)")
    parser.add_argument("--distinctive", action="store_true",
                        help="rank like related tags: typical of this tag set before common everywhere")
    parser.add_argument("--related", metavar="DATA_DIR",
                        help="also count related tags on DATA_DIR's train split and rank by the mean of both "
                             "(implies --distinctive; docs/usage.md)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_suggest(args: argparse.Namespace) -> int:
    """Run ``booru-embed suggest``."""
    categories = _categories_arg(args.categories)
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if not args.tags.replace(",", " ").split():
        raise UsageError("the tag set is empty: give at least one tag")
    embedder = load_for_command(args.model_dir, args.device)
    unknown = embedder.unknown_tags(args.tags)
    related = None
    if args.related:
        from .related_tags import RelatedTags

        related = RelatedTags.from_split(args.related, embedder.tokenizer, flag="--related")
    try:
        suggestions = embedder.suggest(args.tags, top_k=args.top_k, categories=categories,
                                        distinctive=args.distinctive or related is not None, related=related)
    except ValueError as error:
        raise UsageError(str(error)) from None
    rows = [{"tag": tag, "score": round(score, 6), "category": embedder.category_of(tag)}
            for tag, score in suggestions]
    if args.json:
        print(json.dumps({"tags": args.tags, "unknown_tags": unknown, "suggestions": rows}, ensure_ascii=False))
        return 0
    print_unknown_note(unknown)
    for row in rows:
        print(f"{row['score']:.4f}  {row['tag']}  ({row['category']})")
    return 0


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed embed``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("--input", required=True, type=Path,
                        help="text file with one tag set per line, or a DATA_DIR (embeds its --split)")
    parser.add_argument("--output", required=True, type=Path, help="output .npy file (n, dim) float32")
    parser.add_argument("--dim", type=int, help="keep the first DIM dimensions (default: all)")
    parser.add_argument("--split", default="test", help="split of a DATA_DIR input (default: test)")
    parser.add_argument("--batch-size", type=int, default=256, help="posts per forward pass (default: 256)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _read_tagsets(path: Path, split: str) -> tuple[list[TagSet], np.ndarray | None]:
    """Tag sets from a text file (one per line) or a DATA_DIR split; post ids for a DATA_DIR."""
    if path.is_dir():
        table = open_split(path, split, flag="--input")
        columns = [c for c in (*TAG_CATEGORIES, "rating", "score") if c in table.column_names]
        rows = table.select_columns(columns).to_list()
        return rows, np.asarray(table["id"], dtype=np.int64)
    if not path.is_file():
        raise UsageError(f"--input not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    empty = [number for number, line in enumerate(lines, start=1) if not line.replace(",", " ").strip()]
    if empty:
        raise UsageError(f"{path}:{empty[0]}: empty tag set ({len(empty)} empty line(s); every line must hold one tag set)")
    if not lines:
        raise UsageError(f"--input {path} holds no tag sets")
    return lines, None


def run_embed(args: argparse.Namespace) -> int:
    """Run ``booru-embed embed``."""
    if args.output.suffix != ".npy":
        raise UsageError(f"--output must end in .npy, got {args.output}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    tagsets, ids = _read_tagsets(args.input, args.split)
    embedder = load_for_command(args.model_dir, args.device)
    try:
        embedder._check_dim(args.dim)
    except ValueError as error:
        raise UsageError(f"--dim: {error}") from None
    try:
        vectors = embedder.embed(tagsets, dim=args.dim, batch_size=args.batch_size)
    except ValueError as error:
        raise UsageError(str(error)) from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, vectors)
    print(f"wrote {args.output}: {vectors.shape[0]} x {vectors.shape[1]} float32")
    if ids is not None:
        ids_path = args.output.with_name(args.output.stem + ".ids.npy")
        np.save(ids_path, ids)
        print(f"wrote {ids_path}: post ids of the rows")
    return 0
