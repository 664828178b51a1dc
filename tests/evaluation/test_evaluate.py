"""``minnorm.evaluate`` against oracles: direct attack calls, a linear model's exact distances,
the pass budget read off the attacks' own counters, and its input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels
from torch import nn

import minnorm
from minnorm.attacks import get
from minnorm.evaluation.run import batch_seed


class Binary(nn.Module):
    """logits (z, -z) with z = <w, x> + b: the decision boundary is the hyperplane z = 0, so the
    exact minimal L2 distance of x is |z| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([z, -z], dim=1)


def binary_problem(n=8):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, generator=g, dtype=torch.float64)
    u = w / w.norm()
    d = torch.linspace(0.05, 0.4, n, dtype=torch.float64)
    side = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n // 2)
    x = (0.5 + (d * side)[:, None] * u).view(n, 1, 8, 8)  # in [0.1, 0.9]: |u_j| <= 1
    model = Binary(w, -0.5 * float(w.sum())).double().eval()
    y = (side < 0).long()  # z > 0 -> class 0
    return model, x, y, d


def test_eps_search_finds_the_exact_distance_of_a_linear_model():
    # FGM-L2 steps along -w/||w|| for label 0 (and +w for label 1): it succeeds iff eps > d, so the
    # bisection on [0, 1] must end within 1/2^10 above the true distance.
    model, x, y, d = binary_problem()
    ev = minnorm.evaluate(model, (x, y), ["fgm-l2"], 2, eps_search=True, search_max=1.0, search_steps=10,
                          batch_size=3, progress=False)
    norms = torch.as_tensor(ev.table["fgm-l2.norm"])
    assert ev.clean_accuracy == 1.0
    assert torch.all(norms >= d - 1e-9) and torch.all(norms <= d + 1 / 2 ** 10 + 1e-9), (norms, d)
    # one call at search_max, then one per bisection step, each costing what a direct call costs
    one = get("fgm-l2")(model, x[:1], y[:1], eps=0.5)
    per_call = int(one.forward_passes[0] + one.backward_passes[0])
    assert ev.table["fgm-l2.passes"].tolist() == [per_call * 11] * len(d)
    assert ev.row()["success_rate"] == 1.0 and ev.warnings == []


def test_minimal_attack_matches_a_direct_call_and_skips_misclassified():
    model = tiny_mlp()
    x = tiny_inputs(7)
    y = true_labels(model, x, wrong=(1, 4))
    ev = minnorm.evaluate(model, (x, y), ["deepfool-l2", "ddn"], 2, batch_size=4, seed=5, quick=True,
                          progress=False)
    t = ev.table
    assert ev.clean_accuracy == pytest.approx(5 / 7)
    assert np.isnan(t["ddn.norm"][[1, 4]]).all() and t["ddn.passes"][[1, 4]].tolist() == [0, 0]
    for name in ("deepfool-l2", "ddn"):
        spec = get(name)
        for b, rows in ((0, [0, 2, 3]), (1, [5, 6])):
            gen = torch.Generator().manual_seed(batch_seed(5, b, name))
            direct = spec(model, x[rows], y[rows], generator=gen, **spec.quick)
            assert np.allclose(t[f"{name}.norm"][rows], direct.norms.double().numpy())
            assert t[f"{name}.passes"][rows].tolist() == (direct.forward_passes + direct.backward_passes).tolist()
    best = np.fmin(t["ddn.norm"], t["deepfool-l2.norm"])
    assert np.array_equal(t["best_norm"], best, equal_nan=True)
    expect = [float(((t["correct"]) & ~(best <= e)).sum()) / 7 for e in ev.grid]
    assert ev.row()["robust_accuracy"] == pytest.approx(expect)


def test_fixed_epsilons_match_direct_calls_in_order():
    model = tiny_mlp()
    x = tiny_inputs(6)
    y = true_labels(model, x)
    eps = [0.1, 0.3, 0.6]
    ev = minnorm.evaluate(model, (x, y), [("pgd-l2", {"steps": 5})], 2, epsilons=eps, seed=1, batch_size=6,
                          progress=False)
    gen = torch.Generator().manual_seed(batch_seed(1, 0, "pgd-l2"))
    expect = torch.full((6,), math.inf, dtype=torch.float64)
    for e in eps:  # one generator per batch and attack, consumed radius after radius
        r = get("pgd-l2")(model, x, y, generator=gen, eps=e, steps=5)
        assert ev.table[f"pgd-l2.success@{e:g}"].tolist() == r.success.tolist()
        # the norm is the smallest adversarial over the radii that worked
        expect = torch.minimum(expect, r.norms.double())
    assert np.allclose(ev.table["pgd-l2.norm"], expect)
    assert ev.row("pgd-l2")["success_at"]["0.6"] == pytest.approx(float(ev.table["pgd-l2.success@0.6"].mean()))


def test_budget_credits_only_samples_within_their_passes():
    model = tiny_mlp()
    x = tiny_inputs(12)
    y = true_labels(model, x)
    kw = dict(epsilons=[0.25], seed=2, batch_size=12, progress=False)
    free = minnorm.evaluate(model, (x, y), [("pgd-l2", {"steps": 20})], 2, **kw)
    passes = free.table["pgd-l2.passes"]
    budget = int(np.median(passes))
    assert passes.min() <= budget < passes.max()  # the test means something only if it splits
    capped = minnorm.evaluate(model, (x, y), [("pgd-l2", {"steps": 20})], 2, budget=budget, **kw)
    t = capped.table
    assert t["pgd-l2.over_budget"].tolist() == (passes > budget).tolist()
    assert t["pgd-l2.success"].tolist() == (free.table["pgd-l2.success"] & (passes <= budget)).tolist()


@pytest.mark.parametrize("kwargs, fix", [
    (dict(attacks=["no-such-attack"]), "unknown attack 'no-such-attack'; available"),
    (dict(attacks=["fgsm"]), "works in the linf norm but the evaluation is in l2"),
    (dict(attacks=["ddn"], norm=3), "evaluation is in l3; no registered attack works in it"),  # listed nothing
    (dict(attacks=["fgm-l2"]), "give the radii"),
    (dict(attacks=["ddn"], grid=[0.5, 0.2]), "strictly increasing"),
    (dict(attacks=["ddn"], budget=0), "budget must be"),
    (dict(attacks=[("ddn", {"stepz": 3})]), "takes no parameter 'stepz'"),
    (dict(attacks=[]), "no attacks given"),
    # a radius given twice used to run at `epsilons` and drop the parameter silently
    (dict(attacks={"pgd-l2": {"eps": 0.5}}, epsilons=[0.3]), r"eps=0.5 in its parameters and epsilons=\[0.3\]"),
    (dict(attacks={"pgd-l2": {"eps": 0.5}}, eps=[0.3]), "both set its radii"),
    (dict(attacks={"pgd-l2": {"eps": 0.5}}, eps_search=True, search_max=1.0), "both set the upper end"),
    # an empty search interval used to report 0% success and a gradient-masking warning
    (dict(attacks=["pgd-l2"], eps_search=True, search_max=0.0), r"search_max \(--search-max\) must be > 0"),
    (dict(attacks={"pgd-l2": {"eps": 0}}, eps_search=True), "pgd-l2's eps must be > 0"),
    # no bisection step reported the box diameter as every sample's minimal norm
    (dict(attacks=["pgd-l2"], eps_search=True, search_steps=0), "search_steps must be an integer from 1 to 64"),
    (dict(attacks=["pgd-l2"], eps_search=True, search_steps=100_000), "search_steps must be an integer from 1 to 64"),
    # inf / nan reached the solver as "inf" / null through the saved config
    (dict(attacks=["ddn"], certify="exact", certify_time_limit=math.inf), "certify_time_limit must be > 0 and finite"),
    (dict(attacks=["ddn"], certify="exact", certify_time_limit=0), "certify_time_limit must be > 0"),
    (dict(attacks=["ddn"], certify="exact", certify_time_limit=1e30), "at most 1e"),
])
def test_bad_input_fails_fast(kwargs, fix):
    model = tiny_mlp()
    x = tiny_inputs(3)
    with pytest.raises(ValueError, match=fix):
        minnorm.evaluate(model, (x, true_labels(model, x)), progress=False, **{"norm": 2, **kwargs})


def test_bad_data_fails_fast():
    model = tiny_mlp()
    x = tiny_inputs(3)
    with pytest.raises(ValueError, match="inputs must lie in the box"):
        minnorm.evaluate(model, (x + 2, true_labels(model, x)), ["ddn"], 2)
    with pytest.raises(TypeError, match="pair"):
        minnorm.evaluate(model, x, ["ddn"], 2)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        minnorm.evaluate(model, (x, torch.zeros(2, dtype=torch.long)), ["ddn"], 2)
    with pytest.raises(ValueError, match=r"training mode.*call model.eval\(\)"):
        minnorm.evaluate(tiny_mlp().train(), (x, true_labels(model, x)), ["ddn"], 2)


def test_linf_run_saves_and_reloads(tmp_path):
    # Linf settings hold float("inf") (the attacks' norm): they must survive JSON and a resume check
    model = tiny_mlp()
    x = tiny_inputs(5)
    y = true_labels(model, x)
    kw = dict(epsilons=[0.05, 0.1], quick=True, progress=False, save_adversarials=False, out=tmp_path / "run")
    ev = minnorm.evaluate(model, (x, y), ["deepfool-linf", "fgsm"], "inf", **kw)
    back = minnorm.evaluation.Evaluation.load(tmp_path / "run")
    assert back.summary == ev.summary and back.config["norm"] == "linf"
    assert np.array_equal(back.table["best_norm"], ev.table["best_norm"])
