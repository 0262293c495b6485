"""Training: hyper-parameters (config), batches (collator), losses (objectives), the Accelerate loop (loop).

The loop's helpers: checkpoints, resume and SIGTERM (checkpointing), the logged losses (loss_log).
"""

from .config import TrainingConfig
from .loop import TrainingResult, fit, train

__all__ = ["TrainingConfig", "TrainingResult", "fit", "train"]
