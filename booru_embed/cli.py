"""The `booru-embed` command line: a thin dispatcher over the package's modules.

Each subcommand lives in the module named in ``COMMANDS``, which defines
``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` (``<name>`` with ``-`` as ``_``).
Only the chosen command's module is imported, so ``booru-embed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import UsageError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate-corpus": ("booru_embed.data.synthetic", "write a synthetic Danbooru CSV export and its ground truth"),
    "build-dataset": ("booru_embed.data.ingest", "turn CSV/TSV/Parquet/JSON exports or booru-chars files into a datasets DATA_DIR"),
    "analyze": ("booru_embed.data.analysis", "tag counts, coverage, lengths and plots of a DATA_DIR"),
    "build-tokenizer": ("booru_embed.data.tokenizer_build", "choose the whole-tag vocabulary and write a tokenizer folder"),
    "train": ("booru_embed.training.loop", "train a model (same as `accelerate launch train_hf.py`)"),
    "evaluate": ("booru_embed.evaluation.command", "measure a model against the co-occurrence baseline"),
    "suggest": ("booru_embed.embedder", "suggest missing tags for a tag set"),
    "embed": ("booru_embed.embedder", "embed tag sets into a .npy file"),
    "export-onnx": ("booru_embed.export", "export the encoder and heads to ONNX for ONNX Runtime serving"),
    "index": ("booru_embed.index", "embed a DATA_DIR split and build a nearest-post search index"),
    "search": ("booru_embed.index", "find the posts nearest to a tag set in an INDEX_DIR"),
    "audit": ("booru_embed.audit", "flag implausible tags and list missing ones for the posts of a DATA_DIR"),
    "publish": ("booru_embed.publish", "push a model folder to the Hugging Face Hub"),
    "demo": ("booru_embed.demo", "run the whole pipeline on a generated corpus"),
    "normalize": ("booru_embed.tags", "normalise tag sets: aliases, duplicates, implications, canonical order"),
    "export-captions": ("booru_embed.captions", "write a DATA_DIR's tags as captions for image-model trainers"),
    "app": ("booru_embed.app", "serve a local page: completion, suggestions, normal forms, similar posts"),
    "align": ("booru_embed.alignment.command", "learn a map from external (image) embeddings into the model's space"),
    "decode": ("booru_embed.decode", "read tags back from embeddings in a .npy file (--aligner for image embeddings)"),
}


def _function(command: str, kind: str):
    module_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    return getattr(module, f"{kind}_{command.replace('-', '_')}" + ("_arguments" if kind == "add" else ""))


def build_parser(chosen: str | None) -> argparse.ArgumentParser:
    """Build the parser; only ``chosen``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="booru-embed", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command, (_, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(command, help=help_text, description=help_text)
        if command == chosen:
            _function(command, "add")(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``booru-embed`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(_function(args.command, "run")(args) or 0)
    except UsageError as error:
        print(f"booru-embed {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"booru-embed {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
