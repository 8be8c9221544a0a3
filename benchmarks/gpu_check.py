"""GPU check: a short ALIVE run on a randomly initialised model of Qwen2.5-0.5B's shape, in bf16 on one GPU
(`hardware=gpu`); prints rollout tokens/s, step time and peak memory per step and in a final table.

    python benchmarks/gpu_check.py                               # hardware=gpu, bf16, static KV cache, 4 steps
    python benchmarks/gpu_check.py hardware.static_cache=false   # any Hydra override of the run
    python benchmarks/gpu_check.py --tiny                        # CPU smoke test: same path, a toy shape

Needs no registry or hub access: the weights are random (throughput does not depend on them) and the
tokenizer is the project's tiny one, so the model's vocabulary (151936 rows, as Qwen2.5's) is larger than
the tokenizer's; logits of ids beyond the tokenizer are set to -inf at the LM head, which keeps
Qwen2.5-0.5B's full embedding and LM-head cost. A random model writes until its token budget, so every generation is
worst-case length. Documents come from reasoning-gym when installed, else from an arithmetic generator
of the same shape (the GPU image lacks reasoning-gym). The first step includes warm-up (CUDA context,
compilation of the static-cache decode step); the summary is over the steps after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
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
    return folder


class PrintStep(pl.Callback):
    """One line per finished step, so a slow run shows where it is."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        m = module.history[-1]
        print(f"step {len(module.history)}: " + " ".join(f"{k}={v:.2f}" for k, v in m.items()
                                                         if k.startswith(("time/", "tokens/"))), flush=True)


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


def run_steps(cfg: DictConfig, steps: int) -> tuple[list[dict[str, float]], float, dict]:
    """ALIVE steps through Lightning as a training run takes them, without tracking; (history, peak GiB, info)."""
    module = build(cfg, evaluate=False)
    generation_copy = module.generator.merged.plain if module.generator.merged is not None else None
    for model in filter(None, (module.model, generation_copy)):
        mask_unknown_ids(model, len(module.tokenizer))
    info = {"parameters_M": sum(p.numel() for p in module.model.parameters()) / 1e6,
            "trainable_M": sum(p.numel() for n, p in module.model.named_parameters() if ".lora_" in n) / 1e6}
    trainer = pl.Trainer(accelerator=cfg.hardware.accelerator, devices=1, precision=cfg.hardware.precision,
                         logger=False, callbacks=[PrintStep()], max_epochs=1, max_steps=-1,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         num_sanity_val_steps=0)
    on_gpu = cfg.hardware.accelerator == "gpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, torch.utils.data.DataLoader(StepIndices(module, steps), batch_size=None))
    if on_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # resident set size of the process (Linux reports KiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return module.history, peak, info


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with a toy shape and a tiny workload")
    p.add_argument("--steps", type=int, default=None, help="ALIVE steps (default 4, --tiny 2)")
    p.add_argument("--root", default=None, help="folder for data and the model (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--stacks-every", type=float, default=0, help="dump every thread's stack every S seconds")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the run, e.g. hardware.static_cache=false")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.stacks_every:
        import faulthandler

        faulthandler.dump_traceback_later(args.stacks_every, repeat=True)
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        MathDomain._generate = arithmetic_documents
    root = Path(args.root or tempfile.mkdtemp(prefix="gpu_check-"))
    overrides = [*WORKLOAD, *(TINY_WORKLOAD if args.tiny else []), f"paths.root_dir={root}", *args.overrides]
    cfg = compose_cfg(overrides)
    shape = TOY if args.tiny else QWEN25_05B
    folder = root / "models" / f"{'toy' if args.tiny else 'qwen2.5-0.5b'}-shape-random-{cfg.model.dtype}"
    OmegaConf.update(cfg, "model.init_from", str(build_model(cfg, folder, shape)))
    steps = args.steps or (2 if args.tiny else 4)
    t0 = time.perf_counter()
    history, peak, info = run_steps(cfg, steps)
    device = torch.cuda.get_device_name() if cfg.hardware.accelerator == "gpu" else "cpu"
    per_step = rows(history)
    print(table(per_step, peak, info, device, args.overrides or ["(none)"]))
    print(f"\nwall time {time.perf_counter() - t0:.1f} s for {steps} steps")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "overrides": args.overrides, "info": info,
                                               "peak_gib": peak, "steps": per_step}, indent=1))


if __name__ == "__main__":
    main()
