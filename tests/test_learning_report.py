"""scripts/learning_report.py end to end at smoke size: real runs, real MLflow stores, a computed verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO


@pytest.mark.slow
def test_learning_report_reads_its_numbers_back_from_mlflow(tmp_path):
    out = tmp_path / "report.md"
    small = ["warmstart.enabled=false", "benchmark.train_docs=200", "trainer.docs_per_step=2",
             "trainer.max_tasks_per_step=2", "trainer.solutions_per_task=2", "trainer.generation.solver_tokens=16",
             "trainer.generation.reviewer_tokens=16", "trainer.generation.constructor_tokens=8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "scripts/learning_report.py", "--seeds", "0", "1", "--modes", "scalar", "--steps", "1",
         "--eval-size", "4", "--jobs", "2", "--out", str(out), "--work", str(tmp_path / "work"),
         "--data", str(tmp_path / "data"), *small],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| warm_start | accuracy |" in text and "| scalar | gated_sc_delta |" in text
    assert "**Verdict** (computed): scalar: accuracy" in text
    assert out.with_suffix(".png").stat().st_size > 1000
    assert not (tmp_path / "data" / "warmstart").exists()  # warmstart.enabled=false is honoured
    results = json.loads(out.with_suffix(".json").read_text())
    for arm, steps in (("warm_start", 0), ("scalar", 1)):
        for seed in (0, 1):
            row = results[arm][str(seed)]
            store = f"sqlite:///{tmp_path / 'work' / f'scalar-{seed}-{steps}' / 'mlflow.db'}"
            run = MlflowClient(store).get_run(row["run_id"])
            assert run.data.params["trainer.max_steps"] == str(steps)
            assert row["accuracy"] == run.data.metrics["eval/math_heldout/accuracy"]
            assert row["gated_sc_delta"] == run.data.metrics["eval/math_heldout/self_correction/gated_delta"]


@pytest.mark.slow
def test_grpo_reference_trains_from_the_warm_start_and_evaluates(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "scripts/grpo_reference.py", "--steps", "2", "--eval-every", "1", "--tasks", "2", "--n", "2",
         "--name", "smoke", "--work", str(tmp_path / "work"), "--data", str(tmp_path / "data"),
         "warmstart.steps=3", "warmstart.eval_size=4", "benchmark.eval_size=4", "trainer.generation.solver_tokens=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "work" / "smoke.json").read_text())
    assert [r["step"] for r in out["evals"]] == [0, 1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["sampled_accuracy"] <= 1.0 for r in out["evals"])
    assert (tmp_path / "data" / "warmstart").is_dir() and out["warm_start"].startswith(str(tmp_path / "data"))
