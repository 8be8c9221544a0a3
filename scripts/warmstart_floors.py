"""Each role's floor on several seeds' warm starts: reached or not, and at which check.

    python scripts/warmstart_floors.py [--seeds 0 1 2 3 4] [--threads 1] [--jobs 2] [hydra overrides ...]

Builds (or finds cached under data/warmstart/) the warm start of `+experiment=math` for each seed, as a run
with that seed would (`python warmstart.py +experiment=math seed=S hardware.torch_threads=T`), and prints a
Markdown table from each one's metrics.json: the step it stopped at, the first check at which each floor held
(the solver's on the validation suites, each role's on the solver's own samples of validation problems;
`-` where it never did), and every role on held-out problems at the end. Round 4 of
docs/learning_investigation.md quotes its output. One torch thread is what the learning report's runs use.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps", "missing_verdicts")


def build(seed: int, threads: int, overrides: list[str]) -> Path:
    """The seed's warm start folder, built in its own process (so builds can run side by side)."""
    args = ["+experiment=math", f"seed={seed}", f"hardware.torch_threads={threads}", *overrides]
    code = ("import sys; from alive_exp.cli import compose; from alive_exp.warmstart import build_warmstart; "
            "print(build_warmstart(compose(sys.argv[1:]), progress=False))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def first_held(checks: list[dict], key: str, floor: float, at_most: bool = False) -> str:
    for c in checks:
        v = c.get(key)
        if v is not None and (v <= floor if at_most else v >= floor):
            return str(c["step"])
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from alive_exp.cli import compose

    cfg = compose(["+experiment=math", *args.overrides]).warmstart
    floors = {k: float(v) for k, v in (cfg.role_floors or {}).items()}
    solver = {"math_validation": float(cfg.stop_accuracy), **{k: float(v) for k, v in cfg.stop_floors.items()}}
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda s: build(s, args.threads, args.overrides), args.seeds))
    head = ["seed", "steps", "all floors held at", *(f"{k} >= {v:g}" for k, v in solver.items()),
            *(f"{k} >= {v:g}" for k, v in floors.items()), f"missing <= {cfg.max_missing_verdicts}",
            "held-out: solver (greedy)", *(f"held-out: {r}" for r in ROLES)]
    rows = []
    for seed, folder in zip(args.seeds, folders):
        m = json.loads((folder / "metrics.json").read_text())
        checks = m["validation_checks"]
        rows.append([str(seed), str(m["steps"]), str(m.get("floors_met_at") or "-"),
                     *(first_held(checks, k, v) for k, v in solver.items()),
                     *(first_held(checks, f"role/{k}", v) for k, v in floors.items()),
                     first_held(checks, "role/missing_verdicts", float(cfg.max_missing_verdicts), at_most=True),
                     f"{m['heldout_accuracy']:.3f}", *(f"{m[r]:.3f}" for r in ROLES)])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for seed, folder in zip(args.seeds, folders):
        print(json.dumps({"seed": seed, "folder": str(folder),
                          "checks": json.loads((folder / "metrics.json").read_text())["validation_checks"]}))


if __name__ == "__main__":
    main()
