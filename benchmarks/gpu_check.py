"""GPU check: short ALIVE runs on a randomly initialised model of Qwen2.5-0.5B's shape, in bf16 on one GPU
(`hardware=gpu`), each measurement in its own process under its own deadline, all of them within `--budget-s`
(default 330 s: the whole check fits in 6 minutes with start-up):

1. `steps_static`: ALIVE steps with the static KV cache (compiled decode step): step time, rollout tokens/s
   (all generation phases), update time, peak GPU memory;
2. `steps_dynamic`: the same with the dynamic cache;
3. `rollout_vs_peft`: the project's rollout path (`rollout.Generator`: the active adapter merged into a plain
   copy, the run's cache) against a plain PEFT `generate` loop on the same solver prompts, same sampling,
   same token budget: tokens/s of each and the ratio.

    python benchmarks/gpu_check.py                        # all three, hardware=gpu, bf16
    python benchmarks/gpu_check.py --only rollout_vs_peft  # one of them
    python benchmarks/gpu_check.py trainer.solutions_per_task=4   # any Hydra override of every run
    python benchmarks/gpu_check.py --tiny                 # CPU dry run: same path, a toy shape (about a minute)

Every measurement writes `<out>/<name>.json` as it goes (after each step or timed call), so a run cut short
still leaves what it measured; `<out>` is `$OUT/gpu_check` when `$OUT` is set (the device machine), else
`gpu_check_out/`. Compilation is capped (`torch._dynamo` recompiles at most COMPILE_LIMIT times per function,
then runs eager), and a step is not started when the deadline would not leave time for it.

Needs no registry or hub access: the weights are random (throughput does not depend on them) and the
tokenizer is the project's tiny one, so the model's vocabulary (151936 rows, as Qwen2.5's) is larger than
the tokenizer's; logits of ids beyond the tokenizer are set to the lowest value at the LM head, which keeps
Qwen2.5-0.5B's full embedding and LM-head cost. A random model writes until its token budget, so every
generation is worst-case length. The first step (and the first call of each rollout path) includes warm-up
(CUDA context, compilation); summaries are over what follows it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from alive_exp import models  # noqa: E402
from alive_exp.config import register_configs  # noqa: E402
from alive_exp.data import StepIndices  # noqa: E402
from alive_exp.domains import Document  # noqa: E402
from alive_exp.domains.math import MathDomain, working_lines  # noqa: E402
from alive_exp.train import build  # noqa: E402

log = logging.getLogger("gpu_check")

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6)
TOY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
           intermediate_size=128, vocab_size=None, max_position_embeddings=1024, rope_theta=1e6)
# one ALIVE step as the paper shapes it, shortened: 8 documents, M=2 spans, 8 tasks, N=8 solutions, verbal
WORKLOAD = ["+experiment=math", "warmstart.enabled=false", "reward=verbal", "hardware=gpu", "model.dtype=bfloat16",
            "benchmark.train_docs=500", "trainer.docs_per_step=8", "trainer.spans_per_doc=2",
            "trainer.max_tasks_per_step=8", "trainer.solutions_per_task=8", "trainer.generation.constructor_tokens=32",
            "trainer.generation.solver_tokens=256", "trainer.generation.reviewer_tokens=128",
            "trainer.generation.batch_size=64", "trainer.micro_batch_size=16", "trainer.eval_at_end=false",
            "trainer.progress_bar=false", "trainer.checkpoint_every=0"]
TINY_WORKLOAD = ["hardware=cpu", "hardware.torch_threads=1", "model.dtype=float32", "benchmark.train_docs=50",
                 "trainer.docs_per_step=2", "trainer.max_tasks_per_step=2", "trainer.solutions_per_task=2",
                 "trainer.generation.constructor_tokens=8", "trainer.generation.solver_tokens=16",
                 "trainer.generation.reviewer_tokens=8", "trainer.micro_batch_size=8"]
MEASUREMENTS = {"steps_static": ["hardware.static_cache=true"], "steps_dynamic": ["hardware.static_cache=false"],
                "rollout_vs_peft": []}
SHARE = {"steps_static": 0.4, "steps_dynamic": 0.3, "rollout_vs_peft": 0.3}  # of the budget left after the build
COMPILE_LIMIT = 8
ROLLOUT_PROMPTS = 64
GENERATION_PHASES = ("construct", "solve", "review", "refine")


def arithmetic_documents(self: MathDomain, source: str, size: int, seed: int) -> list[Document]:
    """reasoning-gym's basic_arithmetic shape (2-3 terms, 1-2 digits, one line per operation) without it."""
    rng = random.Random(seed)
    docs = []
    for i in range(size):
        terms = [str(rng.randint(1, 99)) for _ in range(rng.randint(2, 3))]
        expr = terms[0] + "".join(f" {rng.choice('+-*')} {t}" for t in terms[1:])
        steps = working_lines(expr)
        text = "\n".join([f"Question: Calculate {expr}.", *steps, f"{self.answer_prefix} {steps[-1].split('= ')[-1]}"])
        docs.append(Document(id=f"{source}-{seed}-{i}", text=text, domain=self.name, meta={"source": source}))
    return docs


def compose_cfg(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def build_model(cfg: DictConfig, folder: Path, shape: dict) -> Path:
    """Tiny tokenizer + a randomly initialised Qwen2 of `shape` in cfg.model.dtype, saved as a model folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").exists():
        return folder
    tiny = models.build_tiny(cfg.model, cfg.paths.data_dir, sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains}))
    tok = models.load_tokenizer(str(tiny))
    vocab = shape["vocab_size"] or len(tok) + 64  # the toy keeps a few ids beyond the tokenizer, as the real one
    config = Qwen2Config(**{**shape, "vocab_size": vocab}, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, cfg.model.dtype))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the measurements run in their own processes
    return folder


class PrintStep(pl.Callback):
    """One line per finished step (a slow run shows where it is), the figures so far written to `record`,
    and a stop when the deadline would not leave time for another step."""

    def __init__(self, record=None, deadline: float | None = None, info: dict | None = None) -> None:
        self.record, self.deadline, self.info = record, deadline, info

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        m = module.history[-1]
        print(f"step {len(module.history)}: " + " ".join(f"{k}={v:.2f}" for k, v in m.items()
                                                         if k.startswith(("time/", "tokens/"))), flush=True)
        if self.record is not None:
            self.record(module.history, peak_gib(), self.info, False)
        longest = max(h["time/step"] for h in module.history[1:] or module.history)
        if self.deadline is not None and time.perf_counter() + longest > self.deadline:
            print(f"deadline: stopping after {len(module.history)} steps", flush=True)
            trainer.should_stop = True


def peak_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # resident set size (Linux reports KiB)


def cap_compilation() -> None:
    """At most COMPILE_LIMIT compilations per function (new shapes beyond that run eager)."""
    dyn = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, COMPILE_LIMIT)


def mask_unknown_ids(model, known: int) -> None:
    """Logits of ids the tokenizer lacks become -inf at the LM head: never sampled, no probability mass.

    (Not `generation_config.suppress_tokens`: its processor runs `isin` over ~150k ids at every token,
    which costs more than the model.)
    """
    def hook(_module, _inputs, logits):
        logits[..., known:] = torch.finfo(logits.dtype).min  # finite: -inf turns into nan in the warpers; the
        # linear layer's backward does not need its output, so writing into it is safe
        return logits

    model.get_output_embeddings().register_forward_hook(hook)


def build_module(cfg: DictConfig):
    module = build(cfg, evaluate=False)
    generation_copy = module.generator.merged.plain if module.generator.merged is not None else None
    for model in filter(None, (module.model, generation_copy)):
        mask_unknown_ids(model, len(module.tokenizer))
    info = {"parameters_M": sum(p.numel() for p in module.model.parameters()) / 1e6,
            "trainable_M": sum(p.numel() for n, p in module.model.named_parameters() if ".lora_" in n) / 1e6}
    return module, info


def run_steps(cfg: DictConfig, steps: int, record=None, deadline: float | None = None):
    """ALIVE steps through Lightning as a training run takes them, without tracking; (history, peak GiB, info)."""
    module, info = build_module(cfg)
    trainer = pl.Trainer(accelerator=cfg.hardware.accelerator, devices=1, precision=cfg.hardware.precision,
                         logger=False, callbacks=[PrintStep(record, deadline, info)],
                         max_epochs=1, max_steps=-1, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, num_sanity_val_steps=0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, torch.utils.data.DataLoader(StepIndices(module, steps), batch_size=None))
    return module.history, peak_gib(), info


def _generated(rows: list[list[int]], stop: set[int], pad: int) -> int:
    """Tokens a batch generated: each row up to and including its first stop token, padding excluded."""
    total = 0
    for toks in rows:
        cut = next((j for j, t in enumerate(toks) if t in stop), None)
        total += cut + 1 if cut is not None else sum(t != pad for t in toks)
    return total


def rollout_vs_peft(cfg: DictConfig, out: Path, deadline: float) -> dict:
    """Solver completions for the same prompts by the project's rollout path and by a plain PEFT `generate`
    loop (the role's adapter active, unmerged, dynamic cache): a warm-up call each, then timed calls,
    alternating, while the deadline allows; tokens/s of each and the ratio."""
    module, info = build_module(cfg)
    device = "cuda" if cfg.hardware.accelerator == "gpu" else "cpu"
    module.to(device)
    module.use_adapter("solver")
    step = module.step_impl
    tasks = step.domain.heldout_tasks(ROLLOUT_PROMPTS, 0)
    prompts = [step.templates.render("solver", task=t.prompt) for t in tasks]
    gen, tok = module.generator, module.tokenizer
    budget, temperature = int(cfg.trainer.generation.solver_tokens), 0.7
    batch = min(len(prompts), int(cfg.trainer.generation.batch_size))
    prompts = prompts[:batch]

    def ours() -> int:
        done = gen.generate(prompts, n=1, max_new_tokens=budget, temperature=temperature, seed=0)
        return sum(len(c[0].completion_ids) for c in done)

    def plain() -> int:
        ids = [gen.encode_prompt(p) for p in prompts]
        width, pad = max(map(len, ids)), tok.pad_token_id
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
        a = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        model = module.model
        model.eval()
        with torch.no_grad():
            seqs = model.generate(input_ids=x, attention_mask=a, max_new_tokens=budget, do_sample=True,
                                  temperature=temperature, top_p=1.0, top_k=0, pad_token_id=pad,
                                  eos_token_id=gen.eos_ids)
        return _generated(seqs[:, width:].tolist(), set(gen.eos_ids), pad)

    result = {"name": "rollout_vs_peft", "info": info, "prompts": batch, "max_new_tokens": budget,
              "static_cache": bool(cfg.hardware.static_cache), "calls": {"ours": [], "peft": []},
              "warmup_s": {}, "complete": False}
    path = out / "rollout_vs_peft.json"
    sides = {"ours": ours, "peft": plain}
    for name, fn in sides.items():  # first calls: compilation, allocator, kernels
        t0 = time.perf_counter()
        fn()
        result["warmup_s"][name] = time.perf_counter() - t0
        _sync()
        path.write_text(json.dumps(result, indent=1))
    longest = max(result["warmup_s"].values())
    for rep in range(3):
        for name, fn in sides.items():
            if time.perf_counter() + longest > deadline:
                break
            _sync()
            t0 = time.perf_counter()
            tokens = fn()
            _sync()
            seconds = time.perf_counter() - t0
            result["calls"][name].append({"tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds})
            print(f"rollout {name} call {rep + 1}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tok/s",
                  flush=True)
            path.write_text(json.dumps(result, indent=1))
    rates = {k: sorted(c["tok_per_s"] for c in v) for k, v in result["calls"].items()}
    if all(rates.values()):
        result["tok_per_s"] = {k: v[len(v) // 2] for k, v in rates.items()}
        result["ratio_ours_over_peft"] = result["tok_per_s"]["ours"] / result["tok_per_s"]["peft"]
    result["peak_gib"] = peak_gib()
    result["complete"] = True
    path.write_text(json.dumps(result, indent=1))
    return result


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    out = []
    for i, m in enumerate(history, 1):
        tokens = sum(m.get(f"tokens/{k}", 0.0) for k in ("constructor", "solver", "reviewer", "refine"))
        seconds = sum(m.get(f"time/{p}", 0.0) for p in GENERATION_PHASES)
        out.append({"step": i, "step_s": m["time/step"], "rollout_tokens": tokens, "rollout_s": seconds,
                    "rollout_tok_per_s": tokens / seconds if seconds else 0.0, "update_s": m.get("time/update", 0.0)})
    return out


def table(per_step: list[dict[str, float]], peak: float, info: dict, device: str, overrides: list[str]) -> str:
    steady = per_step[1:] or per_step
    mean = lambda k: sum(r[k] for r in steady) / len(steady)  # noqa: E731
    lines = [f"device: {device}", f"overrides: {' '.join(overrides)}",
             f"model: {info['parameters_M']:.1f}M parameters ({info['trainable_M']:.2f}M in LoRA adapters)", "",
             "| step | step s | rollout tokens | rollout s | rollout tok/s | update s |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['step_s']:.2f} | {r['rollout_tokens']:.0f} | {r['rollout_s']:.2f} | "
              f"{r['rollout_tok_per_s']:.0f} | {r['update_s']:.2f} |" for r in per_step]
    lines += ["", f"| summary (steps {steady[0]['step']}-{steady[-1]['step']}) | value |", "|---|---:|",
              f"| step time, s | {mean('step_s'):.2f} |", f"| rollout tokens/s | {mean('rollout_tok_per_s'):.0f} |",
              f"| update time, s | {mean('update_s'):.2f} |",
              f"| peak memory, GiB ({'process RSS' if device == 'cpu' else 'GPU, allocated'}) | {peak:.2f} |"]
    return "\n".join(lines)


def output_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else Path("gpu_check_out")


def child(args, cfg: DictConfig, out: Path) -> None:
    """One measurement, in its own process: writes `<out>/<name>.json` as it goes."""
    cap_compilation()
    deadline = time.perf_counter() + args.deadline_s
    device = torch.cuda.get_device_name() if cfg.hardware.accelerator == "gpu" else "cpu"
    if args.child == "rollout_vs_peft":
        r = rollout_vs_peft(cfg, out, deadline)
        r["device"] = device
        (out / "rollout_vs_peft.json").write_text(json.dumps(r, indent=1))
        return
    path = out / f"{args.child}.json"

    def record(history, peak, info, complete):
        path.write_text(json.dumps({"name": args.child, "device": device, "info": info, "peak_gib": peak,
                                    "static_cache": bool(cfg.hardware.static_cache), "steps": rows(history),
                                    "complete": complete}, indent=1))

    history, peak, info = run_steps(cfg, args.steps or (2 if args.tiny else 4), record, deadline)
    record(history, peak, info, True)
    print(table(rows(history), peak, info, device, [args.child]))


def summary(out: Path, names: list[str], status: dict[str, str]) -> str:
    lines = ["| measurement | status | steps | step s | rollout tok/s | update s | peak GiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in names:
        f = out / f"{name}.json"
        if not f.exists():
            lines.append(f"| {name} | {status.get(name, 'not run')} | | | | | |")
            continue
        r = json.loads(f.read_text())
        if name == "rollout_vs_peft":
            continue
        steady = r["steps"][1:] or r["steps"]
        mean = (lambda k: sum(x[k] for x in steady) / len(steady)) if steady else (lambda k: float("nan"))
        lines.append(f"| {name} | {status.get(name, '')} | {len(r['steps'])} | {mean('step_s'):.2f} | "
                     f"{mean('rollout_tok_per_s'):.0f} | {mean('update_s'):.2f} | {r['peak_gib']:.2f} |")
    f = out / "rollout_vs_peft.json"
    if "rollout_vs_peft" in names and f.exists():
        r = json.loads(f.read_text())
        lines += ["", "| rollout path | calls | tok/s (median) |", "|---|---:|---:|"]
        for side in ("ours", "peft"):
            calls = r["calls"][side]
            med = sorted(c["tok_per_s"] for c in calls)[len(calls) // 2] if calls else float("nan")
            lines.append(f"| {side} | {len(calls)} | {med:.0f} |")
        if "ratio_ours_over_peft" in r:
            lines.append(f"\nours / plain PEFT generate: {r['ratio_ours_over_peft']:.2f}x "
                         f"({r['prompts']} prompts, {r['max_new_tokens']} new tokens, static cache "
                         f"{r['static_cache']}; status {status.get('rollout_vs_peft', '')})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU dry run with a toy shape and a tiny workload")
    p.add_argument("--steps", type=int, default=None, help="ALIVE steps per step measurement, at most (default 4, "
                                                           "--tiny 2); fewer when the deadline comes first")
    p.add_argument("--only", nargs="+", choices=list(MEASUREMENTS), help="run only these measurements")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check (default 330, --tiny 240)")
    p.add_argument("--root", default=None, help="folder for data and the model (default: a temporary one)")
    p.add_argument("--out", default=None, help="folder for the figures (default $OUT/gpu_check or gpu_check_out/)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--stacks-every", type=float, default=0, help="dump every thread's stack every S seconds")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline-s", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of every run, e.g. trainer.solutions_per_task=4")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    if args.stacks_every:
        import faulthandler

        faulthandler.dump_traceback_later(args.stacks_every, repeat=True)
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        MathDomain._generate = arithmetic_documents
    root = Path(args.root or tempfile.mkdtemp(prefix="gpu_check-"))
    out = output_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = MEASUREMENTS.get(args.child, [])
    overrides = [*WORKLOAD, *(TINY_WORKLOAD if args.tiny else []), f"paths.root_dir={root}", *extra, *args.overrides]
    cfg = compose_cfg(overrides)
    shape = TOY if args.tiny else QWEN25_05B
    folder = root / "models" / f"{'toy' if args.tiny else 'qwen2.5-0.5b'}-shape-random-{cfg.model.dtype}"
    OmegaConf.update(cfg, "model.init_from", str(build_model(cfg, folder, shape)))
    if args.child:
        child(args, cfg, out)
        return
    budget = args.budget_s or (240.0 if args.tiny else 330.0)
    names = args.only or list(MEASUREMENTS)
    status: dict[str, str] = {}
    for i, name in enumerate(names):
        left = budget - (time.perf_counter() - start)
        share = SHARE[name] / sum(SHARE[n] for n in names[i:])
        allowed = left * share
        if allowed < 20:
            status[name] = "skipped: no time left"
            continue
        cmd = [sys.executable, __file__, "--child", name, "--deadline-s", str(allowed - 10), "--root", str(root),
               "--out", str(out), *(["--tiny"] if args.tiny else []), *(["--steps", str(args.steps)] if args.steps else []),
               *args.overrides]
        print(f"== {name} (at most {allowed:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=allowed).returncode
            status[name] = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status[name] = "cut at its deadline"
        print(f"== {name}: {status[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    text = summary(out, names, status)
    device = torch.cuda.get_device_name() if cfg.hardware.accelerator == "gpu" else "cpu"
    print(f"\ndevice: {device}; overrides: {' '.join(args.overrides) or '(none)'}\n{text}")
    print(f"\nwall time {time.perf_counter() - start:.1f} s; figures in {out}")
    (out / "summary.md").write_text(f"device: {device}\n\n{text}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({n: json.loads((out / f"{n}.json").read_text())
                                               for n in names if (out / f"{n}.json").exists()} | {"status": status},
                                              indent=1))


if __name__ == "__main__":
    main()
