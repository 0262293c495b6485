"""One prepared GPU check: attention numerics, step throughput and MFU, training with an exact resume.

    bash bench/gpu_check.sh [--wheels DIR] [--tag-data DIR] [--out DIR] [--dry-run] [...]   # see --help

On one H100/H200 (no internet; torch, transformers, accelerate, pyarrow, safetensors, but neither
`datasets` nor `flash-attn`: `gpu_check.sh --wheels DIR` installs the carried wheels first) it
should finish in about 5 minutes (an estimate: never run on a GPU yet) and writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``:

1. corpus: `generate-corpus` (`danbooru-scale` with `--tag-data`, else `default`), `build-dataset`,
   `build-tokenizer`, as a user runs them;
2. attention: every backend (eager, sdpa, flex_attention, booru_varlen = PyTorch's varlen kernel,
   flash_attention_2 when flash_attn imports) on one collated batch of packed posts, the real
   pre-training loss and its backward: max abs difference of hidden states, embeddings and
   gradients against eager in float32, next to eager's own error in the same dtype;
3. loader: posts/s of the training DataLoader with 1, 4 and 12 workers (`bench_loader.py`'s timing);
4. throughput: forward + losses + backward + fused AdamW of `small` and `base` with a `--vocab`
   vocabulary (150,016 by default: Danbooru's) under bf16 autocast, on collated batches of
   `--batch-size` posts: tokens/s, posts/s, model TFLOP/s and MFU (`training_flops.py`, against
   `--peak-tflops`), peak memory, and the projected time of one epoch of `--epoch-posts` posts;
5. training: `accelerate launch train_hf.py` for `--steps` steps with a checkpoint halfway, and the
   same run stopped at the checkpoint (`--stop-after-steps`) and resumed (`--resume`): the per-step
   losses of both, before and after the resume, and the peak device memory.

The report is rewritten after every part (a failed part records its error, the next one runs), so
a run cut short still returns what it measured. Scratch files go to a temporary folder (`--work`).

`--dry-run` runs the same code paths at tiny sizes on CPU (eager and sdpa only, `tiny`, 4 steps,
float32) and writes the same report; most of its time is the three `accelerate launch` processes
starting (241 s on the overloaded shared 2-core machine). `tests/test_gpu_check.py` runs it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_loader import encoded_split, time_loader  # noqa: E402
from training_flops import BatchShape, training_flops  # noqa: E402

ALL_BACKENDS = ("eager", "sdpa", "flex_attention", "booru_varlen", "flash_attention_2")
DRY_RUN = {"posts": 1500, "setting": "default", "numerics_config": "tiny", "numerics_posts": 16,
           "throughput_configs": ["tiny"], "vocab": 4096, "batch_size": 16, "warmup_steps": 1,
           "timed_steps": 2, "train_config": "tiny", "steps": 4, "train_batch_size": 16, "workers": 0,
           "loader_workers": "0,1"}
GPU_RUN = {"posts": 100_000, "numerics_config": "small", "numerics_posts": 64,
           "throughput_configs": ["small", "base"], "vocab": 150_016, "batch_size": 1024, "warmup_steps": 3,
           "timed_steps": 10, "train_config": "small", "steps": 300, "train_batch_size": 256, "workers": 8,
           "loader_workers": "1,4,12"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's flags; sizes left unset take the GPU or the dry-run defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check", help="report folder")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder; "
                        "not under OUT, whose files a device run sends back)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, eager and sdpa only")
    parser.add_argument("--tag-data", type=Path, default=None,
                        help="folder with Danbooru's tags.csv and implications.tsv: a danbooru-scale corpus")
    parser.add_argument("--posts", type=int, help="posts of the generated corpus")
    parser.add_argument("--setting", help="generate-corpus setting (default: danbooru-scale with --tag-data)")
    parser.add_argument("--vocab", type=int, help="vocabulary of the throughput models")
    parser.add_argument("--batch-size", type=int, help="posts per throughput batch")
    parser.add_argument("--warmup-steps", type=int, help="untimed throughput steps per model before the timed ones")
    parser.add_argument("--timed-steps", type=int, help="timed throughput steps per model")
    parser.add_argument("--steps", type=int, help="training steps through accelerate launch")
    parser.add_argument("--train-batch-size", type=int, help="posts per training batch")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the training runs")
    parser.add_argument("--loader-workers", help="DataLoader workers to time, comma-separated")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak (H200: ~790 measured)")
    parser.add_argument("--epoch-posts", type=int, default=5_800_000, help="posts of one projected epoch")
    args = parser.parse_args(argv)
    defaults = DRY_RUN if args.dry_run else {**GPU_RUN, "setting": "danbooru-scale" if args.tag_data else "default"}
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="booru-embed-gpu-check-"))
    return args


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, the device, and which attention kernels exist."""
    import accelerate
    import transformers

    from booru_embed.modeling import modeling_booru_embed as modeling

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu", "cpu_cores": os.cpu_count(),
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "torch_varlen_attn": modeling._torch_varlen_attn is not None,
        "torch_varlen_backward": modeling._TORCH_VARLEN_HAS_BACKWARD,
    }


def packed_row_guard(tokenizer: Any, device: torch.device) -> dict[str, Any]:
    """A packed row whose cu_seqlens stop before its last tokens must be refused on this device, not pooled."""
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedModel

    config = model_config("tiny", len(tokenizer.token_categories), tokenizer)
    model = BooruEmbedModel(config).to(device).eval()
    ids = torch.full((1, 12), tokenizer.cls_token_id, dtype=torch.long, device=device)
    cu_seqlens = torch.tensor([0, 4, 9], dtype=torch.int32, device=device)  # 3 trailing padding tokens
    try:
        with torch.no_grad():
            model(input_ids=ids, category_ids=torch.zeros_like(ids), cu_seqlens=cu_seqlens)
    except ValueError as error:
        return {"padded_packed_row_refused": True, "message": str(error)}
    return {"padded_packed_row_refused": False}


def make_corpus(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """Generated corpus -> DATA_DIR and TOKENIZER_DIR under the work folder, as the CLI builds them."""
    from booru_embed.data.ingest import build_dataset
    from booru_embed.data.synthetic import generate_corpus
    from booru_embed.data.synthetic_settings import setting
    from booru_embed.data.tokenizer_build import build_tokenizer

    started = time.perf_counter()
    root = args.work / "corpus"
    generate_corpus(root / "corpus.csv", args.posts, seed=0, tag_data=args.tag_data, spec=setting(args.setting))
    build_dataset([root / "corpus.csv"], root / "data", progress=False)
    build_tokenizer(root / "data", root / "tokenizer")
    return root / "data", root / "tokenizer", {"posts": args.posts, "setting": args.setting,
                                               "seconds": round(time.perf_counter() - started, 1)}


def collated_batches(data: Path, tokenizer: Any, batch_size: int, count: int) -> list[dict[str, Any]]:
    """``count`` batches of ``batch_size`` posts from the training loader (`training.loop.make_loader`)."""
    import datasets

    from booru_embed.data.bulk_encoding import encode_dataset
    from booru_embed.sequences import TokenInfo
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import make_loader

    encoded = encode_dataset(tokenizer, datasets.load_from_disk(str(data))["train"])
    config = TrainingConfig(batch_size=batch_size, num_workers=0, progress=False)
    loader, _, _ = make_loader(config, encoded, TokenInfo.from_tokenizer(tokenizer), SimpleNamespace(num_processes=1))
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise RuntimeError(f"the corpus gives only {len(batches)} batches of {batch_size} posts")


def loader_rates(args: argparse.Namespace, data: Path, tokenizer: Any) -> list[dict[str, Any]]:
    """Posts/s of the training DataLoader (`bench_loader.time_loader`) at ``--batch-size`` per worker count."""
    from booru_embed.sequences import TokenInfo

    info = TokenInfo.from_tokenizer(tokenizer)
    encoded = encoded_split(data, tokenizer, args.work / "loader_encoded")
    rows = []
    for workers in (int(w) for w in args.loader_workers.split(",")):
        rate, _, shape = time_loader(encoded, info, args.train_config, args.batch_size, workers, 8)
        rows.append({"workers": workers, "batch_size": args.batch_size, "posts_per_s": rate,
                     "tokens_per_post": shape.tokens / shape.posts})
    return rows


def model_config(name: str, vocab: int, tokenizer: Any) -> Any:
    """The hub config ``name`` with the tokenizer's special tokens and a vocabulary of ``vocab`` rows."""
    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.training.config import read_model_config

    values = read_model_config(name)[0]
    values.pop("model_type", None)
    values.update(vocab_size=vocab, num_ratings=len(tokenizer.rating_token_ids),
                  num_score_buckets=len(tokenizer.score_token_ids), pad_token_id=tokenizer.pad_token_id,
                  cls_token_id=tokenizer.cls_token_id, mask_token_id=tokenizer.mask_token_id)
    return BooruEmbedConfig(**values)


def candidates_for(tokenizer: Any, vocab: int, device: torch.device) -> torch.Tensor:
    """The masked-slot candidate table, padded with non-candidates up to ``vocab`` rows."""
    from booru_embed.sequences import TokenInfo

    table = TokenInfo.from_tokenizer(tokenizer).candidates_by_group()
    return torch.nn.functional.pad(table, (0, vocab - table.shape[1])).to(device)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of ``batch`` on ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def loss_and_grads(model: Any, batch: dict[str, Any], candidates: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    """The model's outputs on ``batch`` and the float32 gradients of the pre-training loss for every parameter."""
    from booru_embed.sequences import model_inputs
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.objectives import pretraining_losses

    model.zero_grad(set_to_none=True)
    outputs = model(**model_inputs(batch))
    dims = [*model.config.nested_dims, model.config.embedding_dim]
    loss, _ = pretraining_losses(outputs, batch, TrainingConfig(), candidates, dims)
    loss.backward()
    return outputs, {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def attention_numerics(args: argparse.Namespace, tokenizer: Any, batch: dict[str, Any], device: torch.device
                       ) -> list[dict[str, Any]]:
    """Each backend (and dtype) against eager in float32 on one packed batch: outputs and gradients."""
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining

    config = model_config(args.numerics_config, len(tokenizer.token_categories), tokenizer)
    torch.manual_seed(0)
    base = BooruEmbedForPreTraining(config).to(device).eval()  # eval: no dropout; gradients still flow
    candidates = candidates_for(tokenizer, config.vocab_size, device)
    batch = to_device(batch, device)
    runs = [("eager", torch.float32), ("sdpa", torch.float32)]
    if not args.dry_run:
        # booru_varlen in float32: the regrouped SDPA fallback on CUDA (groups built once per forward)
        runs = [("eager", torch.float32), *((b, torch.bfloat16) for b in ALL_BACKENDS), ("sdpa", torch.float32),
                ("booru_varlen", torch.float32)]
    reference = None
    floor: dict[torch.dtype, dict[str, float]] = {}
    rows = []
    for backend, dtype in runs:
        row = {"backend": backend, "dtype": str(dtype).replace("torch.", ""), "posts": int(batch["num_posts"]),
               "tokens": int(batch["num_tokens"])}
        if backend == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            rows.append({**row, "available": False, "error": "flash_attn is not installed"})
            continue
        try:
            model = copy.deepcopy(base).to(dtype)
            model.set_attn_implementation(backend)
            outputs, grads = loss_and_grads(model, batch, candidates)
        except Exception as error:  # a backend that fails here is a finding, not the end of the check
            rows.append({**row, "available": False, "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        hidden, embeddings = outputs.last_hidden_state.float(), outputs.embeddings.float()
        if reference is None:
            reference = (hidden, embeddings, grads)
            rows.append({**row, "available": True, "reference": True})
            continue
        diffs = {
            "max_abs_diff_hidden": (hidden - reference[0]).abs().max().item(),
            "max_abs_diff_embeddings": (embeddings - reference[1]).abs().max().item(),
            "max_abs_diff_grads": max((grads[n] - g).abs().max().item() for n, g in reference[2].items()),
            "max_abs_grad": max(g.abs().max().item() for g in reference[2].values()),
        }
        if backend == "eager":
            floor[dtype] = diffs
        # within 4x of eager's own rounding error in this dtype, plus float32 round-off
        eager = floor.get(dtype, {k: 0.0 for k in diffs})
        tolerance = {k: 4 * eager[k] + 1e-4 * (1 + (diffs["max_abs_grad"] if "grads" in k else 1))
                     for k in ("max_abs_diff_hidden", "max_abs_diff_embeddings", "max_abs_diff_grads")}
        ok = all(diffs[k] <= tolerance[k] for k in tolerance)
        rows.append({**row, "available": True, **diffs, "within_tolerance": ok,
                     "tolerance_grads": tolerance["max_abs_diff_grads"]})
    return rows


def throughput(args: argparse.Namespace, tokenizer: Any, batches: list[dict[str, Any]], name: str, backend: str,
               device: torch.device) -> dict[str, Any]:
    """Timed training steps (forward, losses, backward, AdamW) of config ``name`` on ``batches``."""
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
    from booru_embed.training.config import TrainingConfig
    from booru_embed.training.loop import forward_and_losses
    from booru_embed.training.objectives import negative_proposal

    config = model_config(name, args.vocab, tokenizer)
    row: dict[str, Any] = {"config": name, "backend": backend, "vocab": args.vocab,
                           "dtype": "float32" if device.type == "cpu" else "bf16 autocast"}
    torch.manual_seed(0)
    try:
        model = BooruEmbedForPreTraining(config).to(device).train()
        model.set_attn_implementation(backend)
    except Exception as error:
        return {**row, "error": f"{type(error).__name__}: {error}"[:300]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    candidates = candidates_for(tokenizer, args.vocab, device)
    dims = [*config.nested_dims, config.embedding_dim]
    training = TrainingConfig()  # the default heads: sampled read-back negatives, as training runs them
    counts = list(tokenizer.token_counts) + [0] * (args.vocab - len(tokenizer.token_counts))
    proposal = negative_proposal(counts).to(device)

    def step(batch: dict[str, Any]) -> None:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = forward_and_losses(model, batch, training, candidates, dims, proposal)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    timed = [batches[i % len(batches)] for i in range(args.timed_steps)]
    shape = sum((BatchShape.of(b) for b in timed), BatchShape(0, 0, 0, 0, 0, 0))
    try:
        for batch in batches[: args.warmup_steps]:  # warm-up: kernels chosen, allocator grown
            step(batch)
        synchronize()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for batch in timed:
            step(batch)
        synchronize()
        seconds = time.perf_counter() - started
    except Exception as error:  # out of memory, a kernel that does not run: a finding of the report
        return {**row, "error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    flops = training_flops(config, shape, training.readback_negatives)
    posts_per_s = shape.posts / seconds
    row.update(
        posts_per_batch=shape.posts // len(timed), tokens_per_batch=shape.tokens // len(timed),
        step_s=seconds / len(timed), tokens_per_s=shape.tokens / seconds, posts_per_s=posts_per_s,
        model_tflops=flops["total"] / seconds / 1e12, mfu=flops["total"] / seconds / (args.peak_tflops * 1e12),
        heads_share_of_flops=(flops["masked_head"] + flops["readback_heads"]) / flops["total"],
        epoch_minutes=args.epoch_posts / posts_per_s / 60,
        peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
    return row


class DeviceMemoryPeak:
    """The highest device memory in use while a block runs (nvidia-smi polled), or None without a GPU."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.peak_mib: float | None = None
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
            except (OSError, subprocess.TimeoutExpired):
                return
            if used:
                self.peak_mib = max(self.peak_mib or 0.0, float(used[0]))

    def __enter__(self) -> DeviceMemoryPeak:
        if self.gpu:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def launch(args: argparse.Namespace, data: Path, tokenizer_dir: Path, output: Path, label: str, *extra: str
           ) -> dict[str, Any]:
    """One `accelerate launch train_hf.py` run (its output in WORK/train/LABEL.log): wall time, last summary line."""
    gpu = not args.dry_run
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "bf16" if gpu else "no", "--dynamo_backend", "no", *([] if gpu else ["--cpu"]),
        str(REPO / "train_hf.py"), "--config", args.train_config, "--dataset", str(data),
        "--tokenizer", str(tokenizer_dir), "--output", str(output), "--max-steps", str(args.steps),
        "--checkpoint-every", str(args.steps // 2), "--batch-size", str(args.train_batch_size),
        "--num-workers", str(args.workers), "--mixed-precision", "bf16" if gpu else "no", "--eval-posts", "0",
        "--warmup-steps", str(max(1, args.steps // 10)), "--log-every", "1", "--no-progress",
        *(["--attn-implementation", "booru_varlen"] if gpu else []), *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (output.parent / f"{label}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"training run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    summary = next((line for line in done.stdout.splitlines()[::-1] if line.startswith(("done:", "stopped at"))), "")
    return {"seconds": round(seconds, 1), "summary": summary}


def losses(output: Path) -> dict[int, float]:
    """Step -> total loss from MODEL_DIR/logs/train_loss.jsonl."""
    lines = (output / "logs" / "train_loss.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


def training_resume(args: argparse.Namespace, data: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """A full run, and the same run stopped at its checkpoint and resumed: are the losses the same?"""
    half = args.steps // 2
    root = args.work / "train"
    with DeviceMemoryPeak(gpu=not args.dry_run) as memory:
        full = launch(args, data, tokenizer_dir, root / "full", "full")
    first = launch(args, data, tokenizer_dir, root / "resumed", "stopped", "--stop-after-steps", str(half))
    second = launch(args, data, tokenizer_dir, root / "resumed", "resumed", "--resume")
    a, b = losses(root / "full"), losses(root / "resumed")
    if sorted(a) != list(range(1, args.steps + 1)) or sorted(b) != sorted(a):
        raise RuntimeError(f"loss logs hold steps {sorted(a)[:3]}... and {sorted(b)[:3]}..., expected 1..{args.steps}")
    before = max(abs(a[s] - b[s]) for s in a if s <= half)
    after = max(abs(a[s] - b[s]) for s in a if s > half)
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "config": args.train_config, "steps": args.steps, "checkpoint_step": half,
        "batch_size": args.train_batch_size, "workers": args.workers,
        "full_run_s": full["seconds"], "full_run_summary": full["summary"],
        "stopped_run_s": first["seconds"], "resumed_run_s": second["seconds"],
        "first_loss": a[1], "last_loss": a[args.steps],
        "max_loss_diff_before_resume": before, "max_loss_diff_after_resume": after,
        "exact_resume": after == 0.0,
        "peak_device_memory_gb": None if memory.peak_mib is None else memory.peak_mib / 1024,
        "peak_process_rss_gb": children_rss,
    }


def _attention_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| attention | dtype | max abs diff: hidden | embeddings | grads (max grad) | within tolerance |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if not row["available"]:
            lines.append(f"| {row['backend']} | {row['dtype']} | not run: {row['error']} | | | |")
        elif row.get("reference"):
            lines.append(f"| {row['backend']} | {row['dtype']} | reference | | | |")
        else:
            lines.append(f"| {row['backend']} | {row['dtype']} | {row['max_abs_diff_hidden']:.2e} | "
                         f"{row['max_abs_diff_embeddings']:.2e} | {row['max_abs_diff_grads']:.2e} "
                         f"({row['max_abs_grad']:.2e}) | {'yes' if row['within_tolerance'] else 'NO'} |")
    return lines


def _loader_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| loader workers | posts/batch | posts/s | tokens/post |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['batch_size']} | {r['posts_per_s']:,.0f} | {r['tokens_per_post']:.1f} |"
              for r in rows]
    return lines


def _throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| config | attention | vocab | posts/batch | tokens/batch | step s | tokens/s | posts/s | TFLOP/s | MFU "
             "| heads' FLOPs | epoch (min) | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['config']} | {row['backend']} | {row['vocab']:,} | failed: {row['error']} |"
                         + " |" * 9)
            continue
        memory = "" if row["peak_memory_gb"] is None else f"{row['peak_memory_gb']:.1f}"
        lines.append(f"| {row['config']} | {row['backend']} | {row['vocab']:,} | {row['posts_per_batch']} | "
                     f"{row['tokens_per_batch']:,} | {row['step_s']:.3f} | {row['tokens_per_s']:,.0f} | "
                     f"{row['posts_per_s']:,.0f} | {row['model_tflops']:.1f} | {row['mfu']:.1%} | "
                     f"{row['heads_share_of_flops']:.0%} | {row['epoch_minutes']:.1f} | {memory} |")
    return lines


def _training_table(t: dict[str, Any]) -> list[str]:
    memory = (f"{t['peak_device_memory_gb']:.1f} GiB on the device" if t["peak_device_memory_gb"] is not None
              else f"{t['peak_process_rss_gb']:.2f} GiB RSS")
    return ["| training | steps | checkpoint | full run s | loss step 1 -> last | max loss diff before / after resume "
            "| exact resume | peak memory |", "|---|---|---|---|---|---|---|---|",
            f"| {t['config']}, {t['batch_size']} posts, {t['workers']} workers | {t['steps']} | {t['checkpoint_step']} "
            f"| {t['full_run_s']} | {t['first_loss']:.3f} -> {t['last_loss']:.3f} | "
            f"{t['max_loss_diff_before_resume']:.2e} / {t['max_loss_diff_after_resume']:.2e} | "
            f"{'yes' if t['exact_resume'] else 'no'} | {memory} |"]


TABLES = {"attention": _attention_table, "loader": _loader_table, "throughput": _throughput_table,
          "training": _training_table}


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (a section that failed shows its error; one not reached is left out)."""
    env, corpus = report["environment"], report.get("corpus", {})
    lines = [f"# GPU check ({report['mode']}, {report.get('elapsed_s', 0):.0f} s)", "",
             f"{env['device']}; torch {env['torch']}, transformers {env['transformers']}, accelerate "
             f"{env['accelerate']}; flash_attn {'yes' if env['flash_attn'] else 'no'}, PyTorch varlen "
             f"{'yes' if env['torch_varlen_attn'] else 'no'} (backward: "
             f"{'yes' if env.get('torch_varlen_backward') else 'no'}). Corpus: {corpus.get('posts', 0):,} posts, "
             f"setting {corpus.get('setting')}, vocabulary {corpus.get('vocab', 0):,}."]
    guards = report.get("guards", {})
    if "padded_packed_row_refused" in guards:
        lines.append(f"A packed row with trailing padding: {'refused' if guards['padded_packed_row_refused'] else 'NOT refused'}.")
    for name, table in TABLES.items():
        if name in report:
            section = report[name]
            failed = isinstance(section, dict) and "error" in section
            lines += ["", f"{name}: failed: {section['error']}" if failed else "\n".join(table(section))]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path, started: float) -> None:
    """OUT/gpu_check.json and OUT/gpu_check.md as they stand (written after every section)."""
    report["elapsed_s"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every part, writing OUT/gpu_check.json and OUT/gpu_check.md after each; return the report.

    A part that fails records its error and the next one runs; a report cut short by a time limit holds
    every part finished before it.
    """
    from booru_embed.training.loop import load_tokenizer

    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run on CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"mode": "dry-run" if args.dry_run else "gpu", "environment": environment(device)}
    data, tokenizer_dir, report["corpus"] = make_corpus(args)
    tokenizer = load_tokenizer(tokenizer_dir)
    report["corpus"]["vocab"] = len(tokenizer.token_categories)
    args.vocab = max(args.vocab, report["corpus"]["vocab"])
    write_report(report, args.out, started)
    backends = ["sdpa"] if args.dry_run else ["booru_varlen", "sdpa"] + (
        ["flash_attention_2"] if report["environment"]["flash_attn"] else [])
    parts = {
        "guards": lambda: packed_row_guard(tokenizer, device),
        "attention": lambda: attention_numerics(
            args, tokenizer, collated_batches(data, tokenizer, args.numerics_posts, 1)[0], device),
        "loader": lambda: loader_rates(args, data, tokenizer),
        "throughput": lambda: [
            throughput(args, tokenizer, batches, name, backend, device)
            for batches in [collated_batches(data, tokenizer, args.batch_size, max(4, min(args.timed_steps, 10)))]
            for name in args.throughput_configs for backend in backends],
        "training": lambda: training_resume(args, data, tokenizer_dir),
    }
    for name, part in parts.items():
        try:
            report[name] = part()
        except Exception as error:  # recorded; the other parts still run
            report[name] = {"error": f"{type(error).__name__}: {error}"[-3000:]}
        write_report(report, args.out, started)
        print(f"{name} done at {time.perf_counter() - started:.0f} s", flush=True)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
