"""Can the tiny model learn to pose from a page? A constructor-only fine-tune from a warm start.

    python scripts/constructor_probe.py data/warmstart/<key> [--steps 300] [--every 50] [--lr 1e-3] \
        [--bare] [overrides...]      # e.g. benchmark.options.source_options.column_arithmetic.per_page=[2,3]

From the warm start's weights, likelihood steps (batch 32) on the oracle constructor's transcripts only, on
training pages of the experiment (+experiment=math with the overrides; pass a per_page for pages): `Span:
Answer: <value>` (the domain's `span_text`; `--bare`: `Span: <value>`), one problem of the page uniformly.
Every `--every` steps the greedy proposal on 60 held-apart training pages is checked (`Domain.check_span`):
the share of valid spans, and one proposal. One line per check. Round 6 of docs/learning_investigation.md
quotes it.
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
    ap.add_argument("warmstart", help="a warm start folder (data/warmstart/<domain>-<key>)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bare", action="store_true", help="the bare value as the span, not its answer line")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alive_exp import domains
    from alive_exp import warmstart as W
    from alive_exp.cli import compose
    from alive_exp.roles import RoleTemplates, parse_span
    from alive_exp.rollout import Generator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose(["+experiment=math", *args.overrides])
    domain = domains.get(cfg.benchmark.domain, **W.warmstart_options(cfg))
    if args.bare:
        domain.span_text = lambda doc, s, e: doc.text[s:e]
    templates = RoleTemplates(**OmegaConf.to_container(cfg.roles, resolve=True))
    model = AutoModelForCausalLM.from_pretrained(args.warmstart)
    tok = AutoTokenizer.from_pretrained(args.warmstart)
    gen = Generator(model, tok, batch_size=64)
    stream = W.Transcripts(domain, templates, domain.documents("train", 2000, 0), {"constructor": 1.0}, 0)
    pages = domain.documents("train", 60, 99)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    def check(step: int, seconds: float) -> None:
        model.eval()
        outs = gen.generate([templates.render("constructor", document=p.text) for p in pages], n=1,
                            max_new_tokens=16, temperature=0.0, seed=0)
        valid = [bool(s.span) and domain.check_span(p, s.span).valid
                 for p, s in ((p, parse_span(g[0].text)) for p, g in zip(pages, outs))]
        model.train()
        print(json.dumps({"step": step, "valid": round(sum(valid) / len(valid), 3), "seconds": round(seconds),
                          "proposal": outs[0][0].text}), flush=True)

    start = time.perf_counter()
    check(0, 0.0)
    model.train()
    for step in range(args.steps):
        opt.zero_grad(set_to_none=True)
        W.likelihood_step(model, gen, [stream.example() for _ in range(32)], tok.pad_token_id)
        opt.step()
        if (step + 1) % args.every == 0:
            check(step + 1, time.perf_counter() - start)


if __name__ == "__main__":
    main()
