"""The warm start's learning curve, every role: one JSON line per check, the build running all its steps.

    python scripts/warmstart_curve.py SEED [--every 25] [--from 150] [--steps 450] [hydra overrides ...]

Runs the warm start's own loop (`alive_exp.warmstart`, for `+experiment=math` with its data mix, own samples,
schedule and floors; nothing is cached) and prints at each check: greedy accuracy on `math_validation` and the
`stop_floors` suites (100 problems each), every role on the solver's own samples of validation problems
(`alive_exp.readiness`: `role/reviewer`, `role/reviewer_blind` balanced agreement, `role/refiner_fixes`,
`role/refiner_keeps`, `role/missing_verdicts`) and `unmet`, the floors that did not hold. Round 4 of
docs/learning_investigation.md quotes its lines.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seed", type=int)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--from", dest="start", type=int, default=150)
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from alive_exp import warmstart as W
    from alive_exp.cli import compose

    cfg = compose(["+experiment=math", f"seed={args.seed}", f"hardware.torch_threads={args.threads}",
                   f"warmstart.steps={args.steps}", f"warmstart.check_every={args.every}",
                   f"warmstart.check_from={args.start}", "warmstart.max_minutes=0", *args.overrides])

    def show(check: dict) -> None:
        print(json.dumps({"seed": args.seed, **{k: round(v, 3) if isinstance(v, float) else v
                                                for k, v in check.items()}}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        W._train_warmstart(cfg, Path(tmp) / "warm", progress=False, curve=show)
        final = json.loads((Path(tmp) / "warm" / "metrics.json").read_text())
    print(json.dumps({"seed": args.seed, "final_heldout": {k: v for k, v in final.items() if k != "validation_checks"}}),
          flush=True)


if __name__ == "__main__":
    main()
