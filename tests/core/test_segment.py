"""core.segment: bisection and regula falsi against closed-form crossings of affine margins."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minnorm.core.counting import CountedModel
from minnorm.core.segment import bisect, bisect_segment, regula_falsi, segment_points

unit = st.floats(0.01, 0.99)


def _affine_rows(t_star: list[float], slope: list[float]):
    t_star = torch.tensor(t_star, dtype=torch.float64)
    slope = torch.tensor(slope, dtype=torch.float64)
    return t_star, slope, (lambda t, rows=None: slope[rows] * (t - t_star[rows]) if rows is not None
                           else slope * (t - t_star))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(unit, st.floats(0.1, 100.0)), min_size=1, max_size=6), st.integers(1, 40))
def test_bisect_brackets_the_crossing(rows, steps):
    t_star, slope, f = _affine_rows(*zip(*rows))
    calls = []

    def probe(t, idx):
        calls.append(len(idx))
        return f(t, idx) > 0

    lo, hi = bisect(probe, torch.zeros_like(t_star), torch.ones_like(t_star), steps)
    assert calls == [len(rows)] * steps
    assert torch.all(hi - lo == 2.0 ** -steps)      # dyadic halvings are exact in float64
    assert torch.all(f(hi) > 0)                      # the returned end is adversarial
    assert torch.all(lo <= t_star) and torch.all(hi - t_star <= 2.0 ** -steps)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(unit, st.booleans()), min_size=1, max_size=8), st.integers(1, 12))
def test_bisect_searches_only_active_rows(rows, steps):
    t_star, slope, f = _affine_rows([r[0] for r in rows], [1.0] * len(rows))
    active = torch.tensor([r[1] for r in rows])
    seen = []
    lo, hi = bisect(lambda t, idx: (seen.append(idx), f(t, idx) > 0)[1], torch.zeros_like(t_star),
                    torch.ones_like(t_star), steps, active=active)
    assert torch.all(lo[~active] == 0) and torch.all(hi[~active] == 1)
    assert all(set(s.tolist()) == set(active.nonzero().flatten().tolist()) for s in seen)
    assert torch.all((hi - lo)[active] == 2.0 ** -steps)
    assert len(seen) == (steps if active.any() else 0)


def test_bisect_rows_retired_by_the_probe_stop_searching():
    """``active`` as a function is read before every step (execute.py retires rows on a spent budget)."""
    t_star, _, f = _affine_rows([0.3, 0.6, 0.9], [1.0, 1.0, 1.0])
    alive = torch.ones(3, dtype=torch.bool)
    counts = torch.zeros(3, dtype=torch.long)

    def probe(t, idx):
        counts[idx] += 1
        alive[1] = counts[1] < 2                    # row 1 runs out after two probes
        return f(t, idx) > 0

    lo, hi = bisect(probe, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 10,
                    active=lambda: alive.clone())
    assert counts.tolist() == [10, 2, 10]
    assert hi[1] - lo[1] == 0.25 and lo[1] <= 0.6 < hi[1]


def test_bisect_segment_on_a_linear_classifier_is_charged_per_row():
    """Two-class linear model: the boundary w.x + b = 0 crosses the segment at t* = -m(x0) / (m(x1) - m(x0))
    with m the logit difference; each probe is one forward pass for each row that was probed."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(5, 2).double()
    x0 = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    w, b = net.weight[1] - net.weight[0], net.bias[1] - net.bias[0]
    m0 = (x0 @ w + b).detach()
    direction = -torch.sign(m0)[:, None] * w.detach() / w.norm().detach()
    x1 = x0 + direction * (m0.abs() / w.norm().detach() * 1.7)[:, None]   # crosses at t* = 1 / 1.7
    labels = (m0 > 0).long()
    counted = CountedModel(net, 7)
    with torch.no_grad():
        t = bisect_segment(lambda pts, rows: counted(pts, rows).argmax(1) != labels[rows], x0, x1, 25)
        assert torch.all(counted(segment_points(x0, x1, t)).argmax(1) != labels)
    assert torch.allclose(t, torch.full_like(t, 1 / 1.7), atol=2.0 ** -25 + 1e-12)
    assert counted.forward_passes.tolist() == [26] * 7


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(unit, st.floats(0.1, 100.0)), min_size=1, max_size=6))
def test_regula_falsi_lands_on_an_affine_root_in_one_probe(rows):
    """On an affine margin the first probe aims at f = level and hits it: t = t* + level / slope."""
    t_star, slope, f = _affine_rows(*zip(*rows))
    level = torch.full_like(t_star, 1e-9)
    count = []
    t = regula_falsi(lambda t: (count.append(1), f(t))[1], f(torch.zeros_like(t_star)), f(torch.ones_like(t_star)),
                     level, 1)
    assert len(count) == 1
    assert torch.all(f(t) > 0)
    assert torch.all((t - t_star - level / slope).abs() <= 1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(unit, st.floats(0.5, 8.0)), min_size=1, max_size=6), st.integers(1, 20))
def test_regula_falsi_on_a_curved_margin_keeps_an_adversarial_end(rows, evaluations):
    """f(t) = exp(k t) - exp(k t*): monotone and convex. The returned t is adversarial, never
    below the root, and after 20 probes within 1e-9 of it (a strongly curved margin
    creeps in from one end for a few probes before the Illinois halving breaks the stall)."""
    t_star = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    k = torch.tensor([r[1] for r in rows], dtype=torch.float64)

    def f(t):
        return torch.exp(k * t) - torch.exp(k * t_star)

    t = regula_falsi(f, f(torch.zeros_like(t_star)), f(torch.ones_like(t_star)), torch.full_like(t_star, 1e-12),
                     evaluations)
    assert torch.all(f(t) > 0) and torch.all(t >= t_star) and torch.all(t <= 1)
    if evaluations == 20:
        assert torch.all(t - t_star <= 1e-9)


def test_regula_falsi_beats_bisection_on_an_affine_margin():
    t_star = torch.tensor([0.123456789, 0.5, 0.987654321], dtype=torch.float64)
    slope = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)

    def f(t):
        return slope * (t - t_star)

    rf = regula_falsi(f, f(torch.zeros(3, dtype=torch.float64)), f(torch.ones(3, dtype=torch.float64)),
                      torch.full((3,), 1e-12, dtype=torch.float64), 3)
    _, bi = bisect(lambda t, rows: f(t) > 0, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 3)
    assert torch.all((rf - t_star).abs() < 1e-9)
    assert torch.all((bi - t_star).abs() > 1e-4) and not math.isnan(float(rf.sum()))
