"""The side-by-side report's figures: learning curves, final accuracy per benchmark, cross-domain accuracy.

Each figure is drawn from report.json's data alone (what `alive_exp.report.build_report` returns).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alive_exp.report import CURVE_METRICS, group_label


def render_plots(data: dict[str, Any], out: Path) -> dict[str, str]:
    """The report's PNGs; returns figure name -> file name for those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    many = len({r["domain"] for r in data["runs"]}) > 1
    groups = list(dict.fromkeys((r["domain"], r["reward_mode"]) for r in data["runs"]))
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    drawn: dict[str, str] = {}

    def save(fig, name: str) -> None:
        if not fig.get_layout_engine():
            fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        drawn[name] = f"{name}.png"

    if data["curves"]:
        fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.5 * len(CURVE_METRICS), 4), squeeze=False)
        for ax, key in zip(axes[0], CURVE_METRICS):
            for c in (c for c in data["curves"] if c["metric"] == key):
                g = (c["domain"], c["reward_mode"])
                ax.plot(c["step"], c["mean"], marker="o", ms=3, color=colors[g],
                        label=f"{group_label(*g, many)} (n={max(c['n'])})")
                ax.fill_between(c["step"], c["min"], c["max"], color=colors[g], alpha=0.15, linewidth=0)
            shown = [v for c in data["curves"] if c["metric"] == key for v in c["min"] + c["max"]]
            if shown and 0 <= min(shown) and max(shown) <= 1:  # rates: keep the full [0, 1] scale
                ax.set_ylim(-0.03, 1.03)
            ax.set(title=key, xlabel="ALIVE step", ylabel=key.split("/")[-1])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 5), 1, 1))
        save(fig, "learning_curves")
    benches = data["cross_domain"]["benchmarks"]
    if benches:
        cell = {(r["domain"], r["reward_mode"], r["metric"]): r for r in data["final"]}
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(benches) * len(groups) + 2.5), 4))
        width = 0.8 / len(groups)
        for i, g in enumerate(groups):
            rows = [(j, cell[(*g, f"eval/{b}/accuracy")]) for j, b in enumerate(benches)
                    if (*g, f"eval/{b}/accuracy") in cell]
            for k, (j, row) in enumerate(rows):
                x = j - 0.4 + width * (i + 0.5)
                err = None if row["ci_low"] is None else [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
                ax.bar(x, row["mean"], width, yerr=err, capsize=3, color=colors[g], alpha=0.8,
                       label=group_label(*g, many) if k == 0 else None)
                ax.scatter([x] * len(row["values"]), row["values"], color="black", s=10, zorder=3)
        ax.set_xticks(range(len(benches)), benches)
        ax.set(ylabel="accuracy", title="final accuracy: mean, 95% interval, seeds as dots", ylim=(0, 1.05))
        ax.legend(fontsize=8)
        save(fig, "final_accuracy")
        xd = data["cross_domain"]
        grid = [[math.nan if v is None else v for v in row] for row in xd["accuracy"]]
        fig, ax = plt.subplots(figsize=(1.6 * len(benches) + 2.5, 0.8 * len(xd["train_domains"]) + 1.8))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(xd["accuracy"]):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v is None else f"{v:.3f}\n(n={xd['n'][i][j]})", ha="center", va="center",
                        fontsize=9, color="black" if v is not None and v > 0.6 else "white")
        ax.set_xticks(range(len(benches)), benches)
        ax.set_yticks(range(len(xd["train_domains"])), xd["train_domains"])
        ax.set(xlabel="evaluation benchmark", ylabel="train domain", title="cross-domain accuracy")
        fig.colorbar(im, ax=ax, label="accuracy")
        save(fig, "cross_domain")
    return drawn
