"""Peak memory of the learner's log-prob pass (forward and backward) on a 152k-vocabulary model shape.

    python benchmarks/logprob_memory.py [--reps 3] [--batch 4] [--prompt 448] [--completion 128] [--json F]

A right-padded batch as the learner sees one: row i's prompt is `prompt - i * prompt // (2 * batch)` tokens
(prompts of different lengths), every completion `completion` tokens. Three variants, each in a fresh
subprocess per repetition (peak = the subprocess's max RSS, so one variant's allocations never count for
another), alternating:

- `full`: what 99f8d45 did: logits at every position, an fp32 log-softmax over the whole vocabulary, gather;
- `window`: what b674724 did: logits from the batch's first completion position on (`logits_to_keep`, so
  the longer prompts' tails and the padding are projected too), target logit minus logsumexp;
- `ours`: `alive_exp.logprobs.token_logprobs` as the learner calls it: the vocabulary projection only at each
  row's own completion positions, in chunks (`logprobs.CHUNK_BYTES` of logits) recomputed for the backward.

The model is a random Qwen2 with Qwen2.5's vocabulary (151936) and a small body (hidden 64, 2 layers), so the
vocabulary projection dominates as it does for real models. Printed: the median peak MB per variant with its
range over reps, the baseline (the same process with the model built and no pass), and the ratio of each
pass's own memory (peak - baseline) to `full`'s. The variants' completion log-probs are checked equal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 151936


def child(variant: str, batch: int, prompt: int, completion: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alive_exp.logprobs import token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                         tie_word_embeddings=True))
    starts = [prompt - i * prompt // (2 * batch) for i in range(batch)]
    ids = torch.randint(1, VOCAB, (batch, prompt + completion))
    attn = torch.zeros_like(ids)
    mask = torch.zeros(ids.shape)
    for i, p in enumerate(starts):
        ids[i, p + completion:] = 0
        attn[i, :p + completion] = 1
        mask[i, p:p + completion] = 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if variant == "full":
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        logp = torch.nn.functional.pad(logp, (1, 0))
    elif variant == "window":
        first = min(starts)
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=ids.size(1) - first + 1).logits[:, :-1]
        logits = logits.float()
        target = ids[:, first:]
        logp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        logp = torch.nn.functional.pad(logp, (first, 0))
    else:
        logp = token_logprobs(model, ids, attn, first=starts)
    logp = logp * mask
    loss = -logp.sum()
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "peak_mb": peak, "baseline_mb": base,
                      "completion_logps": logp[mask > 0].detach()[:256].tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=448)
    ap.add_argument("--completion", type=int, default=128)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], *map(int, args.child[1:]))
        return
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[dict]] = {"full": [], "window": [], "ours": []}
    for rep in range(args.reps):
        for variant in runs:
            out = subprocess.run([sys.executable, __file__, "--child", variant, str(args.batch), str(args.prompt),
                                  str(args.completion)], capture_output=True, text=True, env=env, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"rep {rep + 1}/{args.reps} {variant}: peak {runs[variant][-1]['peak_mb']:.0f} MB", flush=True)
    worst = max(abs(a - b) for v in ("window", "ours")
                for a, b in zip(runs["full"][0]["completion_logps"], runs[v][0]["completion_logps"]))
    summary = {}
    print(f"\n{args.reps} reps, batch {args.batch} x ({args.prompt} prompt + {args.completion} completion) tokens, "
          f"vocabulary {VOCAB}; peak RSS MB, median [min, max]")
    for variant, rows in runs.items():
        peaks = [r["peak_mb"] for r in rows]
        own = [r["peak_mb"] - r["baseline_mb"] for r in rows]
        summary[variant] = {"peak_mb": statistics.median(peaks), "range": [min(peaks), max(peaks)],
                            "pass_mb": statistics.median(own), "baseline_mb": statistics.median(r["baseline_mb"] for r in rows)}
        print(f"  {variant:5s} peak {summary[variant]['peak_mb']:7.0f} [{min(peaks):.0f}, {max(peaks):.0f}]   "
              f"the pass itself {summary[variant]['pass_mb']:7.0f}   (model built: {summary[variant]['baseline_mb']:.0f})")
    ratios = {v: summary[v]["pass_mb"] / summary["full"]["pass_mb"] for v in ("window", "ours")}
    for v, r in ratios.items():
        print(f"ratio {v} / full, the pass's own memory: {r:.2f}x; peak RSS: "
              f"{summary[v]['peak_mb'] / summary['full']['peak_mb']:.2f}x")
    print(f"ours / window, the pass's own memory: {summary['ours']['pass_mb'] / summary['window']['pass_mb']:.2f}x; "
          f"completion log-probs equal to {worst:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/logprob_memory.py", "summary": summary,
                                         "pass_ratio": ratios["ours"], "pass_ratios": ratios, "max_logprob_diff": worst, "args": vars(args) | {"json": None}},
                                        indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
