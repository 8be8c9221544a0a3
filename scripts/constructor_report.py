"""Does the constructor's choice matter? The learned constructor against uniform posing, each against its seed's warm start.

    python scripts/constructor_report.py                   # writes docs/constructor_report.md (+ .json, PNGs)
    python scripts/constructor_report.py --seeds 0 --steps 10 --eval-size 50   # a quick look

The grid is sweeps/constructor.yaml: `scalar` and `verbal` (trainer.constructor=learned: the policy picks which
problem of each page to pose, rewarded by learnability x validity) against `scalar_uniform` and `verbal_uniform`
(the rule masker, uniform over the page's candidate spans), 5 seeds, every arm at the experiment's learning rates
(one rate per role for learned and uniform alike). The machinery is scripts/learning_report.py's: each seed's warm
start evaluated as it is, gains and differences paired by seed with 95% t-intervals, every number read back from
the runs' MLflow stores; the curves add what the constructor posed over the steps (digits, carries,
learnability; `constructor/*`, README's metrics table).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_report import REPO, Study, main  # noqa: E402

STUDY = Study(
    name="constructor_report",
    sweep=REPO / "sweeps" / "constructor.yaml",
    out=REPO / "docs" / "constructor_report.md",
    comparisons=(("scalar", "scalar_uniform"), ("verbal", "verbal_uniform"), ("verbal", "scalar"),
                 ("verbal_uniform", "scalar_uniform")),
    curves=("constructor/posed_carries", "constructor/posed_digits", "constructor/posed_learnability",
            "constructor/fallback_share", "solver/accuracy"),
    prefix="constructor",
    title="Does the constructor's choice matter? Learned posing against uniform, paired by seed",
    preface=("Arms: `scalar` and `verbal` pose with the learned constructor (trainer.constructor=learned), "
             "`*_uniform` with the rule masker (uniform over each page's problems); the difference learned - "
             "uniform is `scalar - scalar_uniform` and `verbal - verbal_uniform`. Curves: what was posed over the "
             "steps (a uniform arm's posed difficulty is the page average)."),
    lr_choice="none",
)

if __name__ == "__main__":
    main(STUDY, __doc__)
