"""Robust accuracy, area gap, best-of-all and sanity checks on hand-made per-sample tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minnorm.evaluation.metrics import ALL, area_gap, robust_accuracy, sanity_checks, summarize
from minnorm.evaluation.plan import check_grid, parse_grid
from minnorm.evaluation.results import build_table


def record(batch, labels, preds, attacks):
    start = 10 * batch
    return {"batch": batch, "index": list(range(start, start + len(labels))), "label": labels, "clean_pred": preds,
            "attacks": {a: {"norm": v["norm"], "relative": v.get("relative", [0.1 if n is not None else None
                                                                           for n in v["norm"]]),
                            "passes": v.get("passes", [4] * len(v["norm"])),
                            "over_budget": [False] * len(v["norm"]), "seconds": 1.0,
                            "success_at": v.get("success_at", {})} for a, v in attacks.items()}}


PLANS = [{"name": "a", "mode": "minimal", "epsilons": []}, {"name": "b", "mode": "minimal", "epsilons": []}]


def test_table_best_of_all_and_unattacked_rows():
    # batch 0: samples 0..3, sample 2 misclassified (not attacked); batch 1: one sample
    recs = [record(1, [1], [1], {"a": {"norm": [None]}, "b": {"norm": [None]}}),
            record(0, [0, 1, 2, 3], [0, 1, 0, 3], {"a": {"norm": [0.5, None, 0.2]}, "b": {"norm": [0.3, 0.7, 0.2]}})]
    t = build_table(recs, PLANS)
    assert t["index"].tolist() == [0, 1, 2, 3, 10]  # global batch order, whatever the record order
    assert t["correct"].tolist() == [True, True, False, True, True]
    assert np.isnan(t["a.norm"][2]) and t["a.norm"][1] == math.inf
    assert t["best_norm"][:2].tolist() == [0.3, 0.7] and np.isnan(t["best_norm"][2])
    assert t["best_norm"][3] == 0.2 and t["best_attack"][3] == "a"  # tie: the first attack listed
    assert t["best_attack"].tolist()[:2] == ["b", "b"] and t["best_norm"][4] == math.inf
    assert t["a.seconds"][0] == pytest.approx(1 / 3)  # a batch's seconds shared by its attacked samples
    assert t["best_passes"].tolist() == [8, 8, 0, 8, 8]


def test_robust_accuracy_counts_correct_and_unbroken_over_all_samples():
    norms = np.array([0.1, 0.5, np.inf, np.nan, 0.3])
    correct = np.array([True, True, True, False, True])
    assert robust_accuracy(norms, correct, [0, 0.1, 0.3, 0.49, 1.0]) == [0.8, 0.6, 0.4, 0.4, 0.2]


def test_area_gap_trapezoid():
    grid = [0.0, 1.0, 3.0]
    # differences 0, 0.2, 0.4: area = 0.1 * 1 + 0.3 * 2 = 0.7 over a span of 3
    assert area_gap([1.0, 0.7, 0.5], [1.0, 0.5, 0.1], grid) == pytest.approx(0.7 / 3)
    assert area_gap([0.5], [0.25], [0.3]) == pytest.approx(0.25)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 5), min_size=1, max_size=12), st.lists(st.floats(0, 5), min_size=1, max_size=12))
def test_best_of_all_curve_is_below_every_attack(na, nb):
    n = min(len(na), len(nb))
    rec = record(0, [0] * n, [0] * n, {"a": {"norm": na[:n]}, "b": {"norm": nb[:n]}})
    t = build_table([rec], PLANS)
    grid = [0, 0.5, 1, 2, 5]
    rows = {r["attack"]: r for r in summarize(t, PLANS, grid)}

    def unbroken(norms, eps):  # by hand, with the tolerance rule of minnorm.core.radius
        return sum(not v <= eps * (1 + 1e-4) + 1e-6 for v in norms) / n

    best = [unbroken([min(u, v) for u, v in zip(na[:n], nb[:n])], e) for e in grid]
    assert rows[ALL]["robust_accuracy"] == pytest.approx(best)
    for a, norms in (("a", na[:n]), ("b", nb[:n])):
        curve = [unbroken(norms, e) for e in grid]
        assert rows[a]["robust_accuracy"] == pytest.approx(curve)
        assert all(x >= y for x, y in zip(curve, best))
        gaps = [c - b for c, b in zip(curve, best)]
        area = sum((gaps[i] + gaps[i + 1]) / 2 * (grid[i + 1] - grid[i]) for i in range(len(grid) - 1))
        assert rows[a]["area_gap"] == pytest.approx(area / (grid[-1] - grid[0]))
    assert all(x >= y for x, y in zip(best, best[1:]))


def test_sanity_unbounded_success_below_100():
    t = build_table([record(0, [0, 0], [0, 0], {"a": {"norm": [0.2, None]}, "b": {"norm": [None, None]}})], PLANS)
    rows = summarize(t, PLANS, [0, 1])
    checks = [w["check"] for w in sanity_checks(t, PLANS, rows, [0, 1])]
    assert checks == ["unbounded-success"]
    t = build_table([record(0, [0, 0], [0, 0], {"a": {"norm": [0.2, 0.4]}, "b": {"norm": [None, None]}})], PLANS)
    assert sanity_checks(t, PLANS, summarize(t, PLANS, [0, 1]), [0, 1]) == []


def test_sanity_non_monotone_fixed_epsilon_and_fixed_beating_minimal():
    plans = [{"name": "m", "mode": "minimal", "epsilons": []}, {"name": "f", "mode": "fixed", "epsilons": [0.1, 0.3]}]
    # sample 0 is broken by f at 0.1 but not at 0.3: robustness may not come back at larger radii
    rec = record(0, [0] * 4, [0] * 4, {
        "m": {"norm": [0.9, 0.9, 0.9, 0.9]},
        "f": {"norm": [0.05, 0.2, 0.2, 0.25], "success_at": {"0.1": [True, False, False, False],
                                                               "0.3": [False, True, True, True]}}})
    t = build_table([rec], plans)
    grid = [0, 0.3, 0.6, 1.0]
    rows = summarize(t, plans, grid)
    found = {w["check"]: w["message"] for w in sanity_checks(t, plans, rows, grid, margin=0.1)}
    assert set(found) == {"monotone", "fixed-beats-minimal"}
    assert "1 sample(s)" in found["monotone"] and "eps=0.3" in found["fixed-beats-minimal"]
    assert "fixed-beats-minimal" not in {w["check"] for w in sanity_checks(t, plans, rows, grid, margin=1.0)}


@pytest.mark.parametrize("grid, fix", [([0.1, 0.1], "strictly increasing"), ([0.3, 0.2], "strictly increasing"),
                                       ([-1, 1], ">= 0"), ([], "empty"), ([0, math.inf], "finite")])
def test_bad_grid(grid, fix):
    with pytest.raises(ValueError, match=fix):
        check_grid(grid)


def test_parse_grid():
    assert parse_grid("0:1:5", "g") == [0, 0.25, 0.5, 0.75, 1.0]
    assert parse_grid("0.1,0.3", "g") == [0.1, 0.3]
    with pytest.raises(ValueError, match="--grid must be strictly increasing"):
        parse_grid("0.3,0.1", "--grid")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_grid("a,b", "--grid")
    assert len(parse_grid("0:1:10000", "g")) == 10_000
    with pytest.raises(ValueError, match="count from 2 to 10000"):  # 10**9 built the list for minutes
        parse_grid("0:1:1000000000", "--grid")
