"""The tag-set transformer: config checks, layouts (padded vs packed), backends, invariances, loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from booru_embed.modeling import modeling_booru_embed as modeling
from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
from booru_embed.modeling.modeling_booru_embed import (
    BooruEmbedForMaskedLM,
    BooruEmbedForPreTraining,
    BooruEmbedModel,
)

VOCAB = 97
LENGTHS = [5, 1, 9, 3, 12, 7]  # a one-token post (just <cls>) included on purpose


def tiny_config(**overrides: object) -> BooruEmbedConfig:
    """ModernBERT-tester sized: hidden 64, 2 layers, small vocabulary."""
    values = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        embedding_dim=32, nested_dims=[8, 16], num_score_buckets=3,
    )
    values.update(overrides)
    return BooruEmbedConfig(**values)


def make_posts(lengths: list[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random posts: <cls> (id 1, category 0) first, then distinct tag ids with categories 1..7."""
    generator = torch.Generator().manual_seed(seed)
    posts = []
    for length in lengths:
        tags = torch.randperm(VOCAB - 3, generator=generator)[: length - 1] + 3
        categories = torch.randint(1, 8, (length - 1,), generator=generator)
        posts.append((torch.cat([torch.tensor([1]), tags]), torch.cat([torch.tensor([0]), categories])))
    return posts


def pad(posts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-padded batch."""
    width = max(len(ids) for ids, _ in posts)
    names = ("input_ids", "category_ids", "attention_mask")
    batch = {name: torch.zeros(len(posts), width, dtype=torch.long) for name in names}
    for row, (ids, categories) in enumerate(posts):
        batch["input_ids"][row, : len(ids)] = ids
        batch["category_ids"][row, : len(ids)] = categories
        batch["attention_mask"][row, : len(ids)] = 1
    return batch


def pack(posts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor | int]:
    """One packed row with cu_seqlens."""
    lengths = torch.tensor([len(ids) for ids, _ in posts])
    return {
        "input_ids": torch.cat([ids for ids, _ in posts])[None],
        "category_ids": torch.cat([categories for _, categories in posts])[None],
        "cu_seqlens": F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32),
        "max_seqlen": int(lengths.max()),
    }


def build(model_class: type = BooruEmbedForPreTraining, attn: str = "sdpa", seed: int = 0, **overrides: object):
    """A freshly initialised model in eval mode with the given attention backend."""
    torch.manual_seed(seed)
    model = model_class(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn)
    return model


def real_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(posts, tokens, hidden) padded -> (total_tokens, hidden) packed order."""
    return hidden[mask.bool()]


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30}, "divisible by num_attention_heads"),
        ({"nested_dims": [16, 8]}, "strictly increasing"),
        ({"nested_dims": [8, 32]}, "between 1 and embedding_dim"),
        ({"vocab_size": 2}, "below vocab_size"),
        ({"num_hidden_layers": 0}, "positive integer"),
        ({"rms_norm_eps": -1.0}, "positive number"),
        ({"mask_token_id": 1}, "must differ"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_round_trip_and_auto_map(tmp_path: Path) -> None:
    config = tiny_config()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "booru_embed"
    assert set(saved["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForPreTraining"}
    loaded = BooruEmbedConfig.from_pretrained(tmp_path)
    assert loaded.nested_dims == [8, 16] and loaded.embedding_dim == 32 and loaded.head_dim == 16


# ------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("attn", ["eager", "sdpa", "booru_varlen"])
def test_packed_equals_padded(attn: str) -> None:
    model = build(attn=attn)
    posts = make_posts(LENGTHS)
    padded, packed = pad(posts), pack(posts)
    mask = padded["attention_mask"]
    with torch.no_grad():
        a = model(**padded, mlm_positions=mask.bool())
        b = model(**packed, mlm_positions=torch.ones_like(packed["input_ids"], dtype=torch.bool))
    assert b.embeddings.shape == (len(LENGTHS), 32)
    assert b.readback_logits.shape == (3, len(LENGTHS), VOCAB)
    assert a.mlm_logits.shape == b.mlm_logits.shape == (sum(LENGTHS), VOCAB)
    torch.testing.assert_close(b.embeddings, a.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.mlm_logits, a.mlm_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.last_hidden_state[0], real_tokens(a.last_hidden_state, mask), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.readback_logits, a.readback_logits, atol=1e-5, rtol=1e-4)
    # padding rows of the padded output are zero, so nothing downstream can pick up garbage
    assert a.last_hidden_state[~mask.bool()].abs().max() == 0


def test_length_groups_cut_sorted_posts_and_round_trip_the_tokens() -> None:
    lengths = [40, 3, 12, 1, 29, 11, 13, 2, 40, 9]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    layout = modeling.PostLayout.from_cu_seqlens(cu, None, sum(lengths))
    groups = modeling.LengthGroups.from_layout(layout)
    sorted_lengths = sorted(lengths, reverse=True)
    first = 0
    for (count, longest), mask in zip(groups.shapes, groups.masks):
        members = sorted_lengths[first : first + count]
        assert longest == members[0] and members[-1] >= modeling.GROUP_LENGTH_RATIO * longest
        assert mask.shape == (count, 1, 1, longest) and mask.sum().item() == sum(members)
        first += count
    assert first == len(lengths) and len(groups.shapes) > 2
    assert sum(c * n for c, n in groups.shapes) < len(lengths) * max(lengths)  # fewer slots than one batch of all
    states = torch.randn(sum(lengths), 5)
    batches = groups.regroup(states)
    assert sum(batch[mask[:, 0, 0]].shape[0] for batch, mask in zip(batches, groups.masks)) == sum(lengths)
    assert all((batch[~mask[:, 0, 0]] == 0).all() for batch, mask in zip(batches, groups.masks))
    torch.testing.assert_close(groups.ungroup(batches), states, rtol=0, atol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_length_groups_give_the_gradients_of_the_padded_batch(attn: str) -> None:
    posts = make_posts([30, 2, 14, 5, 21, 9])  # four length groups when packed
    grads = []
    for batch in (pad(posts), pack(posts)):
        model = build(BooruEmbedModel, attn=attn)
        model(**batch).pooler_output.square().sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "booru_varlen"])
def test_attention_pooling_is_a_per_post_softmax_mean_in_every_layout(attn: str) -> None:
    model = build(BooruEmbedModel, attn=attn, pooling="attention")
    posts = make_posts(LENGTHS)
    padded, packed = pad(posts), pack(posts)
    mask = padded["attention_mask"].bool()
    with torch.no_grad():
        start = model(**padded)
        states = start.last_hidden_state
        mean = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # zero scores: a plain mean
        torch.testing.assert_close(start.pooler_output, model.pooler(mean), atol=1e-5, rtol=1e-4)
        torch.nn.init.normal_(model.pooling_score.weight, std=1.0)  # learned scores: a weighted mean
        a, b = model(**padded), model(**packed)
        weights = torch.softmax(model.pooling_score(a.last_hidden_state).squeeze(-1).masked_fill(~mask, -torch.inf), 1)
    expected = model.pooler((weights[..., None] * a.last_hidden_state).sum(1))
    torch.testing.assert_close(a.pooler_output, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a.pooler_output, start.pooler_output, atol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "booru_varlen"])
def test_pooler_input_skip_adds_the_projected_normalised_mean_of_the_input_embeddings(attn: str) -> None:
    plain = build(BooruEmbedModel, attn=attn, pooling="attention")
    model = build(BooruEmbedModel, attn=attn, pooling="attention", pooler_input_skip=True)
    model.load_state_dict(plain.state_dict(), strict=False)  # the same weights, plus the skip's projection
    posts = make_posts(LENGTHS)
    padded, packed = pad(posts), pack(posts)
    mask = padded["attention_mask"].bool()
    with torch.no_grad():
        inputs = model.embeddings(padded["input_ids"], padded["category_ids"])
        mean = (inputs * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = plain(**padded).pooler_output + model.input_pooler(model.input_norm(mean))
        a, b = model(**padded), model(**packed)
        # the bag is RMS-normalised: its path does not grow with the input embeddings' scale (once well above eps)
        skips = [a.pooler_output - plain(**padded).pooler_output]
        for _ in range(2):
            model.embeddings.token_embeddings.weight.mul_(20.0)
            model.embeddings.category_embeddings.weight.mul_(20.0)
            plain.load_state_dict(model.state_dict(), strict=False)
            skips.append(model(**padded).pooler_output - plain(**padded).pooler_output)
    torch.testing.assert_close(skips[2], skips[1], atol=1e-4, rtol=1e-3)
    assert 0.8 < float(skips[1].norm() / skips[0].norm()) < 1.25  # unnormalised, it would be 20x
    torch.testing.assert_close(a.pooler_output, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=1e-4)
    assert build(BooruEmbedModel).input_pooler is None  # off by default: older checkpoints load unchanged
    with pytest.raises(ValueError, match="pooler_input_skip must be true or false"):
        tiny_config(pooler_input_skip="yes")


def test_unknown_pooling_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="pooling must be one of cls, attention"):
        tiny_config(pooling="max")


def test_position_ids_give_the_same_result_as_cu_seqlens() -> None:
    model = build(BooruEmbedModel)
    packed = pack(make_posts(LENGTHS))
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    with torch.no_grad():
        by_offsets = model(packed["input_ids"], packed["category_ids"], cu_seqlens=packed["cu_seqlens"])
        by_positions = model(packed["input_ids"], packed["category_ids"], position_ids=position_ids)
    torch.testing.assert_close(by_positions.pooler_output, by_offsets.pooler_output)


@pytest.mark.parametrize("attn", ["sdpa", "booru_varlen"])
def test_post_does_not_depend_on_other_posts(attn: str) -> None:
    model = build(BooruEmbedModel, attn=attn)
    posts = make_posts(LENGTHS)
    with torch.no_grad():
        alone = torch.cat([model(**pack([post])).pooler_output for post in posts])
        together_packed = model(**pack(posts)).pooler_output
        together_padded = model(**pad(posts)).pooler_output
        reordered = model(**pack(posts[::-1])).pooler_output.flip(0)
    for together in (together_packed, together_padded, reordered):
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "booru_varlen"])
def test_left_padding_pools_the_first_real_token(attn: str) -> None:
    model = build(BooruEmbedModel, attn=attn)
    posts = make_posts(LENGTHS)
    right = pad(posts)
    left = {name: torch.zeros_like(value) for name, value in right.items()}
    for row, (ids, categories) in enumerate(posts):
        left["input_ids"][row, -len(ids) :] = ids
        left["category_ids"][row, -len(ids) :] = categories
        left["attention_mask"][row, -len(ids) :] = 1
    with torch.no_grad():
        torch.testing.assert_close(model(**left).pooler_output, model(**right).pooler_output, atol=1e-5, rtol=1e-4)


def test_bad_inputs_raise_clear_errors() -> None:
    model = build(BooruEmbedModel)
    padded, packed = pad(make_posts([3, 4])), pack(make_posts([3, 4]))
    with pytest.raises(ValueError, match="shape of input_ids"):
        model(padded["input_ids"], padded["category_ids"][:, :2])
    with pytest.raises(ValueError, match="either attention_mask"):
        model(**packed, attention_mask=torch.ones_like(packed["input_ids"]))
    with pytest.raises(ValueError, match="one row"):
        model(padded["input_ids"], padded["category_ids"], cu_seqlens=packed["cu_seqlens"])


# ------------------------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("attn", ["sdpa", "booru_varlen"])
def test_backends_agree_with_eager_on_padded_posts(attn: str) -> None:
    padded = pad(make_posts(LENGTHS))
    with torch.no_grad():
        reference = build(attn="eager")(**padded, mlm_positions=padded["attention_mask"].bool())
        other = build(attn=attn)(**padded, mlm_positions=padded["attention_mask"].bool())
    torch.testing.assert_close(other.embeddings, reference.embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(other.mlm_logits, reference.mlm_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_flex_attention_agrees_with_eager() -> None:
    """Flex compiles its kernel (20-70 s on CPU). torch 2.13's CPU codegen fails on the dynamic-shape
    recompile that a second input shape triggers, so shapes stay static here."""
    posts = make_posts(LENGTHS)
    padded, packed = pad(posts), pack(posts)
    flex = build(BooruEmbedModel, attn="flex_attention")
    with torch.no_grad(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        reference = build(BooruEmbedModel, attn="eager")(**padded).pooler_output
        torch.testing.assert_close(flex(**padded).pooler_output, reference, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(flex(**packed).pooler_output, reference, atol=1e-5, rtol=1e-4)


def test_flash_attention_2_loads_without_flash_attn(tmp_path: Path) -> None:
    """No flash_attn / no CUDA: `flash_attention_2` is served by booru_varlen instead of failing to load."""
    if modeling._flash_attn_varlen_func is not None and torch.cuda.is_available():
        pytest.skip("flash_attn and CUDA are available: flash_attention_2 is the real thing here")
    build().save_pretrained(tmp_path)
    model = BooruEmbedForPreTraining.from_pretrained(tmp_path, attn_implementation="flash_attention_2").eval()
    assert model.config._attn_implementation == "booru_varlen"
    padded = pad(make_posts(LENGTHS))
    with torch.no_grad():
        expected = build()(**padded).embeddings
        torch.testing.assert_close(model(**padded).embeddings, expected, atol=1e-5, rtol=1e-4)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """Attention computed segment by segment with SDPA (float32), for the test doubles below."""
    outputs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        segment = [x[start:end].transpose(0, 1).float() for x in (q, k, v)]  # (heads, length, head_dim)
        outputs.append(F.scaled_dot_product_attention(*segment, scale=scale).transpose(0, 1))
    return torch.cat(outputs).to(q.dtype)


def _torch_varlen_first_form(calls: list):
    """A double with the signature of `varlen_attn`'s first public form (torch 2.10): no `scale`."""

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        calls.append((query.shape, cu_seq_q.clone(), max_q, is_causal))
        return _reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, None)

    return varlen_attn


def _torch_varlen_2_13(calls: list):
    """A double with the signature of torch 2.13's `varlen_attn`: keyword-only options, no `is_causal`."""

    def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        calls.append((query.shape, cu_seq_q.clone(), max_q, False))
        return _reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale)

    return varlen_attn


TORCH_VARLEN_FORMS = {"torch_varlen_2.10": _torch_varlen_first_form, "torch_varlen_2.13": _torch_varlen_2_13}


@pytest.mark.parametrize("kernel", ["flash_attn", *TORCH_VARLEN_FORMS])
def test_varlen_kernel_receives_cu_seqlens(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exercise the fused-kernel branch on CPU with a test double in place of the CUDA kernel."""
    calls = []

    def fake_flash(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                   softmax_scale=None, causal=False):
        calls.append((q.shape, cu_seqlens_q.clone(), max_seqlen_q, causal))
        return _reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)

    monkeypatch.setattr(modeling, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(modeling, "_flash_attn_varlen_func", fake_flash if kernel == "flash_attn" else None)
    monkeypatch.setattr(modeling, "_torch_varlen_attn", TORCH_VARLEN_FORMS.get(kernel, _torch_varlen_2_13)(calls))
    posts = make_posts(LENGTHS)
    packed, padded = pack(posts), pad(posts)
    model = build(BooruEmbedModel, attn="booru_varlen").to(torch.bfloat16)
    with torch.no_grad():
        from_packed = model(**packed).pooler_output
        from_padded = model(**padded).pooler_output
    assert len(calls) == 2 * model.config.num_hidden_layers
    shape, cu_seqlens, max_seqlen, causal = calls[0]
    assert shape == (sum(LENGTHS), 4, 16)  # (total_tokens, heads, head_dim)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == packed["cu_seqlens"].tolist()
    assert max_seqlen == max(LENGTHS) and causal is False
    torch.testing.assert_close(from_padded, from_packed)
    monkeypatch.setattr(modeling, "_KERNEL_DEVICES", ("cuda",))  # the regrouped SDPA fallback
    with torch.no_grad():
        fallback = model(**packed).pooler_output
    torch.testing.assert_close(from_packed.float(), fallback.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("form", TORCH_VARLEN_FORMS)
def test_torch_varlen_kernel_folds_a_non_default_scale_into_the_query(form: str, monkeypatch: pytest.MonkeyPatch
                                                                       ) -> None:
    monkeypatch.setattr(modeling, "_torch_varlen_attn", TORCH_VARLEN_FORMS[form]([]))
    torch.manual_seed(0)
    q, k, v = (torch.randn(10, 2, 8) for _ in range(3))  # (total_tokens, heads, head_dim)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    for scale in (8**-0.5, 0.1):
        expected = _reference_varlen(q, k, v, cu, cu, 6, 6, scale)
        output = modeling._torch_varlen_kernel(q, k, v, cu, cu, 6, 6, softmax_scale=scale)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_torch_varlen_without_a_backward_is_used_for_inference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first `varlen_attn` releases had no backward: training then takes the regrouped SDPA."""
    calls = []
    monkeypatch.setattr(modeling, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(modeling, "_KERNEL_DTYPES", (torch.float32,))
    monkeypatch.setattr(modeling, "_flash_attn_varlen_func", None)
    monkeypatch.setattr(modeling, "_torch_varlen_attn", _torch_varlen_first_form(calls))
    monkeypatch.setattr(modeling, "_TORCH_VARLEN_HAS_BACKWARD", False)
    model = build(BooruEmbedModel, attn="booru_varlen")
    packed = pack(make_posts(LENGTHS))
    with torch.no_grad():
        inference = model(**packed).pooler_output
    assert len(calls) == model.config.num_hidden_layers
    trained = model(**packed).pooler_output
    trained.sum().backward()
    assert len(calls) == model.config.num_hidden_layers  # no kernel call with gradients
    torch.testing.assert_close(trained.detach(), inference, atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(modeling, "_TORCH_VARLEN_HAS_BACKWARD", True)
    model(**packed)
    assert len(calls) == 2 * model.config.num_hidden_layers


def test_a_packed_row_with_trailing_padding_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's repeat_interleave does not check output_size: the layout must check cu_seqlens itself."""
    real_repeat = torch.repeat_interleave

    def unchecked_repeat(values, repeats, *args, output_size=None, **kwargs):  # as on CUDA: pads, never raises
        out = real_repeat(values, repeats, *args, **kwargs)
        return F.pad(out, (0, max(0, output_size - out.numel()))) if output_size is not None else out

    monkeypatch.setattr(torch, "repeat_interleave", unchecked_repeat)
    packed = pack(make_posts(LENGTHS))
    ids = F.pad(packed["input_ids"], (0, 3))  # three padding tokens after the last post
    categories = F.pad(packed["category_ids"], (0, 3))
    model = build(BooruEmbedModel)
    with pytest.raises(ValueError, match="cu_seqlens must run from 0 to the packed row's 40 tokens, got 0..37"):
        model(input_ids=ids, category_ids=categories, cu_seqlens=packed["cu_seqlens"])
    with pytest.raises(ValueError, match="36 tokens, got 1..37"):
        model(input_ids=packed["input_ids"][:, 1:], category_ids=packed["category_ids"][:, 1:],
              cu_seqlens=packed["cu_seqlens"] + torch.tensor([1] + [0] * len(LENGTHS), dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_fallback_groups_posts_once_per_forward_on_kernel_devices(dtype: torch.dtype,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """booru_varlen in float32 on CUDA (no kernel for that dtype) groups once per forward, not once per layer."""
    monkeypatch.setattr(modeling, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(modeling, "_flash_attn_varlen_func", None)
    monkeypatch.setattr(modeling, "_torch_varlen_attn", None)  # bf16 too: no kernel at all
    built = []
    from_layout = modeling.LengthGroups.from_layout.__func__
    monkeypatch.setattr(modeling.LengthGroups, "from_layout",
                        classmethod(lambda cls, layout: built.append(1) or from_layout(cls, layout)))
    model = build(BooruEmbedModel, attn="booru_varlen", num_hidden_layers=3).to(dtype)
    with torch.no_grad():
        model(**pack(make_posts(LENGTHS)))
    assert len(built) == 1


def test_autocast_decides_whether_the_varlen_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast the attention runs in bf16, so the plan must not build groups the kernel won't use."""
    calls, built = [], []
    monkeypatch.setattr(modeling, "_KERNEL_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(modeling, "_flash_attn_varlen_func", None)
    monkeypatch.setattr(modeling, "_torch_varlen_attn", _torch_varlen_2_13(calls))
    from_layout = modeling.LengthGroups.from_layout.__func__
    monkeypatch.setattr(modeling.LengthGroups, "from_layout",
                        classmethod(lambda cls, layout: built.append(1) or from_layout(cls, layout)))
    model = build(BooruEmbedModel, attn="booru_varlen")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(**pack(make_posts(LENGTHS)))
    assert len(calls) == model.config.num_hidden_layers and not built


def test_flex_document_mask_is_built_once_per_forward_and_compiled_where_allowed(monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    import torch.nn.attention.flex_attention as flex

    recorded = []
    real = flex.create_block_mask

    def recording(*args, **kwargs):
        recorded.append(kwargs.get("_compile"))
        return real(*args, **{**kwargs, "_compile": False})  # compiling on CPU is slow; the argument is the point

    monkeypatch.setattr(flex, "create_block_mask", recording)
    packed = pack(make_posts(LENGTHS))
    config = tiny_config(num_hidden_layers=3)
    config._attn_implementation = "flex_attention"
    hidden = torch.zeros(1, sum(LENGTHS), config.hidden_size)
    plan = modeling.AttentionPlan.build(config, hidden, None, packed["cu_seqlens"], packed["max_seqlen"], None)
    assert recorded == [False] and type(plan.kwargs["attention_mask"]).__name__ == "BlockMask"
    monkeypatch.setattr(modeling, "_MASK_COMPILE_DEVICES", ("cuda", "cpu"))
    modeling.AttentionPlan.build(config, hidden, None, packed["cu_seqlens"], packed["max_seqlen"], None)
    assert recorded == [False, True]


# ---------------------------------------------------------------------------------------------- invariances


def test_embedding_is_invariant_to_tag_order() -> None:
    model = build(BooruEmbedModel)
    posts = make_posts(LENGTHS, seed=1)
    generator = torch.Generator().manual_seed(3)
    shuffled = []
    for ids, categories in posts:
        order = torch.cat([torch.tensor([0]), torch.randperm(len(ids) - 1, generator=generator) + 1])
        shuffled.append((ids[order], categories[order]))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(posts, shuffled))
    with torch.no_grad():
        torch.testing.assert_close(
            model(**pack(shuffled)).pooler_output, model(**pack(posts)).pooler_output, atol=1e-5, rtol=1e-4
        )


def test_readback_heads_work_on_truncated_normalised_embeddings() -> None:
    model = build()
    with torch.no_grad():
        out = model(**pack(make_posts(LENGTHS)))
        for index, dim in enumerate([8, 16, 32]):
            truncated = F.normalize(out.embeddings[:, :dim], dim=-1)
            torch.testing.assert_close(model.readback(truncated), out.readback_logits[index], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot be read back"):
        model.readback(out.embeddings[:, :12])


def test_tag_heads_share_the_token_embedding_matrix() -> None:
    model = build()
    model.model.embeddings.token_embeddings.weight.data[5] += 1.0
    names = [name for name, _ in model.named_parameters()]
    assert not any("decoder" in name for name in names)  # no separate output matrix to drift or re-tie
    with torch.no_grad():
        hidden = torch.randn(2, 64)
        matrix = model.model.embeddings.token_embeddings.weight
        expected = model.mlm_head.norm(F.gelu(model.mlm_head.dense(hidden))) @ matrix.T
        torch.testing.assert_close(model.mlm_head(hidden, matrix), expected)


def test_untied_output_embeddings_take_the_head_gradients_and_reload(tmp_path: Path) -> None:
    packed = pack(make_posts(LENGTHS))
    present = torch.zeros(VOCAB, dtype=torch.bool)
    present[packed["input_ids"].flatten()] = True
    positions = torch.ones_like(packed["input_ids"], dtype=torch.bool)
    absent_rows = {}
    for tied in (True, False):
        model = build(tie_output_embeddings=tied).train()
        model(**packed, mlm_positions=positions).mlm_logits.logsumexp(-1).sum().backward()
        absent_rows[tied] = model.model.embeddings.token_embeddings.weight.grad[~present].abs().sum()
        if not tied:
            assert model.output_embeddings.weight.grad[~present].abs().sum() > 0
    # tied, the softmax reaches every input row; untied, only the rows of tags in the posts
    assert absent_rows[True] > 0 and absent_rows[False] == 0
    model = build(seed=3, tie_output_embeddings=False)
    model.save_pretrained(tmp_path / "model")
    loaded = BooruEmbedForMaskedLM.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        expected = model(**packed, mlm_positions=positions).mlm_logits
        torch.testing.assert_close(loaded(**packed, mlm_positions=positions).logits, expected)
        assert not torch.equal(model.output_embeddings.weight, model.model.embeddings.token_embeddings.weight)
    # the bare encoder (AutoModel) leaves the output matrix out, as it does the heads, without a warning
    _, info = BooruEmbedModel.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["unexpected_keys"]


# ----------------------------------------------------------------------------------------- dtypes, training


def test_bf16_forward_matches_float32() -> None:
    packed = pack(make_posts(LENGTHS))
    with torch.no_grad():
        full = build(BooruEmbedModel)(**packed).pooler_output
        half = build(BooruEmbedModel).to(torch.bfloat16)(**packed).pooler_output
    assert half.dtype == torch.bfloat16
    assert F.cosine_similarity(half.float(), full).min() > 0.98


def test_masked_lm_loss_and_gradient_checkpointing_give_the_same_gradients() -> None:
    posts = make_posts(LENGTHS)
    packed = pack(posts)
    labels = torch.full_like(packed["input_ids"], -100)
    labels[0, 2::3] = packed["input_ids"][0, 2::3]
    gradients = []
    for checkpointing in (False, True):
        model = build(BooruEmbedForMaskedLM).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        out = model(**packed, labels=labels)
        assert out.logits.shape == ((labels != -100).sum(), VOCAB) and torch.isfinite(out.loss)
        out.loss.backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(gradients[0]) == len(gradients[1]) > 0
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain)


@pytest.mark.slow
def test_torch_compile_matches_eager_mode() -> None:
    """About 50 s per layout on CPU (the packed layout compiles with graph breaks at its data-dependent sizes)."""
    model = build(BooruEmbedModel)
    posts = make_posts(LENGTHS)
    compiled = torch.compile(model)
    with torch.no_grad():
        for batch in (pad(posts), pack(posts)):
            expected = model(**batch).pooler_output
            torch.testing.assert_close(compiled(**batch).pooler_output, expected, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- loading


LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["booru_embed"] = None  # the package must not be importable: only the folder's code may be used
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining

    folder = sys.argv[1]
    inputs = torch.load(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "BooruEmbedConfig", type(config)
    with torch.no_grad():
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        full = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
        assert "booru_embed" not in (type(full).__module__ or "").split(".")[0]
        outputs = {
            "pooled": base(**inputs).pooler_output,
            "mlm": mlm(**inputs).logits[0],
            **full(**inputs, mlm_positions=torch.ones_like(inputs["input_ids"], dtype=torch.bool)),
        }
    torch.save(outputs, sys.argv[3])
    """
)


def test_saved_folder_loads_in_fresh_process_without_the_package(tmp_path: Path) -> None:
    model = build(seed=7)
    model.save_pretrained(tmp_path / "model")
    saved = {path.name for path in (tmp_path / "model").iterdir()}
    assert {"configuration_booru_embed.py", "modeling_booru_embed.py"} <= saved
    packed = pack(make_posts(LENGTHS))
    torch.save(packed, tmp_path / "inputs.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(tmp_path / "loader.py"), str(tmp_path / "model"), str(tmp_path / "inputs.pt"),
         str(tmp_path / "outputs.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        expected = model(**packed, mlm_positions=torch.ones_like(packed["input_ids"], dtype=torch.bool))
    torch.testing.assert_close(loaded["pooled"], expected.embeddings, atol=0, rtol=0)
    torch.testing.assert_close(loaded["mlm"], expected.mlm_logits, atol=0, rtol=0)
    for name in ("mlm_logits", "embeddings", "readback_logits", "rating_logits", "score_logits", "last_hidden_state"):
        torch.testing.assert_close(loaded[name], expected[name], atol=0, rtol=0)
