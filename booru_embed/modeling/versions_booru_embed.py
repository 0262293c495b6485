"""The transformers release this remote code needs, checked before anything is imported from transformers.

The remote code uses transformers 5 APIs (`PreTrainedConfig`, `transformers.initialization`, the attention
registry, the `_compatible_flash_implementations` hook). Every remote-code file that imports from
transformers calls `require_transformers()` first, so a Hub user on an older release gets one line naming
the version to install instead of an ImportError from inside a file.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

# The oldest release on which a saved model folder loads and runs (eager, sdpa, flash_attention_2 served by
# booru_varlen); checked by .ci/transformers_floor.sh and kept equal to pyproject.toml's floor by the tests.
MIN_TRANSFORMERS = "5.3.0"


def require_transformers() -> None:
    """Raise a one-line ImportError when the installed transformers is older than `MIN_TRANSFORMERS`."""
    found = transformers.__version__
    if Version(found).release < Version(MIN_TRANSFORMERS).release:
        raise ImportError(
            f"booru-embed's model code needs transformers>={MIN_TRANSFORMERS}, found {found}: "
            f"pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        )
