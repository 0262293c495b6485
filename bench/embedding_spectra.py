"""Where the pooled embedding loses directions: the centred spectrum of each stage of the encoder on test posts.

    python bench/embedding_spectra.py MODEL_DIR DATA_DIR [--posts 1000]

For the first ``--posts`` posts of DATA_DIR's test split (tags only, no rating or score), prints for
each stage (the plain mean of the input embeddings, the mean token state after every block, the
pooler's input, the bag-of-tags path of ``pooler_input_skip`` where the model has it, and the
embedding) how many principal directions hold 90 / 99 / 99.9 % of the centred variance and the
effective rank (exp of the entropy of the normalised eigenvalues), then the singular values of the
pooler and of every read-back head's first matrix at a few ranks. An embedding that keeps the post
needs its variance spread over its width: docs/readback.md reads these numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CATEGORIES = ("general", "artist", "copyright", "character", "meta")


def spectrum_row(name: str, values: torch.Tensor) -> str:
    """One table row: directions holding 90 / 99 / 99.9 % of the centred variance of ``values`` (rows), and its
    effective rank."""
    centred = (values - values.mean(0)).double()
    energy = torch.linalg.svdvals(centred) ** 2
    share = energy / energy.sum()
    cumulative = torch.cumsum(share, 0)
    counts = [int((cumulative < level).sum()) + 1 for level in (0.9, 0.99, 0.999)]
    effective_rank = float(torch.exp(-(share * torch.log(share + 1e-30)).sum()))
    return f"| {name} | {values.shape[1]} | {counts[0]} | {counts[1]} | {counts[2]} | {effective_rank:.1f} |"


def main() -> None:
    """Print the spectra table of one model on one dataset's test posts."""
    from datasets import load_from_disk

    from booru_embed.embedder import BooruEmbedder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--posts", type=int, default=1000)
    args = parser.parse_args()

    embedder = BooruEmbedder.from_pretrained(args.model_dir, device="cpu")
    encoder = embedder.model.model
    test = load_from_disk(args.data_dir)["test"]
    test = test.select(range(min(args.posts, len(test))))
    tokenizer = embedder.tokenizer
    sequences = []
    for row in test:
        ids = (tokenizer.tag_to_id(tag) for category in CATEGORIES for tag in row[category])
        sequences.append([tokenizer.cls_token_id, *(i for i in ids if i is not None)])
    batch = {name: torch.as_tensor(value) for name, value in embedder._batch(sequences).items()}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        encoder.embeddings.register_forward_hook(lambda m, i, o: captured.__setitem__("inputs", o)),
        encoder.pooler.register_forward_hook(lambda m, i, o: captured.__setitem__("pooler input", i[0])),
    ]
    for index, layer in enumerate(encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, index=index: captured.__setitem__(f"block {index}", o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        output = encoder(**batch)
    for hook in hooks:
        hook.remove()
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def token_mean(states: torch.Tensor) -> torch.Tensor:
        return (states * mask).sum(1) / mask.sum(1)

    print(f"{len(sequences)} test posts of {args.data_dir}; model {args.model_dir}\n")
    print("| stage | width | dims for 90 % | 99 % | 99.9 % | effective rank |")
    print("|---|---|---|---|---|---|")
    print(spectrum_row("mean of the input embeddings", token_mean(captured["inputs"])))
    for index in range(len(encoder.layers)):
        print(spectrum_row(f"mean token state after block {index}", token_mean(captured[f"block {index}"])))
    print(spectrum_row("pooler input (pooled final states)", captured["pooler input"]))
    share = None
    if getattr(encoder, "input_pooler", None) is not None:
        with torch.no_grad():
            skip = encoder.input_pooler(encoder.input_norm(token_mean(captured["inputs"])))
        print(spectrum_row("bag-of-tags path (pooler_input_skip)", skip))
        share = float(skip.norm(dim=1).mean() / output.pooler_output.norm(dim=1).mean())
    print(spectrum_row("embedding", output.pooler_output))
    if share is not None:
        print(f"\nmean norm of the bag-of-tags path / of the embedding: {share:.3f}")
    with torch.no_grad():
        ranks = lambda values: ", ".join(f"{float(v):.4f}" for v in values[[0, len(values) // 4, len(values) // 2,
                                                                            3 * len(values) // 4, -1]])
        print(f"\npooler singular values (first, 1/4, 1/2, 3/4, last): {ranks(torch.linalg.svdvals(encoder.pooler.weight))}")
        for head in getattr(embedder.model, "readback_heads", []):
            print(f"read-back head {head.input_dim}: {ranks(torch.linalg.svdvals(head.dense.weight))}")


if __name__ == "__main__":
    main()
