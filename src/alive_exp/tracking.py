"""MLflow: the run of a training job, its params, config, git commit, transcripts and sweep nesting.

Lightning's MLFlowLogger creates runs through `MlflowClient` (there is no active run), so sweep nesting
uses the `mlflow.parentRunId` tag explicitly: every job of a multirun becomes a child of one parent run.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "alive.sweep_dir"


def git_commit(root: str | Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config as dotted keys -> values (lists kept as strings), for MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = str(node)[:6000]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if artifact_location:
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
        artifact_location = Path(artifact_location).resolve().as_uri()
    return c.create_experiment(name, artifact_location=artifact_location)


def sweep_parent(tracking_uri: str, experiment_id: str, sweep_dir: str, overrides: list[str]) -> str:
    """The parent run of a multirun, created by the first job to ask and found by the others."""
    c = client(tracking_uri)
    key = str(Path(sweep_dir).resolve())
    found = c.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = c.create_run(experiment_id, run_name=f"sweep {Path(sweep_dir).name}", tags={SWEEP_TAG: key})
    c.log_param(run.info.run_id, "sweep_dir", key)
    c.log_text(run.info.run_id, "\n".join(overrides), "sweep_overrides.txt")
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def make_logger(cfg: DictConfig, *, run_id: str | None = None, parent_run_id: str | None = None):
    """An MLFlowLogger on the configured store; `run_id` continues a run (resume)."""
    from pytorch_lightning.loggers import MLFlowLogger

    lc = cfg.logger
    ensure_experiment(lc.tracking_uri, lc.experiment_name, lc.artifact_location)
    tags = {k: str(v) for k, v in (lc.tags or {}).items()}
    tags["reward_mode"] = cfg.reward.mode
    tags["seed"] = str(cfg.seed)
    tags["domain"] = cfg.benchmark.domain
    if cfg.get("experiment_name"):
        tags["experiment"] = cfg.experiment_name
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    commit = git_commit(cfg.paths.root_dir)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    name = lc.run_name or f"{cfg.benchmark.domain}-{cfg.reward.mode}-s{cfg.seed}"
    return MLFlowLogger(experiment_name=lc.experiment_name, tracking_uri=lc.tracking_uri, run_name=name,
                        tags=None if run_id else tags, run_id=run_id)


def log_config(logger, cfg: DictConfig) -> None:
    """Flattened params and the resolved config.yaml artifact."""
    c, run_id = logger.experiment, logger.run_id
    params = flatten(cfg)
    existing = c.get_run(run_id).data.params
    from mlflow.entities import Param

    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i:i + 100])
    c.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def log_transcripts(logger, rows: list[dict[str, Any]], artifact_file: str = "transcripts.json") -> None:
    """Append rows to the run's transcript table (readable in the MLflow UI's artifact view)."""
    if rows:
        logger.experiment.log_table(logger.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

