"""Which blind critique can the tiny model learn to write? The quickstart's warm start, built with each.

    python scripts/blind_warmstart.py --blind own|derive|spot [--seed 0] [--threads 2] [hydra overrides ...]

Builds the warm start of `+experiment=math` (every role, its floors, at most `warmstart.steps`) with the oracle's
blind column critique written one of three ways, each in its own data folder (`/tmp/blind-<format>` unless
`paths.data_dir=...` is given: the tiny tokenizer learns the critiques' words, so builds must not share one):

- `own` (the oracle's, `domains.columns.own_check`): the reviewer works the columns itself, then compares the
  answer they give with the solution's digit pair by digit pair, then names the first wrong column;
- `derive`: each column as it should read set beside the line written, up to the first that differs (`8+6=14 c1
  same, 7+5+1=13 c1 not 7+5=12 c1.`, `reviewer_probe.derived`), then names the first wrong column;
- `spot`: names the first wrong column at once (the oracle's blind critique before `own`).

Prints one JSON line per check of the build (validation accuracy, and once the solver's floors hold every role on
the solver's own samples) and the held-out figures of metrics.json. Round 4 of docs/learning_investigation.md
quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blind", choices=("own", "derive", "spot"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="hydra overrides, e.g. warmstart.steps=600")
    args = ap.parse_args()

    from alive_exp.cli import compose
    from alive_exp.domains import columns as col
    from alive_exp.warmstart import build_warmstart
    from reviewer_probe import derived

    oracle = col.critique_text

    def blind_critique(task_prompt, completion, final, ok, masked_kind, reference=None):
        text, verdict = oracle(task_prompt, completion, final, ok, masked_kind, reference)
        if reference is not None or args.blind == "own":
            return text, verdict
        lead = col.own_check(task_prompt, final)
        assert text.startswith(lead)
        spot = text[len(lead):]
        return (derived(col, task_prompt, completion, final) + " " + spot if args.blind == "derive" and lead
                else spot), verdict

    col.critique_text = blind_critique
    overrides = [f"seed={args.seed}", f"hardware.torch_threads={args.threads}", *args.overrides]
    if not any(o.startswith("paths.data_dir=") for o in overrides):
        overrides.append(f"paths.data_dir=/tmp/blind-{args.blind}")
    path = build_warmstart(compose(["+experiment=math", *overrides]), progress=False)
    metrics = json.loads((path / "metrics.json").read_text())
    for check in metrics.pop("validation_checks"):
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in check.items()}))
    print(json.dumps({"blind": args.blind, "warm_start": str(path), **metrics}))


if __name__ == "__main__":
    main()
