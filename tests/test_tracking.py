"""Tracking in a real MLflow server and store: role chains as traces, curves live from the first step,
system metrics and the final table, failures counted and never fatal, parallel writers into one SQLite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from alive_exp import tracking
from conftest import REPO, compose_cfg
from test_sweeps import TINY, tiny_data  # noqa: F401  (tiny_data is a fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store; yields its URL."""
    port = free_port()
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--workers", "1",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def rest(url: str, path: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{query}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_a_verbal_run_on_a_server_has_traces_live_curves_system_metrics_and_its_final_table(tmp_path, tiny_data,
                                                                                          server):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["+experiment=math", *TINY, "reward=verbal", "trainer.max_steps=4", "trainer.log_transcripts_every=1",
            "trainer.transcripts_per_phase=2", "trainer.checkpoint_every=10", "logger.system_metrics_every=1",
            "benchmark.eval_size=2", f"logger.tracking_uri={server}", f"paths.root_dir={tmp_path}",
            f"paths.data_dir={tiny_data}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # step 1's curve point is on the server while the run still runs (not at a checkpoint, not at the end)
    seen_at, deadline = None, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        found = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{server}/api/2.0/mlflow/runs/search", data=json.dumps({"experiment_ids": ["0", "1"]}).encode(),
            headers={"Content-Type": "application/json"}), timeout=10).read()).get("runs", [])
        if found:
            run_id = found[0]["info"]["run_id"]
            hist = rest(server, "metrics/get-history", run_id=run_id, metric_key="train/reward_mean").get("metrics", [])
            status = rest(server, "runs/get", run_id=run_id)["run"]["info"]["status"]
            if any(m["step"] == 1 for m in hist) and status == "RUNNING":
                seen_at = time.time()
                break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert seen_at is not None, "no step-1 metric on the server while the run was running"

    run = rest(server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    keys = {m["key"] for m in run["data"]["metrics"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    assert {"tracking/errors", "tracking/traces"} <= keys
    steps = [m["step"] for m in rest(server, "metrics/get-history", run_id=run_id,
                                     metric_key="train/reward_mean")["metrics"]]
    assert sorted(steps) == [1, 2, 3, 4]  # each step once
    last = max(m["timestamp"] for m in rest(server, "metrics/get-history", run_id=run_id,
                                            metric_key="train/reward_mean")["metrics"]) / 1000
    assert seen_at < last, "step 1's metrics reached the server only after the last step was logged"
    artifacts = {f["path"] for f in rest(server, "artifacts/list", run_id=run_id).get("files", [])}
    assert {"final_table.json", "final_metrics.json", "transcripts.json"} <= artifacts
    c = MlflowClient(server)
    exp_id = run["info"]["experiment_id"]
    table = json.loads(Path(c.download_artifacts(run_id, "final_table.json", str(tmp_path))).read_text())
    assert {"suite", "metric", "before", "after", "gain"} <= set(table["columns"])
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert {r["suite"] for r in rows} == {"math_heldout", "math_longer", "math_sub"}
    assert {r["metric"] for r in rows} >= {"accuracy", "pass_at_1"}

    train = c.search_traces(locations=[exp_id], run_id=run_id, filter_string="tags.phase = 'train'")
    assert len(train) == 4 * 2  # every step is a transcript step here, 2 tasks each
    for t in train:
        assert t.info.tags["reward_mode"] == "verbal" and t.info.tags["domain"] == "math"
        assert {"seed", "model", "step"} <= set(t.info.tags)
        assert t.info.request_metadata.get("mlflow.sourceRun") == run_id
        spans = {s.span_id: s for s in t.data.spans}
        (root,) = [s for s in spans.values() if s.parent_id is None]
        assert root.name == "task" and root.inputs["task"] and root.outputs["solutions"] == 2
        kids = [s for s in spans.values() if s.parent_id == root.span_id]
        assert {s.name for s in kids} == {"construct", "solve"} and sum(s.name == "solve" for s in kids) == 2
        for solve in (s for s in kids if s.name == "solve"):
            assert solve.inputs["prompt"] and "solution" in solve.outputs
            assert {"correct", "reward", "advantage"} <= set(solve.attributes)
            reviews = [s for s in spans.values() if s.parent_id == solve.span_id]
            assert "review" in {s.name for s in reviews}
            for r in reviews:
                assert r.inputs["prompt"] and "critique" in r.outputs and "agrees_with_check" in r.attributes
    evals = c.search_traces(locations=[exp_id], run_id=run_id, filter_string="tags.phase = 'eval'")
    assert {t.info.tags["suite"] for t in evals} == {"math_heldout", "math_longer", "math_sub"}
    assert len(evals) == 3 * 2  # at most transcripts_per_phase problems per suite
    names = sorted(s.name for s in evals[0].data.spans)
    assert names == ["attempt_t1", "attempt_t2", "own_critique", "self_correction"]
    summary = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert summary["tracking/traces"] == 14 and summary["tracking/trace_failures"] == 0


def _hammer(uri: str, name: str, steps: int) -> str:
    cfg = compose_cfg(["+experiment=math", f"logger.tracking_uri={uri}", f"logger.run_name={name}"])
    logger = tracking.make_logger(cfg)
    for step in range(1, steps + 1):
        logger.log_metrics({f"m{i}": float(step * 100 + i) for i in range(20)}, step=step)
    logger.end("success")
    return logger.run_id


def test_two_parallel_jobs_logging_every_step_into_one_sqlite_store_keep_all_their_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.ensure_experiment(uri, "alive", None)  # created once, as the sweep parent does
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        ids = list(pool.map(_hammer, [uri, uri], ["a", "b"], [150, 150]))
    c = MlflowClient(uri)
    for run_id in ids:
        for i in (0, 19):
            hist = c.get_metric_history(run_id, f"m{i}")
            assert sorted(m.step for m in hist) == list(range(1, 151)), (run_id, i)
            assert all(m.value == m.step * 100 + i for m in hist)
    assert not list(tmp_path.glob("**/unsent_metrics.jsonl"))


def test_a_store_that_fails_is_counted_retried_and_never_loses_a_metric(tmp_path, small_cfg, monkeypatch):
    monkeypatch.setattr(tracking, "SEND_RETRIES", (0.01, 0.01))
    logger = tracking.make_logger(small_cfg(), fallback=tmp_path / "unsent.jsonl")
    real, calls = logger.experiment.log_batch, {"n": 0}

    def flaky(**kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:  # "database is locked" twice, then the store takes it
            raise RuntimeError("database is locked")
        return real(**kwargs)

    monkeypatch.setattr(logger.experiment, "log_batch", flaky)
    logger.log_metrics({"a": 1.0}, step=1)  # returns at once, never raises
    assert logger.drain(timeout=30)
    assert logger.errors == 2 and [m.value for m in logger.experiment.get_metric_history(logger.run_id, "a")] == [1.0]

    def down(**kwargs):
        raise ConnectionError("server gone")

    monkeypatch.setattr(logger.experiment, "log_batch", down)
    t = time.perf_counter()
    for step in (2, 3):
        logger.log_metrics({"a": float(step)}, step=step)
    assert time.perf_counter() - t < 0.5  # training is not held up by the store
    logger.end("success")  # nothing raises
    kept = [json.loads(line) for line in (tmp_path / "unsent.jsonl").read_text().splitlines()]
    assert [(r["step"], r["metrics"]) for r in kept] == [(2, {"a": 2.0}), (3, {"a": 3.0})]
    assert logger.errors > 2


def test_final_table_has_before_and_after_per_suite():
    final = {"eval/math_heldout/accuracy": 0.6, "eval/math_heldout/n_tasks": 200.0, "eval/math_heldout/pass_at_4": 0.8,
             "eval/math_heldout/self_correction/delta": 0.01, "eval/math_heldout/self_correction/gated_delta": 0.0,
             "eval/math_sub/accuracy": 0.5, "eval/math_sub/n_tasks": 200.0,
             "warmstart/heldout_accuracy": 0.3, "warmstart/eval_size": 200.0}
    rows = tracking.final_table(final, before={"eval/math_sub/accuracy": 0.4})
    got = {(r["suite"], r["metric"]): (r["before"], r["after"]) for r in rows}
    assert got == {("math_heldout", "accuracy"): (0.3, 0.6), ("math_heldout", "pass_at_4"): (None, 0.8),
                   ("math_heldout", "self_correction/delta"): (None, 0.01),
                   ("math_heldout", "self_correction/gated_delta"): (None, 0.0),  # both protocols of self-correction
                   ("math_sub", "accuracy"): (0.4, 0.5)}
    assert [r["gain"] for r in rows if r["metric"] == "accuracy"] == pytest.approx([0.3, 0.1])
