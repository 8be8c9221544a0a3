"""Is each role an arm relies on doing its job, step by step? Train the critique-based arms from one warm start.

    python scripts/arm_roles.py [--arms verbal fcp] [--seed 0] [--every 5] [hydra overrides ...]
    python scripts/arm_roles.py --arms verbal:critic=oracle verbal:reward.credit=critique \
        verbal:reward.refinements_in_group=true

Runs `train.py +experiment=math reward=ARM seed=SEED` for each arm (`MODE:KEY=VALUE,KEY=VALUE` adds the arm's
own overrides) (the same cached warm start, the run's own
tracking store in a temporary folder) and prints, every `--every` steps and at the last, what the arm rests
on: the reviewer's balanced agreement with the reference check on the step's samples, with the reference
(`reviewer/balanced_agreement`) and blind (`reviewer/blind_balanced_agreement`), its missing-verdict rate,
the solver's outcome accuracy on the step's samples (`solver/accuracy`), and at the end the held-out accuracy
of the trained policy and the self-correction figures (SCoRe's protocol and the gated one). Round 4 of
docs/learning_investigation.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STEP_KEYS = ("reviewer/balanced_agreement", "reviewer/blind_balanced_agreement", "reviewer/missing_rate",
             "solver/accuracy", "solver/located_share", "solver/all_wrong_groups", "solver/rescued_groups",
             "refine/success_rate")
FINAL_KEYS = tuple(f"eval/math_heldout/{k}" for k in (
    "accuracy", "self_correction/acc_t1", "self_correction/acc_t2", "self_correction/gated_acc_t2",
    "self_correction/critique_balanced_agreement", "reviewer/balanced_agreement"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", default=["verbal", "fcp"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import mlflow

    from alive_exp.cli import compose
    from alive_exp.train import run

    for arm in args.arms:
        with tempfile.TemporaryDirectory() as tmp:
            uri = f"sqlite:///{tmp}/mlflow.db"
            os.environ["MLFLOW_TRACKING_URI"] = uri
            mode, _, own = arm.partition(":")
            cfg = compose(["+experiment=math", f"reward={mode}", f"seed={args.seed}", f"paths.output_dir={tmp}/run",
                           "trainer.progress_bar=false", *args.overrides, *filter(None, own.split(","))])
            final = run(cfg)
            client = mlflow.MlflowClient(uri)
            # the run's experiment is the logger's (`logger.experiment_name`), the only one in this fresh store with a run
            (r,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
            history = {k: {m.step: m.value for m in client.get_metric_history(r.info.run_id, k)} for k in STEP_KEYS}
            steps = sorted(set().union(*(h.keys() for h in history.values())))
            for s in steps:
                if s % args.every == 0 or s == steps[-1]:
                    print(json.dumps({"arm": arm, "seed": args.seed, "step": s,
                                      **{k: round(history[k][s], 3) for k in STEP_KEYS if s in history[k]}}), flush=True)
            print(json.dumps({"arm": arm, "seed": args.seed, "final": {k: round(final[k], 3) for k in FINAL_KEYS
                                                                       if k in final}}), flush=True)
            os.environ.pop("MLFLOW_TRACKING_URI", None)


if __name__ == "__main__":
    main()
