"""The logged training losses: named running sums over a step's micro-batches, one line per optimizer step.

Every micro-batch adds its losses (and its token count) to ``RunningSums``; at the optimizer step
the sums of all processes are added in one collective, the step's means are the sums divided by the
number of micro-batches, and ``LossLog`` appends them to ``MODEL_DIR/logs/train_loss.jsonl``. The
sums are float32 tensors on the training device, added in micro-batch order, so a resumed run logs
the very values of an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOSS_LOG = "train_loss.jsonl"
LOGGED = ("loss", "mlm", "contrastive", "readback", "rating", "score", "view_accuracy")


class RunningSums:
    """Sums by name since the last ``reduce``; ``reduce`` adds those of every process, in one collective."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.sums: dict[str, Any] = {}

    def add(self, **values: Any) -> None:
        """Add each value (a scalar tensor or a number) to the running sum of its name."""
        import torch

        for name, value in values.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros((), device=self.accelerator.device)
            self.sums[name] += torch.as_tensor(value, device=self.accelerator.device).float()

    def reduce(self) -> dict[str, float]:
        """The sums of all processes by name (every process must have added the same names); starts again at zero."""
        import torch

        names = list(self.sums)
        totals = self.accelerator.reduce(torch.stack([self.sums[name] for name in names]), reduction="sum")
        self.sums = {}
        return dict(zip(names, totals.tolist()))


class LossLog:
    """``logs/train_loss.jsonl``: ``{"step", "lr", <LOGGED means>}`` per optimizer step, written by the main process."""

    def __init__(self, logs: Path, is_main_process: bool) -> None:
        self.path = logs / LOSS_LOG
        self.is_main_process = is_main_process

    def keep_until(self, step: int) -> None:
        """Drop the lines after ``step`` (a resumed run writes them again), creating the file if needed."""
        if not self.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        self.path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))

    def append(self, step: int, lr: float, losses: dict[str, float]) -> None:
        """Write the line of optimizer step ``step``."""
        if self.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": step, "lr": lr, **losses}) + "\n")
