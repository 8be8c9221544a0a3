"""MLflow: the run of a training job, its params, config, git commit, transcripts and sweep nesting.

Lightning's MLFlowLogger creates runs through `MlflowClient` (there is no active run), so sweep nesting
uses the `mlflow.parentRunId` tag explicitly: every job of a multirun becomes a child of one parent run.
Metrics reach MLflow as they are logged (`LiveMLFlowLogger`, a sender thread that counts and retries
failures), and a resumed run skips the (key, step) pairs MLflow already holds, so each is logged once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from lightning_fabric.utilities.logger import _add_prefix
from pytorch_lightning.loggers import MLFlowLogger

from alive_exp import mlflow_ui

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
    """The experiment's id, created when missing; either way it gets its kind and description (`mlflow_ui`)."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        experiment_id = exp.experiment_id
    else:
        if artifact_location:
            Path(artifact_location).mkdir(parents=True, exist_ok=True)
            artifact_location = Path(artifact_location).resolve().as_uri()
        experiment_id = c.create_experiment(name, artifact_location=artifact_location)
    mlflow_ui.describe_experiment(c, experiment_id)
    return experiment_id


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


class SweepReport(Callback):
    """Hydra callback: when a multirun's last job has ended, its parent run gets the report of its children
    (artifacts `report/`: report.md, plots, report.json). A report that cannot be built is logged, and
    the sweep's jobs keep their results."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir)).resolve()
        record = folder / "mlflow_parent.json"
        if not record.exists():
            return
        info = json.loads(record.read_text())
        try:
            from alive_exp.report import run_report

            out, _, _ = run_report(info["tracking_uri"], str(config.logger.experiment_name), parent=info["run_id"],
                                   out=folder / "report")
            parent = client(info["tracking_uri"]).get_run(info["run_id"])
            url = mlflow_ui.run_url(info["tracking_uri"], parent.info.experiment_id, info["run_id"])
            log.info("sweep report: %s (and on the sweep's MLflow run %s, artifacts report/)", out / "report.md", url)
        except Exception as exc:  # noqa: BLE001
            log.warning("the sweep's report was not built (%s: %s); rebuild it with: alive-exp report --parent %s",
                        type(exc).__name__, exc, info["run_id"])


def make_logger(cfg: DictConfig, *, run_id: str | None = None, parent_run_id: str | None = None,
                fallback: Path | None = None, overrides: list[str] | None = None):
    """A `LiveMLFlowLogger` on the configured store; `run_id` continues a run (resume). The run is named
    domain-mode-seed plus the `overrides` that differ (default: Hydra's command-line overrides of this job)."""
    lc = cfg.logger
    ensure_experiment(lc.tracking_uri, lc.experiment_name, lc.artifact_location)
    overrides = mlflow_ui.command_line_overrides() if overrides is None else overrides
    tags = {k: str(v) for k, v in (lc.tags or {}).items()}
    tags.update(run_tags(cfg))
    tags.update(mlflow_ui.overrides_tag(overrides))
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    commit = git_commit(cfg.paths.root_dir)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    name = lc.run_name or mlflow_ui.run_name(f"{cfg.benchmark.domain}-{cfg.reward.mode}-s{cfg.seed}", overrides)
    logger = LiveMLFlowLogger(experiment_name=lc.experiment_name, tracking_uri=lc.tracking_uri, run_name=name,
                              tags=None if run_id else tags, run_id=run_id, fallback=fallback)
    if run_id:
        logger.skip_held()
    return logger


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """What a researcher filters runs and traces by: reward mode, seed, domain, model (and the experiment)."""
    tags = {"reward_mode": str(cfg.reward.mode), "seed": str(cfg.seed), "domain": str(cfg.benchmark.domain),
            "model": str(cfg.model.name)}
    if cfg.get("experiment_name"):
        tags["experiment"] = str(cfg.experiment_name)
    return tags


SEND_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between the attempts at one batch (then it waits for the end)
# the step waits at most this long for its metrics to be sent: on a 2-core machine a send that overlaps the
# next step's generation and update slows them (the store's CPU work competes with torch's threads), so
# the step ends with its send; a store slower than this (locked, gone) is left to the sender's retries
STEP_DRAIN_S = 2.0


class LiveMLFlowLogger(MLFlowLogger):
    """An MLFlowLogger whose metrics reach MLflow as they are logged, from a sender thread, exactly once.

    Curves are live from the first step: `log_metrics` queues the step's metrics and returns; a background
    thread sends them (`log_batch`), and the step waits for that send at its end (at most `STEP_DRAIN_S`). A failed send (server gone, SQLite "database is locked" under parallel
    jobs) is counted (`errors`, logged per step as `tracking/errors`), logged and retried with back-off; it
    never raises into training and never blocks it. What still has not reached MLflow when the run ends is
    tried once more and then written to `fallback` (a JSON-lines file in the run's folder), so no metric is
    lost.

    Exactly once on resume: MLflow has no metric delete, and a run resumed from its checkpoint at step k
    runs steps k+1.. again. A resumed logger first reads which (key, step) pairs the run already holds
    (`skip_held`) and never logs those again: a re-run step keeps its first values. A checkpoint waits for
    the sender to drain and carries whatever could not be sent (`undelivered`); on resume `restore` logs
    the pairs of it MLflow does not hold yet.
    """

    def __init__(self, *args: Any, fallback: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fallback, self.errors = fallback, 0
        self.held: set[tuple[str, int]] = set()
        self.unsent: list[tuple[int | None, dict[str, float], int]] = []
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the training side: never blocks, never raises -------------------------------------------------
    def log_metrics(self, metrics, step: int | None = None) -> None:
        metrics = _add_prefix(dict(metrics), self._prefix, self.LOGGER_JOIN_CHAR)
        items = {k: float(v) for k, v in metrics.items() if (k, step or 0) not in self.held}
        if items:
            self._queue.put((step, items, int(time.time() * 1000)))
            self._start()

    def skip_held(self) -> None:
        """Read the (key, step) pairs the (resumed) run holds; those are never logged again."""
        c = self.experiment
        for key in c.get_run(self.run_id).data.metrics:
            self.held |= {(key, m.step) for m in c.get_metric_history(self.run_id, key)}

    def restore(self, pending: list) -> None:
        """Queue the metrics a checkpoint carried that MLflow does not hold yet."""
        for step, metrics, *_ in pending:
            self.log_metrics(metrics, step)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait (at most `timeout` s) until everything queued was sent or given up on; True when all was sent."""
        deadline = time.time() + timeout
        if self._queue.unfinished_tasks:
            self._start()
        while self._queue.unfinished_tasks and time.time() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks and not self.unsent

    def undelivered(self) -> list[tuple[int | None, dict[str, float], int]]:
        with self._lock:
            queued = list(self._queue.queue)
            return [*self.unsent, *queued]

    # -- the sender ----------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
                self._thread.start()

    def _send_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=5.0)
            except queue.Empty:
                with self._lock:  # idle: the next log_metrics starts a new sender (checked under the same lock)
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                if not self._send(item, SEND_RETRIES):
                    with self._lock:
                        self.unsent.append(item)
            finally:
                self._queue.task_done()

    def _send(self, item, waits) -> bool:
        from mlflow.entities import Metric

        step, metrics, stamp = item
        batch = [Metric(key=k, value=v, timestamp=stamp, step=step or 0)
                 for k, v in metrics.items()]
        for wait in (*waits, None):
            try:
                for i in range(0, len(batch), 1000):  # MLflow's log_batch limit
                    self.experiment.log_batch(run_id=self.run_id, metrics=batch[i:i + 1000])
                return True
            except Exception as exc:  # noqa: BLE001  (whatever the store raises, training goes on)
                self.errors += 1
                log.warning("MLflow did not take the metrics of step %s (%s: %s)%s", step, type(exc).__name__,
                            str(exc)[:200], f"; again in {wait:g} s" if wait is not None else "; kept for the end")
                if wait is None:
                    return False
                time.sleep(wait)
        return False

    def finalize(self, status: str = "success") -> None:
        """Lightning calls this when `fit` ends: a successful fit only drains (the run goes on with its final
        evaluation, and stays RUNNING until `end`); a failed one ends the run."""
        if status == "success":
            self.drain(timeout=120.0)
        else:
            self.end(status)

    def end(self, status: str = "success") -> None:
        """Send what is queued, try what failed once more, write what is left to `fallback`; then end the run."""
        self.drain(timeout=120.0)
        with self._lock:
            retry, self.unsent = self.unsent, []
        left = [item for item in retry if not self._send(item, (1.0,))]
        if left:
            where = self.fallback or Path("unsent_metrics.jsonl")
            where.parent.mkdir(parents=True, exist_ok=True)
            with where.open("a") as f:
                for step, metrics, stamp in left:
                    f.write(json.dumps({"step": step, "timestamp": stamp, "metrics": metrics}) + "\n")
            log.warning("%d metric batches never reached MLflow (%d failed sends); they are in %s", len(left),
                        self.errors, where)
        try:
            super().finalize(status)
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            log.warning("MLflow did not take the run's end status (%s)", exc)


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


def system_metrics(cfg: DictConfig, run_id: str):
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU with nvidia-ml-py) on the run, started;
    None when it cannot start (it is a view on the machine, never a reason to stop a run)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=float(cfg.logger.system_metrics_every),
                                       samples_before_logging=1, tracking_uri=cfg.logger.tracking_uri)
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001
        log.warning("system metrics are not logged (%s)", exc)
        return None


def stop(monitor) -> None:
    try:
        monitor.finish()
    except Exception as exc:  # noqa: BLE001
        log.warning("system metrics monitor did not stop cleanly (%s)", exc)


FINAL_METRICS = ("accuracy", "sampled_accuracy", "pass_at_", "self_correction/acc_t2", "self_correction/delta",
                 "self_correction/gated_acc_t2", "self_correction/gated_delta", "self_correction/critique_balanced_agreement",
                 "reviewer/balanced_agreement")  # per suite; pass_at_ stands for every k


def final_table(final: dict[str, Any], before: dict[str, float]) -> list[dict[str, Any]]:
    """Held-out metrics per suite, before training (`trainer.eval_at_start`, or the warm start's own held-out
    check on the same problems) and after."""
    rows = []
    suites = sorted({k.split("/")[1] for k in final if k.startswith("eval/") and k.endswith("/accuracy")})
    for suite in suites:
        n = final.get(f"eval/{suite}/n_tasks")
        names = sorted(k.split("/", 2)[2] for k in final if k.startswith(f"eval/{suite}/"))
        for metric in [m for m in names for f in FINAL_METRICS if m == f or (f.endswith("_") and m.startswith(f))]:
            key = f"eval/{suite}/{metric}"
            start = before.get(key)
            if start is None and metric == "accuracy":
                start = warm_start_accuracy(final, suite)
            rows.append({"suite": suite, "metric": metric, "problems": int(n or 0), "before": start,
                         "after": float(final[key]), "gain": None if start is None else float(final[key]) - start})
    return rows


def warm_start_accuracy(final: dict[str, Any], suite: str) -> float | None:
    """The warm start's own held-out greedy accuracy when it was measured on this suite's problems (a
    `_heldout` suite of the same size), else None."""
    n = final.get(f"eval/{suite}/n_tasks")
    if suite.endswith("_heldout") and n is not None and final.get("warmstart/eval_size") == n:
        return final.get("warmstart/heldout_accuracy")
    return None


def log_final_table(logger, rows: list[dict[str, Any]]) -> None:
    """The final table as a run artifact the MLflow UI renders (`final_table.json`); never fatal."""
    if not rows:
        return
    try:
        logger.experiment.log_table(logger.run_id, data=pd.DataFrame(rows), artifact_file="final_table.json")
    except Exception as exc:  # noqa: BLE001
        log.warning("final table not logged (%s)", exc)


def log_transcripts(logger, rows: list[dict[str, Any]], artifact_file: str = "transcripts.json") -> None:
    """Append rows to the run's transcript table (readable in the MLflow UI's artifact view)."""
    if rows:
        logger.experiment.log_table(logger.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

