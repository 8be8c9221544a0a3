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
import functools
import hashlib
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
# the differences: the signal (verbal - scalar), the signal with a perfect critic (verbal_oracle - scalar),
# what writing the critique itself costs (verbal - verbal_oracle), each verbal variant against plain verbal, and
# verbal against the supervised control
COMPARISONS = [("verbal", "scalar"), ("verbal_oracle", "scalar"), ("verbal", "verbal_oracle"),
               ("verbal_credit", "verbal"), ("verbal_group", "verbal"), ("verbal", "sft"), ("verbal", "judge"),
               ("scalar", "sft")]


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
    preface: str = ("`fcp` is a known defect of its update, not a finding about verbal feedback: its own wrong "
                    "samples carry most of its likelihood update (docs/learning_investigation.md, round 4, second "
                    "addendum). `verbal_oracle` is plain verbal with the oracle writing every critique (the bound a "
                    "self-critic approaches); `verbal_credit` and `verbal_group` are verbal with credit where the "
                    "critique points and with revisions in the group (conf/arm/).")
    # whose learning rate in lr_choice.json an arm uses (default: its reward mode's, so verbal_credit trains at
    # verbal's rate and differs from verbal in the variant alone)
    lr_arm: Callable[[str], str] | None = None
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


@functools.cache
def reward_mode(arm: str) -> str:
    """The reward mode an arm of conf/arm/ trains with (verbal_credit -> verbal; the warm start: scalar)."""
    from alive_exp.cli import compose

    return str(compose(["+experiment=math", f"+arm={'scalar' if arm == 'warm_start' else arm}"]).reward.mode)


def run_key(overrides: Sequence[str]) -> str:
    """What makes two runs the same run: their overrides, minus the ones that only say where output goes."""
    keep = sorted(o for o in overrides if not o.startswith(("paths.", "logger.tracking_uri", "trainer.progress_bar",
                                                               "hardware.torch_threads")))
    return hashlib.sha1(json.dumps(keep).encode()).hexdigest()[:12]


def finished_run(arm: str, seed: int, args, lr: float | None) -> str | None:
    """The run id of a finished, evaluated run of exactly these settings in the arm's store, if there is one: a
    report interrupted (or re-rendered with --render) reuses it instead of training again."""
    if not (args.work / f"{arm}-{seed}" / "mlflow.db").exists():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store(args, arm, seed))
    key = run_key(overrides_for(arm, seed, args, lr))
    experiments = [e.experiment_id for e in client.search_experiments()]
    for r in client.search_runs(experiments, f"tags.study_key = '{key}' and attributes.status = 'FINISHED'",
                                order_by=["attributes.start_time DESC"]):
        if any(k.startswith("eval/") and k.endswith("/accuracy") for k in r.data.metrics):
            return r.info.run_id
    return None


def train_and_eval(arm: str, seed: int, args, lr: float | None) -> str:
    from alive_exp.cli import compose
    from alive_exp.train import run

    done = finished_run(arm, seed, args, lr)
    if done:
        return done
    if args.render:
        raise SystemExit(f"--render: no finished run of {arm} seed {seed} with these settings in {store(args, arm, seed)}")
    root = args.work / f"{arm}-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    over = overrides_for(arm, seed, args, lr)
    return run(compose([*over, f"+logger.tags.study_key={run_key(over)}", f"paths.root_dir={root}"]))["mlflow_run_id"]


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
    ap.add_argument("--render", action="store_true",
                    help="train nothing: write the report from the finished runs in --work (an error names any missing)")
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
    lr_arm = spec.lr_arm or reward_mode
    start = time.perf_counter()
    # warm starts first (each seed's is built by its first job, under a file lock), then arm by arm in the sweep's
    # order, every seed of one arm before the next: a report cut short has whole arms, never fewer seeds
    jobs = [(study.BASELINE, s) for s in seeds] + [(a, s) for a in arms for s in seeds]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(train_and_eval, *job, args, lrs.get(lr_arm(job[0]))) for job in jobs}
        runs = []
        for (arm, seed), fut in futures.items():
            runs.append(study.StudyRun(arm, seed, store(args, arm, seed), fut.result()))
            print(f"done: {arm} seed {seed} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    # the report's time is the time its runs took, summed over the invocations that trained (an interrupted report
    # resumed, or a re-render, adds only what it ran)
    elapsed_file = args.work / "elapsed.json"
    elapsed = json.loads(elapsed_file.read_text()) if elapsed_file.exists() else {}
    if not args.render:
        elapsed[f"{time.time():.0f}"] = (time.perf_counter() - start) / 60
        elapsed_file.write_text(json.dumps(elapsed, indent=1) + "\n")
    suites = list(cfg.benchmark.eval_suites)
    curves = tuple(spec.curves or study.CURVES)
    data = study.collect(runs, suites, curves)
    command = " ".join([f"python scripts/{spec.name}.py", *(a for a in sys.argv[1:] if a != "--render")])
    meta = {"command": command, "minutes": sum(elapsed.values()) or (time.perf_counter() - start) / 60, "steps": args.steps,
            "eval_size": args.eval_size, "warmstart_steps": (
                f"at most {cfg.warmstart.steps} likelihood steps, stopping where validation accuracy reaches "
                f"{cfg.warmstart.stop_accuracy}" + "".join(f" and {k} at least {v}" for k, v in cfg.warmstart.stop_floors.items())
                + ("".join(f", {k} at least {v}" for k, v in (cfg.warmstart.role_floors or {}).items())
                   + " (each role measured on the solver's own samples)" if cfg.warmstart.role_floors else "")
                if cfg.warmstart.stop_accuracy is not None
                else f"{cfg.warmstart.steps} likelihood steps"), "learning_rates": {a: lrs.get(lr_arm(a)) for a in dict.fromkeys(a for a, _ in jobs)},
            "eval_temperature": float(cfg.trainer.generation.eval_temperature),
            **({"title": spec.title} if spec.title else {}), "preface": spec.preface,
            "machine": f"{os.cpu_count()} cores ({platform.machine()}), {args.jobs} runs at a time, "
                       f"{args.threads} torch thread each"}
    summary = study.write(data, spec.comparisons, meta, args.out, curves, spec.prefix)
    print(args.out.read_text())
    print(json.dumps(summary["gains"], default=str)[:2000])


if __name__ == "__main__":
    main()
