"""Train a policy with ALIVE: python train.py +experiment=math [reward=verbal] [trainer.max_steps=50]"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ALIVE_ROOT", str(Path(__file__).resolve().parent))

from alive_exp.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from alive_exp.train import objective, run

    return objective(run(cfg))  # what the Optuna sweeper maximizes (held-out accuracy)


if __name__ == "__main__":
    main()
