"""`run(cfg)`: config -> objects -> Trainer.fit -> final evaluation -> MLflow. Called by the root train.py."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from alive_exp import distributed, domains, mlflow_ui, models, readiness, rewards, tracking
from alive_exp.callbacks import (AliveCheckpoint, TranscriptFlush, config_fingerprint, find_resumable, read_run_info,
                                 write_run_info)
from alive_exp.config import POLICY_CONFIG
from alive_exp.data import Corpus, StepIndices
from alive_exp.losses import ADVANTAGES
from alive_exp.evaluation import EvalSettings, Evaluator
from alive_exp.module import AliveModule
from alive_exp.oracles import Oracle, RuleOracle
from alive_exp.roles import RoleTemplates
from alive_exp.rollout import Generator
from alive_exp.traces import Tracer

log = logging.getLogger(__name__)


def build_oracle(cfg: DictConfig) -> Oracle:
    kind = cfg.oracle.kind
    if kind == "rule":
        return RuleOracle()
    if kind == "http":
        from alive_exp.oracles.http import HTTPOracle

        return HTTPOracle(base_url=cfg.oracle.base_url, model=cfg.oracle.model, api_key_env=cfg.oracle.api_key_env,
                          timeout_s=cfg.oracle.timeout_s, max_retries=cfg.oracle.max_retries,
                          temperature=cfg.oracle.temperature, max_tokens=cfg.oracle.max_new_tokens)
    if kind == "hf":
        from alive_exp.oracles.hf import HFOracle

        return HFOracle(model_name_or_path=cfg.oracle.model, max_new_tokens=cfg.oracle.max_new_tokens,
                        temperature=cfg.oracle.temperature)
    raise ValueError(f"unknown oracle.kind {kind!r}: use rule, hf or http")


def output_dir(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        return Path(cfg.paths.output_dir)


def domain_options(cfg: DictConfig) -> dict[str, dict]:
    """Options of the training domain; evaluated domains other than it use their defaults."""
    return {cfg.benchmark.domain: OmegaConf.to_container(cfg.benchmark.options, resolve=True) or {}}


def resolve_resume(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint to continue from: `resume=<path>`, or with `resume=auto` the newest unfinished
    `last.ckpt` of a run with this exact config (fingerprint), in this run's folder or its siblings."""
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        if not Path(cfg.resume).exists():
            raise FileNotFoundError(f"resume={cfg.resume!r}: no checkpoint at that path")
        done = read_run_info(Path(cfg.resume).parent).get("alive_step", 0)
        if done >= cfg.trainer.max_steps:
            raise ValueError(f"resume={cfg.resume!r} is at ALIVE step {done}, trainer.max_steps="
                             f"{cfg.trainer.max_steps}: nothing left to train. Raise trainer.max_steps to continue.")
        return str(cfg.resume)
    patterns = [str(out / "checkpoints" / "last.ckpt")]
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        patterns += [str(Path(hc.run.dir).parent / "*" / "checkpoints" / "last.ckpt"),
                     str(Path(hc.sweep.dir).parent / "*" / "*" / "checkpoints" / "last.ckpt")]
    except ValueError:
        pass
    found = find_resumable(config_fingerprint(cfg), patterns)
    if found is None:
        log.info("resume=auto: no unfinished checkpoint of this config; starting a new run")
        return None
    log.info("resume=auto: continuing from %s", found)
    return str(found)


def build(cfg: DictConfig, evaluate: bool = True) -> AliveModule:
    """Every object of a run, wired together; no Trainer yet."""
    if cfg.hardware.torch_threads:
        torch.set_num_threads(cfg.hardware.torch_threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    mode_cls = rewards.REWARD_MODES.get(cfg.reward.mode)
    for key, name, known in (("reward.mode", cfg.reward.mode, rewards.REWARD_MODES),
                             ("reward.advantage", cfg.reward.advantage, ADVANTAGES)):
        if name not in known:
            raise ValueError(f"{key}={name!r} is not registered: expected one of {sorted(known)}")
    if cfg.hardware.precision in ("bf16-true", "16-true"):
        raise ValueError(f"hardware.precision={cfg.hardware.precision} casts the trained weights and AdamW's state to "
                         "16 bits, where small updates vanish; use hardware.precision=bf16-mixed (bf16 compute, the "
                         "base in model.dtype, adapters fp32)")
    if cfg.model.finetune == "full" and cfg.model.dtype in ("bfloat16", "float16"):
        raise ValueError(f"model.finetune=full trains every weight, so model.dtype={cfg.model.dtype} would keep them and "
                         "their optimizer state in 16 bits; use model.dtype=float32 with hardware.precision=bf16-mixed")
    if cfg.trainer.generation.top_p < 1.0:
        raise ValueError(f"trainer.generation.top_p={cfg.trainer.generation.top_p}: nucleus sampling draws from a "
                         "distribution the policy-gradient loss does not score (it would be off-policy); use top_p=1.0")
    if cfg.rollout.engine == "vllm":
        from alive_exp.vllm_rollout import check_config

        check_config(cfg)
    if not cfg.trainer.reviews and mode_cls is not None and mode_cls.needs_reviews:
        raise ValueError(f"trainer.reviews=false runs no review phase, but reward={cfg.reward.mode} reads the "
                         "reviewer's verdicts or critiques; use reward=scalar or reward=sft, or trainer.reviews=true")
    if cfg.reward.credit == "critique" and mode_cls is not None and not (mode_cls.needs_reviews and mode_cls.policy_gradient):
        raise ValueError(f"reward.credit=critique places a solution's advantage where its critique points, but "
                         f"reward={cfg.reward.mode} has no critique-read policy gradient; use reward=judge or reward=verbal")
    if cfg.reward.refinements_in_group and not (mode_cls is not None and mode_cls.train_refiner and cfg.reward.refine):
        raise ValueError(f"reward.refinements_in_group adds revisions to their task's group, but reward={cfg.reward.mode} "
                         f"(reward.refine={cfg.reward.refine}) revises nothing it learns from; use reward=verbal")
    if cfg.reward.refinement_shaping < 0:
        raise ValueError(f"reward.refinement_shaping={cfg.reward.refinement_shaping}: gamma must be >= 0 (0: no shaping)")
    options = domain_options(cfg)
    domain = domains.get(cfg.benchmark.domain, **options[cfg.benchmark.domain])
    corpus_domains = sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains})
    model_cfg = cfg.model
    if cfg.warmstart.enabled and cfg.model.source == "tiny" and not cfg.model.init_from:
        from alive_exp.warmstart import build_warmstart

        warm = build_warmstart(cfg, cfg.trainer.progress_bar)
        model_cfg = OmegaConf.merge(cfg.model, {"init_from": str(warm)})
    base, tokenizer, base_path = models.load_base(model_cfg, cfg.paths.data_dir, corpus_domains)
    vllm = cfg.rollout.engine == "vllm"
    merge = cfg.trainer.generation.merge_adapters and models.adapter_names(cfg.model) and not vllm
    plain = copy.deepcopy(base) if merge else None
    # adapters start from the run seed whether or not this run had to build the base model first
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = models.attach_adapters(base, cfg.model)
    if model_cfg.init_from and models.policy_adapters(model_cfg.init_from):  # continue from a trained policy
        models.load_policy_adapters(model, model_cfg.init_from, cfg.model)
    model.train()
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    mode = rewards.build(cfg.reward.mode, templates,
                         lambda task: domains.get(task.domain, **options.get(task.domain, {})))
    if vllm:  # a served base model with every role's adapter, synced after each optimizer step
        from alive_exp import vllm_rollout

        generator = vllm_rollout.build_generator(cfg, model, tokenizer, base_path, models.adapter_names(cfg.model),
                                                 output_dir(cfg))
    else:
        generator = Generator(model, tokenizer, batch_size=cfg.trainer.generation.batch_size,
                              static_cache=cfg.hardware.static_cache, chat=cfg.model.chat,
                              merged=models.MergedView(model, plain) if merge else None)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    corpus = Corpus(domain, cfg.benchmark.train_docs, cfg.seed, cfg.trainer.docs_per_step, rank=rank, world=world)
    evaluator = Evaluator(EvalSettings.from_cfg(cfg), generator, templates, mode.solver_prompt, options) if evaluate else None
    module = AliveModule(cfg, model, tokenizer, domain, build_oracle(cfg), templates, mode, generator, corpus, evaluator)
    module.warm_start = json.loads((Path(model_cfg.init_from) / "metrics.json").read_text()) if (
        model_cfg.init_from and (Path(model_cfg.init_from) / "metrics.json").exists()) else {}
    return module


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train for `trainer.max_steps` ALIVE steps, evaluate, log everything to MLflow; returns final metrics.

    Under DDP every rank runs this; only rank 0 touches MLflow and writes files (one run, one folder).
    """
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    zero = distributed.launch_rank(cfg.hardware.devices) == 0
    ckpt = resolve_resume(cfg, out)
    # other ranks get the checkpoint rank 0 chose, so all start from the same one
    strategy = distributed.make_strategy(cfg, child_overrides=[f'resume="{ckpt}"' if ckpt else "resume=null"])
    module = build(cfg)
    module.profile_root = out / "profile"
    module.generator.synced_gpus = distributed.is_sharded(strategy)
    logger, parent, sweep_dir, monitor, links = False, None, None, None, {}
    if zero:
        run_id = resumed_run_id(ckpt) if ckpt else None
        parent, sweep_dir = sweep_parent_id(cfg)
        logger = tracking.make_logger(cfg, run_id=run_id, parent_run_id=parent, fallback=out / "unsent_metrics.jsonl")
        tracking.log_config(logger, cfg)
        module.mlflow_run_id = logger.run_id
        if cfg.logger.log_traces:
            module.tracer = Tracer(cfg.logger.tracking_uri, logger.experiment_id, logger.run_id, tracking.run_tags(cfg),
                                   cfg.trainer.transcripts_per_phase)
            if module.evaluator is not None:
                module.evaluator.tracer = module.tracer
        monitor = tracking.system_metrics(cfg, logger.run_id) if cfg.logger.system_metrics else None
    every = cfg.trainer.checkpoint_every
    callbacks: list[pl.Callback] = [AliveCheckpoint(out / "checkpoints", every, config_fingerprint(cfg)),
                                    TranscriptFlush(every), distributed.DataShards()]
    if isinstance(strategy, distributed.AliveDDPStrategy):
        callbacks.append(distributed.ReplicaCheck(out / "replicas.json"))
    if cfg.trainer.progress_bar:
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    trainer = pl.Trainer(
        accelerator=cfg.hardware.accelerator, devices=cfg.hardware.devices, num_nodes=cfg.hardware.num_nodes,
        strategy=strategy, precision=cfg.hardware.precision, logger=logger, callbacks=callbacks,
        plugins=distributed.cluster_plugins(), max_epochs=1, max_steps=-1, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=cfg.trainer.progress_bar, num_sanity_val_steps=0,
        log_every_n_steps=1, default_root_dir=str(out),
    )
    with contextlib.closing(module.generator), distributed.own_process_group(), tracking.sweep_child(cfg.logger.tracking_uri, parent, sweep_dir,
                                                               lambda: module.mlflow_run_id):
        before: dict[str, float] = {}
        if cfg.trainer.eval_at_start and module.evaluator is not None and not ckpt:
            before = module.evaluator(module)
            if trainer.is_global_zero:
                logger.log_metrics(before, step=0)
        loader = torch.utils.data.DataLoader(StepIndices(module, cfg.trainer.max_steps), batch_size=None)
        # our own checkpoints hold RNG states (numpy arrays), which weights_only loading refuses
        try:
            trainer.fit(module, loader, ckpt_path=ckpt, weights_only=False)
        except BaseException:
            if monitor is not None:
                tracking.stop(monitor)
            raise
        final: dict[str, float] = dict(module.history[-1]) if module.history else {}
        if module.warm_start and trainer.is_global_zero:
            warm = {f"warmstart/{k}": float(module.warm_start[k]) for k in
                    ("heldout_accuracy", *WARM_START_ROLES, "steps", "train_seconds", "eval_size")
                    if module.warm_start.get(k) is not None}
            logger.log_metrics(warm, step=0)
            final.update(warm)
        if cfg.trainer.eval_at_end and module.evaluator is not None:
            scores = module.evaluator(module)
            if trainer.is_global_zero:
                logger.log_metrics(scores, step=module.alive_step)
            final.update(scores)
        if trainer.is_global_zero:
            save_policy(module, out / "policy")
            if module.tracer is not None:
                final.update(module.tracer.finish())
            if monitor is not None:
                tracking.stop(monitor)
            final["tracking/errors"] = float(logger.errors)
            logger.log_metrics({k: final[k] for k in final if k.startswith("tracking/")}, step=module.alive_step)
            logger.experiment.log_dict(logger.run_id, final, "final_metrics.json")
            tracking.log_final_table(logger, tracking.final_table(final, before))
            if module.profile_root.is_dir():  # trainer.profile: the per-phase operator tables
                logger.experiment.log_artifacts(logger.run_id, str(module.profile_root), artifact_path="profile")
            logger.end("success")
            links = mlflow_ui.comparison_links(logger.experiment, cfg.logger.tracking_uri, logger.experiment_id,
                                               logger.run_id, parent)
            write_run_info(out / "checkpoints", finished=True)
    final["mlflow_run_id"] = module.mlflow_run_id
    final["output_dir"] = str(out)
    if zero:
        print(summary(final, cfg, links), flush=True)
    return final


# what metrics.json says of every role at the warm start (alive_exp.readiness), logged as warmstart/<key> at step 0
WARM_START_ROLES = ("solver_sampled", "reviewer", "reviewer_blind", "refiner_fixes", "refiner_keeps", "missing_verdicts",
                    "reviewer_points", "reviewer_blind_points", "floors_met_at")


def summary(final: dict[str, Any], cfg: DictConfig, links: dict[str, str] | None = None) -> str:
    """The run's last lines: each role's readiness at the warm start, held-out accuracy before and after training,
    where the MLflow run is, and the URLs of the run, of its experiment's charts and, in a sweep, of the parent
    run (`mlflow_ui.comparison_links`)."""
    lines = []
    warm = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("warmstart/")}
    if "reviewer" in warm:
        met = warm.get("floors_met_at")
        when = "" if not cfg.warmstart.role_floors else (
            f", every floor held at step {int(met)}" if met is not None else
            ", not every floor held (warmstart.role_floors: see its validation_checks in metrics.json)")
        lines.append(f"warm start, {int(warm.get('steps', 0))} steps{when}; on held-out problems: "
                     f"{readiness.describe(warm)}")
    for key in sorted(k for k in final if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2):
        suite = key.split("/")[1]
        n = int(final.get(f"eval/{suite}/n_tasks", 0))
        before = tracking.warm_start_accuracy(final, suite)  # measured on the same problems, or None
        start = f"warm start {100 * before:.1f}% -> " if before is not None else ""
        lines.append(f"held-out accuracy {suite} ({n} problems, greedy): {start}trained {100 * final[key]:.1f}%")
    uri = cfg.logger.tracking_uri
    served = uri.startswith(("http://", "https://"))
    lines.append(f"MLflow run {final.get('mlflow_run_id')} (experiment {cfg.logger.experiment_name!r}) in {uri}"
                 + ("" if served else f"; browse with: mlflow ui --backend-store-uri {uri}"))
    labels = {"run": "this run", "charts": "compare runs (held-out accuracy and reward first)",
              "sweep": "the sweep (its report)"}
    lines += [f"  {labels[k]}: {url}" for k, url in (links or {}).items()]
    return "\n".join(lines)


def resumed_run_id(ckpt: str) -> str | None:
    """The MLflow run a checkpoint belongs to (from `run.json` beside it, else from the checkpoint)."""
    info = read_run_info(Path(ckpt).parent)
    if "mlflow_run_id" in info:
        return info["mlflow_run_id"]
    return torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("alive", {}).get("mlflow_run_id")


def objective(final: dict[str, Any]) -> float:
    """What a sweeper maximizes: mean greedy accuracy over the evaluated validation suites
    (`eval/<suite>_validation/accuracy`), else the last train reward. Never a held-out suite: a sweep that
    tuned on the suites it reports would report its own selection."""
    acc = [float(v) for k, v in final.items()
           if k.startswith("eval/") and k.endswith("/accuracy") and k.split("/")[1].endswith("_validation")]
    if not acc and any(k.startswith("eval/") for k in final):
        log.debug("objective: no validation suite was evaluated (benchmark.eval_suites); the sweeper gets the "
                    "last train/reward_mean, never held-out accuracy")
    return sum(acc) / len(acc) if acc else float(final.get("train/reward_mean", 0.0))


def save_policy(module: AliveModule, path: Path) -> None:
    """Adapters (or the full model), tokenizer and the run's resolved config (`alive_config.yaml`, so that
    `model.init_from`, `alive-exp sample` and `alive-exp evaluate` can rebuild the policy from the folder alone);
    loadable with from_pretrained / PeftModel."""
    module.model.save_pretrained(path)
    module.tokenizer.save_pretrained(path)
    (Path(path) / POLICY_CONFIG).write_text(OmegaConf.to_yaml(module.cfg, resolve=True))


def sweep_parent_id(cfg: DictConfig) -> tuple[str | None, str | None]:
    """Under a Hydra multirun, (the parent run shared by every job of the sweep, the sweep folder)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None, None
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    lc = cfg.logger
    parent = tracking.sweep_parent(lc.tracking_uri, hc.sweep.dir, lc.experiment_name, lc.artifact_location,
                                   list(hc.overrides.task))
    return parent, hc.sweep.dir
