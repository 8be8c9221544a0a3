"""Metric arithmetic on hand-built cases: self-correction (SCoRe), pass@k, reviewer quality, histograms."""

from __future__ import annotations

import itertools

import pytest

from alive_exp import metrics as M


def test_self_correction_on_hand_built_attempt_pairs():
    # 10 problems: 4 stay right, 2 wrong -> right, 1 right -> wrong, 3 stay wrong
    t1 = [True] * 4 + [False] * 2 + [True] + [False] * 3
    t2 = [True] * 4 + [True] * 2 + [False] + [False] * 3
    sc = M.self_correction(t1, t2)
    assert sc["acc_t1"] == pytest.approx(0.5) and sc["acc_t2"] == pytest.approx(0.6)
    assert sc["delta_i_to_c"] == pytest.approx(0.2) and sc["delta_c_to_i"] == pytest.approx(0.1)
    assert sc["delta"] == pytest.approx(0.1)


@pytest.mark.parametrize("pairs", list(itertools.product([True, False], repeat=2)))
def test_delta_identities_hold_for_every_mix(pairs):
    t1 = [pairs[0], True, False, True, False]
    t2 = [pairs[1], True, True, False, False]
    sc = M.self_correction(t1, t2)
    assert sc["delta"] == pytest.approx(sc["delta_i_to_c"] - sc["delta_c_to_i"])
    assert sc["delta"] == pytest.approx(sc["acc_t2"] - sc["acc_t1"])


def test_self_correction_rejects_unpaired_attempts():
    with pytest.raises(ValueError):
        M.self_correction([True], [True, False])


def test_pass_at_k_matches_the_unbiased_estimator():
    assert M.pass_at_k(4, 0, 1) == 0.0 and M.pass_at_k(4, 4, 2) == 1.0
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert M.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)


def test_reviewer_quality_counts_missing_verdicts_as_misses():
    q = M.reviewer_quality([False, False, True, None], [False, True, True, False])
    assert q["agreement"] == pytest.approx(0.5)
    assert q["precision"] == pytest.approx(0.5) and q["recall"] == pytest.approx(0.5)


def test_solve_rate_histogram_bins_sum_to_one():
    h = M.solve_rate_histogram([0.0, 0.1, 0.5, 0.6, 0.9, 1.0])
    assert sum(h.values()) == pytest.approx(1.0) and h["0"] == h["100"] == pytest.approx(1 / 6)


def test_reviewer_quality_is_balanced_and_counts_missing_verdicts():
    # 8 wrong solutions, 2 right: a reviewer that rejects everything agrees on 80% of them, but is at chance
    correct = [False] * 8 + [True] * 2
    q = M.reviewer_quality([False] * 10, correct)
    assert q["agreement"] == pytest.approx(0.8) and q["balanced_agreement"] == pytest.approx(0.5)
    assert q["recall"] == pytest.approx(1.0) and q["missing_rate"] == 0.0
    # every wrong one caught, one of two right ones accepted, one review without a verdict
    q = M.reviewer_quality([False] * 8 + [True, None], correct)
    assert q["balanced_agreement"] == pytest.approx((1.0 + 0.5) / 2) and q["missing_rate"] == pytest.approx(0.1)
    assert M.reviewer_quality([True, True], [True, True])["balanced_agreement"] == 1.0  # one class: its agreement
