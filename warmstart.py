"""Build (or find) the cached warm start for a config: python warmstart.py +experiment=math"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ALIVE_ROOT", str(Path(__file__).resolve().parent))

from alive_exp.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    import json

    from alive_exp.warmstart import build_warmstart

    path = build_warmstart(cfg)
    print(f"warm start: {path}\n{json.dumps(json.loads((path / 'metrics.json').read_text()), indent=2)}")


if __name__ == "__main__":
    main()
