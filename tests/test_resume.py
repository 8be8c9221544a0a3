"""Resume: a run killed with SIGKILL continues from its last checkpoint in the same MLflow run, with every
(key, step) logged exactly once (re-run steps keep their first values) and the same numbers as a run that
was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from alive_exp import tracking
from alive_exp.callbacks import config_fingerprint, find_resumable, write_run_info
from conftest import REPO, compose_cfg
from test_sweeps import TINY, tiny_data, train_py  # noqa: F401  (tiny_data is a fixture)

# 4 steps, a checkpoint every 2; fcp + oracle warm-up give every step non-zero solver and reviewer losses,
# so the adapters and optimizer states really change and must be restored exactly
RUN = ["+experiment=math", *[o for o in TINY if not o.startswith("trainer.max_steps")], "trainer.max_steps=4",
       "trainer.checkpoint_every=2", "reward=fcp", "trainer.warmup_steps=4", "trainer.generation.solver_tokens=24",
       "seed=3"]
KEYS = ["train/reward_mean", "solver/loss", "reviewer/loss", "constructor/loss", "tokens/solver", "tokens/reviewer"]


def only_run(root):
    c = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = c.search_runs([c.get_experiment_by_name("alive").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return c, runs[0]


def histories(root) -> dict[str, list[tuple[int, float]]]:
    c, r = only_run(root)
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, k)) for k in r.data.metrics}


def test_fingerprint_ignores_only_what_does_not_change_the_run():
    base = compose_cfg(["+experiment=math"])
    same = compose_cfg(["+experiment=math", "resume=auto", "trainer.progress_bar=false"])
    assert config_fingerprint(base) == config_fingerprint(same)
    for change in ["seed=1", "reward=verbal", "trainer.max_steps=5", "trainer.optim.solver.lr=1e-3"]:
        assert config_fingerprint(compose_cfg(["+experiment=math", change])) != config_fingerprint(base), change


def test_resume_auto_finds_the_newest_unfinished_checkpoint_of_this_config(tmp_path):
    def ckpt(name: str, fingerprint: str, age: float, **info):
        d = tmp_path / name / "checkpoints"
        d.mkdir(parents=True)
        (d / "last.ckpt").write_bytes(b"x")
        os.utime(d / "last.ckpt", (time.time() - age,) * 2)
        write_run_info(d, fingerprint=fingerprint, **info)
        return d / "last.ckpt"

    old = ckpt("a", "f1", age=100)
    new = ckpt("b", "f1", age=10)
    ckpt("c", "f2", age=1)  # another config
    ckpt("d", "f1", age=0, finished=True)  # a finished run is not resumed
    pattern = [str(tmp_path / "*" / "checkpoints" / "last.ckpt")]
    assert find_resumable("f1", pattern) == new
    os.utime(old, None)
    assert find_resumable("f1", pattern) == old
    assert find_resumable("f3", pattern) is None


def test_metrics_reach_mlflow_at_once_and_a_resumed_logger_logs_each_pair_once(tmp_path, small_cfg):
    cfg = small_cfg()
    logger = tracking.make_logger(cfg)
    c, run_id = logger.experiment, logger.run_id
    logger.log_metrics({"a": 1.0, "b": 2.0}, step=1)
    logger.log_metrics({"a": 3.0, "b": 4.0}, step=2)
    assert logger.drain(timeout=30)
    assert sorted((m.step, m.value) for m in c.get_metric_history(run_id, "a")) == [(1, 1.0), (2, 3.0)]  # live
    # the run is killed after step 2 and resumes from a checkpoint at step 1 that carried step 1's "b" unsent
    resumed = tracking.make_logger(cfg, run_id=run_id)
    resumed.restore([(1, {"a": 1.0, "b": 2.0}, 0)])
    resumed.log_metrics({"a": 30.0, "b": 40.0, "c": 5.0}, step=2)  # step 2 runs again: only the new key is logged
    resumed.log_metrics({"a": 6.0}, step=3)
    resumed.end("success")
    for key, want in [("a", [(1, 1.0), (2, 3.0), (3, 6.0)]), ("b", [(1, 2.0), (2, 4.0)]), ("c", [(2, 5.0)])]:
        assert sorted((m.step, m.value) for m in c.get_metric_history(run_id, key)) == want, key


def _popen(root, data, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *RUN, f"paths.root_dir={root}",
                             f"paths.data_dir={data}", *extra], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkilled_run_resumes_with_continuous_metrics_and_equal_results(tmp_path, tiny_data):
    ref_root, root = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_root.mkdir()
    root.mkdir()
    reference = _popen(ref_root, tiny_data)  # runs beside the one we kill
    victim = _popen(root, tiny_data)
    deadline = time.time() + 400
    def checkpointed() -> bool:  # last.ckpt of step 2 of 4 and its run.json, both written
        return any(json.loads(p.read_text()).get("alive_step") == 2 and (p.parent / "last.ckpt").exists()
                   for p in root.glob("outputs/train/*/checkpoints/run.json"))

    while not checkpointed():
        assert victim.poll() is None, victim.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    [ckpt] = root.glob("outputs/train/*/checkpoints/last.ckpt")
    info = json.loads((ckpt.parent / "run.json").read_text())
    assert info["alive_step"] == 2 and not info.get("finished"), "killed too late: the run reached its end"

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["alive"]["alive_step"] == 2 and state["alive"]["mlflow_run_id"] == info["mlflow_run_id"]
    assert {"python", "numpy", "torch"} <= set(state["alive"]["rng"])
    # constructor, solver, reviewer; the random model's proposals are all invalid (equal rewards, zero advantage),
    # so the constructor has no sample with a loss and its optimizer never steps
    assert len(state["optimizer_states"]) == 3 and all(o["state"] for o in state["optimizer_states"][1:])
    assert {r for r in ("constructor", "solver", "reviewer") if any(f".{r}." in k for k in state["state_dict"])} == {
        "constructor", "solver", "reviewer"}

    resumed = train_py(*RUN, f"paths.root_dir={root}", f"paths.data_dir={tiny_data}", "resume=auto", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume=auto: continuing from" in resumed.stdout + resumed.stderr
    assert reference.wait(timeout=400) == 0, reference.stderr.read()[-3000:]

    got, want = histories(root), histories(ref_root)
    for key in KEYS:
        assert [s for s, _ in got[key]] == [1, 2, 3, 4], key
    assert any(v != 0 for _, v in want["solver/loss"]) and any(v != 0 for _, v in want["reviewer/loss"])
    machine = ("time/", "system/", "tracking/")  # the machine's timings and load, not the run's numbers
    compared = [k for k in want if not k.startswith(machine)]
    assert set(compared) == {k for k in got if not k.startswith(machine)}
    for key in compared:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in want[key]], abs=1e-6), key
    _, run = only_run(root)
    assert run.info.status == "FINISHED" and run.info.run_id == info["mlflow_run_id"]
    finished = [json.loads(p.read_text()).get("finished", False)
                for p in root.glob("outputs/train/*/checkpoints/run.json")]
    assert sorted(finished) == [False, True]  # the killed attempt's folder, then the resumed attempt's


def test_a_kill_between_checkpoint_and_run_json_leaves_a_resumable_run(tmp_path, monkeypatch):
    """The checkpoint's run.json names the run (fingerprint, MLflow id) before last.ckpt is replaced: a kill right
    after the checkpoint is written, before run.json is updated, leaves a last.ckpt `resume=auto` finds."""
    from types import SimpleNamespace

    from alive_exp import callbacks

    class Killed(Exception):
        pass

    replace, written = os.replace, []

    def killed_after_the_checkpoint(src, dst):
        if written and str(dst).endswith("run.json"):
            raise Killed
        replace(src, dst)
        written.extend([dst] if str(dst).endswith("last.ckpt") else [])

    trainer = SimpleNamespace(is_global_zero=True, save_checkpoint=lambda path: open(path, "w").write("state"))
    module = SimpleNamespace(mlflow_run_id="run-1", alive_step=2)
    cb = callbacks.AliveCheckpoint(tmp_path / "checkpoints", every=2, fingerprint="fp")
    monkeypatch.setattr(callbacks.os, "replace", killed_after_the_checkpoint)
    with pytest.raises(Killed):
        cb.save(trainer, module)  # the run's first checkpoint, killed before its step is recorded
    monkeypatch.setattr(callbacks.os, "replace", replace)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and callbacks.read_run_info(ckpt.parent) == {"fingerprint": "fp", "mlflow_run_id": "run-1"}
    assert callbacks.find_resumable("fp", [str(ckpt)]) == ckpt
    cb.save(trainer, module)  # and the next save completes the record
    assert callbacks.read_run_info(ckpt.parent) == {"fingerprint": "fp", "mlflow_run_id": "run-1", "alive_step": 2}
