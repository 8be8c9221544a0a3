"""Data parallel on CPU (gloo, 2 processes): ranks train on different documents yet end with identical
adapters; one MLflow run, one output folder. Also the strategy guards and the per-optimizer gradient sync."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from alive_exp import distributed
from conftest import compose_cfg
from test_sweeps import TINY, tiny_data, train_py  # noqa: F401  (tiny_data is a fixture)

DDP_CPU = ["hardware=ddp", "hardware.devices=2", "hardware.accelerator=cpu", "hardware.precision=32-true",
           "hardware.static_cache=false"]


def test_deepspeed_with_one_optimizer_per_role_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="model.adapters=shared"):
        distributed.make_strategy(compose_cfg(["hardware.strategy=deepspeed_stage_2"]))
    assert distributed.make_strategy(compose_cfg(["hardware.strategy=deepspeed_stage_2", "model.adapters=shared"])) \
        == "deepspeed_stage_2"
    with pytest.raises(ValueError, match="hardware.strategy=ddp"):
        distributed.make_strategy(compose_cfg(["hardware.strategy=ddp_spawn"]))
    assert isinstance(distributed.make_strategy(compose_cfg(["hardware=ddp"])), distributed.AliveDDPStrategy)


def test_fsdp_generates_with_synced_gpus():
    strategy = distributed.make_strategy(compose_cfg(["hardware=fsdp"]))
    assert distributed.is_sharded(strategy) and not distributed.is_sharded(distributed.make_strategy(compose_cfg([])))


def test_rank_before_the_process_group_exists(monkeypatch):
    for var in ("RANK", "SLURM_NTASKS", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launch_rank(devices=4) == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launch_rank(devices=4) == 1
    monkeypatch.setenv("NODE_RANK", "1")
    assert distributed.launch_rank(devices=4) == 5
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "6")
    assert distributed.launch_rank(devices=4) == 6


def test_child_command_reruns_this_job_not_the_sweep():
    argv = ["-m", "-cd", "sweeps", "--config-name=reward_ablation", "seed=0,1"]
    assert distributed.config_flags(argv) == ["-cd", "sweeps", "--config-name=reward_ablation"]


def test_buckets_keep_order_and_bound_size():
    import torch

    ts = [torch.zeros(n) for n in (3, 3, 5, 1)]
    assert [[t.numel() for t in b] for b in distributed.buckets(ts, 6)] == [[3, 3], [5, 1]]


@pytest.mark.slow
def test_two_cpu_ranks_keep_identical_adapters_one_run_one_folder(tmp_path, tiny_data):
    proc = train_py("+experiment=math", *[o for o in TINY if not o.startswith("trainer.max_steps")],
                    "trainer.max_steps=2", "reward=fcp", "trainer.warmup_steps=2", *DDP_CPU,
                    f"paths.root_dir={tmp_path}", f"paths.data_dir={tiny_data}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [out] = (tmp_path / "outputs" / "train").iterdir()  # one output folder for both ranks
    ranks = json.loads((out / "replicas.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["documents_step0"] != ranks[1]["documents_step0"]  # each rank its own shard
    assert ranks[0]["weights"] == ranks[1]["weights"]  # yet the same adapters after 2 steps
    assert (out / "train_rank1.log").exists()  # rank 1 logs into the same folder
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = c.search_runs([c.get_experiment_by_name("alive").experiment_id])
    assert run.info.status == "FINISHED"
    losses = c.get_metric_history(run.info.run_id, "solver/loss")
    assert sorted(m.step for m in losses) == [1, 2] and all(m.value > 0 for m in losses)
