"""Where a researcher compares runs in MLflow's UI: run names that say what differs, the URLs of a run and of
its experiment's charts, and what the experiment shows first (its description and a logged chart view).

MLflow 3.17's UI decides by itself what an experiment opens on (a per-browser GenAI / Model training switch)
and orders its default charts by metric prefix, alphabetically; what a project can set is an experiment's
tags. A tag `mlflow.sharedViewState.<key>` holds a chart view (the UI's own "share view" format), and the URL
`#/experiments/<id>/runs?viewStateShareKey=<key>` opens it: the held-out accuracies and the reward first,
then every other metric in the sections the UI would make for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OVERRIDES_TAG = "alive.overrides"
KIND_TAG = "mlflow.experimentKind"  # read by MLflow UIs before the workflow switch; 3.17 reads the switch only
DESCRIPTION_TAG = "mlflow.note.content"
VIEW_TAG = "mlflow.sharedViewState."
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a SQLite or file store

# overrides a run's name already says (domain, reward mode, seed) or that do not change what a run computes
IN_BASE_NAME = ("experiment", "benchmark", "reward", "seed")
NOT_A_DIFFERENCE = ("paths", "logger", "hydra", "task_name", "resume", "trainer.progress_bar",
                    "hardware.torch_threads")
NAME_LIMIT = 120
VIEW_LIMIT = 20000  # MLflow's limit on an experiment tag's value
VALUE_LIMIT = 24

DESCRIPTION = (
    "ALIVE runs: compare held-out accuracy (eval/SUITE/accuracy) and train/reward_mean first, in the chart view "
    "whose URL each run prints at its end. Runs and charts are under Model training (the switch at the top of "
    f"the left sidebar); the tag {OVERRIDES_TAG} lists each run's overrides.")


def command_line_overrides() -> list[str]:
    """The overrides of this job as Hydra received them (a multirun job: its own values); [] outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):
        return []


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def names_a_difference(override: str) -> bool:
    key = _key(override)
    if key in IN_BASE_NAME:
        return False
    return not any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOT_A_DIFFERENCE)


def _short_value(value: str) -> str:
    if "/" in value and not value.startswith("["):  # a path: its last part says which one
        value = Path(value.rstrip("/")).name or value
    return value if len(value) <= VALUE_LIMIT else value[:VALUE_LIMIT - 1] + "~"


def run_name(base: str, overrides: list[str]) -> str:
    """`base` plus the overrides that make this run differ, each as its last key part (the full key where two
    share a last part): `math-verbal-s5` + `trainer.warmup_steps=40` -> `math-verbal-s5-warmup_steps=40`."""
    kept = [(_key(o), o.split("=", 1)[1] if "=" in o else "") for o in overrides if names_a_difference(o)]
    leaves = [k.split(".")[-1].split("/")[-1] for k, _ in kept]
    parts = [f"{leaf if leaves.count(leaf) == 1 else key}={_short_value(value)}"
             for (key, value), leaf in zip(kept, leaves)]
    name = "-".join([base, *parts])
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT - 1] + "~"


def overrides_tag(overrides: list[str]) -> dict[str, str]:
    """The full override list as a run tag (a column the runs table can show)."""
    return {OVERRIDES_TAG: " ".join(overrides)[:8000] or "(none)"}


# -- URLs -------------------------------------------------------------------------------------------------
def ui_base(tracking_uri: str) -> str:
    """The UI of a store: a tracking server serves its own; a SQLite or file store is served by `mlflow ui`."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def charts_url(tracking_uri: str, experiment_id: str, view_key: str | None = None) -> str:
    """The experiment's runs view with charts, under Model training, in the logged chart view when there is one."""
    view = f"&viewStateShareKey={view_key}" if view_key else ""
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
            f"&workflowType=machine_learning{view}")


# -- what the experiment shows first ---------------------------------------------------------------------
def describe_experiment(client, experiment_id: str) -> None:
    """Kind and description, where the experiment has none yet (a description edited in the UI stays); a store
    that refuses them (locked by a parallel job) is logged, never a reason not to run."""
    try:
        tags = client.get_experiment(experiment_id).tags
        if KIND_TAG not in tags:
            client.set_experiment_tag(experiment_id, KIND_TAG, "custom_model_development")
        if DESCRIPTION_TAG not in tags:
            client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, DESCRIPTION)
    except Exception as exc:  # noqa: BLE001
        log.warning("experiment %s keeps its tags (%s: %s)", experiment_id, type(exc).__name__, exc)


def headline_metrics(keys: list[str] | set[str]) -> list[str]:
    """What a researcher compares first: greedy accuracy of every evaluated suite (held-out suites first, then
    the others, validation last), the training reward, the solver's sampled accuracy."""
    suites = [k for k in keys if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2]
    suites.sort(key=lambda k: (not k.split("/")[1].endswith("_heldout"), k.split("/")[1].endswith("_validation"), k))
    return [*suites, *(k for k in ("train/reward_mean", "solver/accuracy") if k in keys)]


def _section(key: str) -> str:
    """The section MLflow's UI puts a metric in: its key up to the last `/`."""
    if key.startswith("system/"):
        return "System metrics"
    return key.rsplit("/", 1)[0] if "/" in key else "Model metrics"


def _chart(i: int, key: str) -> dict[str, Any]:
    chart = {"uuid": f"alive-chart-{i}", "type": "BAR" if key.startswith("eval/") else "LINE", "metricKey": key,
             "metricSectionId": "alive-first", "isGenerated": False, "deleted": False, "runsCountToCompare": 10}
    if chart["type"] == "LINE":
        chart.update(selectedMetricKeys=[key], lineSmoothness=0, xAxisKey="step", xAxisScaleType="linear",
                     scaleType="linear", selectedXAxisMetricKey="", useGlobalXaxisKey=True,
                     useGlobalLineSmoothing=True, range={})
    return chart


def chart_view(keys: list[str] | set[str]) -> dict[str, Any]:
    """The UI state of the runs view: a first section of the headline metrics (held-out accuracies as bars,
    one per run; reward and solver accuracy as curves), then one section per metric prefix in the order MLflow
    sorts them (alphabetical, Model and System metrics last); the runs table shows the overrides column."""
    head = headline_metrics(keys)
    names = sorted({_section(k) for k in keys} - {"Model metrics", "System metrics"})
    sections = [{"uuid": "alive-first", "name": "Held-out accuracy and reward", "display": True,
                 "isReordered": True, "deleted": False, "isGenerated": False}]
    sections += [{"uuid": f"alive-section-{i}", "name": n, "display": True, "isReordered": False, "deleted": False,
                  "isGenerated": True} for i, n in enumerate([*names, "Model metrics", "System metrics"])]
    return {"compareRunCharts": [_chart(i, k) for i, k in enumerate(head)], "compareRunSections": sections,
            "isAccordionReordered": True, "runsHiddenMode": "FIRST_10_RUNS", "hideEmptyCharts": True,
            "selectedColumns": [f"tags.`{OVERRIDES_TAG}`", *(f"metrics.`{k}`" for k in head)]}


def log_chart_view(client, experiment_id: str, keys: list[str] | set[str]) -> str:
    """Store the chart view of these metric keys on the experiment; returns its key (the same headline, the
    same key: runs of one configuration share one view)."""
    view = chart_view(keys)
    head = [c["metricKey"] for c in view["compareRunCharts"]]
    key = "alive-" + hashlib.sha1(json.dumps(head).encode()).hexdigest()[:10]
    text = json.dumps(view, separators=(",", ":"))
    if len(text) > VIEW_LIMIT:  # too many prefixes to list: the UI appends their sections after the first itself
        view["compareRunSections"] = view["compareRunSections"][:1]
        text = json.dumps(view, separators=(",", ":"))
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, text)
    return key


def comparison_links(client, tracking_uri: str, experiment_id: str, run_id: str,
                     parent_run_id: str | None = None) -> dict[str, str]:
    """After a run: its chart view stored on the experiment (from the metrics it logged), and the URLs of the
    run, of the runs view with charts and, in a sweep, of the parent run (where the sweep's report is). A view
    that cannot be stored is logged; the charts URL then opens MLflow's default view."""
    key = None
    try:
        key = log_chart_view(client, experiment_id, set(client.get_run(run_id).data.metrics))
    except Exception as exc:  # noqa: BLE001  (a view is a convenience, never a reason to fail a finished run)
        log.warning("the chart view was not stored on experiment %s (%s: %s)", experiment_id, type(exc).__name__, exc)
    links = {"run": run_url(tracking_uri, experiment_id, run_id), "charts": charts_url(tracking_uri, experiment_id, key)}
    if parent_run_id:
        links["sweep"] = run_url(tracking_uri, experiment_id, parent_run_id)
    return links
