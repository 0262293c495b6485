"""The pre-training losses on plain tensors."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from booru_embed.training.objectives import (
    classification_loss,
    decorrelation_loss,
    info_nce,
    readback_loss,
    readback_size_weights,
    negative_proposal,
    sample_columns,
    set_prediction_loss,
    shared_subjects,
)

VOCAB = 12
CANDIDATES = torch.zeros(3, VOCAB, dtype=torch.bool)
CANDIDATES[0, 5:] = True  # tags
CANDIDATES[1, 1:3] = True  # ratings
CANDIDATES[2, 3:5] = True  # scores


def one_group(logits: torch.Tensor, hidden: list[int], visible: list[int]) -> torch.Tensor:
    return set_prediction_loss(
        logits[None],
        torch.tensor([0]),
        torch.zeros(len(hidden), dtype=torch.long),
        torch.tensor(hidden),
        torch.full((len(hidden),), 1.0 / len(hidden)),
        torch.zeros(len(visible), dtype=torch.long),
        torch.tensor(visible, dtype=torch.long),
        CANDIDATES,
    )


def test_set_loss_is_cross_entropy_against_the_uniform_hidden_set():
    logits = torch.randn(VOCAB)
    loss = one_group(logits, hidden=[6, 9], visible=[5, 7])
    allowed = [8, 6, 9, 10, 11]
    log_z = torch.logsumexp(logits[allowed], 0)
    expected = -((logits[6] - log_z) + (logits[9] - log_z)) / 2
    torch.testing.assert_close(loss, expected)


def test_visible_tags_and_non_candidates_never_count():
    logits = torch.zeros(VOCAB)
    base = one_group(logits, hidden=[6, 9], visible=[5, 7])
    boosted = logits.clone()
    boosted[[5, 7, 0, 1, 2]] = 50.0  # visible tags and specials/ratings: not candidates of a tag mask
    torch.testing.assert_close(one_group(boosted, hidden=[6, 9], visible=[5, 7]), base)
    torch.testing.assert_close(base, torch.tensor(math.log(5.0)))  # uniform over the 5 candidates


def test_set_loss_is_minimised_by_spreading_over_the_hidden_set():
    hidden = [6, 9]
    def loss_of(weight_on_6: float) -> float:
        logits = torch.full((VOCAB,), -30.0)
        logits[6], logits[9] = math.log(weight_on_6), math.log(1 - weight_on_6)
        return float(one_group(logits, hidden, visible=[5]))
    assert loss_of(0.5) < loss_of(0.8) < loss_of(0.99)
    assert math.isclose(loss_of(0.5), math.log(2), rel_tol=1e-4)


def test_rating_groups_only_choose_among_ratings_and_empty_is_zero():
    logits = torch.zeros(1, VOCAB, requires_grad=True)
    loss = set_prediction_loss(
        logits, torch.tensor([1]), torch.tensor([0]), torch.tensor([2]), torch.tensor([1.0]),
        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), CANDIDATES,
    )
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)))
    empty = torch.zeros(0, VOCAB, requires_grad=True)
    none = set_prediction_loss(empty, *(torch.zeros(0, dtype=torch.long),) * 4, torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long), CANDIDATES)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_info_nce_rewards_matching_views_at_every_size():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    matched, accuracy = info_nce(a, a + 0.01 * torch.randn(16, 8), 0.05, [2, 4, 8])
    shuffled, _ = info_nce(a, a[torch.randperm(16)], 0.05, [2, 4, 8])
    assert matched < 0.5 < shuffled and accuracy == 1.0
    # only the first 2 dims match: the size-2 term is low, the full-size term is not
    b = torch.cat([a[:, :2], torch.randn(16, 6)], dim=1)
    assert info_nce(a, b, 0.05, [2])[0] < info_nce(a, b, 0.05, [8])[0]


def test_info_nce_with_subjects_pulls_posts_of_one_character_together():
    torch.manual_seed(0)
    a = torch.randn(6, 8)
    b = a + 0.01 * torch.randn(6, 8)
    subjects = torch.tensor([[40, -1], [40, 7], [-1, -1], [9, -1], [-1, -1], [-1, -1]])
    none = torch.full((6, 2), -1)
    # without shared subjects the supervised form is the plain loss
    torch.testing.assert_close(info_nce(a, b, 0.1, [4, 8], subjects=none)[0], info_nce(a, b, 0.1, [4, 8])[0])
    # posts 0 and 1 share character 40: the loss is lower when they are close than when apart
    close = a.clone()
    close[1] = a[0] + 0.05 * torch.randn(8)
    apart, together = (info_nce(x, x + 0.01 * torch.randn(6, 8), 0.1, [8], subjects=subjects)[0] for x in (a, close))
    plain_apart, plain_together = (info_nce(x, x + 0.01 * torch.randn(6, 8), 0.1, [8])[0] for x in (a, close))
    assert together < apart and plain_together > plain_apart  # the plain loss wants every post apart
    shared = shared_subjects(subjects, subjects)
    assert shared[0, 1] and shared[1, 0] and not shared[0, 2] and not shared[2, 2] and shared[3, 3]


def _info_nce_on_rank(rank: int, world: int, init_file: str, views: torch.Tensor, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        half = views.shape[1] // world
        a = views[0, rank * half : (rank + 1) * half].clone().requires_grad_(True)
        b = views[1, rank * half : (rank + 1) * half].clone()
        loss, _ = info_nce(a, b, 0.1, [2, 4], across_processes=True)
        loss.backward()
        results[rank] = (float(loss), a.grad.clone())
    finally:
        dist.destroy_process_group()


def test_info_nce_across_processes_uses_every_process_batch_as_negatives(tmp_path):
    torch.manual_seed(0)
    views = torch.randn(2, 8, 4)  # (view, posts, dim): 4 posts on each of 2 processes
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_info_nce_on_rank, args=(2, str(tmp_path / "init"), views, results), nprocs=2)
        results = dict(results)
    # the mean of the two processes' losses is the loss of one process holding all 8 posts
    whole, _ = info_nce(views[0], views[1], 0.1, [2, 4])
    assert abs((results[0][0] + results[1][0]) / 2 - float(whole)) < 1e-5
    # and differs from a loss with only the local posts as negatives
    local, _ = info_nce(views[0, :4], views[1, :4], 0.1, [2, 4])
    assert abs(results[0][0] - float(local)) > 1e-3
    assert results[0][1].abs().sum() > 0 and results[1][1].abs().sum() > 0


def test_readback_loss_is_zero_for_perfect_logits_and_normalised_by_positives():
    seq, ids = torch.tensor([0, 0, 1]), torch.tensor([3, 5, 7])
    perfect = torch.full((2, 2, VOCAB), -40.0)
    perfect[:, seq, ids] = 40.0
    assert float(readback_loss(perfect, seq, ids)) < 1e-6
    zeros = torch.zeros(2, 2, VOCAB)
    torch.testing.assert_close(readback_loss(zeros, seq, ids), torch.tensor(2 * VOCAB * math.log(2) / 3))


def test_readback_loss_equals_dense_binary_cross_entropy_with_its_gradient():
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 4, VOCAB)).requires_grad_()
    seq, ids = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([3, 5, 7, 0, 1, VOCAB - 1])
    targets = torch.zeros(4, VOCAB)
    targets[seq, ids] = 1.0
    dense = F.binary_cross_entropy_with_logits(logits, targets.expand(3, -1, -1), reduction="sum") / (3 * len(ids))
    ours = readback_loss(logits, seq, ids)
    torch.testing.assert_close(ours, dense)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(dense, logits)[0])


def test_readback_size_weights_weigh_each_nested_size_as_asked():
    torch.manual_seed(1)
    logits = 3 * torch.randn(3, 4, VOCAB)
    seq, ids = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    per_size = torch.stack([readback_loss(logits[i : i + 1], seq, ids) for i in range(3)])
    uniform = readback_size_weights([8, 16, 32], "uniform")
    width = readback_size_weights([8, 16, 32], "width")
    torch.testing.assert_close(readback_loss(logits, seq, ids), per_size.mean())
    torch.testing.assert_close(readback_loss(logits, seq, ids, size_weights=uniform), per_size.mean())
    torch.testing.assert_close(width, torch.tensor([1 / 7, 2 / 7, 4 / 7]))
    assert width[-1] >= width[:-1].sum()  # the full width weighs at least as much as the prefixes together
    torch.testing.assert_close(readback_loss(logits, seq, ids, size_weights=width), per_size @ width)


def test_decorrelation_loss_is_zero_for_uncorrelated_and_one_for_collapsed_dims():
    torch.manual_seed(2)
    centred = torch.randn(64, 8)
    independent = torch.linalg.qr(centred - centred.mean(0))[0]  # centred, orthogonal columns: uncorrelated
    assert float(decorrelation_loss(independent)) < 1e-6
    collapsed = torch.randn(64, 1) * torch.tensor([1.0, -2.0, 3.0, 0.5])  # every dim one direction
    torch.testing.assert_close(decorrelation_loss(collapsed), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_classification_loss_ignores_unlabelled_rows():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    labels = torch.tensor([0, -100, -100])
    torch.testing.assert_close(classification_loss(logits, labels), torch.nn.functional.cross_entropy(logits[:1], labels[:1]))
    assert float(classification_loss(logits, torch.full((3,), -100))) == 0.0


def _random_readback_case(seed: int, vocab: int = 400) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (3, 6, vocab), positive sequences, positive tag ids, proposal from uneven counts)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, vocab, generator=generator) * 2 - 1
    pairs = torch.randperm(6 * 30, generator=generator)[:40]  # distinct (sequence, tag) pairs among 30 tags
    counts = torch.randint(0, 1000, (vocab,), generator=generator) ** 2
    return logits, pairs // 30, pairs % 30, negative_proposal(counts.tolist())


def test_sampled_readback_loss_is_an_unbiased_estimate_of_the_exact_loss():
    logits, seq, ids, proposal = _random_readback_case(0)
    exact = readback_loss(logits, seq, ids).item()
    generator = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(3000):
        sample = sample_columns(ids, proposal, 24, generator)
        estimates.append(readback_loss(logits[:, :, sample.columns], seq, sample.positive_columns, sample.weights))
    estimates = torch.stack(estimates)
    stderr = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * stderr, (estimates.mean().item(), exact, stderr)
    assert stderr < 0.01 * exact
    # the importance weights matter: the same draws unweighted (merged counts / K only) miss by far
    unweighted = readback_loss(logits[:, :, sample.columns], seq, sample.positive_columns,
                               torch.ones_like(sample.weights)).item()
    assert abs(unweighted - exact) > 100 * stderr


def test_sampled_readback_gradient_is_unbiased_for_the_logits():
    logits, seq, ids, proposal = _random_readback_case(2, vocab=120)
    logits.requires_grad_(True)
    exact = torch.autograd.grad(readback_loss(logits, seq, ids), logits)[0]
    generator = torch.Generator().manual_seed(3)
    mean, unweighted = torch.zeros_like(logits), torch.zeros_like(logits)
    draws = 2000
    for _ in range(draws):
        sample = sample_columns(ids, proposal, 16, generator)
        for weights, total in ((sample.weights, mean), (torch.ones_like(sample.weights), unweighted)):
            loss = readback_loss(logits[:, :, sample.columns], seq, sample.positive_columns, weights)
            total += torch.autograd.grad(loss, logits)[0] / draws
    error = (mean - exact).abs().sum() / exact.abs().sum()
    assert error < 0.06 and (unweighted - exact).abs().sum() / exact.abs().sum() > 5 * error


def test_readback_sample_takes_every_other_token_when_they_are_few():
    logits, seq, ids, proposal = _random_readback_case(4, vocab=60)
    sample = sample_columns(ids, proposal, 64)
    assert sorted(sample.columns.tolist()) == list(range(60)) and bool((sample.weights == 1).all())
    assert torch.equal(sample.columns[sample.positive_columns], ids)
    torch.testing.assert_close(readback_loss(logits[:, :, sample.columns], seq, sample.positive_columns, sample.weights),
                               readback_loss(logits, seq, ids))


def test_readback_columns_score_only_those_tags_and_gradients_reach_their_rows():
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    config = BooruEmbedConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, embedding_dim=8, nested_dims=[4], tie_output_embeddings=False)
    torch.manual_seed(0)
    model = BooruEmbedForPreTraining(config)
    input_ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    mask = (input_ids > 0).long()
    full = model(input_ids, (input_ids > 2).long(), attention_mask=mask).readback_logits
    columns = torch.tensor([9, 5, 30])
    part = model(input_ids, (input_ids > 2).long(), attention_mask=mask, readback_columns=columns).readback_logits
    assert part.shape == (2, 2, 3)
    torch.testing.assert_close(part, full[:, :, columns])
    part.sum().backward()
    bias_grad = model.readback_heads[0].bias.grad
    assert set(torch.nonzero(bias_grad).reshape(-1).tolist()) == {5, 9, 30}
    assert model.model.embeddings.token_embeddings.weight.grad.abs().sum() > 0


def _masked_case(vocab: int = 3000) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """(logits (4, vocab), the set-loss arguments after the logits, candidates, proposal) with visible tags."""
    generator = torch.Generator().manual_seed(5)
    candidates = torch.zeros(3, vocab, dtype=torch.bool)
    candidates[0, 5:] = True
    candidates[1, 1:3] = True
    candidates[2, 3:5] = True
    logits = torch.randn(4, vocab, generator=generator) * 1.5
    kinds = torch.tensor([0, 0, 0, 1])
    target_group = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    target_ids = torch.tensor([10, 11, 40, 7, 900, 1500, 2])
    target_weights = torch.tensor([0.5, 0.5, 1.0, 1 / 3, 1 / 3, 1 / 3, 1.0])
    exclude_group, exclude_ids = torch.tensor([0, 0, 1, 2]), torch.tensor([40, 2999, 10, 11])
    counts = (torch.randint(0, 100, (vocab,), generator=generator) ** 2).tolist()
    return logits, (kinds, target_group, target_ids, target_weights, exclude_group, exclude_ids), candidates, \
        negative_proposal(counts)


def test_sampled_masked_loss_estimates_the_exact_set_loss():
    logits, args, candidates, proposal = _masked_case()
    exact = set_prediction_loss(logits, *args, candidates).item()
    exact_ids = torch.cat([args[2], torch.tensor([1, 2, 3, 4])])  # targets, rating and score tokens
    # with fewer other tokens than K the sampled form is the exact loss
    everything = sample_columns(exact_ids, proposal, 5000)
    torch.testing.assert_close(set_prediction_loss(logits[:, everything.columns], *args, candidates, everything).item(),
                               exact)
    generator = torch.Generator().manual_seed(6)
    estimates, uncorrected = [], []
    for _ in range(200):
        sample = sample_columns(exact_ids, proposal, 256, generator)
        estimates.append(set_prediction_loss(logits[:, sample.columns], *args, candidates, sample).item())
        plain = dataclasses.replace(sample, weights=torch.ones_like(sample.weights))
        uncorrected.append(set_prediction_loss(logits[:, sample.columns], *args, candidates, plain).item())
    mean = sum(estimates) / len(estimates)
    assert abs(mean / exact - 1) < 0.02, (mean, exact)
    # without the logQ correction the normaliser is a tenth of the vocabulary's: far too low a loss
    assert sum(uncorrected) / len(uncorrected) < exact - 1.0


def _step_one_readback_loss(vocab: int, prior: bool, negatives: int = 0) -> tuple[float, float]:
    """(read-back loss of an untrained model, sum_t h(p_t) / sum_t p_t) on posts drawn from the tag rates.

    Tag rates are Zipf-like (p = min(0.7, 3 / rank)): a bigger vocabulary adds rarer tags, as on Danbooru.
    With ``negatives``, the loss is the sampled form (the batch's tags plus that many drawn negatives).
    """
    import numpy as np

    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    share = np.zeros(vocab)
    share[3:] = np.minimum(0.7, 3.0 / np.arange(1, vocab - 2))  # ids 0-2: special tokens, never targets
    config = BooruEmbedConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, embedding_dim=16, nested_dims=[8], tie_output_embeddings=False)
    torch.manual_seed(0)
    model = BooruEmbedForPreTraining(config)
    if prior:
        model.initialise_tag_biases(np.rint(share * 1_000_000).astype(int).tolist(), 1_000_000)
    rng = np.random.default_rng(0)
    posts = [np.flatnonzero(rng.random(vocab) < share) for _ in range(24)]
    width = 1 + max(len(p) for p in posts)
    input_ids = torch.zeros(len(posts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(posts), width, dtype=torch.long)
    for row, tags in enumerate(posts):
        input_ids[row, : 1 + len(tags)] = torch.tensor([1, *tags.tolist()])
        attention_mask[row, : 1 + len(tags)] = 1
    sequence = torch.tensor([row for row, tags in enumerate(posts) for _ in tags])
    tag_ids = torch.tensor([t for tags in posts for t in tags.tolist()])
    sample = None
    if negatives:
        proposal = negative_proposal(np.rint(share * 1_000_000).astype(int).tolist())
        sample = sample_columns(tag_ids, proposal, negatives, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids, (input_ids > 2).long(), attention_mask=attention_mask,
                       readback_columns=None if sample is None else sample.columns).readback_logits
    p = share[3:]
    entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p)).sum() / p.sum()
    if sample is None:
        return readback_loss(logits, sequence, tag_ids).item(), float(entropy)
    return readback_loss(logits, sequence, sample.positive_columns, sample.weights).item(), float(entropy)


def test_readback_loss_at_step_one_does_not_grow_with_the_vocabulary():
    small, small_entropy = _step_one_readback_loss(4096, prior=True)
    large, large_entropy = _step_one_readback_loss(150_016, prior=True)
    assert large / small < 2.0, (small, large)
    # the prior biases put the untrained loss at the tags' entropy per positive (derivation: readback_loss)
    assert abs(small / small_entropy - 1) < 0.25 and abs(large / large_entropy - 1) < 0.25
    # zero biases: log 2 per vocabulary entry and positive, so the scale follows the vocabulary
    zero_small, _ = _step_one_readback_loss(4096, prior=False)
    zero_large, _ = _step_one_readback_loss(150_016, prior=False)
    assert zero_large / zero_small > 10 and zero_small > 5 * small
    # the sampled form (2048 negatives) estimates the same loss at both sizes
    sampled_small, _ = _step_one_readback_loss(4096, prior=True, negatives=2048)
    sampled_large, _ = _step_one_readback_loss(150_016, prior=True, negatives=2048)
    assert abs(sampled_small / small - 1) < 0.05 and abs(sampled_large / large - 1) < 0.05, (sampled_large, large)
