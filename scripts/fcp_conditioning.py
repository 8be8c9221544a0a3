"""Does the solver listen to the feedback FCP conditions it on? Accuracy under positive and negative feedback.

    python scripts/fcp_conditioning.py POLICY_OR_WARMSTART [...] [--size 200] [--temperature 0.7] [--threads 2]

FCP (reward=fcp, arXiv 2509.22638) trains the solver by likelihood on each of its own solutions under the critique
it earned, and at rollout and evaluation asks for a solution under positive feedback (the domain's own critique
of a right solution). That can only help where the solver's output depends on the feedback: if a right-solution
critique and a wrong-solution critique give the same solutions, FCP's update is likelihood on the model's own
samples (mostly wrong ones at a warm start's accuracy), and its rollouts drift with it.

For each folder (a warm start under data/warmstart/, or a training run's policy/) this prints, on `--size`
held-out problems of the trained shape at `--temperature` (the experiment's), the share of right solutions
under: the plain solver prompt; FCP's prompt with positive feedback (what its rollouts and evaluation use); FCP's
prompt with negative feedback (the domain's critique of a corrupted solution, as FCP's training targets read
critiques). One JSON line per folder. With `--nll`, also what FCP's likelihood update would push on: the model's
own samples under positive feedback, each scored under the prompt FCP trains it with (a right one under positive
feedback, a wrong one under the oracle's critique of it, scrubbed), as the mean log-loss per token of right and of
wrong samples and the share of the summed loss that wrong samples carry. Round 4 of
docs/learning_investigation.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--override", dest="overrides", action="append", default=[])
    ap.add_argument("--nll", action="store_true", help="also the log-loss of its own right and wrong samples")
    args = ap.parse_args()

    import torch

    from alive_exp import domains
    from alive_exp.cli import load_policy_config
    from alive_exp.rewards import fcp_feedback, positive_feedback
    from alive_exp.train import build
    from alive_exp.warmstart import trained_options

    torch.set_num_threads(args.threads)
    for folder in args.folders:
        cfg = load_policy_config(folder, args.overrides)
        module = build(cfg, evaluate=False)
        module.use_adapter("solver")
        domain = domains.get(cfg.benchmark.domain, **trained_options(cfg))
        tasks = domain.heldout_tasks(args.size, int(cfg.seed))
        rng = random.Random(0)
        negative = []
        for t in tasks:
            good = domain.solution_text(t)
            bad = domain.corrupt(t, good, rng) or good.replace("Answer: ", "Answer: 1")
            negative.append(fcp_feedback(domain.critique(t, bad).text, t.reference))
        t_ = module.step_impl.templates
        prompts = {
            "solver": [t_.render("solver", task=t.prompt) for t in tasks],
            "fcp_positive": [t_.render("fcp_solver", task=t.prompt, critique=positive_feedback(domain, t)) for t in tasks],
            "fcp_negative": [t_.render("fcp_solver", task=t.prompt, critique=n) for t, n in zip(tasks, negative)],
        }
        row = {"folder": str(folder), "size": len(tasks), "temperature": args.temperature}
        examples = {}
        for name, ps in prompts.items():
            outs = module.generator.generate(ps, n=1, max_new_tokens=int(cfg.trainer.generation.solver_tokens),
                                             temperature=args.temperature, seed=1)
            texts = [o[0].text for o in outs]
            right = [ok for ok, _ in domain.score_many(texts, tasks)]
            row[name] = round(sum(right) / len(tasks), 3)
            examples[name] = {"prompt": ps[0], "solution": texts[0]}
            if args.nll and name == "fcp_positive":
                row.update(own_sample_loss(module, domain, t_, tasks, texts, right))
        print(json.dumps(row), flush=True)
        for name, ex in examples.items():
            print(json.dumps({"prompt_kind": name, **ex}))


def own_sample_loss(module, domain, templates, tasks, texts, right) -> dict[str, float]:
    """Log-loss per token of each own sample under the prompt FCP would train it with (right: positive feedback;
    wrong: the oracle's critique of it as FCP's solver reads it), split by right and wrong."""
    import torch

    from alive_exp.logprobs import token_logprobs
    from alive_exp.rewards import fcp_feedback, positive_feedback

    gen, losses = module.generator, {True: [], False: []}
    with torch.no_grad():
        for t, x, ok in zip(tasks, texts, right):
            feedback = positive_feedback(domain, t) if ok else fcp_feedback(domain.critique(t, x).text, t.reference)
            p = gen.encode_prompt(templates.render("fcp_solver", task=t.prompt, critique=feedback))
            c = gen.encode_completion(x)
            ids = torch.tensor([p + c])
            lp = token_logprobs(module.model, ids, torch.ones_like(ids), 1.0, first=len(p))[0, len(p):]
            losses[ok].append((-lp.sum().item(), len(c)))
    per_token = {k: sum(a for a, _ in v) / max(1, sum(n for _, n in v)) for k, v in losses.items()}
    total = {k: sum(a for a, _ in v) for k, v in losses.items()}
    return {"nll_per_token_right": round(per_token[True], 4), "nll_per_token_wrong": round(per_token[False], 4),
            "wrong_share_of_loss": round(total[False] / max(1e-9, total[True] + total[False]), 3)}


if __name__ == "__main__":
    main()
