"""Train a booru-embed model: `python train_hf.py ...` on one CPU, `accelerate launch train_hf.py ...` on many.

    accelerate launch train_hf.py --config tiny --dataset DATA_DIR \
        --tokenizer TOKENIZER_DIR --output MODEL_DIR [--max-steps N] [--resume]

`--config` takes a shipped name (tiny, small, base) or the path of a config JSON. Every hyper-parameter
is a flag (see --help); a config's `training` block sets their defaults.
"""

from __future__ import annotations

import argparse
import sys

from booru_embed.errors import UsageError
from booru_embed.training.loop import add_train_arguments, run_train


def main() -> int:
    """Parse the flags and run the training loop (a bad flag or path prints one line, exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    args = parser.parse_args()
    try:
        return run_train(args)
    except UsageError as error:
        print(f"train_hf.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
