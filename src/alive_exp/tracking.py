"""MLflow: the run of a training job, its params, config, git commit, transcripts and sweep nesting.

Lightning's MLFlowLogger creates runs through `MlflowClient` (there is no active run), so sweep nesting
uses the `mlflow.parentRunId` tag explicitly: every job of a multirun becomes a child of one parent run.
Metrics are committed to MLflow with checkpoints (`CheckpointedMLFlowLogger`), so a resumed run logs
every (key, step) exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

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


def sweep_parent(tracking_uri: str, sweep_dir: str, experiment_name: str, artifact_location: str | None,
                 overrides: list[str]) -> str:
    """The parent run of a multirun: created once, under a file lock in the sweep folder, found by every job.

    Jobs of a parallel launcher (joblib, SLURM) start together; the lock makes the store's creation,
    the experiment's and the parent's one critical section, so there is exactly one parent per sweep.
    """
    from filelock import FileLock

    folder = Path(sweep_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "mlflow_parent.json"
    with FileLock(str(folder / ".mlflow_parent.lock")):
        if record.exists():
            return json.loads(record.read_text())["run_id"]
        experiment_id = ensure_experiment(tracking_uri, experiment_name, artifact_location)
        c = client(tracking_uri)
        found = c.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{folder}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:
            run = c.create_run(experiment_id, run_name=f"sweep {folder.name}", tags={SWEEP_TAG: str(folder)})
            run_id = run.info.run_id
            c.log_param(run_id, "sweep_dir", str(folder))
            c.log_text(run_id, "\n".join(overrides), "sweep_overrides.txt")
        record.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}))
        return run_id


@contextlib.contextmanager
def sweep_child(tracking_uri: str, parent_id: str | None, sweep_dir: str | None, run_id: Callable[[], str | None]):
    """While a job of a sweep runs its parent is RUNNING; the last job to end marks it FINISHED (or FAILED).

    Without a hook at the end of the sweep, the parent's status follows its children: when a job ends
    and no sibling still runs, the parent ends. With a launcher that runs jobs in batches it may end
    between batches and run again with the next one; after the last job it stays ended.
    """
    if parent_id is None:
        yield
        return
    from filelock import FileLock

    c = client(tracking_uri)
    lock = FileLock(str(Path(sweep_dir).resolve() / ".mlflow_parent.lock"))
    with lock:
        c.update_run(parent_id, status="RUNNING")
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with lock:
            mine = run_id()
            if failed and mine and c.get_run(mine).info.status == "RUNNING":
                c.set_terminated(mine, "FAILED")
            children = c.search_runs([c.get_run(parent_id).info.experiment_id],
                                     filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
            statuses = {r.info.status for r in children if r.info.run_id != mine} | {"FAILED" if failed else "FINISHED"}
            if "RUNNING" not in statuses and "SCHEDULED" not in statuses:
                c.set_terminated(parent_id, "FAILED" if statuses & {"FAILED", "KILLED"} else "FINISHED")


def make_logger(cfg: DictConfig, *, run_id: str | None = None, parent_run_id: str | None = None):
    """A `CheckpointedMLFlowLogger` on the configured store; `run_id` continues a run (resume)."""
    lc = cfg.logger
    ensure_experiment(lc.tracking_uri, lc.experiment_name, lc.artifact_location)
    tags = {k: str(v) for k, v in (lc.tags or {}).items()}
    tags["reward_mode"] = cfg.reward.mode
    tags["seed"] = str(cfg.seed)
    tags["domain"] = cfg.benchmark.domain
    tags["model"] = cfg.model.name
    if cfg.get("experiment_name"):
        tags["experiment"] = cfg.experiment_name
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    commit = git_commit(cfg.paths.root_dir)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    name = lc.run_name or f"{cfg.benchmark.domain}-{cfg.reward.mode}-s{cfg.seed}"
    return CheckpointedMLFlowLogger(experiment_name=lc.experiment_name, tracking_uri=lc.tracking_uri, run_name=name,
                                    tags=None if run_id else tags, run_id=run_id)


class CheckpointedMLFlowLogger(MLFlowLogger):
    """An MLFlowLogger whose metrics reach MLflow together with the checkpoint that covers their step.

    A run killed after step k+j resumes from its checkpoint at step k and runs k+1..k+j again; had those
    steps been logged, MLflow would hold them twice (it has no metric delete). So metrics wait in
    `pending` until `commit()`, which `AliveCheckpoint` calls right after the checkpoint file is in place;
    the checkpoint carries `pending` too, and `restore()` logs whatever of it a kill kept from MLflow.
    Each (key, step) thus appears exactly once. A run that fails does not commit: its steps will rerun.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics, step: int | None = None) -> None:
        self.pending.append((step, {k: float(v) for k, v in metrics.items()}))

    def commit(self) -> None:
        for step, metrics in self.pending:
            super().log_metrics(metrics, step)
        self.pending.clear()

    def restore(self, pending: list[tuple[int | None, dict[str, float]]]) -> None:
        """Log the (key, step) pairs of a checkpoint's pending metrics that MLflow does not hold yet."""
        keys = {k for _, m in pending for k in m}
        logged = {k: {m.step for m in self.experiment.get_metric_history(self.run_id, k)} for k in keys}
        for step, metrics in pending:
            missing = {k: v for k, v in metrics.items() if (step or 0) not in logged[k]}
            if missing:
                super().log_metrics(missing, step)

    def finalize(self, status: str = "success") -> None:
        if status == "success":
            self.commit()
        super().finalize(status)


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

