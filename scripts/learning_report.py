"""Does the embedded world teach? Every arm of sweeps/learning.yaml against its own seed's warm start.

    python scripts/learning_report.py                      # writes docs/learning_report.md (+ .json, PNGs)
    python scripts/learning_report.py --seeds 0 --arms scalar sft --steps 10 --eval-size 50   # a quick look

For each seed: the seed's warm start is evaluated as it is (arm `warm_start`: 0 ALIVE steps, the same
evaluator), then trained from with each reward mode and evaluated on the same suites. The arms and seeds
come from `sweeps/learning.yaml` (its `reward` and `seed` sweep parameters), so the sweep and the report run
one grid; each arm's solver learning rate comes from `docs/lr_choice.json`, written by
`scripts/choose_lr.py` on the validation suite (never a held-out one), so arms differ in reward signal, not
in learning rate. Gains and differences are paired by seed, with 95% t-intervals (`alive_exp.study`).

Runs go `--jobs` at a time with one torch thread each, each in its own SQLite store (parallel runs never
contend for one database's write lock); every number in the report is read back from those stores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
COMPARISONS = [("verbal", "scalar"), ("verbal", "sft"), ("scalar", "sft"), ("verbal", "judge")]


@dataclass
class Study:
    """A grid of arms x seeds, each arm against its seed's warm start, written as one report (this script's
    default: the learning study; scripts/constructor_report.py the constructor ablation)."""

    name: str = "learning_report"
    sweep: Path = REPO / "sweeps" / "learning.yaml"
    out: Path = REPO / "docs" / "learning_report.md"
    comparisons: Sequence[tuple[str, str]] = tuple(COMPARISONS)
    curves: Sequence[str] | None = None  # metrics plotted over the steps (default: alive_exp.study.CURVES)
    prefix: str = "learning"  # <prefix>_curves.png, <prefix>_accuracy.png
    title: str | None = None
    preface: str = ""
    lr_arm: Callable[[str], str] = field(default=lambda arm: arm)  # whose learning rate in lr_choice.json an arm uses
    lr_choice: Path | str = REPO / "docs" / "lr_choice.json"  # "none": every arm the experiment's rates


def sweep_grid(path: Path) -> tuple[list[str], list[int], list[str]]:
    """(arms, seeds, fixed overrides) of a sweep file: its `+arm` (conf/arm/: a reward mode or a variant such as
    verbal_credit) and `seed` parameters; a sweep over `reward` names its modes, each an arm of the same name."""
    spec = yaml.safe_load(path.read_text())
    params = spec["hydra"]["sweeper"]["params"]
    fixed = [f"{k}={v}" for k, v in params.items() if k not in ("reward", "+arm", "seed")]
    arms = params["+arm"] if "+arm" in params else params["reward"]
    return str(arms).split(","), [int(s) for s in str(params["seed"]).split(",")], fixed


def overrides_for(arm: str, seed: int, args, lr: float | None) -> list[str]:
    """A run of `arm` (conf/arm/<arm>.yaml; the warm start: 0 steps of scalar) at `seed`."""
    out = ["+experiment=math", f"+arm={'scalar' if arm == 'warm_start' else arm}", f"seed={seed}",
           f"benchmark.eval_size={args.eval_size}",
           f"trainer.max_steps={0 if arm == 'warm_start' else args.steps}", "trainer.progress_bar=false",
           "trainer.checkpoint_every=0", f"paths.data_dir={args.data}", f"logger.tracking_uri={store(args, arm, seed)}",
           f"hardware.torch_threads={args.threads}", f"+logger.tags.study={args.study}", f"+logger.tags.arm={arm}",
           *args.fixed, *args.overrides]
    if lr is not None:
        out.append(f"trainer.optim.solver.lr={lr}")
    return out


def store(args, arm: str, seed: int) -> str:
    return f"sqlite:///{args.work / f'{arm}-{seed}' / 'mlflow.db'}"


def train_and_eval(arm: str, seed: int, args, lr: float | None) -> str:
    from alive_exp.cli import compose
    from alive_exp.train import run

    root = args.work / f"{arm}-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    return run(compose([*overrides_for(arm, seed, args, lr), f"paths.root_dir={root}"]))["mlflow_run_id"]


def main(spec: Study | None = None, doc: str | None = None) -> None:
    spec = spec or Study()
    ap = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=spec.sweep)
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the sweep's")
    ap.add_argument("--arms", nargs="+", help="arms, options of conf/arm/ (default: the sweep's)")
    ap.add_argument("--steps", type=int, help="ALIVE steps per run (default: the experiment's)")
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--lr-choice", type=Path, default=Path(spec.lr_choice),
                    help="per-arm solver learning rates from scripts/choose_lr.py ('none': the experiment's)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", type=Path, default=spec.out)
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / spec.name)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    args.study = spec.name
    modes, seeds, args.fixed = sweep_grid(args.sweep)
    arms, seeds = args.arms or modes, args.seeds or seeds
    args.work.mkdir(parents=True, exist_ok=True)
    from alive_exp import study
    from alive_exp.cli import compose

    cfg = compose(["+experiment=math", *args.fixed, *args.overrides])
    args.steps = args.steps if args.steps is not None else int(cfg.trainer.max_steps)
    lrs: dict[str, float] = {}
    if str(args.lr_choice) != "none":
        if not args.lr_choice.exists():
            raise SystemExit(f"{args.lr_choice} not found: run scripts/choose_lr.py first, or pass --lr-choice none")
        lrs = json.loads(args.lr_choice.read_text())["chosen"]
    start = time.perf_counter()
    # warm starts first (each seed's is built by its first job, under a file lock), then the arms seed by seed
    jobs = [(study.BASELINE, s) for s in seeds] + [(a, s) for s in seeds for a in arms]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(train_and_eval, *job, args, lrs.get(spec.lr_arm(job[0]))) for job in jobs}
        runs = []
        for (arm, seed), fut in futures.items():
            runs.append(study.StudyRun(arm, seed, store(args, arm, seed), fut.result()))
            print(f"done: {arm} seed {seed} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    suites = list(cfg.benchmark.eval_suites)
    curves = tuple(spec.curves or study.CURVES)
    data = study.collect(runs, suites, curves)
    command = " ".join([f"python scripts/{spec.name}.py", *sys.argv[1:]])
    meta = {"command": command, "minutes": (time.perf_counter() - start) / 60, "steps": args.steps,
            "eval_size": args.eval_size, "warmstart_steps": (
                f"at most {cfg.warmstart.steps} likelihood steps, stopping where validation accuracy reaches "
                f"{cfg.warmstart.stop_accuracy}" + "".join(f" and {k} at least {v}" for k, v in cfg.warmstart.stop_floors.items())
                if cfg.warmstart.stop_accuracy is not None
                else f"{cfg.warmstart.steps} likelihood steps"), "learning_rates": lrs,
            "eval_temperature": float(cfg.trainer.generation.eval_temperature),
            **({"title": spec.title} if spec.title else {}), "preface": spec.preface,
            "machine": f"{os.cpu_count()} cores ({platform.machine()}), {args.jobs} runs at a time, "
                       f"{args.threads} torch thread each"}
    summary = study.write(data, spec.comparisons, meta, args.out, curves, spec.prefix)
    print(args.out.read_text())
    print(json.dumps(summary["gains"], default=str)[:2000])


if __name__ == "__main__":
    main()
