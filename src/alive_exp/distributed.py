"""Several processes, one ALIVE run: strategy choice, process launch under Hydra, gradient sync, shards.

Design (see docs/scale.md):
- One ALIVE step runs several backward passes per role and one optimizer per role, with `requires_grad`
  switched per role by PEFT. DDP's reducer assumes one backward per forward over a fixed set of
  parameters, so `ddp` here launches processes and a process group but never wraps the model: `learn`
  averages each optimizer's gradients explicitly (`sync_gradients`) before its step.
- One normalisation however many processes: the counts a role's loss divides by are summed over ranks
  before the backward (`global_counts`), so the average over ranks is the gradient one process would
  compute on every rank's samples (tests/test_ddp.py).
- Each rank generates on its own shard of documents; every rank takes the same decisions (whether a
  group steps) so the collectives always match, and the adapters stay bit-identical (`ReplicaCheck`).
- Lightning re-runs the script for the other ranks; under Hydra its command replays `-m` and points at
  `hydra.run.dir`, which in a multirun is not the job's folder. `HydraJobLauncher` re-runs this job,
  in its output folder, with the checkpoint rank 0 resolved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

BUCKET_ELEMENTS = 64 * 1024 * 1024  # gradients all-reduced per bucket of this many elements


# what Lightning's launcher exports for its ranks; a process that runs several jobs must forget it
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def own_process_group() -> Iterator[None]:
    """Ranks and process group live for one run: the next job of a sequential multirun launches its own.

    Without this, the second job sees LOCAL_RANK from the first, believes its ranks were launched
    externally, and talks to the first job's exited children.
    """
    saved = {k: os.environ.get(k) for k in LAUNCH_ENV}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def launch_rank(devices: int = 1) -> int:
    """This process's global rank as its launcher set it, readable before Lightning sets up the process group."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher whose children re-run this Hydra job (not the whole sweep) in its folder."""

    def __init__(self, *args: Any, child_overrides: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.child_overrides = child_overrides

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return super()._call_children_scripts()
        import subprocess

        from hydra.utils import get_original_cwd

        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            command = hydra_job_command(local_rank, self.child_overrides)
            self.procs.append(subprocess.Popen(command, env=env, cwd=get_original_cwd()))


def hydra_job_command(local_rank: int, extra: list[str]) -> list[str]:
    """The command that runs the current Hydra job again as one more rank, writing into the same folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += config_flags(sys.argv[1:])
    replaced = {x.split("=", 1)[0] for x in extra}
    command += [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") not in replaced]
    command += extra
    return command + [f'hydra.run.dir="{hc.runtime.output_dir}"', f"hydra.job.name={hc.job.name}_rank{local_rank}",
                      "hydra.output_subdir=null"]


def config_flags(argv: list[str]) -> list[str]:
    """Hydra's config-location flags of a command line (--config-dir, --config-name, --config-path)."""
    names = {"-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path"}
    out, it = [], iter(argv)
    for arg in it:
        if arg in names:
            out += [arg, next(it, "")]
        elif arg.split("=", 1)[0] in names:
            out.append(arg)
    return out


class HydraChildren:
    """Strategy mixin: ranks 1..N-1 are launched by `HydraJobLauncher` with `child_overrides` added."""

    child_overrides: list[str]

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes,
                                              child_overrides=self.child_overrides)


class AliveDDPStrategy(HydraChildren, DDPStrategy):
    """Data parallel without DDP's reducer: rank 0's weights are broadcast once, gradients averaged in `learn`."""

    strategy_name = "alive_ddp"

    def __init__(self, *args: Any, child_overrides: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.child_overrides = child_overrides or []

    def configure_ddp(self) -> None:
        from pytorch_lightning.overrides.distributed import _sync_module_states

        _sync_module_states(self.model)  # identical start on every rank; the model stays unwrapped


class AliveFSDPStrategy(HydraChildren, FSDPStrategy):
    """Lightning's FSDP (per decoder layer, original parameters kept for the per-role optimizers)."""

    def __init__(self, *args: Any, child_overrides: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, auto_wrap_policy=decoder_layer_classes(), use_orig_params=True, **kwargs)
        self.child_overrides = child_overrides or []


def make_strategy(cfg, child_overrides: list[str] | None = None) -> Any:
    """The Lightning strategy for `hardware.strategy`, with a clear error for combinations that cannot work."""
    name, hw = str(cfg.hardware.strategy), cfg.hardware
    per_role = cfg.model.finetune == "lora" and cfg.model.adapters == "per_role"
    if name.startswith("deepspeed") and per_role:
        raise ValueError(
            f"hardware.strategy={name} supports one optimizer only, but model.adapters=per_role trains one "
            "optimizer per role. Use model.adapters=shared (one adapter and optimizer for all roles), "
            "or hardware=ddp / hardware=fsdp.")
    if name == "ddp":
        return AliveDDPStrategy(child_overrides=child_overrides)
    if name.startswith("ddp"):
        raise ValueError(f"hardware.strategy={name} is not supported: use hardware.strategy=ddp (one process "
                         "per device, launched by re-running train.py; gradients are synced per role optimizer)")
    if name == "fsdp":
        log.warning("hardware.strategy=fsdp is experimental and untested on several GPUs: FSDP reduces gradients "
                    "inside every backward pass, so all ranks must run the same number of backward passes per role "
                    "(see docs/scale.md); for LoRA prefer hardware=ddp")
        return AliveFSDPStrategy(child_overrides=child_overrides)
    if name == "auto" and hw.devices != 1 and hw.accelerator != "cpu":
        raise ValueError(f"hardware.devices={hw.devices} with strategy=auto: use hardware=ddp (or fsdp)")
    return name


def decoder_layer_classes() -> set[type]:
    """The transformer blocks FSDP shards one by one."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    return {Qwen2DecoderLayer, LlamaDecoderLayer}


def cluster_plugins() -> list[Any]:
    """Under SLURM, preemption is handled by requeue + `resume=auto`, not by Lightning's mid-step hpc checkpoint."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def is_sharded(strategy: Any) -> bool:
    return isinstance(strategy, FSDPStrategy)


def global_counts(strategy: Any, values: list[float]) -> tuple[list[float], int]:
    """`values` summed over every process, and the number of processes whose gradients are averaged (1 alone).

    A loss divided by these sums, times the number of processes (`losses.normalise`), makes the average that
    `sync_gradients` (DDP) or FSDP's reduce-scatter takes equal to the sum over every rank's samples divided
    by the global count. Every rank calls it for every role every step, as it does `sync_gradients`."""
    world = int(getattr(strategy, "world_size", 1) or 1)
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return list(values), 1
    total = torch.tensor(values, dtype=torch.float64, device=strategy.root_device)
    dist.all_reduce(total)
    return total.tolist(), world


def sync_gradients(strategy: Any, optimizer: torch.optim.Optimizer, stepped: bool) -> bool:
    """Average the gradients of one optimizer's parameters over ranks; True when any rank has gradients.
    (Each rank's loss was divided by the global counts over the number of ranks: the mean is the sum.)

    Every rank calls this for every optimizer group every step, so the collectives always match even
    when a rank had no samples for a role: its missing gradients count as zeros in the mean, and a
    parameter with no gradient on any rank keeps none (AdamW skips it, as in a single process).
    """
    if not isinstance(strategy, AliveDDPStrategy) or strategy.world_size == 1:
        return stepped
    params = [p for group in optimizer.param_groups for p in group["params"]]
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has_grad.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in live:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    world = dist.get_world_size()
    for grads in by_dtype.values():
        for bucket in buckets(grads, BUCKET_ELEMENTS):
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= world
            for g, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g.copy_(synced)
    return bool(live)


def buckets(tensors: list[torch.Tensor], max_elements: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of tensors of at most `max_elements` elements (a larger tensor goes alone)."""
    out: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        if out[-1] and size + t.numel() > max_elements:
            out.append([])
            size = 0
        out[-1].append(t)
        size += t.numel()
    return [b for b in out if b]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the trainable weights (the adapters, or every weight under full fine-tuning)."""
    h = hashlib.sha256()
    named = dict(module.named_parameters())
    lora = {n: p for n, p in named.items() if ".lora_" in n}
    for name, p in sorted((lora or named).items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class DataShards(pl.Callback):
    """Gives the corpus this rank's shard of documents, from the trainer once the process group exists."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.corpus.rank, pl_module.corpus.world = trainer.global_rank, trainer.world_size


class ReplicaCheck(pl.Callback):
    """At the end of training, every rank's adapter digest and document shard, written by rank 0 to `path`.

    Ranks that trained on different documents yet hold identical weights show the gradient sync works;
    a mismatch is an error, not a warning, because every later number would be rank 0's alone.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 or not dist.is_initialized():
            return
        mine = {"rank": trainer.global_rank, "weights": weights_digest(pl_module.model),
                "documents_step0": [d.text[:40] for d in pl_module.corpus.for_step(0)]}
        everyone: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(everyone, mine)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(everyone, indent=1))
        if len({r["weights"] for r in everyone}) != 1:
            raise RuntimeError(f"ranks hold different adapter weights after training (see {self.path}): "
                               "gradients were not synchronized")
