"""A reference GRPO loop, independent of alive-exp's trainer, on the embedded default's warm start.

    python scripts/grpo_reference.py [--lr 1e-5] [--steps 200] [--eval-every 40] [hydra overrides ...]

Why it exists: on the embedded default, RL from the warm start does not raise held-out accuracy
(docs/learning_investigation.md). This script asks whether that is the trainer or the problem. It shares
only generation (`rollout.Generator`), the domain's scorer, the warm start and the padding and log-prob
helpers with alive-exp; the update is written out here in a few lines: full fine-tuning, the eval's own task format (whole problems), no
constructor, no reviewer, group-normalised advantages, one AdamW step per batch. It prints greedy and
sampled held-out accuracy on the learning report's benchmark every `--eval-every` steps and writes
outputs/grpo_reference/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--tasks", type=int, default=16, help="problems per step")
    ap.add_argument("--n", type=int, default=8, help="samples per problem (the group)")
    ap.add_argument("--name", default=None, help="output name (default: lr and steps)")
    ap.add_argument("--work", type=Path, default=REPO / "outputs" / "grpo_reference")
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("overrides", nargs="*", help="hydra overrides on top of +experiment=math")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alive_exp import domains
    from alive_exp.logprobs import pad_batch, token_logprobs
    from alive_exp.losses import Sample
    from alive_exp.roles import RoleTemplates
    from alive_exp.rollout import Generator
    from alive_exp.warmstart import build_warmstart, trained_options
    from alive_exp.cli import compose

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = compose(["+experiment=math", f"paths.data_dir={args.data}", *args.overrides, f"paths.root_dir={args.work}"])
    torch.manual_seed(cfg.seed)
    path = build_warmstart(cfg)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    domain = domains.get(cfg.benchmark.domain, **{**trained_options(cfg), "hide": "answer"})
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    gen, max_new = Generator(model, tok, batch_size=128), cfg.trainer.generation.solver_tokens
    heldout = domain.heldout_tasks(cfg.benchmark.eval_size, cfg.seed)
    docs = [d for d in domain.documents("train", 4000, cfg.seed) if domain.candidate_spans(d)]
    pool = [domain.make_task(d, *domain.candidate_spans(d)[-1]) for d in docs]  # whole problems, answer hidden

    def prompts(tasks):
        return [templates.render("solver", task=t.prompt) for t in tasks]

    def evaluate(step: int) -> dict:
        greedy = gen.generate(prompts(heldout), n=1, max_new_tokens=max_new, temperature=0.0)
        sampled = gen.generate(prompts(heldout), n=4, max_new_tokens=max_new, temperature=1.0, seed=cfg.seed + 17)
        row = {"step": step,
               "accuracy": sum(domain.score(g[0].text, t)[0] for g, t in zip(greedy, heldout)) / len(heldout),
               "sampled_accuracy": sum(domain.score(c.text, t)[0] for g, t in zip(sampled, heldout) for c in g)
               / (4 * len(heldout))}
        print(json.dumps(row), flush=True)
        return row

    rows, rng, start = [evaluate(0)], random.Random(cfg.seed), time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    for step in range(1, args.steps + 1):
        tasks = rng.sample(pool, args.tasks)
        groups = gen.generate(prompts(tasks), n=args.n, max_new_tokens=max_new, temperature=1.0, seed=cfg.seed * 7919 + step)
        batch = []
        for task, group in zip(tasks, groups):
            r = torch.tensor([float(domain.score(c.text, task)[0]) for c in group])
            adv = (r - r.mean()) / (r.std() + 1e-4)
            batch += [Sample("solver", c.prompt_ids, c.completion_ids, float(a)) for c, a in zip(group, adv) if a != 0]
        model.train()
        opt.zero_grad(set_to_none=True)
        total = sum(len(s.completion_ids) for s in batch)
        for i in range(0, len(batch), 32):
            chunk = batch[i:i + 32]
            ids, attn, mask = pad_batch(chunk, tok.pad_token_id, torch.device("cpu"))
            adv = torch.tensor([s.advantage for s in chunk]).unsqueeze(1)
            (-(adv * token_logprobs(model, ids, attn) * mask).sum() / total).backward()
        if batch:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        if step % args.eval_every == 0 or step == args.steps:
            rows.append(evaluate(step))
    name = args.name or f"lr{args.lr:g}-steps{args.steps}"
    out = {"lr": args.lr, "steps": args.steps, "tasks": args.tasks, "n": args.n, "warm_start": str(path),
           "minutes": round((time.perf_counter() - start) / 60, 1), "evals": rows}
    (args.work / f"{name}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.work / f'{name}.json'}")


if __name__ == "__main__":
    main()
