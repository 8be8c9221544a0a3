"""The benchmarks run end to end at smoke size and print the figures they exist for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_trl_benchmark_prints_ratios_from_measured_runs(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/trl_vs_alive.py", "--smoke", "--tasks", "2", "--n", "2", "--max-new", "8",
         "--threads", "1", "--init-from", "none", "--data", str(tmp_path / "data"), "--json", str(out)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "solver tokens per second" in proc.stdout and "paired" in proc.stdout and "ratio" in proc.stdout
    figures = json.loads(out.read_text())
    sides = {r["side"]: r for r in figures["train"]}
    assert len(sides) == 2 and all(r["tokens"] > 0 and r["train_s"] > 0 and r["peak_mb"] > 0 for r in sides.values())
    rollout = {k: v for k, v in figures["rollout"].items() if k != "side"}
    assert set(rollout) == {"plain generate loop", "alive-exp rollout"} and all(v > 0 for v in rollout.values())


def _has_commit(ref: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{ref}^{{commit}}"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _has_commit("99f8d45"), reason="commit 99f8d45 is not in this clone (a shallow clone?)")
def test_step_benchmark_runs_both_commits_phase_by_phase(tmp_path):
    out = tmp_path / "steps.json"
    try:
        proc = subprocess.run(
            [sys.executable, "benchmarks/step_phases.py", "--smoke", "--threads", "2", "--data", str(tmp_path / "bench"),
             "--json", str(out)],
            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    finally:  # the benchmark's git worktree of the old commit goes with the temporary folder
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp_path / "bench" / "worktree-99f8d45")],
                       capture_output=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    for phase in ("solve", "review", "update", "step"):
        assert figures[phase]["old"][0] > 0 and figures[phase]["new"][0] > 0, phase
    assert set(figures["adapter_max_abs_diff"]) == {"constructor", "reviewer", "solver"}
    # both commits learned from the same recorded samples (benchmarks/replay_update.py)
    assert all(v < 1e-4 for v in figures["adapter_max_abs_diff"].values()), figures["adapter_max_abs_diff"]
    assert "new / old" in proc.stdout and "paired by rep" in proc.stdout


def test_logprob_memory_benchmark_measures_every_variant(tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, "benchmarks/logprob_memory.py", "--reps", "1", "--batch", "2", "--prompt", "96",
                           "--completion", "8", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["max_logprob_diff"] < 1e-4 and set(figures["summary"]) == {"full", "window", "ours"}
    assert figures["summary"]["ours"]["pass_mb"] < figures["summary"]["full"]["pass_mb"]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_each_measurement_as_it_completes(tmp_path):
    """`gpu_check.py --tiny` on CPU: each measurement in its own process writes its JSON; the rollout
    comparison times both paths on the same prompts and prints their ratio."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--steps", "1", "--only", "steps_dynamic",
                           "rollout_vs_peft", "--root", str(tmp_path / "root"), "--json", str(tmp_path / "all.json")],
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(out)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours / plain PEFT generate" in proc.stdout
    steps = json.loads((out / "gpu_check" / "steps_dynamic.json").read_text())
    assert steps["complete"] and len(steps["steps"]) == 1 and steps["steps"][0]["rollout_tokens"] > 0
    assert steps["static_cache"] is False
    rollout = json.loads((out / "gpu_check" / "rollout_vs_peft.json").read_text())
    assert rollout["complete"] and all(rollout["calls"][k] for k in ("ours", "peft"))
    assert rollout["ratio_ours_over_peft"] > 0
    assert json.loads((tmp_path / "all.json").read_text())["status"] == {"steps_dynamic": "ok", "rollout_vs_peft": "ok"}
