"""Metrics as plain functions: reviewer quality, constructor statistics, self-correction (SCoRe), pass@k."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from math import comb

SOLVE_RATE_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def reviewer_quality(verdicts: Sequence[bool | None], correct: Sequence[bool]) -> dict[str, float]:
    """Verdicts against the reference check.

    `balanced_agreement`: the mean of the agreement on right solutions and on wrong ones (each class that
    occurs), so a reviewer that rejects everything scores 0.5 however many solutions are wrong; `agreement`:
    the raw share; `precision` / `recall` at catching wrong solutions; `missing_rate`: share with no parseable
    verdict. A missing verdict counts as a disagreement and as a missed catch.
    """
    n = len(correct)
    if n == 0:
        return {"agreement": 0.0, "balanced_agreement": 0.0, "precision": 0.0, "recall": 0.0, "missing_rate": 0.0}
    agree = [v is not None and v == c for v, c in zip(verdicts, correct)]
    per_class = [[a for a, c in zip(agree, correct) if c is cls] for cls in (True, False)]
    flagged = [v is False for v in verdicts]
    wrong = [not c for c in correct]
    tp = sum(f and w for f, w in zip(flagged, wrong))
    return {
        "agreement": sum(agree) / n,
        "balanced_agreement": mean([sum(x) / len(x) for x in per_class if x]),
        "precision": tp / sum(flagged) if any(flagged) else 0.0,
        "recall": tp / sum(wrong) if any(wrong) else 0.0,
        "missing_rate": sum(v is None for v in verdicts) / n,
    }


def solve_rate_histogram(rates: Sequence[float]) -> dict[str, float]:
    """Share of tasks per solve-rate bin: 0, (0, .25], (.25, .5], (.5, .75], (.75, 1) and 1."""
    labels = ["0", "0-25", "25-50", "50-75", "75-100", "100"]
    counts = dict.fromkeys(labels, 0)
    for r in rates:
        if r <= 0:
            counts["0"] += 1
        elif r >= 1:
            counts["100"] += 1
        else:
            counts[labels[1 + min(3, int(r * 4 - 1e-9))]] += 1
    total = max(len(rates), 1)
    return {k: v / total for k, v in counts.items()}


def constructor_choice(domain, proposals, attempts, probed: Sequence[tuple[float, float]]) -> dict[str, float]:
    """What the constructor chose this step, against what uniform posing would have chosen on the same documents.

    The posed tasks are those the constructor chose: with a learned constructor, its valid proposals that were
    solved (`fallback_share` is the share of solved tasks the rule masker posed instead, for documents without a
    valid proposal); with the rule masker, every task. `posed_<d>` is their mean difficulty measure d
    (`task.meta["difficulty"]`: for column problems digits and carries), `uniform_<d>` its expectation under
    uniform posing over the same documents' candidate spans (free: no solving); `posed_learnability` their mean
    learnability (1 at solve rate 0.5, 0 at 0 or 1). Keys are absent on a step with no posed task. From the
    uniform probe (`AliveStep.probe`), on the probed documents: `uniform_learnability`, `probed_posed_learnability`
    and their paired difference `learnability_gain`.
    """
    from alive_exp.alive import learned_tasks
    from alive_exp.rewards import learnability

    m: dict[str, float] = {}
    if any(p.completion is not None for p in proposals):
        chosen = learned_tasks(proposals)
        groups = [g for g in attempts if g[0].task.id in chosen]
        m["constructor/fallback_share"] = 1 - len(groups) / len(attempts) if attempts else 0.0
    else:
        groups = list(attempts)
    posed = [g[0].task for g in groups]
    if groups:
        m["constructor/posed_learnability"] = mean([learnability(sum(a.correct for a in g) / len(g)) for g in groups])
    keys = sorted({k for t in posed for k in t.meta.get("difficulty", {})})
    if keys:
        on = {t.doc_id for t in posed}
        docs = [d for d in {p.doc.id: p.doc for p in proposals}.values() if d.id in on]
        uniform: dict[str, list[float]] = {k: [] for k in keys}
        for doc in docs:
            tasks = [domain.make_task(doc, s, e) for s, e in domain.candidate_spans(doc)]
            for k in keys:
                values = [t.meta["difficulty"][k] for t in tasks if k in t.meta.get("difficulty", {})]
                if values:
                    uniform[k].append(mean(values))
        for k in keys:
            m[f"constructor/posed_{k}"] = mean([t.meta["difficulty"][k] for t in posed if k in t.meta.get("difficulty", {})])
            m[f"constructor/uniform_{k}"] = mean(uniform[k])
    if probed:
        m["constructor/probed_pages"] = float(len(probed))
        m["constructor/probed_posed_learnability"] = mean([p for p, _ in probed])
        m["constructor/uniform_learnability"] = mean([u for _, u in probed])
        m["constructor/learnability_gain"] = mean([p - u for p, u in probed])
    return m


def self_correction(t1: Sequence[bool], t2: Sequence[bool]) -> dict[str, float]:
    """SCoRe's metrics over paired attempts: Acc@t1, Acc@t2, delta, delta(i->c), delta(c->i)."""
    n = len(t1)
    if n != len(t2):
        raise ValueError(f"attempt lists differ in length: {n} vs {len(t2)}")
    if n == 0:
        return {k: 0.0 for k in ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i")}
    acc1, acc2 = sum(t1) / n, sum(t2) / n
    i_to_c = sum((not a) and b for a, b in zip(t1, t2)) / n
    c_to_i = sum(a and (not b) for a, b in zip(t1, t2)) / n
    return {"acc_t1": acc1, "acc_t2": acc2, "delta": acc2 - acc1, "delta_i_to_c": i_to_c, "delta_c_to_i": c_to_i}


def edit_distance_ratio(a: str, b: str) -> float:
    """How much attempt 2 changed attempt 1: 0 = identical, 1 = nothing in common."""
    return 1.0 - difflib.SequenceMatcher(None, a, b).ratio()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021) from n samples with c correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
