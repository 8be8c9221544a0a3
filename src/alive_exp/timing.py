"""Named wall-clock timers per phase of the ALIVE step, with an optional torch-profiler table per phase."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path

import torch


class PhaseTimer:
    """Named wall-clock timers, one per phase, read and reset every step.

    With `profile_to` set (a folder), each outermost phase also runs under the torch profiler and writes a
    table of its top operations (`step<k>_<phase>.txt`); nested timers (`update/<role>`) only time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.profile_to: Path | None = None
        self.step = 0
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self, phase: str):
        profiler = self._profiler() if self.profile_to is not None and self._depth == 0 else None
        self._depth += 1
        start = time.perf_counter()
        try:
            if profiler is None:
                yield
            else:
                with profiler:
                    yield
        finally:
            self.seconds[phase] += time.perf_counter() - start
            self._depth -= 1
            if profiler is not None:
                self._write(profiler, phase)

    @staticmethod
    def _profiler():
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        return torch.profiler.profile(activities=acts)

    def _write(self, profiler, phase: str) -> None:
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort, row_limit=25)
        self.profile_to.mkdir(parents=True, exist_ok=True)
        (self.profile_to / f"step{self.step}_{phase.replace('/', '_')}.txt").write_text(
            f"{phase} at ALIVE step {self.step}: {self.seconds[phase]:.3f} s wall\n{table}")

    def pop(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out
