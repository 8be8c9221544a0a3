"""`alive-exp report` and `alive-exp evaluate`.

The report tests build runs directly in a temporary SQLite MLflow store with MlflowClient (tags, step
histories, evaluation metrics as `run()` logs them) and check every number of report.json against the
store, with means and t-intervals recomputed here. The evaluate test trains a real 2-step run.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from alive_exp import cli
from alive_exp.report import PARENT_TAG, REPORT_TAG, fmt, t_interval, value_range

REPO = Path(__file__).resolve().parents[1]
T975 = {1: 12.706204736174696, 2: 4.302652729749464}  # two-sided 95% t quantiles by degrees of freedom
STEPS = 5
SC = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i", "edit_distance_ratio")


def log_training_run(client: MlflowClient, exp_id: str, mode: str, seed: int, domain: str, benches: list[str],
                     parent: str | None = None, finish: bool = True) -> str:
    tags = {"reward_mode": mode, "seed": str(seed), "domain": domain, "experiment": domain}
    if parent:
        tags[PARENT_TAG] = parent
    run_id = client.create_run(exp_id, run_name=f"{domain}-{mode}-s{seed}", tags=tags).info.run_id
    rng = random.Random(f"{mode}{seed}{domain}")
    metrics = []
    for step in range(1, STEPS + 1):
        for key in ("train/reward_mean", "solver/accuracy", "reviewer/balanced_agreement", "constructor/valid_rate"):
            metrics.append(Metric(key, rng.random(), step, step))
        for key in ("tokens/constructor", "tokens/solver", "tokens/reviewer"):
            metrics.append(Metric(key, float(rng.randint(100, 2000)), step, step))
        metrics.append(Metric("time/step", rng.uniform(1, 5), step, step))
    for b in benches:
        t1, t2 = rng.random(), rng.random()
        ev = {"accuracy": t1, "n_tasks": 16.0, "pass_at_4": rng.random(), "reviewer/balanced_agreement": rng.random(),
              "reviewer/precision": rng.random(), "reviewer/recall": rng.random(),
              "self_correction/acc_t1": t1, "self_correction/acc_t2": t2, "self_correction/delta": t2 - t1,
              "self_correction/delta_i_to_c": max(t2 - t1, 0.0), "self_correction/delta_c_to_i": max(t1 - t2, 0.0),
              "self_correction/edit_distance_ratio": rng.random()}
        metrics += [Metric(f"eval/{b}/{k}", v, STEPS + 1, STEPS) for k, v in ev.items()]
    client.log_batch(run_id, metrics=metrics)
    if finish:
        client.set_terminated(run_id)
    return run_id


@pytest.fixture
def store(tmp_path):
    """A sweep of 2 reward modes x 2 seeds on math, plus runs the report must leave out or take only unfiltered."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("alive", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="sweep", tags={"alive.sweep_dir": str(tmp_path)}).info.run_id
    client.set_terminated(parent)
    sweep = [log_training_run(client, exp_id, mode, seed, "math", ["math_heldout"], parent)
             for mode in ("scalar", "verbal") for seed in (0, 1)]
    outside = log_training_run(client, exp_id, "verbal", 0, "logic", ["math_heldout", "logic_heldout"])
    running = log_training_run(client, exp_id, "judge", 0, "math", ["math_heldout"], finish=False)
    return {"uri": uri, "client": client, "exp_id": exp_id, "parent": parent, "sweep": sweep,
            "outside": outside, "running": running}


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def expected(values: list[float], bounds=(-math.inf, math.inf)) -> tuple[float, float | None, float | None]:
    """Mean and 95% t-interval within `bounds`, computed without the report's code; none below 3 seeds."""
    mean = statistics.fmean(values)
    if len(values) < 3:
        return mean, None, None
    half = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def test_sweep_report_numbers_equal_mlflow(store, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", "--tracking-uri", store["uri"], "--parent", store["parent"], "--out", str(out)]) == 0
    assert "report over 4 runs" in capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    client: MlflowClient = store["client"]

    # the sweep filter: exactly the four children, grouped by mode with two seeds each
    assert sorted(r["run_id"] for r in data["runs"]) == sorted(store["sweep"])
    assert {(r["reward_mode"], r["seed"]) for r in data["runs"]} == {(m, s) for m in ("scalar", "verbal") for s in "01"}

    # every final number: per-seed values are MLflow's, mean and interval recomputed independently
    latest = {rid: client.get_run(rid).data.metrics for rid in store["sweep"]}
    checked = 0
    for row in data["final"]:
        values = [latest[rid][row["metric"]] for rid in row["run_ids"]]
        assert row["values"] == values
        assert row["n"] == 2
        mean, lo, hi = expected(values)
        assert close(row["mean"], mean) and close(row["ci_low"], lo) and close(row["ci_high"], hi), row["metric"]
        checked += 1
    eval_keys = {k for k in latest[store["sweep"][0]] if k.startswith("eval/") and not k.endswith("n_tasks")}
    assert checked == 2 * (len(eval_keys) + 4)  # both modes: every eval metric and four training metrics

    # the self-correction table repeats the final table's cells
    final = {(r["reward_mode"], r["metric"]): r for r in data["final"]}
    assert {(r["reward_mode"], r["benchmark"]) for r in data["self_correction"]} == {
        ("scalar", "math_heldout"), ("verbal", "math_heldout")}
    for row in data["self_correction"]:
        for k in SC:
            cell = final[(row["reward_mode"], f"eval/math_heldout/self_correction/{k}")]
            assert row[k] == {f: cell[f] for f in ("n", "mean", "ci_low", "ci_high")}

    # learning curves: mean, min and max across seeds of the metric histories, per ALIVE step
    for curve in data["curves"]:
        members = [rid for rid in store["sweep"]
                   if client.get_run(rid).data.tags["reward_mode"] == curve["reward_mode"]]
        hist = [{m.step: m.value for m in client.get_metric_history(rid, curve["metric"])} for rid in members]
        assert curve["step"] == list(range(1, STEPS + 1))
        for i, step in enumerate(curve["step"]):
            vals = [h[step] for h in hist]
            assert close(curve["mean"][i], statistics.fmean(vals))
            assert curve["min"][i] == min(vals) and curve["max"][i] == max(vals)
    assert {(c["reward_mode"], c["metric"]) for c in data["curves"]} == {
        (m, k) for m in ("scalar", "verbal") for k in ("train/reward_mean", "solver/accuracy")}

    # cost: per-run mean over steps, then mean across seeds
    for row in data["cost"]:
        per_run = [statistics.fmean(m.value for m in client.get_metric_history(rid, row["metric"]))
                   for rid in row["run_ids"]]
        assert close(row["mean"], statistics.fmean(per_run))

    # cross-domain: one train domain, mean accuracy over all four runs
    xd = data["cross_domain"]
    assert xd["train_domains"] == ["math"] and xd["benchmarks"] == ["math_heldout"]
    mean_acc = statistics.fmean(latest[r]["eval/math_heldout/accuracy"] for r in store["sweep"])
    assert close(xd["accuracy"][0][0], mean_acc)

    # the Markdown shows the same numbers, and the plots are real PNGs
    md = (out / "report.md").read_text()
    acc = final[("verbal", "eval/math_heldout/accuracy")]
    assert fmt(acc) in md and f"{xd['accuracy'][0][0]:.3f}" in md
    for name in ("learning_curves", "final_accuracy", "cross_domain"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"({name}.png)" in md

    # logged back to the sweep parent, not to a new run
    logged = {a.path for a in client.list_artifacts(store["parent"], "report")}
    assert {"report/report.md", "report/report.json", "report/learning_curves.png",
            "report/cross_domain.png", "report/cross_domain_table.json"} <= logged
    assert not client.search_runs([store["exp_id"]], filter_string=f"tags.`{REPORT_TAG}` = '1'")


def test_report_without_parent_logs_a_report_run_it_then_ignores(store, tmp_path):
    client: MlflowClient = store["client"]
    for i in range(2):  # the second report must not count the first one's run
        assert cli.main(["report", "--tracking-uri", store["uri"], "--out", str(tmp_path / f"r{i}")]) == 0
        data = json.loads((tmp_path / f"r{i}" / "report.json").read_text())
        assert sorted(r["run_id"] for r in data["runs"]) == sorted([*store["sweep"], store["outside"]])
    reports = client.search_runs([store["exp_id"]], filter_string=f"tags.`{REPORT_TAG}` = '1'")
    assert len(reports) == 2 and {r.info.run_name for r in reports} == {"report"}
    assert "report/report.md" in {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}

    # the unfinished run is left out; the logic run adds a row to the cross-domain matrix
    xd = data["cross_domain"]
    assert xd["train_domains"] == ["logic", "math"] and xd["benchmarks"] == ["logic_heldout", "math_heldout"]
    logic = client.get_run(store["outside"]).data.metrics
    assert xd["accuracy"][0] == [logic["eval/logic_heldout/accuracy"], logic["eval/math_heldout/accuracy"]]
    assert xd["accuracy"][1][0] is None and xd["n"][1] == [0, 4]
    single = next(r for r in data["final"] if r["domain"] == "logic" and r["metric"] == "eval/logic_heldout/accuracy")
    assert single["n"] == 1 and single["ci_low"] is None and "(n=1)" in fmt(single)
    assert "(n=1)" in (tmp_path / "r1" / "report.md").read_text()


def test_report_keeps_the_newest_run_per_mode_and_seed(store, tmp_path):
    client: MlflowClient = store["client"]
    rerun = log_training_run(client, store["exp_id"], "scalar", 0, "math", ["math_heldout"], store["parent"])
    assert cli.main(["report", "--tracking-uri", store["uri"], "--parent", store["parent"],
                     "--out", str(tmp_path / "r"), "--no-log"]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    ids = {r["run_id"] for r in data["runs"]}
    assert rerun in ids and store["sweep"][0] not in ids and len(ids) == 4
    assert any(store["sweep"][0] in note for note in data["notes"])


def test_report_errors_name_what_is_missing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("other", artifact_location=(tmp_path / "a").as_uri())
    assert cli.main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 1
    assert "no experiment 'alive'" in capsys.readouterr().err
    assert cli.main(["report", "--tracking-uri", uri, "--experiment", "other", "--out", str(tmp_path / "r")]) == 1
    assert "no finished training runs" in capsys.readouterr().err


def test_t_interval_matches_the_t_table():
    stat = t_interval([0.2, 0.4, 0.9])
    mean, lo, hi = expected([0.2, 0.4, 0.9])
    assert close(stat["mean"], mean) and close(stat["ci_low"], lo) and close(stat["ci_high"], hi)
    assert t_interval([0.5]) == {"n": 1, "mean": 0.5, "ci_low": None, "ci_high": None}
    # two seeds: t(0.975, 1) = 12.7 makes the interval say nothing; the report says so instead of printing one
    two = t_interval([0.5, 0.56], bounds=(0.0, 1.0))
    assert two["ci_low"] is None and fmt(two) == "0.530 (n=2, too few seeds for an interval)"
    # a rate's interval stays within [0, 1]; a difference of rates within [-1, 1]
    wide = [0.1, 0.9, 0.95]
    assert t_interval(wide, bounds=value_range("eval/math_heldout/accuracy")) == {
        "n": 3, "mean": statistics.fmean(wide), "ci_low": 0.0, "ci_high": 1.0}
    assert t_interval(wide)["ci_low"] < 0 and value_range("math_heldout/accuracy", difference=True) == (-1.0, 1.0)
    assert value_range("tokens/solver") is None and value_range("math_heldout/sc_delta") == (-1.0, 1.0)
    # the learning report's mechanics: shares stay in [0, 1], counts above zero
    assert value_range("solver/all_wrong_groups") == (0.0, 1.0) and value_range("solver/located_share") == (0.0, 1.0)
    assert t_interval([0.0, 0.0, 0.0, 0.0, 2.4], bounds=value_range("solver/rescued_groups"))["ci_low"] == 0.0


@pytest.mark.slow
def test_evaluate_a_real_checkpoint(tmp_path, capsys):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    small = ["+experiment=math", f"paths.root_dir={tmp_path}", "trainer.max_steps=2", "benchmark.eval_size=4",
             "trainer.progress_bar=false", "benchmark.train_docs=100", "trainer.docs_per_step=2",
             "trainer.max_tasks_per_step=2", "trainer.solutions_per_task=2", "trainer.generation.solver_tokens=16",
             "trainer.generation.reviewer_tokens=16", "trainer.generation.constructor_tokens=8", "benchmark.pass_k=[2]",
             "warmstart.enabled=false"]
    subprocess.run([sys.executable, str(REPO / "train.py"), *small], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=600)
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(run_dir), "benchmark.eval_size=3", "--out", str(out), "--log"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((out / "eval_metrics.json").read_text())
    assert scores["step"] == 2
    assert 0.0 <= scores["eval/math_heldout/accuracy"] <= 1.0
    assert {f"eval/math_heldout/self_correction/{k}" for k in SC} <= set(scores)
    assert "math_heldout" in printed and "accuracy" in printed

    # --log: the numbers land in the training run at its last step, with eval_metrics.json beside them
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("alive").experiment_id])
    assert run.data.metrics["eval/math_heldout/n_tasks"] == 3.0
    assert run.data.metrics["eval/math_heldout/accuracy"] == scores["eval/math_heldout/accuracy"]
    assert "evaluate/eval_metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id, "evaluate")}


def test_evaluate_overrides_set_values_and_refuse_group_choices():
    cfg = cli.compose(["+experiment=math"])
    cli.apply_overrides(cfg, ["benchmark.eval_size=7", "benchmark.eval_domains=[math,logic]", "+logger.tags.note=x"])
    assert cfg.benchmark.eval_size == 7 and list(cfg.benchmark.eval_domains) == ["math", "logic"]
    assert cfg.logger.tags.note == "x"
    with pytest.raises(SystemExit, match="config group"):
        cli.apply_overrides(cfg, ["reward=verbal"])
    with pytest.raises(SystemExit, match="no key 'benchmark.eval_sise'"):
        cli.apply_overrides(cfg, ["benchmark.eval_sise=3"])


def test_committed_params_yaml_is_conf_composed_with_the_smoke_overrides(tmp_path):
    """params.yaml drives `dvc repro`; when a default in conf/ changes, regenerate it with
    `python scripts/dvc_pipeline.py params`. Keys conf/ has gained since are tolerated: the schema fills them
    in when the pipeline loads params.yaml (its defaults mirror conf/)."""
    pytest.importorskip("dvc")
    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import dvc_pipeline
    finally:
        sys.path.remove(str(REPO / "scripts"))
    dvc_pipeline.write_params([], tmp_path / "params.yaml")
    fresh, committed = (yaml.safe_load(p.read_text()) for p in (tmp_path / "params.yaml", REPO / "params.yaml"))
    for env_dependent in ("paths", "logger"):  # ${oc.env:...} resolved at composition; the pipeline replaces them
        fresh.pop(env_dependent), committed.pop(env_dependent)

    def stale(old, new, prefix=""):
        if isinstance(old, dict) and isinstance(new, dict):
            return [k for key in old for k in (stale(old[key], new[key], f"{prefix}{key}.") if key in new
                                                else [f"{prefix}{key} (gone from conf/)"])]
        return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]

    assert not stale(committed, fresh), "params.yaml is stale, run: python scripts/dvc_pipeline.py params"
    assert cli.load_config(REPO / "params.yaml", dvc_pipeline.PIPELINE_PATHS).trainer.max_steps == 4
