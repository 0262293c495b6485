"""Benchmark the tag-set transformer: forward+backward tokens/s, packed vs padded, per attention backend.

    python bench/bench_model.py [--quick] [--configs tiny small] [--backends eager sdpa booru_varlen]
                                [--posts 64] [--steps 3] [--threads 1] [--device cpu|cuda] [--peak-tflops 989]
    python bench/bench_model.py --sizes        # parameters and FLOPs per token of every hub config

Each step trains `BooruEmbedForPreTraining` on a batch of posts whose lengths follow a clipped log-normal
(5 to 170 tokens, mean about 32, like Danbooru posts): masked-tag logits for 15% of the tokens, read-back,
rating and score logits, summed into a loss, backward. The same posts go through both layouts:
padded (posts x longest post, with attention_mask) and packed (one row with cu_seqlens). Throughput counts
real tokens only. The ratio column compares each row with `sdpa padded` of the same config, measured in the
same run. On CPU the rate is taken from the process's CPU time with one thread (the stable measure on a
shared machine); wall-clock rates are shown beside it. On a GPU the steps run under bf16 autocast and the
table adds model FLOPs utilisation (MFU = achieved model FLOPs/s over `--peak-tflops`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig  # noqa: E402
from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining  # noqa: E402
from booru_embed.resources import model_config_path  # noqa: E402

MIN_LENGTH, MAX_LENGTH = 5, 170
# log-normal(mu, sigma) clipped to [5, 170]: sigma 0.75 gives Danbooru's long tail; mu puts the mean near 32
LOG_MEAN, LOG_SIGMA = 3.18, 0.75
MLM_FRACTION = 0.15


def sample_lengths(count: int, seed: int) -> list[int]:
    """Post lengths in tokens (including <cls>, rating and score tokens) from the clipped log-normal."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(LOG_MEAN + LOG_SIGMA * torch.randn(count, generator=generator))
    return lengths.round().clamp(MIN_LENGTH, MAX_LENGTH).long().tolist()


def make_batches(lengths: list[int], vocab_size: int, seed: int) -> tuple[dict, dict]:
    """The same posts as a padded batch and as one packed row, with the same masked positions."""
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.cat([torch.tensor([1]), torch.randint(3, vocab_size, (n - 1,), generator=generator)]) for n in lengths]
    categories = [torch.cat([torch.tensor([0]), torch.randint(1, 8, (n - 1,), generator=generator)]) for n in lengths]
    masked = [torch.cat([torch.tensor([False]), torch.rand(n - 1, generator=generator) < MLM_FRACTION])
              for n in lengths]
    width = max(lengths)
    names = ("input_ids", "category_ids", "attention_mask")
    padded = {name: torch.zeros(len(lengths), width, dtype=torch.long) for name in names}
    padded["mlm_positions"] = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        padded["input_ids"][row, :n] = ids[row]
        padded["category_ids"][row, :n] = categories[row]
        padded["attention_mask"][row, :n] = 1
        padded["mlm_positions"][row, :n] = masked[row]
    packed = {
        "input_ids": torch.cat(ids)[None],
        "category_ids": torch.cat(categories)[None],
        "mlm_positions": torch.cat(masked)[None],
        "cu_seqlens": F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32),
        "max_seqlen": width,
    }
    return padded, packed


def parameter_counts(config: BooruEmbedConfig) -> dict[str, int]:
    """Parameters of the embeddings (input, and output when untied), blocks, training heads, and in total."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    output_matrices = 1 if config.tie_output_embeddings else 2  # untied: the tag heads' own output matrix
    embeddings = output_matrices * config.vocab_size * h + config.num_categories * h
    blocks = layers * (4 * h * h + 3 * h * inter + 2 * h) + h + h * config.embedding_dim
    tag_head = h + config.vocab_size  # norm weight and bias (the output matrix is counted with the embeddings)
    heads = (h * h + tag_head) + sum(d * h + tag_head for d in [*config.nested_dims, config.embedding_dim])
    heads += (config.embedding_dim + 1) * (config.num_ratings + config.num_score_buckets)
    return {"embeddings": embeddings, "blocks": blocks, "heads": heads, "total": embeddings + blocks + heads}


def flops_per_token(config: BooruEmbedConfig, lengths: list[int]) -> dict[str, float]:
    """Model FLOPs per real token (multiply-add = 2) of one forward pass, for posts of these lengths.

    `encoder`: projections and MLP (2 x block matrix parameters) plus attention scores and mixing
    (4 x hidden x the length of the token's own post, per layer). `heads`: masked-tag logits on 15% of the
    tokens and read-back of every post at each nested size, each a vocab-wide product. Training is 3x.
    """
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    tokens = sum(lengths)
    attended = sum(n * n for n in lengths) / tokens  # a token attends to its whole post
    encoder = layers * (2 * (4 * h * h + 3 * h * inter) + 4 * h * attended)
    mlm = MLM_FRACTION * 2 * (h * h + h * vocab)
    readback = len(lengths) / tokens * sum(2 * (d * h + h * vocab) for d in [*config.nested_dims, config.embedding_dim])
    pooler = len(lengths) / tokens * 2 * h * config.embedding_dim
    return {"encoder": encoder, "heads": mlm + readback + pooler, "total": encoder + mlm + readback + pooler}


def print_sizes() -> None:
    """Markdown table of parameters and forward FLOPs per token of each hub config."""
    lengths = sample_lengths(100_000, seed=0)
    print(f"lengths: mean {statistics.mean(lengths):.1f}, vocab_size as in the hub configs (training overwrites it)")
    print("| config | hidden x layers (heads) | embeddings | blocks | heads | total "
          "| fwd MFLOP/token: encoder | with heads |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("tiny", "small", "base"):
        config = BooruEmbedConfig.from_json_file(str(model_config_path(name)))
        params = parameter_counts(config)
        flops = flops_per_token(config, lengths)
        print(
            f"| {name} | {config.hidden_size} x {config.num_hidden_layers} ({config.num_attention_heads}) "
            f"| {params['embeddings'] / 1e6:.1f}M | {params['blocks'] / 1e6:.1f}M | {params['heads'] / 1e6:.2f}M "
            f"| {params['total'] / 1e6:.1f}M | {flops['encoder'] / 1e6:.1f} | {flops['total'] / 1e6:.1f} |"
        )


def training_step(model: BooruEmbedForPreTraining, batch: dict, device: torch.device) -> None:
    """One forward+backward pass with a loss touching every head."""
    inputs = {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model(**inputs)
        targets = inputs["input_ids"][inputs["mlm_positions"]]
        loss = F.cross_entropy(out.mlm_logits.float(), targets)
        loss = loss + out.readback_logits.float().logsumexp(-1).mean()
        loss = loss + out.rating_logits.float().logsumexp(-1).mean() + out.score_logits.float().logsumexp(-1).mean()
    loss.backward()


def measure(runs: dict[tuple[str, str], tuple[BooruEmbedForPreTraining, list[dict]]],
            device: torch.device) -> dict[tuple[str, str], tuple[float, float]]:
    """(CPU seconds of this process, wall seconds) of forward+backward for each (backend, layout) run.

    One warm-up step per run first; then the runs alternate step by step, so a change in machine load hits
    them all alike.
    """
    seconds = {key: [0.0, 0.0] for key in runs}
    for model, batches in runs.values():
        training_step(model, batches[0], device)
        model.zero_grad(set_to_none=True)
    for step in range(len(next(iter(runs.values()))[1])):
        for key, (model, batches) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            training_step(model, batches[step], device)
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[key][0] += time.process_time() - cpu
            seconds[key][1] += time.perf_counter() - wall
    return {key: (cpu, wall) for key, (cpu, wall) in seconds.items()}


def run(args: argparse.Namespace) -> None:
    """Measure every config x backend x layout and print the table."""
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    print(f"device: {torch.cuda.get_device_name(device) if not on_cpu else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, posts/batch {args.posts}, steps {args.steps}")
    clock = "CPU time" if on_cpu else "wall"
    print(f"| config | backend | layout | tokens/s ({clock}) | vs sdpa padded | tokens/s (wall) "
          "| tokens computed | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        config = BooruEmbedConfig.from_json_file(str(model_config_path(name)))
        step_lengths = [sample_lengths(args.posts, seed=step) for step in range(args.steps)]
        layouts = [make_batches(lengths, config.vocab_size, seed=step) for step, lengths in enumerate(step_lengths)]
        real = sum(map(sum, step_lengths))
        padded_tokens = sum(len(lengths) * max(lengths) for lengths in step_lengths)
        flops = flops_per_token(config, [n for lengths in step_lengths for n in lengths])["total"]
        runs = {}
        for backend in args.backends:
            torch.manual_seed(0)
            # a config per model: set_attn_implementation writes into the (otherwise shared) config
            model = BooruEmbedForPreTraining(copy.deepcopy(config)).to(device).train()
            model.set_attn_implementation(backend)
            # varlen backends unpad a padded batch first, which is the packed work again
            for layout in ["packed"] if backend == "booru_varlen" else ["padded", "packed"]:
                runs[backend, layout] = (model, [pair[layout == "packed"] for pair in layouts])
        seconds = measure(runs, device)
        timed = {key: cpu if on_cpu else wall for key, (cpu, wall) in seconds.items()}
        baseline = real / timed["sdpa", "padded"] if ("sdpa", "padded") in timed else None
        for (backend, layout), elapsed in timed.items():
            rate = real / elapsed
            ratio = f"{rate / baseline:.2f}x" if baseline else "n/a"
            mfu = "n/a" if on_cpu else f"{100 * rate * 3 * flops / (args.peak_tflops * 1e12):.1f}%"
            computed = padded_tokens if layout == "padded" else real
            wall_rate = real / seconds[backend, layout][1]
            print(f"| {name} | {backend} | {layout} | {rate:,.0f} | {ratio} | {wall_rate:,.0f} "
                  f"| {computed / real:.2f}x real | {mfu} |", flush=True)


def main() -> int:
    """Parse arguments and run the benchmark (or print the size table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, sdpa only, 2 steps of 32 posts")
    parser.add_argument("--sizes", action="store_true", help="print parameters and FLOPs per token and exit")
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="attention backends (default: CPU eager sdpa booru_varlen; GPU sdpa flex_attention "
                             "flash_attention_2)")
    parser.add_argument("--posts", type=int, default=64, help="posts per batch (default 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine, CPU time of one thread is the stable "
                             "measure; more threads wait on each other whenever one is descheduled)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="peak dense bf16 TFLOP/s of the GPU for MFU (default: H100 SXM, 989)")
    args = parser.parse_args()
    if args.sizes:
        print_sizes()
        return 0
    if args.backends is None:
        args.backends = ["eager", "sdpa", "booru_varlen"] if args.device == "cpu" else [
            "sdpa", "flex_attention", "flash_attention_2"]
    if args.quick:
        args.configs, args.backends, args.steps, args.posts = ["tiny"], ["sdpa"], 2, 32
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and "flex_attention" in args.backends:
        # torch 2.13's CPU flex kernel fails to recompile for a new shape, and every batch has a new shape.
        torch._dynamo.config.automatic_dynamic_shapes = False
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
