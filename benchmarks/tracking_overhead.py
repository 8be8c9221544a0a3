"""What tracking costs a step: traces, transcripts and system metrics on (every step) against off, one invocation.

    python benchmarks/tracking_overhead.py [--reps 5] [--steps 20] [--threads 2] [--every 1] [--smoke]

Both sides run the step benchmark's world (`benchmarks/step_phases.py`: basic arithmetic, 16 tasks x 8
solutions, from the same warm start) with this checkout's code; per-step metrics go to a SQLite store on
both sides (the sender thread is always on). `on` adds the worst case of everything else: every step a
transcript step (`trainer.log_transcripts_every=1`: 4 task traces of ~40 spans each and the transcript
rows), system metrics sampled every second. `off` turns traces, transcripts and system metrics off.
`--every 10` measures the defaults instead: a transcript step in ten, system metrics every 10 s.

The figure is wall-clock seconds per step, read from the timestamps MLflow stores with each step's
metrics (the mean interval over steps 2..S), which includes what `time/step` does not: writing the traces
after the step. Sides alternate rep by rep; each rep is a fresh process (rep i uses seed i on both sides).
Printed: median [min, max] over reps per side, and on / off of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from step_phases import PY, env_for, warm_start, world, worktree  # noqa: E402

SIDES = {
    "off": ["logger.log_traces=false", "logger.log_transcripts=false", "logger.system_metrics=false",
            "trainer.log_transcripts_every=1"],
    "on": ["logger.log_traces=true", "logger.log_transcripts=true", "logger.system_metrics=true",
           "logger.system_metrics_every=1", "trainer.log_transcripts_every=1"],
}


def seconds_per_step(init: Path, steps: int, seed: int, threads: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = [o for o in world(init, root, steps, seed, threads) if not o.startswith("trainer.log_transcripts_every")]
        proc = subprocess.run([PY, str(REPO / "train.py"), *args, *extra], cwd=root, env=env_for(REPO),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        from mlflow.tracking import MlflowClient

        c = MlflowClient(f"sqlite:///{root}/mlflow.db")
        (run,) = c.search_runs([c.get_experiment_by_name("alive").experiment_id])
        stamps = {m.step: m.timestamp for m in c.get_metric_history(run.info.run_id, "train/step")}
        first, last = min(s for s in stamps if s >= 2), max(stamps)
        return (stamps[last] - stamps[first]) / 1000 / max(last - first, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref", default="99f8d45", help="the commit whose warm start the step benchmark uses")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "bench_step")
    ap.add_argument("--every", type=int, default=1, help="transcript (trace) steps on the `on` side: 1 in this many "
                    "(10: the defaults, with system metrics every 10 s)")
    ap.add_argument("--smoke", action="store_true", help="1 rep of 4 steps (CI: it runs, not a figure)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.steps = 1, 4
    old = worktree(args.ref, args.data / f"worktree-{args.ref}")
    init = warm_start(old, args.data / ("smoke-data" if args.smoke else "data"), args.threads, 4 if args.smoke else None)
    sides = {"off": SIDES["off"], "on": [o for o in SIDES["on"] if not o.startswith(("trainer.log_transcripts_every",
                                                                                  "logger.system_metrics_every"))]
             + [f"trainer.log_transcripts_every={args.every}", f"logger.system_metrics_every={1 if args.every == 1 else 10}"]}
    got: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(args.reps):
        for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
            got[side].append(seconds_per_step(init, args.steps, i, args.threads, sides[side]))
            print(f"rep {i + 1}/{args.reps} {side}: {got[side][-1]:.3f} s per step", flush=True)
    off, on = statistics.median(got["off"]), statistics.median(got["on"])
    print(f"\n{args.reps} reps x {args.steps} steps per side, {args.threads} torch threads; wall seconds per step "
          f"(steps 2..{args.steps}); median [min, max] over reps")
    for side, med in (("off", off), ("on", on)):
        print(f"  tracking {side:<4}{med:>8.3f} [{min(got[side]):.3f}, {max(got[side]):.3f}]")
    what = ("traces + transcripts every step, system metrics every second" if args.every == 1 else
            f"traces + transcripts every {args.every} steps, system metrics every 10 s")
    print(f"  on / off {on / off:.3f}x  ({what})")
    if args.json:
        args.json.write_text(json.dumps({"seconds_per_step": got, "ratio_of_medians": on / off}, indent=1))


if __name__ == "__main__":
    main()
