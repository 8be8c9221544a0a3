"""Data parallel on CPU (gloo, 2 processes): ranks train on different documents yet end with identical
adapters; one MLflow run, one output folder. Also the strategy guards, the per-optimizer gradient sync, and
one normalisation however many processes: 2 ranks give the single-process gradient on the same samples."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
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


LOCAL = 3  # bnpo's local batch: each rank's 6 samples are 2 of them, as the single process's 12 are 4


def _step_samples():
    """One role's step: 12 samples, completions of 1 to 7 tokens (25 on the first half, 26 on the second),
    some with advantage 0 (skipped in the update, still counted), some likelihood targets."""
    from alive_exp.losses import Sample

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(12):
        ids = torch.randint(1, 32, (3 + 1 + (i * 5) % 7,), generator=g).tolist()
        out.append(Sample("solver", ids[:3], ids[3:], advantage=[1.0, -0.5, 0.0, 2.0][i % 4],
                          nll_weight=0.5 if i % 3 == 1 else 0.0))
    return out


def _gradient(model, samples, loss_type: str, strategy=None, global_norm: bool = True, micro: int = 2,
              sync: bool = True) -> torch.Tensor:
    """What `AliveModule._backward` and `learn` do for one role: norms from the step's counts (over every rank),
    zero-advantage samples skipped, micro-batches of `micro` accumulated, gradients averaged over ranks
    (`sync_gradients`, or FSDP's own reduce-scatter in each backward)."""
    from alive_exp.losses import contributing, local_counts, normalise, role_loss

    totals, processes = (distributed.global_counts(strategy, local_counts(samples, LOCAL)) if global_norm
                         else (None, 1))
    normalise(samples, loss_type, batch_size=LOCAL, max_tokens=8, totals=totals, processes=processes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=True)
    kept = contributing(samples, kl_coef=0.0)
    for i in range(0, len(kept), micro):
        loss, _ = role_loss(model, kept[i:i + micro], pad_id=0, clip_eps=0.2, kl_coef=0.0)
        loss.backward()
    if strategy is not None and sync:
        distributed.sync_gradients(strategy, opt, True)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).detach().clone()


class _Logits(torch.nn.Module):
    """The causal LM behind its plain forward only, so that the log-prob path calls FSDP's root forward (which
    gathers the shards) rather than the decoder and head on their own."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, **inputs):
        return self.lm(**inputs)


def _fsdp_gradient(model, samples, loss_type: str, strategy) -> torch.Tensor:
    """`_gradient` under FSDP (the tiny model sharded over the 2 ranks): one backward per rank, as FSDP needs the
    same number on every rank; the full gradient gathered back from the shards."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    sharded = FSDP(_Logits(model), device_id=torch.device("cpu"), use_orig_params=True)
    _gradient(sharded, samples, loss_type, strategy, micro=len(samples), sync=False)
    with FSDP.summon_full_params(sharded, with_grads=True):
        return torch.cat([p.grad.flatten() for p in sharded.parameters() if p.grad is not None]).detach().clone()


def _rank(rank: int, model, folder: str) -> None:
    """One of 2 gloo ranks: its half of the step's samples, each loss type; what it ends with, saved."""
    import torch.distributed as dist
    from lightning_fabric.plugins.environments import LightningEnvironment

    from alive_exp.losses import LOSS_TYPES

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    env = LightningEnvironment()
    env.set_world_size(2)
    env.set_global_rank(rank)
    strategy = distributed.AliveDDPStrategy(parallel_devices=[torch.device("cpu")] * 2, cluster_environment=env)
    shard = slice(6 * rank, 6 * rank + 6)
    out = {t: _gradient(copy.deepcopy(model), _step_samples()[shard], t, strategy) for t in LOSS_TYPES}
    # each rank divided by its own count, then the mean over ranks: what sync_gradients alone gave before
    out["own_counts"] = _gradient(copy.deepcopy(model), _step_samples()[shard], "dapo", strategy, global_norm=False)
    for t in LOSS_TYPES:
        out[f"fsdp/{t}"] = _fsdp_gradient(copy.deepcopy(model), _step_samples()[shard], t, strategy)
    torch.save(out, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_give_the_single_process_gradient_for_every_loss_type(tmp_path):
    """DDP (`sync_gradients`, 3 micro-batches accumulated) and FSDP, each loss type, on 6 + 6 samples."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alive_exp.losses import LOSS_TYPES

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)).train()
    # fork: the ranks start with this process's modules and the same weights (CPU only, one thread each)
    ranks = torch.multiprocessing.start_processes(_rank, args=(model, str(tmp_path)), nprocs=2, join=False,
                                                  start_method="fork")
    for _ in range(120):  # a collective the ranks do not both reach would wait forever: 2 minutes at most
        if ranks.join(timeout=1):
            break
    else:
        for p in ranks.processes:
            p.kill()
        pytest.fail("the 2 ranks did not finish in 2 minutes")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for loss_type in LOSS_TYPES:
        one = _gradient(copy.deepcopy(model), _step_samples(), loss_type)
        scale = float(one.abs().max())
        assert scale > 1e-2
        for how in (loss_type, f"fsdp/{loss_type}"):
            assert torch.equal(ranks[0][how], ranks[1][how])  # the reduction leaves every rank the same
            gap = float((ranks[0][how] - one).abs().max())
            assert gap <= 1e-6 * scale, f"{how}: 2 ranks differ from 1 by {gap:.3g} (largest {scale:.3g})"
    one = _gradient(copy.deepcopy(model), _step_samples(), "dapo")
    assert float((ranks[0]["own_counts"] - one).abs().max()) > 1e-3 * float(one.abs().max())  # the check binds
