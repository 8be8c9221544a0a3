"""Glue between DVC and alive-exp: write params.yaml from conf/, and train from params.yaml.

    python scripts/dvc_pipeline.py params [OVERRIDES...]   # params.yaml = conf/ composed with OVERRIDES
    python scripts/dvc_pipeline.py train                   # the `train` stage of dvc.yaml

`params` composes exactly as `dvc exp run -S ...` does (DVC's own function), so the committed params.yaml
is what `dvc exp run -S <the same overrides>` would write. With no overrides it uses SMOKE: a run small
enough for `dvc repro` on a CPU in a few minutes.

`train` runs `alive_exp.train.run` on params.yaml as composed (no recomposition), with every path moved
under dvc_outputs/ and a store of its own, so pipeline runs never mix with `python train.py` runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = "dvc_outputs"
SMOKE = [
    "+experiment=math", "+debug=smoke", "trainer.max_steps=4",  # conf/debug/smoke.yaml: a short warm start
    # the evaluate stage evaluates the checkpoint and logs to the run; evaluating in train too is double work
    "trainer.eval_at_end=false",
]
# where a pipeline run writes; relative to the repository root, where DVC runs every stage
PIPELINE_PATHS = [
    f"paths.root_dir={OUT}", f"paths.data_dir={OUT}/data", f"paths.output_dir={OUT}/train",
    f"logger.tracking_uri=sqlite:///{OUT}/mlflow.db", f"logger.artifact_location={OUT}/mlartifacts",
]
STEP_METRICS = ["train/reward_mean", "solver/accuracy", "reviewer/balanced_agreement", "constructor/valid_rate",
                "refine/success_rate", "tokens/constructor", "tokens/solver", "tokens/reviewer", "time/step"]


def write_params(overrides: list[str], path: Path = ROOT / "params.yaml") -> None:
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(path, str(ROOT / "conf"), None, "config", str(ROOT / "scripts" / "dvc_hydra"), overrides or SMOKE)
    print(f"wrote {path} from conf/ with overrides: {' '.join(overrides or SMOKE)}")


def train(params: Path = ROOT / "params.yaml") -> None:
    from omegaconf import OmegaConf

    from alive_exp.cli import load_config
    from alive_exp.report import metric_history
    from alive_exp.tracking import client
    from alive_exp.train import run

    cfg = load_config(params, PIPELINE_PATHS)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # what `alive-exp evaluate` rebuilds the run from
    final = run(cfg)
    c = client(cfg.logger.tracking_uri)
    history = {k: metric_history(c, final["mlflow_run_id"], k) for k in STEP_METRICS}
    steps = sorted({s for h in history.values() for s in h})
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *STEP_METRICS])
        w.writerows([s, *(history[k].get(s, "") for k in STEP_METRICS)] for s in steps)
    print(f"trained MLflow run {final['mlflow_run_id']} ({len(steps)} ALIVE steps) into {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("params", help="write params.yaml from conf/").add_argument("overrides", nargs="*")
    sub.add_parser("train", help="the train stage: run params.yaml into dvc_outputs/train")
    args = p.parse_args(argv)
    if args.command == "params":
        write_params(args.overrides)
    else:
        train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
