"""Lightning callbacks that count ALIVE steps (not optimizer steps): checkpoints and transcript flushes.

A checkpoint waits for the run's metrics to reach MLflow and carries what could not be sent (see
`tracking.LiveMLFlowLogger`); its folder holds `run.json` (the config fingerprint), which `resume=auto`
uses to find it again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from alive_exp.tracking import LiveMLFlowLogger, log_transcripts

log = logging.getLogger(__name__)

# keys that do not change what a run computes: a run may resume under different values of these
NOT_FINGERPRINTED = ("resume", "trainer.progress_bar", "hardware.torch_threads")


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved config minus `NOT_FINGERPRINTED`: equal fingerprints = the same run."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_FINGERPRINTED:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_resumable(fingerprint: str, patterns: list[str]) -> Path | None:
    """The newest `last.ckpt` matching the glob `patterns` whose run has this fingerprint and did not finish."""
    found = []
    for pattern in patterns:
        for ckpt in map(Path, glob.glob(pattern)):
            info = read_run_info(ckpt.parent)
            if info.get("fingerprint") == fingerprint and not info.get("finished"):
                found.append(ckpt)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def read_run_info(dirpath: Path) -> dict[str, Any]:
    try:
        return json.loads((dirpath / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def write_run_info(dirpath: Path, **values: Any) -> None:
    """Update `run.json` next to the checkpoints atomically."""
    dirpath.mkdir(parents=True, exist_ok=True)
    info = {**read_run_info(dirpath), **values}
    tmp = dirpath / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, dirpath / "run.json")


class AliveCheckpoint(pl.Callback):
    """Writes `last.ckpt` every `every` ALIVE steps and at the end, atomically (a kill never leaves half a file).

    Before writing, it waits (bounded) for the metrics of the steps it covers to reach MLflow, and the file
    carries whatever could not be sent, so a kill after the checkpoint loses no metric (they are logged on
    resume); steps after the checkpoint rerun on resume and keep the values MLflow already holds.
    """

    def __init__(self, dirpath: str | Path, every: int, fingerprint: str | None = None) -> None:
        self.dirpath, self.every, self.fingerprint = Path(dirpath), every, fingerprint

    def save(self, trainer: pl.Trainer, module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            # the run's identity first: a kill between the two writes below leaves a checkpoint `resume=auto` still
            # finds (its run.json then names the previous checkpoint's step, never none)
            write_run_info(self.dirpath, fingerprint=self.fingerprint, mlflow_run_id=module.mlflow_run_id)
            os.replace(tmp, self.dirpath / "last.ckpt")
            write_run_info(self.dirpath, alive_step=module.alive_step)

    def on_save_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        logger = trainer.logger
        pending = []
        if isinstance(logger, LiveMLFlowLogger):
            logger.drain(timeout=30.0)
            pending = logger.undelivered()
        checkpoint["alive_resume"] = {"fingerprint": self.fingerprint, "pending_metrics": pending}

    def on_load_checkpoint(self, trainer, module, checkpoint: dict[str, Any]) -> None:
        # progress is the module's alive_step (the loader yields the steps left); Lightning's restored epoch
        # loop would end a resumed run at once when the checkpoint was written at the end of training
        checkpoint.pop("loops", None)
        pending = checkpoint.get("alive_resume", {}).get("pending_metrics", [])
        if trainer.is_global_zero and pending and isinstance(trainer.logger, LiveMLFlowLogger):
            trainer.logger.restore(pending)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.every and module.alive_step % self.every == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer, module)


class TranscriptFlush(pl.Callback):
    """Moves the module's buffered transcripts into the MLflow table at each checkpoint and at the end.

    Listed after `AliveCheckpoint`, so a kill between checkpoint and flush loses sample transcripts of
    those steps rather than writing them twice.
    """

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
