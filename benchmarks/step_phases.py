"""One ALIVE step, phase by phase: this checkout against an older commit, in one invocation.

    python benchmarks/step_phases.py [--ref 99f8d45] [--reps 5] [--steps 20] [--threads 2] [--smoke]

Both sides run the same world, the one every commit since 99f8d45 supports: reasoning-gym's
basic_arithmetic (+ and -), 16 tasks x N=8, half the solutions also reviewed blind, learned constructor,
scalar reward, from the same warm-started model (the old commit's `+experiment=math` warm start, built once
and cached under data/bench_step/). The old commit is checked out in a git worktree and run with its own
code (`PYTHONPATH=<worktree>/src`). Sides alternate rep by rep (old, new, old, new, ...) so that a drift of
the machine hits both; each rep is a fresh process with its own seed (rep i uses seed i on both sides).

Per rep: the mean over steps 2..S of each phase's seconds (step 1 is left out: the first generate at each
shape is slow for reasons that are not the step's). Printed: the median over reps and the range, per side,
the ratio new / old of the medians, and the ratios within each pair of reps (same seed, run one after the
other): their median and range. The old commit's `update` timer also wrapped building the samples,
so the comparison is old `update` against new `samples + update`. Generation is compared per generated
token as well, since the sides draw different completions after their first update.

Adapter check (`--equal-steps`, default 5), on the same samples: this checkout runs that many steps with
seed 0 and its plain update (`trainer.share_prompt_prefix=false trainer.fused_lora=false`), recording each
step's samples and the adapters it starts from; the old commit and this checkout's default update then
learn from exactly those samples (benchmarks/replay_update.py), and the final per-role adapters are compared
tensor by tensor (max absolute difference). Comparing free runs would not do: since 99f8d45 the step draws
other tasks, so two commits' rollouts part at the first step whatever their updates compute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
PHASES = ("construct", "solve", "review", "refine", "update")
GEN_PHASES = ("construct", "solve", "review", "refine")


def world(init: Path, root: Path, steps: int, seed: int, threads: int) -> list[str]:
    """The overrides both commits read the same way."""
    return [
        "benchmark=math", "+benchmark.options.source_options={basic_arithmetic:{operators:['+','-']}}",
        f"model.init_from={init}", "warmstart.enabled=false", "reward=scalar", f"seed={seed}",
        f"trainer.max_steps={steps}", "trainer.docs_per_step=16", "trainer.max_tasks_per_step=16",
        "trainer.solutions_per_task=8", "trainer.blind_review_share=0.5", "trainer.generation.solver_tokens=48",
        "trainer.generation.reviewer_tokens=48", "trainer.optim.constructor.lr=5e-5", "trainer.optim.solver.lr=5e-5",
        "trainer.optim.reviewer.lr=3e-4", "trainer.eval_at_end=false", "trainer.checkpoint_every=0",
        "trainer.log_transcripts_every=0", "trainer.progress_bar=false", f"hardware.torch_threads={threads}",
        f"paths.root_dir={root}", f"paths.output_dir={root}/out", f"logger.tracking_uri=sqlite:///{root}/mlflow.db",
    ]


def env_for(tree: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def worktree(ref: str, where: Path) -> Path:
    if not (where / "src" / "alive_exp").exists():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), ref], check=True,
                       capture_output=True)
    return where


def warm_start(old: Path, data: Path, threads: int, steps: int | None = None) -> Path:
    """The old commit's +experiment=math warm start (its own code, no time budget), built once."""
    found = sorted(p for p in (data / "warmstart").glob("math-*") if (p / "metrics.json").exists()) if (
        data / "warmstart").exists() else []
    if not found:
        print(f"building the warm start with {old.name}'s code (once; minutes) ...", flush=True)
        short = [f"warmstart.steps={steps}", "warmstart.eval_size=4"] if steps else []
        subprocess.run([PY, str(old / "warmstart.py"), "+experiment=math", "warmstart.max_minutes=0",
                        f"hardware.torch_threads={threads}", f"paths.data_dir={data}", "trainer.progress_bar=false",
                        *short], cwd=old, env=env_for(old), check=True)
        found = sorted(p for p in (data / "warmstart").glob("math-*") if (p / "metrics.json").exists())
    return found[0]


def one_run(tree: Path, init: Path, steps: int, seed: int, threads: int, extra: tuple[str, ...] = (), replay: tuple[str, Path] | None = None) -> dict:
    """Run `steps` ALIVE steps with `tree`'s code; per-step metrics from its MLflow store. `replay`: (mode,
    file) to run it through benchmarks/replay_update.py (record the update's samples, or learn from them)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        launch = [PY, str(tree / "train.py")] if replay is None else [
            PY, str(REPO / "benchmarks" / "replay_update.py"), replay[0], str(replay[1]), str(tree / "train.py")]
        proc = subprocess.run([*launch, *world(init, root, steps, seed, threads), *extra], cwd=root,
                              env=env_for(tree), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{tree} failed:\n{proc.stderr[-3000:]}")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{root}/mlflow.db")
        (run,) = client.search_runs([client.get_experiment_by_name("alive").experiment_id])
        keys = [k for k in run.data.metrics if k.startswith(("time/", "tokens/"))]
        hist = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys}
    return hist


def per_step(hist: dict, key: str) -> float:
    """Mean of `key` over steps 2.. (0 when never logged)."""
    vals = [v for s, v in hist.get(key, {}).items() if s >= 2]
    return sum(vals) / len(vals) if vals else 0.0


def summarise(hist: dict, new: bool) -> dict[str, float]:
    out = {p: per_step(hist, f"time/{p}") for p in PHASES}
    if new:  # the old update timer wrapped building the samples too
        out["update"] += per_step(hist, "time/samples")
    out["step"] = per_step(hist, "time/step")
    out["generation"] = sum(out[p] for p in GEN_PHASES)
    tokens = sum(per_step(hist, f"tokens/{r}") for r in ("constructor", "solver", "reviewer", "refine"))
    out["gen_ms_per_token"] = 1000 * out["generation"] / max(tokens, 1)
    return out


ROLES = ("constructor", "reviewer", "solver")


def adapters_diff(a: dict, b: dict) -> dict[str, float]:
    """Max |a - b| over each role's LoRA tensors (PEFT parameter names hold the adapter's name); inf when
    the two name different tensors."""
    if a.keys() != b.keys():
        return {r: float("inf") for r in ROLES}
    return {r: max((float((a[k] - b[k]).abs().max()) for k in a if f".{r}." in k), default=float("nan")) for r in ROLES}


def loaded(path: Path) -> dict:
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="99f8d45", help="the older commit")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--equal-steps", type=int, default=5, help="steps before the adapter comparison (0: skip)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 rep of 2 steps, 2-step adapter check, from a 4-step warm start (CI: it runs, not a figure)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "bench_step")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.steps, args.equal_steps = 1, 2, 2
    args.data = args.data.resolve()  # the old commit's processes run in its worktree
    old = worktree(args.ref, args.data / f"worktree-{args.ref}")
    init = warm_start(old, args.data / ("smoke-data" if args.smoke else "data"), args.threads, 4 if args.smoke else None)
    sides = {"old": old, "new": REPO}
    reps: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.reps):
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            reps[name].append(summarise(one_run(sides[name], init, args.steps, i, args.threads), name == "new"))
            print(f"rep {i + 1}/{args.reps} {name}: step {reps[name][-1]['step']:.2f} s, "
                  f"update {reps[name][-1]['update']:.2f} s", flush=True)
    rows = (*PHASES, "generation", "gen_ms_per_token", "step")
    print(f"\n{args.reps} reps x {args.steps} steps per side, {args.threads} torch threads; seconds per step "
          f"(steps 2..{args.steps}); median [min, max] over reps")
    print(f"{'phase':<18}{args.ref + ' (old)':>24}{'this checkout (new)':>24}{'new / old':>11}"
          f"{'paired by rep':>24}")
    figures = {}
    for r in rows:
        o, n = [x[r] for x in reps["old"]], [x[r] for x in reps["new"]]
        mo, mn = statistics.median(o), statistics.median(n)
        ratio = mn / mo if mo else float("nan")
        # rep i of both sides ran seed i, one after the other: the ratio within each pair
        pairs = [b / a for a, b in zip(o, n) if a]
        figures[r] = {"old": o, "new": n, "ratio_of_medians": ratio, "paired_ratios": pairs}
        paired = f"{statistics.median(pairs):>10.2f} [{min(pairs):.2f}, {max(pairs):.2f}]" if pairs else f"{'-':>10}"
        print(f"{r:<18}{mo:>10.3f} [{min(o):.3f}, {max(o):.3f}]{mn:>10.3f} [{min(n):.3f}, {max(n):.3f}]{ratio:>10.2f}x"
              f"{paired}")
    if args.equal_steps:
        # the updates compared on the same samples (benchmarks/replay_update.py): this checkout records its
        # samples with its plain update (every prompt in full, PEFT's own LoRA layers); the old commit and this
        # checkout's fast update (the defaults) then learn from them, from the recorded adapters
        with tempfile.TemporaryDirectory() as tmp:
            rec, a, b = Path(tmp) / "record.pkl", Path(tmp) / "old.pkl", Path(tmp) / "new.pkl"
            one_run(REPO, init, args.equal_steps, 0, args.threads, replay=("record", rec),
                    extra=("trainer.share_prompt_prefix=false", "trainer.fused_lora=false"))
            one_run(old, init, args.equal_steps, 0, args.threads, replay=("replay", f"{rec}:{a}"))
            one_run(REPO, init, args.equal_steps, 0, args.threads, replay=("replay", f"{rec}:{b}"))
            record, old_after, new_after = loaded(rec), loaded(a)["after"], loaded(b)["after"]
        plain, start = record["after"], record["adapters"]
        diffs = {"adapter_max_abs_diff": adapters_diff(old_after, new_after),
                 "adapter_max_abs_diff_plain_update": adapters_diff(plain, new_after),
                 "adapter_max_abs_diff_old_vs_plain": adapters_diff(old_after, plain),
                 "adapter_moved": adapters_diff(start, plain)}  # how far training moved them: the check binds
        figures.update(diffs)
        print(f"\nadapters after {args.equal_steps} steps on the same samples, seed 0, max |a - b| per role:")
        for name, key in (("old update vs this checkout's", "adapter_max_abs_diff"),
                          ("this checkout's vs its plain update", "adapter_max_abs_diff_plain_update"),
                          ("old update vs this checkout's plain update", "adapter_max_abs_diff_old_vs_plain"),
                          ("moved by training (plain update vs start)", "adapter_moved")):
            print(f"  {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs[key].items()))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
