"""Training: hyper-parameters (config), batches (collator), losses (objectives), the Accelerate loop (loop)."""

from .config import TrainingConfig
from .loop import TrainingResult, fit, train

__all__ = ["TrainingConfig", "TrainingResult", "fit", "train"]
