"""Which documents each ALIVE step sees: fixed by (seed, step), so every reward mode gets the same data."""

from __future__ import annotations

import random

from torch.utils.data import IterableDataset

from alive_exp.domains import Document, Domain


class Corpus:
    """The raw training documents of a domain and a deterministic draw of them per step (and per rank)."""

    def __init__(self, domain: Domain, size: int, seed: int, docs_per_step: int, rank: int = 0, world: int = 1) -> None:
        self.docs = domain.documents("train", size, seed)
        if not self.docs:
            raise ValueError(f"domain {domain.name!r} produced no training documents (benchmark.train_docs={size})")
        self.seed, self.docs_per_step, self.rank, self.world = seed, docs_per_step, rank, world

    def for_step(self, step: int) -> list[Document]:
        rng = random.Random(self.seed * 1_000_003 + step)
        k = min(self.docs_per_step * self.world, len(self.docs))
        chosen = rng.sample(self.docs, k)
        return chosen[self.rank::self.world]


class StepIndices(IterableDataset):
    """Yields the ALIVE step numbers still to run; reads the start from the module, so resume skips done steps."""

    def __init__(self, module, max_steps: int) -> None:
        self.module, self.max_steps = module, max_steps

    def __iter__(self):
        return iter(range(self.module.alive_step, self.max_steps))

    def __len__(self) -> int:
        return max(0, self.max_steps - self.module.alive_step)
