"""The learning study: each arm against its own seed's warm start, and arms against each other, paired by seed.

A study is a set of finished runs, one per (arm, seed), each in an MLflow store: the warm start evaluated as it
is (arm `warm_start`, 0 ALIVE steps) and every reward mode trained from it. Every number is read back from
the stores. Intervals are two-sided 95% t-intervals across seeds of the per-seed values or, for gains and
differences, of the per-seed differences (paired: the seed fixes the warm start, the documents and the draws).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alive_exp.report import fmt, metric_history, t_interval, value_range

BASELINE = "warm_start"
# each role of the warm start on held-out problems (alive_exp.readiness, logged as warmstart/* at step 0)
READINESS = ("reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps")
SUITE_METRICS = {  # column name -> metric under eval/<suite>/
    "accuracy": "accuracy",
    "sampled": "sampled_accuracy",
    "pass@4": "pass_at_4",
    "acc_t1": "self_correction/acc_t1",
    "acc_t2": "self_correction/acc_t2",
    "sc_delta": "self_correction/delta",
    "i_to_c": "self_correction/delta_i_to_c",
    "c_to_i": "self_correction/delta_c_to_i",
    "gated_acc_t2": "self_correction/gated_acc_t2",
    "gated_delta": "self_correction/gated_delta",
    "critique_agreement": "self_correction/critique_balanced_agreement",
    "reviewer_agreement": "reviewer/balanced_agreement",
}
GAIN_METRICS = ("accuracy", "sampled", "sc_delta", "gated_delta")
COST = ("tokens/constructor", "tokens/solver", "tokens/reviewer", "tokens/refine", "time/step")
CURVES = ("solver/accuracy", "train/reward_mean", "reviewer/balanced_agreement")
# what each arm's roles did over its steps (mean per step): the reviewer's agreement with the oracle on the step's
# samples, the share of rejected solutions whose critique named a line (credit where the critique points), the
# share of groups with no right solution (no scalar signal) and how many of them a revision rescued
MECHANICS = ("solver/accuracy", "reviewer/balanced_agreement", "solver/located_share", "solver/all_wrong_groups",
             "solver/rescued_groups")


@dataclass
class StudyRun:
    arm: str
    seed: int
    tracking_uri: str
    run_id: str


def collect(runs: Sequence[StudyRun], suites: Sequence[str], curves: Sequence[str] = CURVES) -> dict[str, Any]:
    """Final metrics, cost per step and the `curves` metrics over the steps of every run, read from its store."""
    from mlflow.tracking import MlflowClient

    out: dict[str, Any] = {"runs": [], "suites": list(suites)}
    for r in runs:
        client = MlflowClient(r.tracking_uri)
        logged = client.get_run(r.run_id).data.metrics
        final = {f"{s}/{col}": logged[f"eval/{s}/{key}"] for s in suites for col, key in SUITE_METRICS.items()
                 if f"eval/{s}/{key}" in logged}
        cost, mechanics, history = {}, {}, {}
        # what the seed's warm start was: its likelihood steps and its own held-out check (metrics.json)
        warm = {k: logged[f"warmstart/{k}"] for k in ("steps", "heldout_accuracy", "train_seconds", *READINESS)
                if f"warmstart/{k}" in logged}
        if r.arm != BASELINE:
            logged_over_steps = {key: metric_history(client, r.run_id, key) for key in {*COST, *MECHANICS, *curves}}
            mean = {key: sum(h.values()) / len(h) for key, h in logged_over_steps.items() if h}
            cost = {key: mean.get(key, 0.0) for key in COST}
            mechanics = {key: mean[key] for key in MECHANICS if key in mean}
            history = {key: sorted(logged_over_steps[key].items()) for key in curves}
        out["runs"].append({"arm": r.arm, "seed": r.seed, "run_id": r.run_id, "tracking_uri": r.tracking_uri,
                            "final": final, "cost": cost,
                            "mechanics": mechanics, "curves": history, "warm_start": warm})
    return out


def _by(data: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["arm"], r["seed"]): r for r in data["runs"]}


def arms_of(data: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["arm"] for r in data["runs"]))


def seeds_of(data: dict[str, Any]) -> list[int]:
    return sorted({r["seed"] for r in data["runs"]})


def paired(data: dict[str, Any], arm: str, other: str, key: str) -> dict[str, Any] | None:
    """arm - other on `key`, per seed, with the t-interval of those differences."""
    by = _by(data)
    diffs = [by[(arm, s)]["final"][key] - by[(other, s)]["final"][key] for s in seeds_of(data)
             if (arm, s) in by and (other, s) in by and key in by[(arm, s)]["final"] and key in by[(other, s)]["final"]]
    if not diffs:
        return None
    return {**t_interval(diffs, bounds=value_range(key, difference=True)), "values": diffs}


def level(data: dict[str, Any], arm: str, key: str, table: str = "final") -> dict[str, Any] | None:
    vals = [r[table][key] for r in data["runs"] if r["arm"] == arm and key in r.get(table, {})]
    return {**t_interval(vals, bounds=value_range(key)), "values": vals} if vals else None


def verdict(stat: dict[str, Any] | None) -> str:
    """above zero | below zero | includes zero, from the 95% interval."""
    if not stat or stat["ci_low"] is None:
        return "no interval"
    if stat["ci_low"] > 0:
        return "above zero"
    if stat["ci_high"] < 0:
        return "below zero"
    return "includes zero"


def summarise(data: dict[str, Any], comparisons: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Levels, gains over the warm start and the named differences, as plain data (report JSON)."""
    arms, suites = arms_of(data), data["suites"]
    keys = [f"{s}/{c}" for s in suites for c in SUITE_METRICS]
    levels = {a: {k: level(data, a, k) for k in keys} for a in arms}
    gains = {a: {f"{s}/{c}": paired(data, a, BASELINE, f"{s}/{c}") for s in suites for c in GAIN_METRICS}
             for a in arms if a != BASELINE}
    diffs = {f"{a} - {b}": {f"{s}/{c}": paired(data, a, b, f"{s}/{c}") for s in suites for c in GAIN_METRICS}
             for a, b in comparisons if a in arms and b in arms}
    cost = {a: {k: level(data, a, k, "cost") for k in COST} for a in arms if a != BASELINE}
    mechanics = {a: {k: level(data, a, k, "mechanics") for k in MECHANICS} for a in arms if a != BASELINE}
    return {"levels": levels, "gains": gains, "differences": diffs, "cost": cost, "mechanics": mechanics}


def _table(header: Sequence[str], rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(data: dict[str, Any], summary: dict[str, Any], meta: dict[str, Any], figures: dict[str, str]) -> str:
    arms, suites, seeds = arms_of(data), data["suites"], seeds_of(data)
    L = [f"# {meta.get('title', 'Does the embedded world teach? Each arm against its warm start, paired by seed')}", "",
         f"Generated by `{meta['command']}` in {meta['minutes']:.0f} min on {meta['machine']}. "
         f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); each seed has its own warm start "
         f"({meta['warmstart_steps']}), evaluated as it is (`warm_start`) and trained from with "
         f"each reward mode for {meta['steps']} ALIVE steps. Suites: {', '.join(f'`{s}`' for s in suites)} "
         f"({meta['eval_size']} problems each, fixed for every seed; greedy attempts unless noted). Every number is "
         "read back from the runs' MLflow stores; cells are mean [95% t-interval across seeds].", "",
         *([meta["preface"], ""] if meta.get("preface") else [])]
    if meta.get("reading"):
        L += ["## The reading", "", meta["reading"], ""]
    if meta.get("learning_rates"):
        L += ["Solver learning rate per arm (`docs/lr_choice.json`, by its reward mode): " + ", ".join(
            f"{a} {lr:g}" if lr is not None else f"{a} the experiment's" for a, lr in meta["learning_rates"].items()
            if a != BASELINE) + ".", ""]
    warm = [r for r in data["runs"] if r["arm"] == BASELINE and r.get("warm_start")]
    if warm:
        ready = [k for k in READINESS if any(k in r["warm_start"] for r in warm)]
        L += ["## The warm starts", "",
              "Each seed's warm start: its likelihood steps (it stops at the first validation check where every "
              "floor holds, see `warmstart.py`), build time, greedy accuracy on every suite, and each role on "
              "held-out problems (`reviewer`, `reviewer_blind`: balanced agreement of its verdicts with the "
              "reference check, with and without the reference; `refiner_fixes` / `refiner_keeps`: wrong samples "
              "it fixes, right ones it keeps).", ""]
        L += _table(["seed", "steps", "seconds", *suites, *ready],
                    [(str(r["seed"]), f"{r['warm_start'].get('steps', 0):.0f}", f"{r['warm_start'].get('train_seconds', 0):.0f}",
                      *(f"{r['final'].get(f'{s}/accuracy', float('nan')):.3f}" for s in suites),
                      *(f"{r['warm_start'][k]:.2f}" if k in r["warm_start"] else "-" for k in ready)) for r in warm]) + [""]
    L += ["## The answers", ""]
    L += [line for line in meta.get("answers", [])]
    L += ["", "## Gain over the warm start (paired by seed)", "",
          "Per seed: trained minus that seed's warm start; mean [95% interval] of those differences, and whether "
          "the interval lies above zero.", ""]
    for s in suites:
        L += [f"`{s}`:", ""]
        rows = []
        for a in arms:
            if a == BASELINE:
                continue
            g = summary["gains"][a]
            rows.append((a, *(f"{fmt(g.get(f'{s}/{c}'))} ({verdict(g.get(f'{s}/{c}'))})" for c in GAIN_METRICS)))
        L += _table(["arm", *GAIN_METRICS], rows) + [""]
    if summary["differences"]:
        L += ["## Arms against each other (paired by seed)", ""]
        for s in suites:
            L += [f"`{s}`:", ""]
            rows = [(name, *(f"{fmt(d.get(f'{s}/{c}'))} ({verdict(d.get(f'{s}/{c}'))})" for c in GAIN_METRICS))
                    for name, d in summary["differences"].items()]
            L += _table(["difference", *GAIN_METRICS], rows) + [""]
    L += ["## Levels", "",
          f"`accuracy`: greedy pass@1; `sampled`: mean correctness of 4 samples at T={meta.get('eval_temperature', 1.0):g}; "
          "`pass@4`; SCoRe self-correction "
          "(attempt 1, the model's own critique without the reference, attempt 2): `acc_t1`, `acc_t2`, "
          "`sc_delta` = `i_to_c` - `c_to_i`; the gated protocol (a first attempt the model's own critique accepts "
          "stands; only rejected ones are revised): `gated_acc_t2`, `gated_delta`; `critique_agreement`: those blind "
          "verdicts against the reference check, `reviewer_agreement`: the reviewer with the reference on sampled "
          "solutions, both balanced (the mean of the agreement on right and on wrong solutions: 0.5 is chance).", ""]
    for s in suites:
        L += [f"`{s}`:", ""]
        L += _table(["arm", *SUITE_METRICS], [(a, *(fmt(summary["levels"][a].get(f"{s}/{c}")) for c in SUITE_METRICS))
                                              for a in arms]) + [""]
    L += ["## Compute each arm spent", "", "Mean per ALIVE step: generated tokens per role and seconds per step.", ""]
    L += _table(["arm", *COST], [(a, *(fmt(summary["cost"][a].get(k), 1) for k in COST)) for a in arms if a != BASELINE])
    if any(summary.get("mechanics", {}).get(a, {}).get(k) for a in arms if a != BASELINE for k in MECHANICS):
        L += ["", "## What each arm's roles did", "",
              "Mean per ALIVE step, over the training samples: `solver/accuracy` (the step's solutions right), "
              "`reviewer/balanced_agreement` (the critic's verdicts against the oracle's on those solutions; the "
              "oracle-guided arm's critic is the oracle), `solver/located_share` (rejected solutions whose critique "
              "named a line; counted only where `reward.credit=critique` uses it, 0 elsewhere), `solver/all_wrong_groups` (groups with no right "
              "solution, no scalar signal) and `solver/rescued_groups` (of those, groups per step that a revision "
              "rescued: what `reward.refinements_in_group` can use).", ""]
        L += _table(["arm", *MECHANICS], [(a, *(fmt(summary["mechanics"][a].get(k)) for k in MECHANICS))
                                          for a in arms if a != BASELINE])
    for name, file in figures.items():
        L += ["", f"![{name}]({file})"]
    L += ["", "## Runs", ""]
    L += _table(["arm", "seed", "run id", "store"],
                [(r["arm"], str(r["seed"]), f"`{r['run_id']}`", f"`{Path(r['tracking_uri'].split(':///')[-1]).parent.name}`")
                 for r in data["runs"]])
    return "\n".join(L) + "\n"


def plots(data: dict[str, Any], summary: dict[str, Any], out: Path, curves: Sequence[str] = CURVES,
          prefix: str = "learning") -> dict[str, str]:
    """<prefix>_curves.png (each of `curves` over the steps, per arm) and <prefix>_accuracy.png beside the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, suites = arms_of(data), data["suites"]
    color = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(arms)}
    figures = {}
    trained = [a for a in arms if a != BASELINE]
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, key in zip(axes[0], curves):
        for a in trained:
            runs = [r["curves"].get(key, []) for r in data["runs"] if r["arm"] == a]
            steps = sorted({s for h in runs for s, _ in h})
            if not steps:
                continue
            per = [[v for h in runs for s2, v in h if s2 == s] for s in steps]
            ax.plot(steps, [sum(v) / len(v) for v in per], color=color[a], label=a)
            ax.fill_between(steps, [min(v) for v in per], [max(v) for v in per], color=color[a], alpha=0.15, lw=0)
        ax.set(title=key, xlabel="ALIVE step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("training curves: mean across seeds, band = min to max")
    fig.tight_layout()
    fig.savefig(out / f"{prefix}_curves.png", dpi=110)
    plt.close(fig)
    figures["training curves"] = f"{prefix}_curves.png"
    fig, axes = plt.subplots(1, len(suites), figsize=(4.5 * len(suites), 3.6), squeeze=False)
    for ax, s in zip(axes[0], suites):
        for i, a in enumerate(arms):
            st = summary["levels"][a].get(f"{s}/accuracy")
            if not st:
                continue
            err = None if st["ci_low"] is None else [[st["mean"] - st["ci_low"]], [st["ci_high"] - st["mean"]]]
            ax.bar(i, st["mean"], 0.7, yerr=err, capsize=3, color=color[a], alpha=0.8)
            ax.scatter([i] * len(st["values"]), st["values"], color="black", s=8, zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
        ax.set(title=f"{s}: greedy accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / f"{prefix}_accuracy.png", dpi=110)
    plt.close(fig)
    figures["accuracy per arm (95% interval, seeds as dots)"] = f"{prefix}_accuracy.png"
    return figures


def write(data: dict[str, Any], comparisons: Sequence[tuple[str, str]], meta: dict[str, Any], out_md: Path,
          curves: Sequence[str] = CURVES, prefix: str = "learning") -> dict:
    """docs/<name>.md, .json and the PNGs beside it (<prefix>_*.png); returns the summary."""
    summary = summarise(data, comparisons)
    meta = {**meta, "answers": answers(data, summary), "reading": reading(data, summary)}
    out_md.parent.mkdir(parents=True, exist_ok=True)
    figures = plots(data, summary, out_md.parent, curves, prefix)
    out_md.write_text(markdown(data, summary, meta, figures))
    out_md.with_suffix(".json").write_text(json.dumps({"meta": meta, "data": data, "summary": summary}, indent=1) + "\n")
    return summary


def answers(data: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The paper's three questions (accuracy, generalization, self-correction), answered from the intervals."""
    suites = data["suites"]
    trained_on, others = suites[0], suites[1:]
    lines = []
    for a, g in summary["gains"].items():
        acc = g.get(f"{trained_on}/accuracy")
        gen = [f"`{s}` {fmt(g.get(f'{s}/accuracy'))} ({verdict(g.get(f'{s}/accuracy'))})" for s in others]
        sc = g.get(f"{trained_on}/sc_delta")
        lines.append(f"- **{a}**: accuracy on `{trained_on}` {fmt(acc)} ({verdict(acc)}); "
                     f"suites it never trained on: {'; '.join(gen) or '-'}; "
                     f"self-correction delta {fmt(sc)} ({verdict(sc)}).")
    for name, d in summary["differences"].items():
        st = d.get(f"{trained_on}/accuracy")
        lines.append(f"- **{name}** on `{trained_on}` accuracy: {fmt(st)} ({verdict(st)}).")
    return lines


def _said(stat: dict[str, Any] | None, above: str, below: str, neither: str) -> str:
    v = verdict(stat)
    return {"above zero": above, "below zero": below, "includes zero": neither}.get(v, "too few seeds to say")


def reading(data: dict[str, Any], summary: dict[str, Any]) -> str:
    """The report's one-paragraph reading, written from the intervals (so the script reproduces it): how much
    room the warm starts leave, what each arm gained, and each named difference on the suite trained on and the
    suites never trained on, said as the interval falls."""
    suites, arms = data["suites"], arms_of(data)
    if BASELINE not in arms:
        return ""
    first, others = suites[0], suites[1:]
    base = {s: level(data, BASELINE, f"{s}/accuracy") for s in suites}
    room = ", ".join(f"`{s}` {base[s]['mean']:.3f}" for s in suites if base[s])
    parts = [f"The warm starts answer {room} greedily (mean over seeds), so the room to gain is what is left "
             "of 1 on each suite."]
    gains = []
    for a, g in summary["gains"].items():
        st = g.get(f"{first}/accuracy")
        ups = sum(v > 0 for v in st["values"]) if st else 0
        gains.append(f"{a} {fmt(st)} ({_said(st, 'gains', 'loses', 'the interval includes zero')}; "
                     f"{ups} of {st['n'] if st else 0} seeds gained)")
    if gains:
        parts.append(f"Over its seed's warm start on `{first}`: " + "; ".join(gains) + ".")
    words = {("verbal", "scalar"): "verbal feedback against the scalar reward, each with its own critic",
             ("verbal_oracle", "scalar"): "what the verbal signal is worth with a perfect critic",
             ("verbal", "verbal_oracle"): "what writing its own critiques costs",
             ("verbal_credit", "verbal"): "credit where the critique points",
             ("verbal_group", "verbal"): "revisions in the group",
             ("verbal", "sft"): "verbal against the supervised control"}
    for name, d in summary["differences"].items():
        a, b = name.split(" - ")
        st = d.get(f"{first}/accuracy")
        far = [f"`{s}` {fmt(d.get(f'{s}/accuracy'))}" for s in others]
        what = words.get((a, b), name)
        parts.append(f"**{name}** ({what}): {fmt(st)} on `{first}`, "
                     + _said(st, f"{a} ahead", f"{b} ahead", "no difference these seeds detect")
                     + (f"; never trained on: {', '.join(far)}" if far else "") + ".")
    return " ".join(parts)
