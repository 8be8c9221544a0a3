"""Sweeps: the sweep files compose, launchers compose, the sweep's MLflow parent is created once, and a
2 x 2 multirun on CPU leaves one parent with four children and their report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from alive_exp import models, tracking
from alive_exp.train import objective
from conftest import CONF, REPO, compose_cfg

SWEEPS = REPO / "sweeps"
# conf/debug/tiny.yaml: one ALIVE step of 2 tasks x 2 solutions of 8 tokens, one torch thread
TINY = ["+debug=tiny"]


@pytest.fixture(scope="session")
def tiny_data(shared_data):
    """The session's data folder with the tiny model already built: parallel jobs must not race to build it."""
    cfg = compose_cfg(["+experiment=math"])
    models.build_tiny(cfg.model, shared_data, sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains}))
    return shared_data


def train_py(*args: str, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python train.py <args>` offline, with the project's default MLflow store (under paths.root_dir)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def compose_sweep(name: str, *overrides: str):
    """What `python train.py -m -cd sweeps -cn <name> <overrides>` composes, Hydra's own settings included."""
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(config_name=name, overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides],
                       return_hydra_config=True)


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
def test_every_sweep_file_composes_with_sweep_params_and_a_tag(name):
    cfg = compose_sweep(name)
    assert cfg.hydra.sweeper.params, name
    assert cfg.logger.tags.sweep == name


def test_sweep_files_sweep_what_they_say():
    assert dict(compose_sweep("reward_ablation").hydra.sweeper.params) == {"reward": "scalar,judge,verbal,fcp",
                                                                           "seed": "0,1,2"}
    cross = compose_sweep("cross_domain", "+experiment=code")
    assert list(cross.benchmark.eval_domains) == ["math", "code", "logic"] and cross.benchmark.domain == "code"
    lr = compose_sweep("lr_search")
    assert lr.hydra.sweeper._target_.endswith("OptunaSweeper") and lr.hydra.sweeper.direction == "maximize"
    assert set(lr.hydra.sweeper.params) == {f"trainer.optim.{r}.lr" for r in ("constructor", "solver", "reviewer")}


def test_launchers_compose_slurm_from_hardware_and_joblib():
    slurm = compose_sweep("reward_ablation", "hydra/launcher=slurm", "hardware=multinode",
                          "hydra.launcher.partition=gpu")
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    joblib = compose_sweep("reward_ablation", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher") and joblib.hydra.launcher.n_jobs == 2


def test_objective_is_a_float_read_off_validation_suites_never_held_out_ones():
    assert objective({"train/reward_mean": 0.25}) == 0.25
    assert objective({"train/reward_mean": 0.25, "eval/a_validation/accuracy": 0.5, "eval/b_validation/accuracy": 1.0,
                      "eval/a_validation/pass_at_4": 0.9, "eval/math_heldout/accuracy": 0.0}) == 0.75
    # held-out accuracy alone is never the objective
    assert objective({"train/reward_mean": 0.25, "eval/math_heldout/accuracy": 0.9}) == 0.25
    assert isinstance(objective({}), float)
    assert compose_sweep("lr_search").benchmark.eval_suites == ["math_validation"]


def _parent(args):
    uri, sweep_dir = args
    return tracking.sweep_parent(uri, sweep_dir, "alive", None, ["seed=0"])


def test_parallel_jobs_create_one_parent(tmp_path):
    """Four processes ask for the parent of a fresh sweep on a fresh store at once."""
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "multirun" / "s")
    with ProcessPoolExecutor(4) as pool:
        ids = list(pool.map(_parent, [(uri, sweep)] * 4))
    assert len(set(ids)) == 1
    c = MlflowClient(uri)
    assert len(c.search_runs([c.get_experiment_by_name("alive").experiment_id])) == 1


def test_parent_ends_when_its_last_child_ends(tmp_path):
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "sweep")
    parent = tracking.sweep_parent(uri, sweep, "alive", None, [])
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("alive").experiment_id
    a, b = (c.create_run(exp, tags={tracking.PARENT_TAG: parent}).info.run_id for _ in range(2))
    status = lambda: c.get_run(parent).info.status  # noqa: E731
    with tracking.sweep_child(uri, parent, sweep, lambda: a):
        assert status() == "RUNNING"
        c.set_terminated(a)
    assert status() == "RUNNING"  # b still runs
    with pytest.raises(KeyError), tracking.sweep_child(uri, parent, sweep, lambda: b):
        raise KeyError("job b crashed")
    assert status() == "FAILED" and c.get_run(b).info.status == "FAILED"


@pytest.mark.slow
def test_multirun_2x2_leaves_one_parent_and_four_children(tmp_path, tiny_data):
    proc = train_py("-m", "+experiment=math", "reward=scalar,verbal", "seed=0,1", *TINY, f"paths.root_dir={tmp_path}",
                    f"paths.data_dir={tiny_data}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("alive").experiment_id])
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    children = [r for r in runs if tracking.PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags[tracking.PARENT_TAG] for r in children} == {parents[0].info.run_id}
    assert {(r.data.tags["reward_mode"], r.data.tags["seed"]) for r in children} == {
        ("scalar", "0"), ("scalar", "1"), ("verbal", "0"), ("verbal", "1")}
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train/reward_mean")] == [1]
    # the sweep's verdict on its parent: the report of its four children (tracking.SweepReport)
    report = {f.path for f in c.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.md", "report/report.json"} <= report
    data = json.loads(Path(c.download_artifacts(parents[0].info.run_id, "report/report.json", str(tmp_path))).read_text())
    assert len(data["runs"]) == 4
