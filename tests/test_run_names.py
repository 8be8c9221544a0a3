"""Where a researcher compares runs: names that say which override differs, the overrides tag, the chart view
stored on the experiment and the URLs a run prints (a real MLflow SQLite store, Hydra's own override list)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from alive_exp import mlflow_ui, tracking
from alive_exp.train import summary
from conftest import CONF


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test has its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture
def as_hydra_job():
    """Compose a config the way `python train.py <overrides>` does and make it the current Hydra job's, so the
    run reads its overrides from HydraConfig as a real job (or a sweep's child) does."""

    def job(overrides: list[str]):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield job
    HydraConfig.instance().cfg = None


def test_two_runs_that_differ_only_by_an_override_get_different_names_and_the_override_tag(tmp_path, store,
                                                                                           as_hydra_job):
    uri = store
    common = ["+experiment=math", "reward=verbal", "seed=5", f"logger.tracking_uri={uri}", "logger.experiment_name=names",
              f"paths.root_dir={tmp_path}", f"logger.artifact_location={tmp_path}/artifacts"]
    for extra in ([], ["trainer.warmup_steps=40"]):
        logger = tracking.make_logger(as_hydra_job([*common, *extra]))
        assert logger.run_id  # the run is created on first use
        logger.end("success")
    c = MlflowClient(uri)
    runs = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("names").experiment_id])}
    assert set(runs) == {"math-verbal-s5", "math-verbal-s5-warmup_steps=40"}  # paths and logger say nothing
    tags = {name: r.data.tags[mlflow_ui.OVERRIDES_TAG] for name, r in runs.items()}
    assert "trainer.warmup_steps=40" in tags["math-verbal-s5-warmup_steps=40"].split()
    assert "trainer.warmup_steps=40" not in tags["math-verbal-s5"]
    assert f"logger.tracking_uri={uri}" in tags["math-verbal-s5"].split()  # the tag holds every override


def test_run_names_shorten_keys_and_paths_readably_and_keep_colliding_keys_whole():
    name = mlflow_ui.run_name("math-scalar-s0", [
        "+experiment=math", "seed=0", "+debug=tiny", "trainer.optim.solver.lr=3e-4", "trainer.optim.reviewer.lr=1e-4",
        "model.init_from=/data/warmstart/math-s0/", "hardware.torch_threads=1", "resume=auto"])
    assert name == ("math-scalar-s0-debug=tiny-trainer.optim.solver.lr=3e-4-trainer.optim.reviewer.lr=1e-4"
                    "-init_from=math-s0")


def test_a_finished_run_prints_its_url_the_charts_url_and_its_sweep_parent(store, small_cfg):
    uri = store
    exp = tracking.ensure_experiment(uri, "links", None)
    c = MlflowClient(uri)
    parent = c.create_run(exp, run_name="sweep x").info.run_id
    run = c.create_run(exp, run_name="math-scalar-s0").info.run_id
    for key in ("constructor/solve_rate_hist/0-25", "eval/math_longer/accuracy", "eval/math_heldout/accuracy",
                "eval/math_heldout/self_correction/delta", "train/reward_mean", "system/cpu_utilization_percentage"):
        c.log_metric(run, key, 0.5)

    links = mlflow_ui.comparison_links(c, uri, exp, run, parent)
    base = f"http://127.0.0.1:5000/#/experiments/{exp}"
    assert links["run"] == f"{base}/runs/{run}" and links["sweep"] == f"{base}/runs/{parent}"
    assert links["charts"].startswith(f"{base}/runs?compareRunsMode=CHART&workflowType=machine_learning")
    key = links["charts"].split("viewStateShareKey=")[1]
    view = json.loads(c.get_experiment(exp).tags[mlflow_ui.VIEW_TAG + key])
    assert [ch["metricKey"] for ch in view["compareRunCharts"]] == [
        "eval/math_heldout/accuracy", "eval/math_longer/accuracy", "train/reward_mean"]
    assert {ch["metricSectionId"] for ch in view["compareRunCharts"]} == {view["compareRunSections"][0]["uuid"]}
    sections = [s["name"] for s in view["compareRunSections"]]
    assert sections[0] == "Held-out accuracy and reward" and sections[-2:] == ["Model metrics", "System metrics"]
    assert sections.index("constructor/solve_rate_hist") > 0 and view["isAccordionReordered"]
    assert f"tags.`{mlflow_ui.OVERRIDES_TAG}`" in view["selectedColumns"]
    assert c.get_experiment(exp).tags[mlflow_ui.KIND_TAG] == "custom_model_development"

    cfg = small_cfg(f"logger.tracking_uri={uri}", "logger.experiment_name=links")
    text = summary({"mlflow_run_id": run, "eval/math_heldout/accuracy": 0.5, "eval/math_heldout/n_tasks": 4}, cfg,
                   links)
    assert all(url in text for url in links.values())
    assert "held-out accuracy math_heldout (4 problems, greedy)" in text and "mlflow ui --backend-store-uri" in text


def test_a_tracking_server_serves_its_own_urls():
    assert mlflow_ui.run_url("http://mlflow.lab:8080/", "3", "abc") == "http://mlflow.lab:8080/#/experiments/3/runs/abc"
    assert mlflow_ui.charts_url("https://m.lab", "3").startswith("https://m.lab/#/experiments/3/runs?compareRunsMode=CHART")
