"""Lightning callbacks that count ALIVE steps (not optimizer steps): checkpoints and transcript flushes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl

from alive_exp.tracking import log_transcripts

log = logging.getLogger(__name__)


class AliveCheckpoint(pl.Callback):
    """Writes `last.ckpt` every `every` ALIVE steps and at the end, atomically (a kill never leaves half a file)."""

    def __init__(self, dirpath: str | Path, every: int) -> None:
        self.dirpath, self.every = Path(dirpath), every

    def save(self, trainer: pl.Trainer, module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.dirpath / "last.ckpt")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every and module.alive_step % self.every == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer, module)


class TranscriptFlush(pl.Callback):
    """Moves the module's buffered transcripts into the MLflow table at each checkpoint and at the end."""

    def __init__(self, every: int) -> None:
        self.every = every

    def flush(self, trainer, module) -> None:
        if trainer.is_global_zero and trainer.logger is not None and module.transcripts:
            log_transcripts(trainer.logger, module.transcripts)
        module.transcripts.clear()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every and module.alive_step % self.every == 0:
            self.flush(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.flush(trainer, module)
