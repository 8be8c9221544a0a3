"""The side-by-side report: finished runs from MLflow -> tables and plots per reward mode -> Markdown, JSON, MLflow.

Runs are grouped by (train domain, reward mode); seeds are the replicates. Every number comes from the
tracking store as logged: final values are the runs' latest metric values, curves are their metric
histories. Intervals are two-sided 95% t-intervals across seeds (none with a single seed). The figures
are drawn in `alive_exp.plots`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_TAG = "alive.report"
PARENT_TAG = "mlflow.parentRunId"
MODE_ORDER = ("scalar", "judge", "verbal", "fcp")
CURVE_METRICS = ("train/reward_mean", "solver/accuracy")
TRAIN_METRICS = ("train/reward_mean", "solver/accuracy", "reviewer/balanced_agreement", "constructor/valid_rate")
COST_METRICS = ("tokens/constructor", "tokens/solver", "tokens/reviewer", "time/step")
SELF_CORRECTION = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i", "gated_acc_t2", "gated_delta",
                   "edit_distance_ratio")  # SCoRe's protocol (every attempt revised), then the gated one
REVIEWER = ("reviewer/balanced_agreement", "reviewer/precision", "reviewer/recall", "reviewer/missing_rate")


class ReportError(RuntimeError):
    """Nothing to report on, or the store is not what the user pointed at."""


@dataclass
class RunRecord:
    run_id: str
    run_name: str
    reward_mode: str
    seed: str
    domain: str
    start_time: int
    metrics: dict[str, float] = field(repr=False)

    @property
    def group(self) -> tuple[str, str]:
        return self.domain, self.reward_mode


# -- statistics -------------------------------------------------------------------------------------
MIN_SEEDS = 3  # below it a t-interval says nothing (t(0.975, 1) = 12.7): the report says so instead
_RATES = {"accuracy", "sampled_accuracy", "balanced_agreement", "agreement", "precision", "recall", "missing_rate",
          "valid_rate", "success_rate", "blind_success_rate", "acc_t1", "acc_t2", "gated_acc_t2", "critique_agreement",
          "critique_balanced_agreement", "sampled", "reviewer_agreement",  # these two: the learning report's columns
          "located_share", "all_wrong_groups"}  # shares of a step's rejected solutions / groups
_DELTAS = {"delta", "gated_delta", "delta_i_to_c", "delta_c_to_i", "sc_delta", "i_to_c", "c_to_i"}  # rate - rate
_COUNTS = {"rescued_groups", "located_critiques"}  # counts per step: never below zero


def value_range(metric: str, difference: bool = False) -> tuple[float, float] | None:
    """What a metric's values can be: [0, 1] for a rate (accuracy, pass@k, agreement, ...), [-1, 1] for a
    difference of rates (a self-correction delta, or `difference`: one arm's rate minus another's), wider
    again for a difference of deltas; None for tokens, times, losses and rewards (no bound to keep to)."""
    last = metric.rsplit("/", 1)[-1]
    if last in _RATES or last.startswith(("pass_at_", "pass@")):
        return (-1.0, 1.0) if difference else (0.0, 1.0)
    if last in _DELTAS:
        return (-2.0, 2.0) if difference else (-1.0, 1.0)
    if last in _COUNTS and not difference:
        return (0.0, math.inf)
    return None


def t_interval(values: Sequence[float], level: float = 0.95,
               bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean and two-sided t-interval across seeds, kept within `bounds` (`value_range`: a rate's interval stays
    in [0, 1]); with fewer than MIN_SEEDS values the bounds are None (`fmt` says why)."""
    n = len(values)
    mean = sum(values) / n
    if n < MIN_SEEDS:
        return {"n": n, "mean": mean, "ci_low": None, "ci_high": None}
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n": n, "mean": mean, "ci_low": low, "ci_high": high}


def fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """`0.512 [0.401, 0.623]`; `0.512 (n=1)` for one seed, `0.512 (n=2, too few seeds for an interval)` below
    MIN_SEEDS; `-` when absent."""
    if not stat:
        return "-"
    if stat["ci_low"] is None:
        return f"{stat['mean']:.{digits}f} (n=1)" if stat["n"] == 1 else \
            f"{stat['mean']:.{digits}f} (n={stat['n']}, too few seeds for an interval)"
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


# -- collecting runs --------------------------------------------------------------------------------
def _search(client, experiment_id: str, filter_string: str):
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def collect_runs(client, experiment: str, parent: str | None = None) -> tuple[list[RunRecord], list[str]]:
    """Finished training runs of `experiment` (children of `parent` when given), newest per (domain, mode, seed).

    Returns the runs and notes on what was left out and why.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise ReportError(f"no experiment {experiment!r} in this tracking store (experiments there: {names}); "
                          "pass --experiment or --tracking-uri")
    query = "attributes.status = 'FINISHED'"
    if parent:
        query += f" and tags.`{PARENT_TAG}` = '{parent}'"
    kept: dict[tuple[str, str, str], RunRecord] = {}
    notes: list[str] = []
    for r in _search(client, exp.experiment_id, query):
        tags = r.data.tags
        if tags.get(REPORT_TAG) == "1" or "reward_mode" not in tags:
            continue  # earlier reports and sweep parents are not training runs
        rec = RunRecord(r.info.run_id, r.info.run_name or "", tags["reward_mode"], tags.get("seed", "?"),
                        tags.get("domain", "?"), r.info.start_time or 0, dict(r.data.metrics))
        key = (rec.domain, rec.reward_mode, rec.seed)
        old = kept.get(key)
        if old is not None:
            newer, older = (rec, old) if rec.start_time >= old.start_time else (old, rec)
            notes.append(f"run {older.run_id} ({'/'.join(key)}) left out: run {newer.run_id} is newer with the "
                         "same domain, mode and seed")
            rec = newer
        kept[key] = rec
    if not kept:
        where = f"children of run {parent}" if parent else f"experiment {experiment!r}"
        raise ReportError(f"no finished training runs (tagged reward_mode) among the {where}")
    return sorted(kept.values(), key=lambda r: (r.domain, _mode_rank(r.reward_mode), _seed_rank(r.seed))), notes


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


def _seed_rank(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (1 << 30, seed)


def benchmarks(runs: Iterable[RunRecord]) -> list[str]:
    """Benchmarks with an accuracy in any run, from `eval/<benchmark>/accuracy`."""
    return sorted({k.split("/")[1] for r in runs for k in r.metrics
                   if k.startswith("eval/") and k.endswith("/accuracy")})


def metric_history(client, run_id: str, key: str) -> dict[int, float]:
    """step -> value; a step logged twice (a resumed run) keeps its last value."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in history}


# -- tables -----------------------------------------------------------------------------------------
def grouped(runs: Sequence[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    out: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        out[r.group].append(r)
    return dict(out)


def stat_row(domain: str, mode: str, metric: str, members: Sequence[RunRecord],
             values: dict[str, float] | None = None) -> dict[str, Any] | None:
    """One table cell with its provenance: the per-seed values and run ids behind the mean and interval."""
    values = values if values is not None else {r.run_id: r.metrics[metric] for r in members if metric in r.metrics}
    have = [r for r in members if r.run_id in values]
    if not have:
        return None
    row = {"domain": domain, "reward_mode": mode, "metric": metric}
    row.update(t_interval([values[r.run_id] for r in have], bounds=value_range(metric)))
    row["seeds"] = [r.seed for r in have]
    row["values"] = [values[r.run_id] for r in have]
    row["run_ids"] = [r.run_id for r in have]
    return row


def final_table(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Every evaluation metric and the last training values, per group."""
    eval_keys = sorted({k for r in runs for k in r.metrics if k.startswith("eval/") and not k.endswith("/n_tasks")})
    rows = []
    for (domain, mode), members in grouped(runs).items():
        for key in [*TRAIN_METRICS, *eval_keys]:
            row = stat_row(domain, mode, key, members)
            if row:
                rows.append(row)
    return rows


def self_correction_table(final: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """SCoRe's columns per group and benchmark, taken from the final table."""
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in final:
        parts = row["metric"].split("/")
        if len(parts) == 4 and parts[0] == "eval" and parts[2] == "self_correction" and parts[3] in SELF_CORRECTION:
            key = (row["domain"], row["reward_mode"], parts[1])
            cells.setdefault(key, {"domain": key[0], "reward_mode": key[1], "benchmark": key[2]})[parts[3]] = {
                k: row[k] for k in ("n", "mean", "ci_low", "ci_high")}
    return list(cells.values())


def cross_domain(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """Train domain x eval benchmark -> accuracy, mean over every run (all modes and seeds) that has it."""
    domains = sorted({r.domain for r in runs})
    benches = benchmarks(runs)
    acc, n = [], []
    for d in domains:
        row_acc, row_n = [], []
        for b in benches:
            key = f"eval/{b}/accuracy"
            vals = [r.metrics[key] for r in runs if r.domain == d and key in r.metrics]
            row_acc.append(sum(vals) / len(vals) if vals else None)
            row_n.append(len(vals))
        acc.append(row_acc)
        n.append(row_n)
    return {"train_domains": domains, "benchmarks": benches, "accuracy": acc, "n": n}


def curves(client, runs: Sequence[RunRecord], keys: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """Per group and metric: steps with mean, min and max across seeds; plus each run's raw history."""
    histories = {r.run_id: {k: metric_history(client, r.run_id, k) for k in keys} for r in runs}
    out = []
    for (domain, mode), members in grouped(runs).items():
        for key in keys:
            steps = sorted({s for r in members for s in histories[r.run_id][key]})
            if not steps:
                continue
            per_step = [[histories[r.run_id][key][s] for r in members if s in histories[r.run_id][key]] for s in steps]
            out.append({"domain": domain, "reward_mode": mode, "metric": key, "step": steps,
                        "mean": [sum(v) / len(v) for v in per_step], "min": [min(v) for v in per_step],
                        "max": [max(v) for v in per_step], "n": [len(v) for v in per_step]})
    return out, histories


def cost_table(runs: Sequence[RunRecord], histories: dict[str, dict]) -> list[dict[str, Any]]:
    """Mean per ALIVE step of each run's tokens per role and step time, then across seeds."""
    rows = []
    for (domain, mode), members in grouped(runs).items():
        for key in COST_METRICS:
            per_run = {r.run_id: sum(h.values()) / len(h) for r in members if (h := histories[r.run_id].get(key))}
            row = stat_row(domain, mode, key, members, per_run)
            if row:
                rows.append(row)
    return rows


# -- the report -------------------------------------------------------------------------------------
def build_report(client, experiment: str, parent: str | None = None) -> dict[str, Any]:
    """Every table of the report as plain data (what report.json holds)."""
    runs, notes = collect_runs(client, experiment, parent)
    curve_rows, histories = curves(client, runs, [*CURVE_METRICS, *COST_METRICS])
    final = final_table(runs)
    return {
        "experiment": experiment,
        "parent_run_id": parent,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "interval": "two-sided 95% t-interval across seeds (none for n=1)",
        "runs": [{k: v for k, v in asdict(r).items() if k != "metrics"} for r in runs],
        "notes": notes,
        "final": final,
        "self_correction": self_correction_table(final),
        "cross_domain": cross_domain(runs),
        "cost": cost_table(runs, histories),
        "curves": [c for c in curve_rows if c["metric"] in CURVE_METRICS],
    }


def write_report(data: dict[str, Any], out: str | Path, tracking_uri: str = "") -> Path:
    """report.md, report.json and the PNGs into `out`; returns the folder."""
    from alive_exp.plots import render_plots  # not at the top: plots.py imports this module

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    figures = render_plots(data, out)
    (out / "report.md").write_text(markdown(data, figures, tracking_uri))
    return out


# -- Markdown ---------------------------------------------------------------------------------------
def group_label(domain: str, mode: str, many_domains: bool) -> str:
    return f"{domain}/{mode}" if many_domains else mode


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(data: dict[str, Any], figures: dict[str, str], tracking_uri: str = "") -> str:
    runs = data["runs"]
    many = len({r["domain"] for r in runs}) > 1
    cell = {(r["domain"], r["reward_mode"], r["metric"]): r for r in data["final"]}
    groups = list(dict.fromkeys((r["domain"], r["reward_mode"]) for r in runs))
    n_of = {g: sum(1 for r in runs if (r["domain"], r["reward_mode"]) == g) for g in groups}
    L = [f"# ALIVE report: experiment `{data['experiment']}`", ""]
    L += [f"Generated {data['generated']} by `alive-exp report` from {tracking_uri or 'MLflow'}"
          + (f", children of sweep run `{data['parent_run_id']}`." if data["parent_run_id"] else "."),
          f"{len(runs)} finished runs; intervals are {data['interval']}.", ""]
    L += _table(["mode", "seed", "train domain", "run", "run id"],
                [(r["reward_mode"], r["seed"], r["domain"], r["run_name"], f"`{r['run_id']}`") for r in runs])
    L += [f"- note: {n}" for n in data["notes"]]
    if "learning_curves" in figures:
        L += ["", "## Learning curves", "",
              "Line: mean across seeds per ALIVE step; band: min to max across seeds.", "",
              f"![learning curves]({figures['learning_curves']})"]
    L += ["", "## Final metrics", "", "Training: values at the last ALIVE step.", ""]
    L += _table(["group", "n", *TRAIN_METRICS],
                [(group_label(*g, many), str(n_of[g]), *(fmt(cell.get((*g, k))) for k in TRAIN_METRICS))
                 for g in groups])
    for b in data["cross_domain"]["benchmarks"]:
        keys = [f"eval/{b}/accuracy"] + sorted(
            {r["metric"] for r in data["final"] if r["metric"].startswith(f"eval/{b}/pass_at_")}) + [
            f"eval/{b}/{k}" for k in REVIEWER]
        L += ["", f"Evaluation on `{b}`:", ""]
        L += _table(["group", "n", *(k.split("/", 2)[2] for k in keys)],
                    [(group_label(*g, many), str((cell.get((*g, keys[0])) or {}).get("n", 0)),
                      *(fmt(cell.get((*g, k))) for k in keys)) for g in groups if (*g, keys[0]) in cell])
    if "final_accuracy" in figures:
        L += ["", f"![final accuracy]({figures['final_accuracy']})"]
    if data["self_correction"]:
        L += ["", "## Self-correction (SCoRe)", "",
              "Attempt 1, the model's own critique without the reference, attempt 2. "
              "delta = acc_t2 - acc_t1 = delta_i_to_c - delta_c_to_i.", ""]
        L += _table(["group", "benchmark", *SELF_CORRECTION],
                    [(group_label(r["domain"], r["reward_mode"], many), r["benchmark"],
                      *(fmt(r.get(k)) for k in SELF_CORRECTION)) for r in data["self_correction"]])
    xd = data["cross_domain"]
    if xd["benchmarks"]:
        L += ["", "## Cross-domain accuracy", "",
              "Train domain (rows) x evaluation benchmark (columns); mean accuracy over all runs of that domain.", ""]
        L += _table(["train domain", *xd["benchmarks"]],
                    [(d, *("-" if v is None else f"{v:.3f}" for v in row))
                     for d, row in zip(xd["train_domains"], xd["accuracy"])])
        if "cross_domain" in figures:
            L += ["", f"![cross-domain accuracy]({figures['cross_domain']})"]
    if data["cost"]:
        cost = {(r["domain"], r["reward_mode"], r["metric"]): r for r in data["cost"]}
        L += ["", "## Cost", "", "Mean per ALIVE step: generated tokens per role and step time (s).", ""]
        L += _table(["group", *COST_METRICS],
                    [(group_label(*g, many), *(fmt(cost.get((*g, k)), 1) for k in COST_METRICS)) for g in groups])
    return "\n".join(L) + "\n"


def log_report(client, experiment: str, out: str | Path, data: dict[str, Any], parent: str | None = None) -> str:
    """The report folder as artifacts `report/` of the sweep parent, or of a new run named "report"."""
    import pandas as pd

    if parent:
        run_id = parent
    else:
        exp = client.get_experiment_by_name(experiment)
        run_id = client.create_run(exp.experiment_id, run_name="report", tags={REPORT_TAG: "1"}).info.run_id
    client.log_artifacts(run_id, str(out), artifact_path="report")
    xd = data["cross_domain"]
    rows = [{"train_domain": d, "benchmark": b, "accuracy": v, "n": k}
            for d, accs, ns in zip(xd["train_domains"], xd["accuracy"], xd["n"])
            for b, v, k in zip(xd["benchmarks"], accs, ns) if v is not None]
    if rows:
        client.log_table(run_id, data=pd.DataFrame(rows), artifact_file="report/cross_domain_table.json")
    if not parent:
        client.set_terminated(run_id)
    return run_id


def run_report(tracking_uri: str, experiment: str = "alive", parent: str | None = None,
               out: str | Path = "outputs/report", log_back: bool = True) -> tuple[Path, dict[str, Any], str | None]:
    """Collect, write and log back; returns (folder, data, run id the report was logged to)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    data = build_report(client, experiment, parent)
    folder = write_report(data, out, tracking_uri)
    run_id = log_report(client, experiment, folder, data, parent) if log_back else None
    return folder, data, run_id
