"""How fast does the tiny model learn to compare an answer with the reference? A reviewer-only warm start.

    python scripts/reviewer_probe.py [--lead pairs|whole] [--steps 400] [--every 50] [--threads 1] [overrides...]

A fresh tiny model (the one `+experiment=math` builds) is trained by likelihood on reviewer transcripts only
(the reviewer sees the reference; batch 64, lr 1e-3, the warm start's schedule), on the reference solution or
a corrupted one (`domain.corrupt`), half each. Every `--every` steps its greedy reviews of 100 validation
problems, each judged once right (the reference solution) and once wrong (a corrupted one), are scored:
`balanced` agreement of the verdict with the reference check, `right_ok` (right ones accepted),
`wrong_caught` (wrong ones rejected), `missing` (no verdict). One JSON line per check, then a few reviews.

`--blind` probes the blind reviewer instead (blind transcripts, judged without the reference); with `--derive`
its critique first re-derives each column and sets it beside the written line up to the first that differs
(`8+6=14 c1 same, 7+5+1=13 c1 not 7+5=12 c1.`), then says what the oracle's blind critique says.

`--lead pairs` is the critique the oracle writes (`Reference 834, answer 824: 8 8, 3 2: different. ...`);
`--lead whole` the one it wrote before, which compares the two numbers whole (`Reference 834, answer 824:
different. ...`). Round 4 of docs/learning_investigation.md quotes both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lead", choices=("pairs", "whole"), default="pairs")
    ap.add_argument("--blind", action="store_true", help="probe the blind reviewer (no reference) instead")
    ap.add_argument("--derive", action="store_true",
                    help="with --blind: the blind critique first re-derives each column and compares it with the "
                         "written line, up to the first that differs (`derived`)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. warmstart.lr=2e-3")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from alive_exp import domains, models
    from alive_exp import warmstart as W
    from alive_exp.cli import compose
    from alive_exp.domains import columns as col
    from alive_exp.roles import RoleTemplates, parse_critique
    from alive_exp.rollout import Generator

    if args.lead == "whole":
        oracle = col.critique_text

        def whole(task_prompt, completion, final, ok, masked_kind, reference=None):
            text, verdict = oracle(task_prompt, completion, final, ok, masked_kind, reference)
            if reference is not None and final is not None:
                text = text.replace(f": {col.digit_pairs(str(reference), str(final))}: ", ": ", 1)
            return text, verdict

        col.critique_text = whole
    if args.derive:
        oracle_text = col.critique_text

        def derived_blind(task_prompt, completion, final, ok, masked_kind, reference=None):
            text, verdict = oracle_text(task_prompt, completion, final, ok, masked_kind, reference)
            return (derived(col, task_prompt, completion, final) + " " + text if reference is None else text), verdict

        col.critique_text = derived_blind

    torch.set_num_threads(args.threads)
    cfg = compose(["+experiment=math", f"seed={args.seed}", *args.overrides])
    domain = domains.get(cfg.benchmark.domain, **W.warmstart_options(cfg))
    corpus = sorted({cfg.benchmark.domain, *cfg.benchmark.eval_domains})
    model, tok, _ = models.load_base(OmegaConf.merge(cfg.model, {"init_from": None, "source": "tiny"}),
                                     cfg.paths.data_dir, corpus)
    torch.manual_seed(args.seed)
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    gen = Generator(model, tok, batch_size=128)
    kind = "reviewer_blind" if args.blind else "reviewer"
    stream = W.Transcripts(domain, templates, domain.documents("train", 20000, args.seed), {kind: 1.0}, args.seed)
    opt, sched = W.optimizer_and_schedule(model, cfg.warmstart)
    trained = domains.get(cfg.benchmark.domain, **W.trained_options(cfg))
    rng = random.Random(1)
    judged = []
    for t in trained.benchmarks()[f"{cfg.benchmark.domain}_validation"](100, 0):
        good = trained.solution_text(t)
        bad = trained.corrupt(t, good, rng)
        judged += [(t, good, True)] + ([(t, bad, False)] if bad else [])
    start = time.time()
    for step in range(1, args.steps + 1):
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = W.likelihood_step(model, gen, [stream.example() for _ in range(64)], tok.pad_token_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.every and step != args.steps:
            continue
        model.eval()
        prompts = [templates.render("reviewer_blind", task=t.prompt, solution=s) if args.blind else
                   templates.render("reviewer", task=t.prompt, reference=t.reference, solution=s) for t, s, _ in judged]
        outs = gen.generate(prompts, n=1, max_new_tokens=int(cfg.trainer.generation.reviewer_tokens), temperature=0.0)
        verdicts = [parse_critique(o[0].text).verdict for o in outs]
        ok = [v is True for (_, _, right), v in zip(judged, verdicts) if right]
        caught = [v is False for (_, _, right), v in zip(judged, verdicts) if not right]
        print(json.dumps({"lead": "blind" + ("+derive" if args.derive else "") if args.blind else args.lead, "step": step, "loss": round(loss, 3),
                          "balanced": round((sum(ok) / len(ok) + sum(caught) / len(caught)) / 2, 3),
                          "right_ok": round(sum(ok) / len(ok), 3), "wrong_caught": round(sum(caught) / len(caught), 3),
                          "missing": sum(v is None for v in verdicts), "seconds": round(time.time() - start)}),
              flush=True)
    for (t, s, right), o in list(zip(judged, outs))[:6]:
        print(json.dumps({"right": right, "answer_line": s.splitlines()[-1], "review": o[0].text}))


def derived(col, task_prompt: str, completion: str, final: str | None) -> str:
    """A blind check written out: each column's line as it should read, against the line written, up to the first
    that differs (`8+6=14 c1 same, 7+5+1=13 c1 not 7+5=12`), then the answer the columns give against the answer
    line. Each same-or-different decision is then between two lines side by side, as the digit pairs made the
    reviewer's comparison with the reference."""
    q = col.parse_question(task_prompt)
    if q is None:
        return ""
    a, op, b = q
    want = col.columns(a, op, b)
    body = [ln.strip() for ln in completion.splitlines() if ln.strip() and not ln.startswith("Answer:")]
    out = []
    for i, w in enumerate(want):
        line = w.line(op)
        got = body[i] if i < len(body) else "nothing"
        out.append(f"{line} same" if got == line else f"{line} not {got}")
        if got != line:
            return ", ".join(out) + "."
    right = str(col.answer(a, op, b))
    out.append(f"answer {right} same" if final == right else f"answer {right} not {final}")
    return ", ".join(out) + "."


if __name__ == "__main__":
    main()
