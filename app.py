"""The booru-embed page as a Hugging Face Space runs it: ``python app.py [MODEL_DIR [INDEX_DIR]]``.

MODEL_DIR (a model folder or Hub repo id) and the optional INDEX_DIR (of ``booru-embed index``) come
from the arguments or else from the environment variables of the same names. The page is the one of
``booru-embed app`` (``booru_embed.app.load_app``). Analytics are off and no share link is made; the
host and port come from Gradio's own variables (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``), which
Spaces sets.
"""

from __future__ import annotations

import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before anything imports gradio

from booru_embed.app import load_app  # noqa: E402
from booru_embed.errors import UsageError  # noqa: E402


def settings(argv: list[str]) -> tuple[str, str | None]:
    """MODEL_DIR and INDEX_DIR from ``argv`` or the environment; ``UsageError`` without a model."""
    if len(argv) > 2:
        raise UsageError(f"usage: python app.py [MODEL_DIR [INDEX_DIR]], got {len(argv)} arguments")
    model_dir = argv[0] if argv else os.environ.get("MODEL_DIR")
    index_dir = argv[1] if len(argv) > 1 else os.environ.get("INDEX_DIR") or None
    if not model_dir:
        raise UsageError("no model: give MODEL_DIR as an argument or an environment variable")
    return model_dir, index_dir


def main(argv: list[str]) -> int:
    """Build the page and serve it until interrupted; 2 with a one-line message on a usage error."""
    try:
        demo = load_app(*settings(argv))
    except UsageError as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    demo.launch(share=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
