"""Configs compose, experiments smoke-compose, and typos fail at start-up naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONF, REPO, compose_cfg

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = ["model", "benchmark", "reward", "trainer", "hardware", "logger", "paths", "oracle", "critic", "roles"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    cfg = compose_cfg([f"+experiment={name}"], tmp_path)
    assert cfg.experiment_name
    assert cfg.benchmark.domain in ("math", "code", "logic")
    assert cfg.paths.root_dir == str(tmp_path)


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group, tmp_path):
    for option in sorted((CONF / group).glob("*.yaml")):
        cfg = compose_cfg([f"{group}={option.stem}"], tmp_path)
        assert cfg[group] is not None


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "debug").glob("*.yaml")))
def test_debug_options_shrink_the_experiment_they_follow(option, tmp_path):
    full = compose_cfg(["+experiment=math"], tmp_path)
    cfg = compose_cfg(["+experiment=math", f"+debug={option}"], tmp_path)
    assert cfg.trainer.solutions_per_task < full.trainer.solutions_per_task
    assert cfg.benchmark.train_docs < full.benchmark.train_docs and not cfg.trainer.progress_bar


ARMS = {"scalar": ("scalar", "outcome", False, "self", "learned"), "judge": ("judge", "outcome", False, "self", "learned"),
        "verbal": ("verbal", "outcome", False, "self", "learned"), "fcp": ("fcp", "outcome", False, "self", "learned"),
        "sft": ("sft", "outcome", False, "self", "learned"),
        "verbal_credit": ("verbal", "critique", False, "self", "learned"),
        "verbal_group": ("verbal", "outcome", True, "self", "learned"),
        "verbal_oracle": ("verbal", "outcome", False, "oracle", "learned"),
        "scalar_uniform": ("scalar", "outcome", False, "self", "rule"),
        "verbal_uniform": ("verbal", "outcome", False, "self", "rule")}


def test_every_arm_is_its_reward_mode_and_variant_and_the_sweeps_run_only_arms(tmp_path):
    """+arm=NAME (the reports' arms) sets the reward mode, the variant's keys and who poses, and nothing else."""
    assert sorted(p.stem for p in (CONF / "arm").glob("*.yaml")) == sorted(ARMS)
    plain = compose_cfg(["+experiment=math"], tmp_path)
    for arm, (mode, credit, in_group, writer, constructor) in ARMS.items():
        cfg = compose_cfg(["+experiment=math", f"+arm={arm}"], tmp_path)
        got = (cfg.reward.mode, cfg.reward.credit, cfg.reward.refinements_in_group, cfg.critic.writer,
               cfg.trainer.constructor)
        assert got == (mode, credit, in_group, writer, constructor), arm
        same_mode = compose_cfg(["+experiment=math", f"reward={mode}", f"trainer.constructor={constructor}"], tmp_path)
        assert cfg.trainer == same_mode.trainer and cfg.warmstart == plain.warmstart
    sys.path.insert(0, str(REPO / "scripts"))
    from learning_report import sweep_grid

    arms, seeds, fixed = sweep_grid(REPO / "sweeps" / "learning.yaml")
    assert set(arms) <= set(ARMS) and {"verbal_oracle", "verbal_credit", "verbal_group"} <= set(arms)
    assert seeds == [0, 1, 2, 3, 4] and fixed == []
    arms, seeds, fixed = sweep_grid(REPO / "sweeps" / "constructor.yaml")
    assert sorted(arms) == ["scalar", "scalar_uniform", "verbal", "verbal_uniform"] and seeds == [0, 1, 2, 3, 4]
    assert fixed == ["benchmark.options.source_options.column_arithmetic.per_page=[4,8]", "trainer.uniform_probe_share=0.125"]
    # scripts/choose_lr.py chooses one rate per reward mode; the report trains each variant at its mode's rate
    from choose_lr import default_arms
    from learning_report import reward_mode

    assert default_arms(REPO / "sweeps" / "learning.yaml") == ["scalar", "verbal", "judge", "fcp", "sft"]
    assert [reward_mode(a) for a in ("verbal_credit", "verbal_oracle", "warm_start")] == ["verbal", "verbal", "scalar"]


def test_every_group_file_documents_itself():
    for path in CONF.rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path.relative_to(REPO)} lacks a comment header"


def test_experiment_is_not_in_defaults():
    assert "experiment" not in (CONF / "config.yaml").read_text().split("defaults:")[1].split("_self_")[0]


def test_misspelled_key_names_the_key(tmp_path):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg(["trainer.max_stepz=3"], tmp_path)
    assert "max_stepz" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg(["trainer.optim.solver.lr=fast"], tmp_path)
    assert "lr" in str(err.value) + str(err.value.__cause__)


def test_train_py_rejects_typo_with_the_key_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "+experiment=math", "reward.modee=scalar", f"paths.root_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "modee" in proc.stderr


def test_tracking_uri_defaults_to_sqlite_in_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose_cfg([], tmp_path).logger.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert compose_cfg([], tmp_path).logger.tracking_uri == "sqlite:////elsewhere/x.db"


def test_a_misspelled_domain_option_fails_naming_it_and_the_known_ones():
    import pytest as _pytest

    from alive_exp import domains

    with _pytest.raises(ValueError, match=r"\['hid'\].*math.*known: hide"):
        domains.get("math", hid="answer")
    with _pytest.raises(ValueError, match=r"\['hide'\].*code"):
        domains.get("code", hide="answer")
    assert domains.get("logic").name == "logic"


@pytest.mark.parametrize("key,bad", [
    ("model.finetune", "lorra"), ("model.adapters", "per-role"), ("model.source", "hf"), ("model.dtype", "bf16"),
    ("trainer.optim.reviewer.schedule", "cosin"),
    ("trainer.constructor", "rules"), ("oracle.kind", "vllm"),
])
def test_a_value_outside_an_enumeration_fails_naming_the_key_and_the_choices(key, bad, tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg([f"{key}={bad}"], tmp_path)
    text = str(err.value) + str(err.value.__cause__)
    assert key in text and "expected one of" in text, text


def test_enumerations_read_as_strings_and_registries_are_checked_at_start_up(tmp_path):
    from alive_exp.train import build

    for key, bad in (("reward.mode", "verbl"), ("reward.advantage", "rlo")):  # extensible registries
        with pytest.raises(ValueError, match=rf"{key}='{bad}' is not registered: expected one of \[.*'"):
            build(compose_cfg(["+experiment=math", f"{key}={bad}", "warmstart.enabled=false"], tmp_path))
    cfg = compose_cfg(["model.finetune=full"], tmp_path)
    assert cfg.model.finetune == "full" and f"{cfg.reward.mode}" == "scalar"
    from omegaconf import OmegaConf

    assert "finetune: full" in OmegaConf.to_yaml(cfg)
