"""`alive-exp`: the commands around training: report, evaluate a checkpoint or policy, sample a policy, prepare data.

    alive-exp report [--tracking-uri URI] [--experiment NAME] [--parent RUN_ID] [--out DIR]
    alive-exp evaluate CHECKPOINT_OR_RUN_DIR [key=value ...] [--out DIR] [--log]
    alive-exp sample POLICY TEXT [TEXT ...] [--role solver|reviewer|refiner|constructor] [--reference R]
                     [--solution S] [--critique C]
    alive-exp prepare [--params params.yaml] [key=value | group=option ...]

Training itself is `python train.py ...` (Hydra); these commands read what it leaves behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("alive_exp")


# -- configs ----------------------------------------------------------------------------------------
def project_root() -> Path:
    """$ALIVE_ROOT, else the checkout this package runs from (it holds conf/), else the working directory."""
    if os.environ.get("ALIVE_ROOT"):
        return Path(os.environ["ALIVE_ROOT"])
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "conf" / "config.yaml").exists() else Path.cwd()


def compose(overrides: list[str]):
    """The config `python train.py <overrides>` would run with (hydra node left out)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from alive_exp.config import register_configs

    os.environ.setdefault("ALIVE_ROOT", str(project_root()))
    register_configs()
    with initialize_config_dir(str(project_root() / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def load_config(path: Path, overrides: list[str] | None = None):
    """A saved config (a run's config.yaml or .hydra/config.yaml, DVC's params.yaml), checked against the
    schema, with value overrides applied and interpolations resolved."""
    from omegaconf import OmegaConf

    from alive_exp.config import Config

    os.environ.setdefault("ALIVE_ROOT", str(project_root()))  # what train.py sets for ${paths.root_dir}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    except Exception as exc:  # omegaconf's errors name the key; add the file
        raise SystemExit(f"{path}: not a config of this project: {exc}") from exc
    apply_overrides(cfg, overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def apply_overrides(cfg, overrides: list[str]) -> None:
    """Hydra-syntax value overrides (`benchmark.eval_size=16`, `+logger.tags.note=x`) on a composed config.

    Config-group choices (`reward=verbal`) are refused: a saved config is already composed, and a different
    model or reward would not match the checkpoint it belongs to.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf, open_dict

    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if o.is_sweep_override() or o.is_delete():
            raise SystemExit(f"override {o.input_line!r}: only key=value or +key=value are supported here")
        current = OmegaConf.select(cfg, key, default=None)
        value = o.value()
        if isinstance(current, DictConfig) and not isinstance(value, dict):
            raise SystemExit(f"override {o.input_line!r} picks a config group; a saved config is already composed. "
                             f"Set values instead, e.g. {key}.<field>=...")
        if o.is_add():
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, merge=True)
        else:
            if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise SystemExit(f"override {o.input_line!r}: no key {key!r} in the config (use +{key}=... to add)")
            OmegaConf.update(cfg, key, value, merge=True)


# -- report -----------------------------------------------------------------------------------------
def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def cmd_report(args: argparse.Namespace) -> int:
    from alive_exp.report import ReportError, run_report

    uri = args.tracking_uri or default_tracking_uri()
    out = args.out or Path("outputs") / "report" / (args.experiment + (f"-{args.parent[:8]}" if args.parent else ""))
    try:
        folder, data, run_id = run_report(uri, args.experiment, args.parent, out, log_back=not args.no_log)
    except ReportError as exc:
        print(f"alive-exp report: {exc} (tracking URI {uri})", file=sys.stderr)
        return 1
    print(f"report over {len(data['runs'])} runs written to {folder / 'report.md'}")
    for note in data["notes"]:
        print(f"  note: {note}")
    if run_id:
        print(f"logged to MLflow run {run_id} as artifacts report/")
    return 0


# -- evaluate ---------------------------------------------------------------------------------------
def find_checkpoint(target: Path) -> tuple[Path, Path]:
    """(checkpoint, run output dir) for a .ckpt file or a run's output dir."""
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return target, run_dir
    ckpt = target / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise SystemExit(f"{target}: no checkpoints/last.ckpt; pass a .ckpt file or the output dir of a training run")
    return ckpt, target


def run_config_path(run_dir: Path) -> Path:
    """The resolved config.yaml beside the checkpoint (DVC pipeline), else Hydra's own copy, else the one a
    saved policy folder carries."""
    from alive_exp.config import POLICY_CONFIG

    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml", run_dir / "policy" / POLICY_CONFIG):
        if path.exists():
            return path
    raise SystemExit(f"{run_dir}: no config.yaml or .hydra/config.yaml; cannot tell which model and settings "
                     "the checkpoint was trained with")


def is_policy(target: Path) -> bool:
    """A run's `policy/` folder: its adapters (a LoRA run) or its full model (a full fine-tune)."""
    from alive_exp.models import policy_adapters

    return target.is_dir() and (bool(policy_adapters(target)) or (target.name == "policy"
                                                                   and (target / "config.json").exists()))


def policy_config(policy: Path) -> Path:
    """The config a policy folder (or a warm start) was trained with: its own copy, else its run's."""
    from alive_exp.config import POLICY_CONFIG

    own = policy / POLICY_CONFIG
    if not own.exists() and (policy / "metrics.json").exists():
        raise SystemExit(f"{policy}: a warm start built before warm starts saved their config; delete the folder "
                         f"and run the experiment again to rebuild it (the same weights, now with {POLICY_CONFIG})")
    return own if own.exists() else run_config_path(policy.resolve().parent)


def load_policy_config(policy: Path, overrides: list[str] | None = None):
    """The config that rebuilds a policy folder (or a warm start) from its weights alone, overrides applied."""
    return load_config(policy_config(policy), [f"model.init_from={policy.resolve()}", "warmstart.enabled=false",
                                               *(overrides or [])])


def evaluate_policy(target: Path, overrides: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate a run's saved policy (`<run>/policy`) with the config its run used."""
    import torch

    from alive_exp.train import build

    run_dir = target.resolve().parent
    cfg = load_policy_config(target, overrides)
    module = build(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    info = torch.load(ckpt, map_location="cpu", weights_only=False).get("alive", {}) if ckpt.exists() else {}
    module.alive_step = int(info.get("alive_step", cfg.trainer.max_steps))
    return module.evaluator(module), {"checkpoint": str(target), "run_dir": str(run_dir), "alive_step": module.alive_step,
                                      "mlflow_run_id": info.get("mlflow_run_id"), "tracking_uri": cfg.logger.tracking_uri}


def evaluate_checkpoint(target: Path, overrides: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """Rebuild the run's module, load the checkpoint's (adapter) weights, run the Evaluator; a policy folder
    is evaluated as saved."""
    import torch

    from alive_exp.train import build

    if is_policy(target):
        return evaluate_policy(target, overrides)
    ckpt, run_dir = find_checkpoint(target)
    cfg = load_config(run_config_path(run_dir), overrides)
    module = build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    result = module.load_state_dict(state["state_dict"], strict=False)  # trainable weights only
    if result.unexpected_keys:
        raise SystemExit(f"{ckpt} does not fit the model built from its config: unexpected weights such as "
                         f"{result.unexpected_keys[:3]}")
    info = state.get("alive", {})
    module.alive_step = int(info.get("alive_step", 0))
    scores = module.evaluator(module)
    return scores, {"checkpoint": str(ckpt), "run_dir": str(run_dir), "alive_step": module.alive_step,
                    "mlflow_run_id": info.get("mlflow_run_id"), "tracking_uri": cfg.logger.tracking_uri}


def print_scores(scores: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    print(title)
    table = Table()
    for col in ("benchmark", "metric", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for key in sorted(scores):
        _, bench, metric = key.split("/", 2)
        table.add_row(bench, metric, f"{scores[key]:.4f}")
    Console().print(table)


def log_scores(scores: dict[str, float], meta: dict[str, Any], path: Path) -> None:
    """Into the training run that wrote the checkpoint, at its ALIVE step, where the report reads them."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if not meta["mlflow_run_id"]:
        raise SystemExit(f"{meta['checkpoint']} records no MLflow run; evaluate without --log")
    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, meta["alive_step"]) for k, v in scores.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(meta["mlflow_run_id"], metrics=metrics[i:i + 500])
    client.log_artifact(meta["mlflow_run_id"], str(path), artifact_path="evaluate")


def cmd_evaluate(args: argparse.Namespace) -> int:
    scores, meta = evaluate_checkpoint(Path(args.target), args.overrides)
    out = Path(args.out) if args.out else Path(meta["run_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval_metrics.json"
    path.write_text(json.dumps({"step": meta["alive_step"], **scores}, indent=1, sort_keys=True) + "\n")
    print_scores(scores, f"evaluated {meta['checkpoint']} (ALIVE step {meta['alive_step']})")
    print(f"wrote {path}")
    if args.log:
        log_scores(scores, meta, path)
        print(f"logged to MLflow run {meta['mlflow_run_id']} at step {meta['alive_step']}")
    return 0


# -- sample -----------------------------------------------------------------------------------------
def sample_policy(policy: Path, role: str, texts: list[str], *, reference: str | None = None,
                  solution: str | None = None, critique: str | None = None, max_new_tokens: int | None = None,
                  overrides: list[str] | None = None) -> list[str]:
    """What a trained policy's role writes (greedy) for each text: a task for the solver, a document for the
    constructor, a task with `solution` for the reviewer (with `reference`: the reviewer that sees it; without:
    the blind self-critique), a task with `solution` and `critique` for the refiner. The run's own config (beside
    the policy folder) supplies the model, adapters and prompts."""
    from alive_exp.train import build

    if role not in ("constructor", "solver", "reviewer", "refiner"):
        raise SystemExit(f"--role {role!r}: use constructor, solver, reviewer or refiner")
    if role in ("reviewer", "refiner") and solution is None:
        raise SystemExit(f"--role {role} needs --solution")
    if role == "refiner" and critique is None:
        raise SystemExit("--role refiner needs --critique (what the refiner reads: no reference in it)")
    cfg = load_policy_config(policy, overrides)
    module = build(cfg, evaluate=False)
    module.use_adapter("solver" if role == "refiner" else role)
    template = "reviewer_blind" if role == "reviewer" and reference is None else role
    fields = {"constructor": lambda t: {"document": t}, "solver": lambda t: {"task": t},
              "reviewer": lambda t: {"task": t, "reference": reference, "solution": solution},
              "reviewer_blind": lambda t: {"task": t, "solution": solution},
              "refiner": lambda t: {"task": t, "solution": solution, "critique": critique}}[template]
    prompts = [module.step_impl.templates.render(template, **fields(t)) for t in texts]
    g = cfg.trainer.generation
    budget = max_new_tokens or {"constructor": g.constructor_tokens, "solver": g.solver_tokens,
                                "reviewer": g.reviewer_tokens, "refiner": g.solver_tokens}[role]
    return [c[0].text for c in module.generator.generate(prompts, n=1, max_new_tokens=budget, temperature=0.0)]


def cmd_sample(args: argparse.Namespace) -> int:
    outs = sample_policy(Path(args.policy), args.role, args.texts, reference=args.reference, solution=args.solution,
                         critique=args.critique, max_new_tokens=args.max_new_tokens, overrides=args.overrides)
    for text, out in zip(args.texts, outs):
        print(f"--- {args.role} on {text!r}\n{out}")
    return 0


# -- prepare ----------------------------------------------------------------------------------------
def prepare(cfg, out: Path | None = None) -> dict[str, Any]:
    """The tiny model and tokenizer (cached under data_dir/models), its warm start when enabled, and a JSONL
    snapshot of the training documents and evaluation tasks. Training regenerates them from the seed; the snapshot lets a pipeline
    see when a domain's data changes."""
    from dataclasses import asdict

    from alive_exp import domains, models
    from alive_exp.train import domain_options

    data_dir = Path(cfg.paths.data_dir)
    out = out or data_dir
    corpus_domains = sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains})
    summary: dict[str, Any] = {"data_dir": str(data_dir)}
    if cfg.model.source == "tiny" and not cfg.model.init_from:
        summary["model"] = str(models.build_tiny(cfg.model, data_dir, corpus_domains))
        if cfg.warmstart.enabled:  # the same condition as alive_exp.train.build, which then finds it cached
            from alive_exp.warmstart import build_warmstart

            summary["warmstart"] = str(build_warmstart(cfg, progress=False))
    options = domain_options(cfg)
    train = domains.get(cfg.benchmark.domain, **options[cfg.benchmark.domain])
    files = {f"documents/{train.name}-train.jsonl": train.documents("train", cfg.benchmark.train_docs, cfg.seed)}
    for name in cfg.benchmark.eval_domains:
        for suite, make in domains.get(name, **options.get(name, {})).benchmarks().items():
            if not cfg.benchmark.eval_suites or suite in cfg.benchmark.eval_suites:
                try:
                    files[f"benchmarks/{suite}.jsonl"] = make(cfg.benchmark.eval_size, cfg.seed)
                except Exception as exc:  # a hub suite offline: the Evaluator skips it too
                    log.warning("skipping %s: %s", suite, exc)
    for rel, items in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(asdict(x), default=str) + "\n" for x in items))
        summary[rel] = len(items)
    return summary


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.params:
        cfg = load_config(Path(args.params), args.overrides)
    else:
        from omegaconf import OmegaConf

        cfg = compose(args.overrides)
        OmegaConf.resolve(cfg)
    summary = prepare(cfg, Path(args.out) if args.out else None)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


# -- entry ------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alive-exp", description="Reports, checkpoint evaluation and data for ALIVE.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="tables and plots per reward mode from MLflow, logged back as artifacts")
    r.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    r.add_argument("--experiment", default="alive", help="MLflow experiment name (default: alive)")
    r.add_argument("--parent", help="only the children of this sweep run; the report is logged to it")
    r.add_argument("--out", help="folder for report.md, report.json and PNGs (default: outputs/report/<experiment>)")
    r.add_argument("--no-log", action="store_true", help="do not log the report back to MLflow")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint or a saved policy with the config its run used")
    e.add_argument("target", metavar="CHECKPOINT_OR_RUN_DIR", help="a last.ckpt, a training run's output dir, or its policy/")
    e.add_argument("overrides", nargs="*", help="value overrides, e.g. benchmark.eval_size=200")
    e.add_argument("--out", help="folder for eval_metrics.json (default: the run dir)")
    e.add_argument("--log", action="store_true", help="also log the metrics to the run's MLflow run")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="what a trained policy's role writes (greedy), e.g. the solver on a task")
    s.add_argument("policy", help="a training run's policy/ folder, or a warm start (data/warmstart/<domain>-<key>)")
    s.add_argument("texts", nargs="+", metavar="TEXT", help="a task (solver, reviewer) or a document (constructor)")
    s.add_argument("--role", default="solver", help="constructor, solver, reviewer or refiner (default: solver)")
    s.add_argument("--reference", help="the reviewer's reference answer (without it: the blind reviewer)")
    s.add_argument("--solution", help="the solution the reviewer judges or the refiner revises")
    s.add_argument("--critique", help="the critique the refiner reads")
    s.add_argument("--max-new-tokens", type=int, help="default: the run's token budget for the role")
    s.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config value override (repeatable)")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("prepare", help="build the tiny model and snapshot documents and benchmark tasks")
    d.add_argument("--params", help="a composed config (DVC's params.yaml, a run's config.yaml)")
    d.add_argument("--out", help="folder for the JSONL snapshot (default: paths.data_dir)")
    d.add_argument("overrides", nargs="*", help="Hydra overrides as for train.py (without --params)")
    d.set_defaults(func=cmd_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
