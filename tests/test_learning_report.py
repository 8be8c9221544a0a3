"""scripts/learning_report.py end to end at smoke size: real runs, real MLflow stores, a computed verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO


def run_report(script: str, tmp_path, out, args: list[str], docs_per_step: int,
               ok: bool = True) -> subprocess.CompletedProcess:
    """scripts/<script> for seeds 0 and 1 at smoke size (2 jobs, 4 problems a suite), into tmp_path."""
    small = ["warmstart.enabled=false", "benchmark.train_docs=200", f"trainer.docs_per_step={docs_per_step}",
             f"trainer.max_tasks_per_step={docs_per_step}", "trainer.solutions_per_task=2",
             "trainer.generation.solver_tokens=16", "trainer.generation.reviewer_tokens=16",
             "trainer.generation.constructor_tokens=8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, f"scripts/{script}", "--seeds", "0", "1", *args, "--eval-size", "4", "--jobs", "2",
         "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(tmp_path / "data"), *small],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_learning_report_reads_its_numbers_back_from_mlflow(tmp_path):
    out = tmp_path / "report.md"
    run_report("learning_report.py", tmp_path, out, ["--arms", "scalar", "sft", "--steps", "1", "--lr-choice", "none"],
               docs_per_step=2)
    text = out.read_text()
    assert "## Gain over the warm start (paired by seed)" in text and "**scalar - sft** on `math_heldout`" in text
    for suite in ("math_heldout", "math_longer", "math_sub"):
        assert f"`{suite}`:" in text
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert not (tmp_path / "data" / "warmstart").exists()  # warmstart.enabled=false is honoured
    report = json.loads(out.with_suffix(".json").read_text())
    runs = {(r["arm"], r["seed"]): r for r in report["data"]["runs"]}
    assert set(runs) == {(a, s) for a in ("warm_start", "scalar", "sft") for s in (0, 1)}
    for (arm, seed), row in runs.items():
        run = MlflowClient(row["tracking_uri"]).get_run(row["run_id"])
        assert run.data.params["trainer.max_steps"] == str(0 if arm == "warm_start" else 1)
        assert run.data.params["reward.mode"] == ("scalar" if arm == "warm_start" else arm)
        assert row["final"]["math_heldout/accuracy"] == run.data.metrics["eval/math_heldout/accuracy"]
    gain = report["summary"]["gains"]["scalar"]["math_heldout/accuracy"]
    want = [runs[("scalar", s)]["final"]["math_heldout/accuracy"] - runs[("warm_start", s)]["final"]["math_heldout/accuracy"]
            for s in (0, 1)]
    assert gain["values"] == pytest.approx(want) and gain["n"] == 2
    # a report re-rendered (--render) trains nothing: the same runs, the same numbers, and the time stays the
    # time the runs took; a setting that differs finds no finished run and says which
    again = tmp_path / "again.md"
    run_report("learning_report.py", tmp_path, again, ["--arms", "scalar", "sft", "--steps", "1", "--lr-choice", "none",
                                                        "--render"], docs_per_step=2)
    second = json.loads(again.with_suffix(".json").read_text())
    assert second["data"] == report["data"] and second["meta"]["minutes"] == report["meta"]["minutes"]
    assert "--render" not in second["meta"]["command"]
    proc = run_report("learning_report.py", tmp_path, again, ["--arms", "scalar", "--steps", "2", "--lr-choice",
                                                               "none", "--render"], docs_per_step=2, ok=False)
    assert "no finished run of scalar seed 0" in proc.stderr + proc.stdout


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


@pytest.mark.slow
def test_constructor_report_sets_learned_against_uniform_posing_from_the_stores(tmp_path):
    """scripts/constructor_report.py: the same machinery, its own grid (sweeps/constructor.yaml), the difference
    learned - uniform paired by seed, and what was posed over the steps read back from each run's store."""
    out = tmp_path / "constructor.md"
    run_report("constructor_report.py", tmp_path, out, ["--arms", "scalar", "scalar_uniform", "--steps", "2"],
               docs_per_step=4)
    text = out.read_text()
    assert text.startswith("# Does the constructor's choice matter?")
    assert "**scalar - scalar_uniform** on `math_heldout`" in text and "python scripts/constructor_report.py" in text
    assert (tmp_path / "constructor_curves.png").stat().st_size > 1000
    report = json.loads(out.with_suffix(".json").read_text())
    runs = {(r["arm"], r["seed"]): r for r in report["data"]["runs"]}
    for seed in (0, 1):
        # the random model's constructor proposes no valid span, so its arm logs what the fallback posed
        for arm, constructor, key in (("scalar", "learned", "constructor/fallback_share"),
                                      ("scalar_uniform", "rule", "constructor/posed_carries")):
            row = runs[(arm, seed)]
            client = MlflowClient(row["tracking_uri"])
            assert client.get_run(row["run_id"]).data.params["trainer.constructor"] == constructor
            logged = [m.value for m in client.get_metric_history(row["run_id"], key)]
            assert [v for _, v in row["curves"][key]] == logged and len(logged) == 2
    diff = report["summary"]["differences"]["scalar - scalar_uniform"]["math_heldout/accuracy"]
    want = [runs[("scalar", s)]["final"]["math_heldout/accuracy"] - runs[("scalar_uniform", s)]["final"]["math_heldout/accuracy"]
            for s in (0, 1)]
    assert diff["values"] == pytest.approx(want)
