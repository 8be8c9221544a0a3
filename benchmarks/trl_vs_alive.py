"""alive-exp's solver against TRL's GRPOTrainer, and our rollout path against a plain generate loop.

    python benchmarks/trl_vs_alive.py [--reps 5] [--steps 20] [--tasks 4] [--n 4] [--max-new 32] [--smoke]

Like for like: alive-exp runs solver-only steps (`trainer.reviews=false`, rule constructor, scalar reward:
no critiques written, nothing but the solver trained), TRL's GRPOTrainer the same model, prompts, N,
maximum completion length, learning rate, LoRA and steps, both from the same weights (`--init-from`, default
the `+experiment=math` warm start of seed 0, so rewards vary and both sides really update; it is built and
cached under --data the first time). Each rep runs each side in its own child process (its peak memory,
max RSS, is its own), sides alternating (alive, TRL, TRL, alive, ...) so that a drift of the machine hits
both. Printed per side: median [min, max] over reps of solver tokens per second of training time, seconds
per step and peak memory; and the ratios alive-exp / TRL of the medians and, paired rep by rep, their
median [min, max]. Tokens are counted from the completions each side generated (TRL's re-tokenised, plus
the end-of-turn token). `--smoke` is 1 rep of 2 steps (CI).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def peak_mb() -> float:
    """This process's own peak resident memory: VmHWM belongs to the address space exec created, where
    ru_maxrss also carries the parent's peak across fork and exec (every child would report the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cfg(args, root: str):
    from alive_exp.cli import compose

    init = [f"model.init_from={args.init_from}"] if args.init_from else []
    return compose([
        "+experiment=math", "reward=scalar", f"trainer.max_steps={args.steps}", "trainer.constructor=rule",
        "trainer.reviews=false", f"paths.root_dir={root}", *init,
        f"trainer.docs_per_step={args.tasks}", f"trainer.max_tasks_per_step={args.tasks}",
        f"trainer.solutions_per_task={args.n}", f"trainer.generation.solver_tokens={args.max_new}",
        f"trainer.generation.reviewer_tokens={args.max_new}", "trainer.eval_at_end=false",
        "trainer.generation.temperature=1.0",  # TRL's GRPOConfig below samples at 1.0 too
        "trainer.checkpoint_every=0", "trainer.log_transcripts_every=0", "trainer.progress_bar=false",
        "warmstart.enabled=false", f"paths.data_dir={args.data}", "benchmark.train_docs=500",
        f"hardware.torch_threads={args.threads}",
    ])


def run_alive(args, out) -> None:
    from alive_exp.train import run

    with tempfile.TemporaryDirectory() as root:
        cfg = _cfg(args, root)
        start = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - start
        from mlflow.tracking import MlflowClient

        client = MlflowClient(cfg.logger.tracking_uri)
        tokens = sum(m.value for m in client.get_metric_history(res["mlflow_run_id"], "tokens/solver"))
        trained = sum(m.value for m in client.get_metric_history(res["mlflow_run_id"], "update/solver/trained_samples"))
        drawn = sum(m.value for m in client.get_metric_history(res["mlflow_run_id"], "update/solver/samples"))
        step_s = [m.value for m in client.get_metric_history(res["mlflow_run_id"], "time/step")]
    out.put({"side": "alive-exp", "tokens": tokens, "train_s": sum(step_s), "wall_s": wall,
             "trained_share": trained / max(drawn, 1),
             "step_s": sum(step_s) / len(step_s), "peak_mb": peak_mb()})


def run_trl(args, out) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from omegaconf import OmegaConf

    from alive_exp import domains, models

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        cfg = _cfg(args, root)
        path = args.init_from or models.build_tiny(cfg.model, cfg.paths.data_dir, ["math"])
        tok = models.load_tokenizer(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
        math = domains.get("math", **OmegaConf.to_container(cfg.benchmark.options, resolve=True))
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
             "step_s": sum(timer.times) / len(timer.times), "peak_mb": peak_mb()})


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
    while True:  # a child that dies (an exception, the OOM killer) is an error, not a hang
        try:
            res = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise SystemExit(f"{fn.__name__} died with exit code {p.exitcode}; its traceback is above")
    p.join()
    return res


def warm_start(args) -> str:
    """The +experiment=math warm start of seed 0 (built and cached under --data the first time)."""
    from alive_exp.warmstart import build_warmstart

    with tempfile.TemporaryDirectory() as root:
        cfg = _cfg(argparse.Namespace(**{**vars(args), "init_from": None}), root)
        return str(build_warmstart(cfg, progress=False))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=4, help="prompts per step")
    ap.add_argument("--n", type=int, default=4, help="completions per prompt (N / num_generations)")
    ap.add_argument("--max-new", type=int, default=32, help="maximum completion length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init-from", help="a model folder both sides start from (default: the warm start; "
                                        "'none': the untrained tiny model)")
    ap.add_argument("--smoke", action="store_true", help="1 rep of 2 steps")
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.steps = 1, 2
    if args.init_from == "none":
        args.init_from = None
    elif args.init_from is None:
        args.init_from = warm_start(args)
    reps: dict[str, list[dict]] = {"alive-exp": [], "TRL GRPOTrainer": []}
    for i in range(args.reps):
        for fn in (run_alive, run_trl) if i % 2 == 0 else (run_trl, run_alive):
            r = child(fn, args)
            r["tok_per_s"] = r["tokens"] / r["train_s"]
            reps[r["side"]].append(r)
            print(f"rep {i + 1}/{args.reps} {r['side']}: {r['tok_per_s']:.1f} solver tok/s, {r['step_s']:.2f} s/step",
                  flush=True)
    roll = child(run_rollout, args)
    print(f"\n{args.reps} reps x {args.steps} steps per side, {args.tasks} prompts x N={args.n}, {args.max_new} new "
          f"tokens, {args.threads} torch threads; median [min, max] over reps")
    print(f"{'side':<18}{'solver tok/s':>22}{'s/step':>22}{'peak MB':>26}")
    for side, rs in reps.items():
        print(f"{side:<18}{spread([r['tok_per_s'] for r in rs]):>22}{spread([r['step_s'] for r in rs]):>22}"
              f"{spread([r['peak_mb'] for r in rs]):>26}")
    a, t = reps["alive-exp"], reps["TRL GRPOTrainer"]
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    pair = lambda k: [x[k] / y[k] for x, y in zip(a, t)]  # noqa: E731
    print("\nratios alive-exp / TRL (ratio of medians; paired by rep: median [min, max]):")
    print(f"  solver tokens per second  {med(a, 'tok_per_s') / med(t, 'tok_per_s'):.2f}x  paired {spread(pair('tok_per_s'))}"
          "  (> 1: alive-exp faster)")
    print(f"  seconds per step          {med(a, 'step_s') / med(t, 'step_s'):.2f}x  paired {spread(pair('step_s'))}"
          "  (< 1: alive-exp faster)")
    print(f"  peak memory               {med(a, 'peak_mb') / med(t, 'peak_mb'):.2f}x")
    share = statistics.median(r["trained_share"] for r in a)
    print(f"alive-exp trained on {100 * share:.0f}% of its solver samples (median over reps): the others had zero "
          "advantage (a group all right or all wrong) and got no forward or backward; TRL computes every one")
    plain, ours = roll["plain generate loop"], roll["alive-exp rollout"]
    print(f"\nrollout at batch {args.tasks * args.n}, {args.max_new} new tokens, sampling, {args.steps} batches:")
    print(f"  plain peft_model.generate loop  {plain:8.1f} tok/s")
    print(f"  alive-exp rollout (merged)      {ours:8.1f} tok/s   ratio {ours / plain:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"train": [r for rs in reps.values() for r in rs], "rollout": roll,
                                               "args": vars(args)}, indent=2, default=str))


if __name__ == "__main__":
    main()
