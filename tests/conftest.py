"""Shared fixtures: offline, CPU, a Hydra-composed config rooted in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from alive_exp.config import register_configs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
register_configs()


def compose_cfg(overrides: list[str], root: Path | None = None) -> DictConfig:
    """The config `python train.py <overrides>` would run with, rooted at `root`."""
    extra = [f"paths.root_dir={root}"] if root is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, *extra])


# a 120-step warm start (cached in the session's data folder): spans and reviews with the reference parse,
# answers and blind reviews mostly do not (a blind review works the columns first: 60 steps wrote no verdict)
WARM120 = ("warmstart.enabled=true", "warmstart.steps=120", "warmstart.eval_size=4", "warmstart.check_from=60",
           "warmstart.check_every=60", "warmstart.check_size=4", "hardware.torch_threads=1")


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """One data folder for the session, so the tiny model and tokenizer are built once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def small_cfg(tmp_path, shared_data):
    """A factory for tiny, fast configs: few docs, short generations, no progress bar."""

    def make(*overrides: str) -> DictConfig:
        base = ["+experiment=math", "+debug=smoke", f"paths.data_dir={shared_data}", "warmstart.enabled=false",
                "benchmark.eval_size=4"]
        return compose_cfg([*base, *overrides], tmp_path)

    return make


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """MLflow's client exports MLFLOW_TRACKING_URI into os.environ when it uses a store; tests must not inherit it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
