"""One training run from the warm start with evaluations along the way: the probe behind
docs/learning_investigation.md.

    python scripts/rl_probe.py NAME [hydra overrides ...]
    python scripts/rl_probe.py lr5e-4 reward=scalar trainer.max_steps=80 trainer.eval_every=20 trainer.optim.solver.lr=5e-4

Writes outputs/rl_probe/NAME/ (its own SQLite MLflow store) and prints the held-out accuracy, pass@4 and
self-correction per evaluation, and per step the training-time solver accuracy, the reviewer's balanced
agreement with and without the reference, its missing verdicts and the refiner's success rate.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KEYS = ("accuracy", "sampled_accuracy", "pass_at_4", "self_correction/delta", "self_correction/gated_delta", "reviewer/balanced_agreement",
        "reviewer/precision", "reviewer/recall")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    from mlflow.tracking import MlflowClient

    from alive_exp.train import run
    from alive_exp.cli import compose

    name, overrides = sys.argv[1], sys.argv[2:]
    work = REPO / "outputs" / "rl_probe" / name
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work}/mlflow.db"
    start = time.perf_counter()
    out = run(compose(["+experiment=math", "trainer.progress_bar=false", "trainer.checkpoint_every=0",
                       f"paths.data_dir={REPO / 'data'}", f"logger.tracking_uri={uri}", "hardware.torch_threads=1",
                       *overrides, f"paths.root_dir={work}"]))
    client, rid = MlflowClient(uri), out["mlflow_run_id"]

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, round(m.value, 3)) for m in sorted(client.get_metric_history(rid, key), key=lambda m: m.step)]

    result = {k: history(f"eval/math_heldout/{k}") for k in KEYS}
    result["train_solver_accuracy"] = [v for _, v in history("solver/accuracy")]
    # the critic over the steps: verdicts with and without the reference against the reference check (balanced)
    for key in ("reviewer/balanced_agreement", "reviewer/blind_balanced_agreement", "reviewer/missing_rate",
                "refine/success_rate"):
        result[f"train_{key.replace('/', '_')}"] = [v for _, v in history(key)]
    result["minutes"] = round((time.perf_counter() - start) / 60, 1)
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(name, json.dumps(result))


if __name__ == "__main__":
    main()
