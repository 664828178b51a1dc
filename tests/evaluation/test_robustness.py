"""Robustness measures of Balda et al. (Table I): affine oracles, the quantile rule against a
scan, the registry-only attack choice, and the ``minnorm robustness`` command."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import affine_minimum
from torch import nn

from minnorm.cli import main
from minnorm.data import load_sample
from minnorm.evaluation import (feasibility_bound, minimal_norms, rho_hat_1, rho_hat_2, robustness_measures,
                                smallest_fooling_eps)
from minnorm.models import load_shipped

INF = math.inf


def affine(num_classes: int = 5, dim: int = 16, batch: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, num_classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, dim, generator=g, dtype=torch.float64))
        lin.bias.copy_(0.3 * torch.randn(num_classes, generator=g, dtype=torch.float64))
    x = (0.5 + 0.05 * torch.randn(batch, 1, dim, generator=g, dtype=torch.float64)).clamp(0, 1)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin, x


def distance_oracle(lin: nn.Linear, x: torch.Tensor, p: float) -> torch.Tensor:
    """The distance to the nearest decision boundary from the predicted class (no box)."""
    with torch.no_grad():
        k = lin(x.flatten(1)).argmax(1)
    return affine_minimum(lin, x, k, p)


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_prop1_bound_is_the_boundary_distance_of_an_affine_model(p):
    model, lin, x = affine()
    bound = feasibility_bound(model, x, norm=p, batch_size=4, progress=False)
    torch.testing.assert_close(bound, distance_oracle(lin, x, p))
    assert rho_hat_2(model, x, norm=p, progress=False) == pytest.approx(float(bound.mean()))


@pytest.mark.parametrize("p", [2.0, INF])
def test_deepfool_meets_the_bound_on_an_affine_model(p):
    # one DeepFool step lands on the nearest boundary: the bound times (1 + overshoot) plus the pad
    model, lin, x = affine()
    norms = minimal_norms(model, x, norm=p, progress=False)
    oracle = distance_oracle(lin, x, p)
    assert bool((norms >= oracle * (1 - 1e-9)).all())
    torch.testing.assert_close(norms, 1.02 * (oracle + 1e-4), rtol=1e-6, atol=1e-9)
    expected = float((norms / torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1)).mean())
    assert rho_hat_1(model, x, norm=p, norms=norms) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
def test_smallest_fooling_eps_against_a_scan(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 300, (1,), generator=g))
    norms = torch.rand(n, generator=g, dtype=torch.float64)
    norms[torch.rand(n, generator=g) < 0.005 * seed] = INF
    for rate in (0.0, 0.5, 0.9, 0.99):
        got = smallest_fooling_eps(norms, rate)
        candidates = [float(e) for e in norms.sort().values if float((norms <= e).double().mean()) > rate]
        assert got == (min(candidates) if candidates else INF)


def test_smallest_fooling_eps_edges():
    assert smallest_fooling_eps(torch.tensor([0.3])) == pytest.approx(0.3)
    assert smallest_fooling_eps(torch.tensor([0.1, INF])) == INF
    assert math.isnan(smallest_fooling_eps(torch.zeros(0)))
    with pytest.raises(ValueError, match="rate"):
        smallest_fooling_eps(torch.ones(3), rate=1.0)


def test_attack_choice_through_the_registry():
    model, _, x = affine(batch=4)
    assert robustness_measures(model, x, norm=1, progress=False).attack == "convex-min-l1"
    assert robustness_measures(model, x, norm=2, progress=False).attack == "deepfool-l2"
    with pytest.raises(ValueError, match="fixed-epsilon"):
        minimal_norms(model, x, norm=2, attack="pgd-l2", progress=False)
    with pytest.raises(ValueError, match="l2 norms"):
        minimal_norms(model, x, norm=INF, attack="ddn", progress=False)
    with pytest.raises(ValueError, match="scores"):
        feasibility_bound(model, x, scores="softmax")


def test_report_on_the_shipped_mlp_keeps_correct_samples():
    model = load_shipped("mlp")
    x, y = load_sample()
    x, y = x[:30], y[:30]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    rep = robustness_measures(model, x, y, norm=INF, batch_size=16, progress=False)
    assert rep.samples == int(correct.sum())
    assert rep.test_error == pytest.approx(1 - float(correct.double().mean()))
    kept = x[correct]  # the measures over the correctly classified samples, by hand
    assert rep.rho2 == pytest.approx(float(rep.bounds.double().mean())) and rep.bounds.shape == (rep.samples,)
    torch.testing.assert_close(rep.bounds, feasibility_bound(model, kept, norm=INF, progress=False))
    assert rep.rho1 == pytest.approx(float((rep.minimal_norms.double() / kept.flatten(1).abs().amax(1)).mean()))
    assert 0 < rep.rho2 < rep.eps_99 < INF  # the Prop. 1 bound lies below the attack's norms
    assert rep.eps_99 == pytest.approx(float(rep.minimal_norms.max()))  # 99% of < 100 samples: all of them
    probs = feasibility_bound(model, x[:4], scores="probabilities", progress=False)
    assert bool((probs > 0).all() & torch.isfinite(probs).all())


def test_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["robustness", "--model", "mlp", "--n", "12", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rho-hat-2" in text and "deepfool-linf" in text
    info = json.loads(out.read_text())
    assert info["command"] == "robustness" and info["norm"] == "inf"
    x, y = load_sample()
    direct = robustness_measures(load_shipped("mlp"), x[:12], y[:12], norm=INF, progress=False)
    assert info["rho2"] == pytest.approx(direct.rho2) and info["rho1"] == pytest.approx(direct.rho1)
    assert main(["robustness", "--model", "mlp", "--n", "5", "--attack", "pgd-l2", "--norm", "2"]) == 2
