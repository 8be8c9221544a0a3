"""The warm start's learning curve: greedy accuracy on every column suite every few steps, one seed.

    python scripts/warmstart_curve.py SEED [--every 15] [--from 180] [--steps 420] [hydra overrides ...]

Runs `warmstart.py`'s loop for `+experiment=math` (its data mix, learning rate and schedule; no stopping
rule, no cache) and prints one JSON line per check: greedy accuracy on `math_validation` (100 problems),
`math_longer` and `math_sub` (100 each) and `math_heldout` (200). docs/learning_investigation.md (round 3)
quotes its lines, e.g. `python scripts/warmstart_curve.py 1` and, for the old data mix,
`python scripts/warmstart_curve.py 1 'warmstart.benchmark_options.source_options.column_arithmetic={digits: [2, 3], operations: [add, add, add, sub]}'`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seed", type=int)
    ap.add_argument("--every", type=int, default=15)
    ap.add_argument("--from", dest="start", type=int, default=180)
    ap.add_argument("--steps", type=int, default=420)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from alive_exp import domains, models
    from alive_exp import warmstart as W
    from alive_exp.cli import compose
    from alive_exp.roles import RoleTemplates
    from alive_exp.rollout import Generator

    cfg = compose(["+experiment=math", f"seed={args.seed}", f"hardware.torch_threads={args.threads}", *args.overrides])
    torch.set_num_threads(args.threads)
    w, seed = cfg.warmstart, W.warmstart_seed(cfg)
    domain = domains.get(cfg.benchmark.domain, **W.warmstart_options(cfg))
    trained = domains.get(cfg.benchmark.domain, **W.trained_options(cfg))
    model, tok, _ = models.load_base(OmegaConf.merge(cfg.model, {"init_from": None, "source": "tiny"}),
                                     cfg.paths.data_dir, sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains}))
    torch.manual_seed(seed)
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    gen = Generator(model, tok, batch_size=128)
    stream = W.Transcripts(domain, templates, domain.documents("train", w.train_docs, seed), dict(w.mix), seed)
    opt, sched = W.optimizer_and_schedule(model, w)
    bench = trained.benchmarks()
    suites = {name: bench[name](size, 0) for name, size in
              (("math_validation", 100), ("math_longer", 100), ("math_sub", 100), ("math_heldout", 200)) if name in bench}

    def accuracy(tasks) -> float:
        _, correct = W.greedy_solutions(gen, trained, templates, tasks, cfg.trainer.generation.solver_tokens)
        return sum(correct) / len(tasks)

    start = time.perf_counter()
    for step in range(args.steps):
        model.train()
        opt.zero_grad(set_to_none=True)
        W.likelihood_step(model, gen, [stream.example() for _ in range(w.batch_size)], tok.pad_token_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step + 1 >= args.start and (step + 1) % args.every == 0:
            scores = {name: accuracy(tasks) for name, tasks in suites.items()}
            print(json.dumps({"seed": args.seed, "step": step + 1, "seconds": round(time.perf_counter() - start),
                              **scores}), flush=True)


if __name__ == "__main__":
    main()
