"""Run a commit's train.py with its update fed recorded samples: the step benchmark's adapter check.

    PYTHONPATH=<tree>/src python benchmarks/replay_update.py record FILE <tree>/train.py <overrides...>
    PYTHONPATH=<tree>/src python benchmarks/replay_update.py replay FILE:OUT <tree>/train.py <overrides...>

Two commits' updates can only be compared on the same samples: since 99f8d45 the step draws other tasks
(a seeded cut across documents, a hash-split training pool), so their rollouts, and with them their
adapters, part at the first step whatever the update computes. Here `record` runs the steps as usual and
saves, at each step, the adapters before the update and the samples the update is given; `replay` runs the
same steps with any commit's code, but at step 0 it loads the recorded adapters and at every step its update
learns from the recorded samples instead of its own (the rest of the step, rollouts included, runs as usual
and is discarded). Two commits replaying one record get the same gradients, step by step, exactly when their
updates compute the same function. The adapters after each update go to the record (`after`) or to OUT.

Only the fields a commit's `losses.Sample` has are passed to it (99f8d45's has no prefix group), so each
commit learns from what it would have been given.
"""

from __future__ import annotations

import dataclasses
import pickle
import runpy
import sys


def main() -> None:
    mode, path, train_py, *overrides = sys.argv[1:]
    if mode not in ("record", "replay"):
        raise SystemExit(f"mode must be record or replay, not {mode!r}")
    path, out = path.split(":", 1) if mode == "replay" else (path, path)
    from alive_exp import losses
    from alive_exp import module as mod

    fields = [f.name for f in dataclasses.fields(losses.Sample) if f.name not in ("old_logps",)]
    learn = mod.AliveModule.learn
    record: dict = {"steps": []} if mode == "record" else pickle.load(open(path, "rb"))

    def lora_state(model) -> dict:
        return {k: v.detach().clone() for k, v in model.named_parameters() if ".lora_" in k}

    def patched(self, samples):
        step = self.alive_step
        if mode == "record":
            if step == 0:
                record["adapters"] = lora_state(self.model)
            record["steps"].append({role: [{f: getattr(s, f) for f in fields} for s in batch]
                                    for role, batch in samples.items()})
            stats = learn(self, samples)
            record["after"] = lora_state(self.model)
            with open(path, "wb") as fh:
                pickle.dump(record, fh)
            return stats
        if step == 0:
            import torch

            state = dict(self.model.named_parameters())
            missing = set(record["adapters"]) - set(state)
            if missing:
                raise SystemExit(f"the recorded adapters name parameters this commit's model lacks: {sorted(missing)[:3]}")
            with torch.no_grad():
                for k, v in record["adapters"].items():
                    state[k].copy_(v)
            if self.generator.merged is not None:  # the sampling copy follows the loaded adapters
                for adapter, _ in self.groups:
                    self.generator.merged.stale(adapter)
        given = record["steps"][step]
        replayed = {role: [losses.Sample(**{k: v for k, v in s.items() if k in fields}) for s in batch]
                    for role, batch in given.items()}
        stats = learn(self, replayed)
        with open(out, "wb") as fh:
            pickle.dump({"after": lora_state(self.model)}, fh)
        return stats

    mod.AliveModule.learn = patched
    sys.argv = [train_py, *overrides]
    runpy.run_path(train_py, run_name="__main__")


if __name__ == "__main__":
    main()
