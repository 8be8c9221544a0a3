"""alive-exp's scalar mode against TRL's GRPOTrainer, and our rollout path against a plain generate loop.

Same tiny model, same prompts, same N, same maximum completion length and number of steps, on CPU.
Each side trains in its own child process so its peak memory (max RSS) is its own; one invocation
prints both and their ratios (alive / TRL; > 1 means alive-exp is faster):

    python benchmarks/trl_vs_alive.py [--steps 6] [--tasks 4] [--n 4] [--max-new 32]

alive-exp's step does more than TRL's (it also runs and trains the constructor and the reviewer), so the
fair comparison is per generated token; seconds per step are printed too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cfg(args, root: str):
    from conftest import compose_cfg

    return compose_cfg([
        "+experiment=math", "reward=scalar", f"trainer.max_steps={args.steps}", "trainer.constructor=rule",
        f"trainer.docs_per_step={args.tasks}", f"trainer.max_tasks_per_step={args.tasks}",
        f"trainer.solutions_per_task={args.n}", f"trainer.generation.solver_tokens={args.max_new}",
        f"trainer.generation.reviewer_tokens={args.max_new}", "trainer.eval_at_end=false",
        "trainer.checkpoint_every=0", "trainer.log_transcripts_every=0", "trainer.progress_bar=false",
        "warmstart.enabled=false", f"paths.data_dir={args.data}", "benchmark.train_docs=500",
        f"hardware.torch_threads={args.threads}",
    ], Path(root))


def run_alive(args, out) -> None:
    from alive_exp.train import run

    with tempfile.TemporaryDirectory() as root:
        cfg = _cfg(args, root)
        start = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - start
        from mlflow.tracking import MlflowClient

        client = MlflowClient(cfg.logger.tracking_uri)
        tokens = sum(m.value for key in ("tokens/solver", "tokens/reviewer", "tokens/constructor", "tokens/refine")
                     for m in client.get_metric_history(res["mlflow_run_id"], key))
        step_s = [m.value for m in client.get_metric_history(res["mlflow_run_id"], "time/step")]
    out.put({"side": "alive-exp", "tokens": tokens, "train_s": sum(step_s), "wall_s": wall,
             "step_s": sum(step_s) / len(step_s), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_trl(args, out) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alive_exp import domains, models

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        cfg = _cfg(args, root)
        path = models.build_tiny(cfg.model, cfg.paths.data_dir, ["math"])
        tok = models.load_tokenizer(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
        math = domains.get("math")
        docs = math.documents("train", args.tasks * args.steps, cfg.seed)
        tasks = [math.make_task(d, *math.candidate_spans(d)[-1]) for d in docs]
        by_prompt = {}
        rows = []
        for t in tasks:
            content = cfg.roles.solver.format(task=t.prompt)
            by_prompt[content] = t
            rows.append({"prompt": [{"role": "user", "content": content}]})
        generated = {"tokens": 0}

        def reward(prompts, completions, **_):
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            generated["tokens"] += sum(len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for x in texts)
            return [float(math.score(x, by_prompt[p[0]["content"] if isinstance(p, list) else p])[0])
                    for x, p in zip(texts, prompts)]

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.times, self.t0 = [], None

            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                self.times.append(time.perf_counter() - self.t0)

        timer = StepTimer()
        lora = cfg.model.lora
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, processing_class=tok, train_dataset=Dataset.from_list(rows),
            peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                   target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
            args=GRPOConfig(
                output_dir=root, per_device_train_batch_size=args.tasks * args.n, num_generations=args.n,
                max_completion_length=args.max_new, max_steps=args.steps, learning_rate=cfg.trainer.optim.solver.lr,
                temperature=1.0, beta=0.0, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                disable_tqdm=True, seed=cfg.seed, dataloader_num_workers=0, bf16=False,
            ),
            callbacks=[timer],
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    out.put({"side": "TRL GRPOTrainer", "tokens": generated["tokens"], "train_s": sum(timer.times), "wall_s": wall,
             "step_s": sum(timer.times) / len(timer.times), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run_rollout(args, out) -> None:
    """Our Generator (adapter merged into a plain copy) against `peft_model.generate` at the same shapes."""
    import torch

    from alive_exp.train import build

    with tempfile.TemporaryDirectory() as root:
        m = build(_cfg(args, root), evaluate=False)
        m.use_adapter("solver")
        prompts = [m.step_impl.mode.solver_prompt(t) for t in
                   m.domain.heldout_tasks(args.tasks * args.n, 0)][: args.tasks * args.n]
        results = {}
        for name, merged in (("plain generate loop", None), ("alive-exp rollout", m.generator.merged)):
            m.generator.merged = merged
            m.generator.generate(prompts[:2], n=1, max_new_tokens=4, seed=0)  # first call at a shape is slow
            start = time.perf_counter()
            toks = 0
            for rep in range(args.steps):
                toks += sum(c.n_tokens for g in m.generator.generate(prompts, n=1, max_new_tokens=args.max_new, seed=rep)
                            for c in g)
            results[name] = toks / (time.perf_counter() - start)
        torch.set_num_threads(args.threads)
    out.put({"side": "rollout", **results})


def child(fn, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=4, help="prompts per step")
    ap.add_argument("--n", type=int, default=4, help="completions per prompt (N / num_generations)")
    ap.add_argument("--max-new", type=int, default=32, help="maximum completion length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    rows = [child(run_alive, args), child(run_trl, args)]
    roll = child(run_rollout, args)
    print(f"\n{'side':<18}{'gen tokens':>11}{'train s':>9}{'s/step':>8}{'tok/s':>8}{'peak MB':>9}")
    for r in rows:
        r["tok_per_s"] = r["tokens"] / r["train_s"]
        print(f"{r['side']:<18}{r['tokens']:>11.0f}{r['train_s']:>9.1f}{r['step_s']:>8.2f}{r['tok_per_s']:>8.1f}{r['peak_mb']:>9.0f}")
    a, t = rows
    print("\nratios alive-exp / TRL (same model, prompts, N, length, steps):")
    print(f"  generated tokens per second  {a['tok_per_s'] / t['tok_per_s']:.2f}x  (> 1: alive-exp faster per token)")
    print(f"  seconds per generated token  {(a['train_s'] / a['tokens']) / (t['train_s'] / t['tokens']):.2f}x  (< 1: alive-exp faster)")
    print(f"  seconds per step             {a['step_s'] / t['step_s']:.2f}x  (alive-exp also runs constructor and reviewer)")
    print(f"  peak memory                  {a['peak_mb'] / t['peak_mb']:.2f}x")
    plain, ours = roll["plain generate loop"], roll["alive-exp rollout"]
    print(f"\nrollout at batch {args.tasks * args.n}, {args.max_new} new tokens, sampling:")
    print(f"  plain peft_model.generate loop  {plain:8.1f} tok/s")
    print(f"  alive-exp rollout (merged)      {ours:8.1f} tok/s   ratio {ours / plain:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"train": rows, "rollout": roll}, indent=2))


if __name__ == "__main__":
    main()
