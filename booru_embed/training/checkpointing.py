"""Stopping and resuming: the run's position, atomic ``save_state`` checkpoints, SIGTERM at a step boundary.

A checkpoint is ``MODEL_DIR/checkpoints/step_N/``: Accelerate's ``save_state`` (model, optimizer,
scheduler, RNG states of every process) plus ``trainer_state.json`` (a ``TrainState``). It is written
into a temporary folder and renamed when complete, so a folder named ``step_N`` is always whole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where the run is: saved with every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed (per process)
    tokens: int = 0  # tokens seen, all processes together
    seconds: float = 0.0  # training time before this session


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints of MODEL_DIR, oldest first."""
    folder = output / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator: Any, output: Path, state: TrainState, keep: int) -> Path:
    """``accelerator.save_state`` into a temporary folder, renamed when complete (atomic); keeps the last ``keep``."""
    final = output / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.step}"
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_last_checkpoint(accelerator: Any, output: Path) -> TrainState:
    """``accelerator.load_state`` of the newest checkpoint (there must be one) and the state saved with it."""
    last = checkpoints(output)[-1]
    accelerator.load_state(str(last))
    state = TrainState(**json.loads((last / STATE_FILE).read_text()))
    accelerator.print(f"resumed from {last} (step {state.step}, epoch {state.epoch})")
    return state


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which saves a checkpoint and stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopSignal:
    """Remembers a SIGTERM so the loop can save a checkpoint and exit at the next step boundary."""

    def __init__(self) -> None:
        self.received = False
        self.previous = None

    def __enter__(self) -> StopSignal:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self.previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
