"""Trust Region attack (Yao et al. 2019): closed forms on affine models, options, contract details."""
import importlib
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

import minnorm
from minnorm.attacks.trust_region import trust_region

tr_module = importlib.import_module("minnorm.attacks.trust_region")
torch.set_num_threads(1)


def affine_problem(d=20, k=5, b=8, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    lin = nn.Linear(d, k).to(dtype).eval()
    x = torch.rand(b, d, dtype=dtype) * 0.2 + 0.4
    with torch.no_grad():
        z = lin(x)
    return lin, x, z.argmax(1), z


def closed_form(lin, x, y, z, p, target=None):
    """min over l != y of (f_y - f_l) / ||w_y - w_l||_q (or the given target l)."""
    q = 1.0 if math.isinf(p) else 2.0
    w = lin.weight.detach()
    dist = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).norm(p=q, dim=2)
    dist = dist.masked_fill(nn.functional.one_hot(y, z.shape[1]).bool(), math.inf)
    return dist.min(1).values if target is None else dist.gather(1, target[:, None])[:, 0]


@pytest.mark.parametrize("p", [2, math.inf])
def test_one_step_on_affine_model_lands_on_closed_form_minimum(p):
    lin, x, y, z = affine_problem()
    res = trust_region(lin, x, y, norm=p, steps=1, refine_steps=0, radius=1e3, overshoot=1e-6, line_search=0,
                       bounds=(-100, 100))
    assert bool(res.success.all())
    torch.testing.assert_close(res.norms, closed_form(lin, x, y, z, p), rtol=1e-5, atol=0)
    assert res.info["search_steps"].tolist() == [1] * 8


@pytest.mark.parametrize("p", [2, math.inf])
def test_refinement_converges_to_minimum_and_hardest_is_farther(p):
    lin, x, y, z = affine_problem(seed=1)
    best = trust_region(lin, x, y, norm=p, bounds=(-100, 100))
    torch.testing.assert_close(best.norms, closed_form(lin, x, y, z, p), rtol=1e-6, atol=0)
    hard = trust_region(lin, x, y, norm=p, target_mode="hardest", bounds=(-100, 100))
    assert bool(hard.success.all())
    assert bool((hard.norms >= best.norms).all())
    # the hardest class is the one whose boundary is farthest; on an affine model reaching it
    # (all other classes beaten) costs at least that distance
    far = hard.info["target_classes"]
    assert hard.adversarials.shape == x.shape
    assert bool((lin(hard.adversarials).argmax(1) == far).all())
    assert bool((hard.norms >= closed_form(lin, x, y, z, p, far) * (1 - 1e-6)).all())


def small_cnn(act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 16), act(),
                      nn.Linear(16, 10))
    with torch.no_grad():   # larger weights than the default init: decisive logits, reachable classes
        for prm in m.parameters():
            prm.mul_(2.0)
    return m.eval()


def cnn_data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_hardest_class_norms_at_least_best_class_norms_on_a_cnn():
    model, (x, _) = small_cnn(), cnn_data(8)
    y = model(x).argmax(1)
    best = trust_region(model, x, y, refine_steps=20, top_k=3)
    hard = trust_region(model, x, y, refine_steps=20, top_k=3, target_mode="hardest")
    both = best.success & hard.success
    assert int(both.sum()) == 8
    assert bool((hard.norms[both] >= best.norms[both]).all())


@pytest.mark.parametrize("p", [2, math.inf])
def test_result_is_best_seen_and_refinement_only_improves(p):
    model, (x, _) = small_cnn(), cnn_data(6)
    y = model(x).argmax(1)
    plain = trust_region(model, x, y, norm=p, refine_steps=0, line_search=0)
    res = trust_region(model, x, y, norm=p, refine_steps=20)
    assert bool(res.success.all()) and bool(plain.success.all())
    torch.testing.assert_close(res.norms, minnorm.core.lp_norm(res.adversarials - x, p))
    assert bool((res.norms <= res.info["first_norms"] * (1 + 1e-6)).all())
    torch.testing.assert_close(plain.norms, plain.info["first_norms"])
    assert float(res.norms.median()) < float(plain.norms.median())
    rel = res.info["relative_perturbation"]
    torch.testing.assert_close(rel, res.norms / minnorm.core.lp_norm(x, p))


def test_targeted_mode_reaches_the_target():
    model, (x, _) = small_cnn(), cnn_data(6)
    pred = model(x).argmax(1)
    target = model(x).topk(3, dim=1).indices[:, 2]
    res = trust_region(model, x, target, targeted=True, steps=50, refine_steps=10)
    assert bool(res.success.all())
    assert bool((model(res.adversarials).argmax(1) == target).all())
    untargeted = trust_region(model, x, pred, steps=50, refine_steps=10)
    assert bool((res.norms >= untargeted.norms * 0.999).all())


def test_box_is_respected_and_other_bounds_work():
    model, (x, _) = small_cnn(), cnn_data(6)
    x = x * 2 - 1
    y = model(x).argmax(1)
    for p in (2, math.inf):
        res = trust_region(model, x, y, norm=p, bounds=(-1, 1), steps=20, refine_steps=5)
        assert float(res.adversarials.min()) >= -1 and float(res.adversarials.max()) <= 1
        assert bool(res.success.any())


def test_revisit_and_non_adaptive_variants_run_and_count_passes():
    model, (x, _) = small_cnn(), cnn_data(6)
    y = model(x).argmax(1)
    base = trust_region(model, x, y, steps=10, refine_steps=0, line_search=0, radius=0.05, adaptive=False)
    rev = trust_region(model, x, y, steps=10, refine_steps=0, line_search=0, radius=0.05, adaptive=False, revisit=2)
    assert bool((rev.backward_passes >= base.backward_passes).all())
    # a fixed radius limits each search step to the radius
    assert bool((base.info["first_norms"][base.success] <= 0.05 * base.info["search_steps"][base.success] + 1e-6).all())


def test_misclassified_samples_stop_at_once():
    model, (x, _) = small_cnn(), cnn_data(4)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10      # already adversarial
    res = trust_region(model, x, y, steps=10, refine_steps=5)
    assert float(res.norms[0]) == 0 and bool(res.success[0])
    assert int(res.forward_passes[0]) == 3      # clean pass, class selection, final pass
    assert int(res.forward_passes[0]) < int(res.forward_passes[1:].min())


def test_batch_matches_samples_one_by_one():
    model, (x, _) = small_cnn(), cnn_data(5)
    x, y = x.double(), model(x).argmax(1)
    model = model.double()
    res = trust_region(model, x, y, steps=20, refine_steps=10)
    for i in range(len(x)):
        one = trust_region(model, x[i:i + 1], y[i:i + 1], steps=20, refine_steps=10)
        torch.testing.assert_close(one.adversarials[0], res.adversarials[i], rtol=1e-7, atol=1e-9)
        assert int(one.forward_passes[0]) == int(res.forward_passes[i])


def test_second_order_on_smooth_and_relu_networks():
    x, _ = cnn_data(4)
    smooth = small_cnn(nn.SiLU)
    y = smooth(x).argmax(1)
    first = trust_region(smooth, x, y, steps=30, refine_steps=3, radius=0.05)
    res = trust_region(smooth, x, y, order=2, steps=30, refine_steps=3, lanczos_steps=4, radius=0.05)
    assert bool(res.success.all())
    assert not bool(res.info["hessian_vanished"].any())
    assert int(res.backward_passes.sum()) > int(first.backward_passes.sum())   # the products are counted
    relu = small_cnn(nn.ReLU)
    y = relu(x).argmax(1)
    kw = {"steps": 40, "refine_steps": 3, "radius": 0.01, "adaptive": False}
    res = trust_region(relu, x, y, order=2, **kw)
    plain = trust_region(relu, x, y, order=1, **kw)
    assert bool(res.info["hessian_vanished"].all())
    torch.testing.assert_close(res.norms, plain.norms)    # it behaves as first order


def test_second_order_step_follows_curvature():
    # margin z_y - z_t = 1 - 0.3 x1 - 4 x2^2: the gradient points along x1 (boundary 3.3 away), the
    # negative curvature along x2 puts the boundary 0.5 away; one quadratic-model step finds it.
    class Curved(nn.Module):
        def forward(self, x):
            f = 1.0 - 0.3 * x[:, 0] - 4 * x[:, 1] ** 2
            return torch.stack([f, torch.zeros_like(f)], 1)
    x = torch.tensor([[0.0, 1e-3]], dtype=torch.float64)
    y = torch.tensor([0])
    kw = {"steps": 1, "refine_steps": 0, "line_search": 0, "radius": 1.0, "adaptive": False, "bounds": (-5, 5)}
    assert not bool(trust_region(Curved().eval(), x, y, **kw).success.any())
    res = trust_region(Curved().eval(), x, y, order=2, **kw)
    assert bool(res.success.all())
    assert 0.5 < float(res.norms[0]) < 0.52
    assert not bool(res.info["hessian_vanished"].any())


@pytest.mark.parametrize("p", [2, math.inf])
def test_box_linear_step_matches_convex_solvers(p):
    rng = np.random.default_rng(0)
    n = 7
    for _ in range(5):
        w = rng.standard_normal(n)
        lo, hi = -rng.uniform(0, 0.5, n), rng.uniform(0, 0.5, n)
        reach = float(np.maximum(w * hi, w * lo).sum())
        need = 0.5 * reach
        d = tr_module._box_linear_step(*(torch.tensor(v)[None] for v in (w, lo, hi)), torch.tensor([need], dtype=torch.float64),
                                       torch.tensor([math.inf], dtype=torch.float64), p)[0].numpy()
        assert w @ d >= need - 1e-9 and (d >= lo - 1e-12).all() and (d <= hi + 1e-12).all()
        if math.isinf(p):   # min t s.t. w.d >= need, |d_i| <= t, box: an LP in (d, t)
            c = np.r_[np.zeros(n), 1.0]
            a_ub = np.vstack([np.r_[-w, 0.0], np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]])
            b_ub = np.r_[-need, np.zeros(2 * n)]
            ref = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lo, hi)) + [(0, None)]).fun
            assert np.abs(d).max() == pytest.approx(ref, rel=1e-7)
        else:
            cons = {"type": "ineq", "fun": lambda v, w=w, need=need: w @ v - need, "jac": lambda v, w=w: w}
            ref = minimize(lambda v: v @ v, np.zeros(n), jac=lambda v: 2 * v, bounds=list(zip(lo, hi)),
                           constraints=[cons], method="SLSQP", options={"ftol": 1e-14, "maxiter": 500}).fun
            assert d @ d == pytest.approx(ref, rel=1e-6)
        # with a cap the step maximises w.d inside the capped ball
        capped = tr_module._box_linear_step(*(torch.tensor(v)[None] for v in (w, lo, hi)),
                                            torch.tensor([reach * 10], dtype=torch.float64),
                                            torch.tensor([0.05], dtype=torch.float64), p)[0].numpy()
        assert np.linalg.norm(capped, ord=p) == pytest.approx(0.05, rel=1e-9)
        # no decrease asked: no step; out of the box's reach: the whole room (within the cap)
        args = [torch.tensor(v)[None] for v in (w, lo, hi)]
        none = tr_module._box_linear_step(*args, torch.tensor([-1.0], dtype=torch.float64),
                                          torch.tensor([math.inf], dtype=torch.float64), p)[0].numpy()
        assert (none == 0).all()
        room = np.where(w > 0, hi, np.where(w < 0, lo, 0.0))
        wide = tr_module._box_linear_step(*args, torch.tensor([2 * reach], dtype=torch.float64),
                                          torch.tensor([math.inf], dtype=torch.float64), p)[0].numpy()
        np.testing.assert_allclose(wide, room, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    model, (x, _) = small_cnn(), cnn_data(2)
    y = model(x).argmax(1)
    with pytest.raises(NotImplementedError):
        trust_region(model, x, y, norm=1)
    with pytest.raises(NotImplementedError):
        trust_region(model, x, y, norm="inf", order=2)
    with pytest.raises(ValueError, match="target_mode"):
        trust_region(model, x, y, targeted=True, target_mode="hardest")
    with pytest.raises(ValueError, match="target_mode"):
        trust_region(model, x, y, target_mode="worst")
    for kw, name in (({"steps": 0}, "steps"), ({"eta": 1.0}, "eta"), ({"sigma1": 0.3}, "sigma"),
                     ({"radius": -1.0}, "radius"), ({"order": 3}, "order"), ({"overshoot": -0.1}, "overshoot"),
                     ({"radius_bounds": (0, 1)}, "radius_bounds"), ({"refine_steps": -1}, "refine_steps")):
        with pytest.raises(ValueError, match=name):
            trust_region(model, x, y, **kw)


def test_empty_batch_float64_and_registry():
    model = small_cnn().double()
    x, y = torch.zeros(0, 1, 8, 8, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    res = trust_region(model, x, y)
    assert res.adversarials.shape == x.shape and res.norms.shape == (0,)
    for name, p in (("tr-l2", 2.0), ("tr-linf", math.inf), ("tr2-l2", 2.0)):
        spec = minnorm.attacks.get(name)
        assert spec.minimal and spec.targeted and spec.norm == p
    x1, _ = cnn_data(1)
    spec = minnorm.attacks.get("tr2-l2")
    res = spec(small_cnn(nn.SiLU), x1, small_cnn(nn.SiLU)(x1).argmax(1), **spec.quick)
    assert bool(res.success.all())


@pytest.mark.parametrize("p", [2, math.inf])
def test_line_search_pulls_an_overshot_crossing_back_to_the_boundary(p):
    lin, x, y, z = affine_problem(seed=2)
    kw = {"norm": p, "steps": 1, "refine_steps": 0, "radius": 1e3, "overshoot": 0.5, "bounds": (-100, 100)}
    far = trust_region(lin, x, y, line_search=0, **kw)
    res = trust_region(lin, x, y, line_search=4, **kw)
    exact = closed_form(lin, x, y, z, p)
    assert bool(res.success.all()) and bool((far.norms > 1.2 * exact).all())
    assert bool((res.norms >= exact * (1 - 1e-9)).all())
    torch.testing.assert_close(res.norms, exact, rtol=1e-4, atol=0)
    assert int(res.forward_passes[0]) == int(far.forward_passes[0]) + 4


# ------------------------------------------------ several classes and restarts (issue 13 item 3)

def _many(name: str, **extra):
    """The registry entry with ``extra`` added to its quick settings."""
    import dataclasses
    spec = minnorm.attacks.get(name)
    return dataclasses.replace(spec, name=f"{name}-many", quick={**spec.quick, **extra})


@pytest.mark.parametrize("name", ["tr-linf", "tr-l2"])
@pytest.mark.parametrize("extra", [{"classes": 3}, {"classes": 3, "restarts": 2}], ids=["k3", "k3r2"])
def test_classes_and_restarts_keep_the_contract(name, extra):
    import test_contract as tc
    spec = _many(name, **extra)
    for targeted in (False, True):
        model, x, y = tc.batch(torch.float32)
        y = tc.target_labels(model, x) if targeted else y
        res = tc.attack(spec, model, x, y, targeted=targeted)
        tc.check_outputs(spec, model, x, y, res, targeted=targeted)
        if targeted:    # one target, one row: class_rank 0 and on target
            assert bool((res.info["class_rank"] == 0).all())
            assert torch.equal(tc.predict(model, res.adversarials)[res.success], y[res.success])
        else:
            tc.check_pass_counts(spec, res)
        for index in (0, tc.WRONG[0]):
            tc.check_best_seen(spec, index, targeted)
    tc.check_determinism(spec)
    if "restarts" not in extra:     # random restarts draw other noise alone than in a batch
        tc.check_batch_equals_single(spec)
        return
    model, x, y = tc.batch(torch.float64)
    a, b = tc.attack(spec, model, x, y, seed=1), tc.attack(spec, model, x, y, seed=2)
    assert a.success.equal(b.success)


@pytest.mark.parametrize("p", [math.inf, 2])
def test_k_classes_never_worse_than_one_class_on_the_same_seed(p):
    model, (x, _) = small_cnn(seed=3).double(), cnn_data(16, seed=4)
    x = x.double()
    y = model(x).argmax(1)
    kw = {"norm": p, "steps": 30, "refine_steps": 5, "generator": None}
    one = trust_region(model, x, y, **kw)
    many = trust_region(model, x, y, classes=4, **kw)
    again = trust_region(model, x, y, classes=4, restarts=2, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert bool((many.success >= one.success).all()) and bool((again.success >= many.success).all())
    ok = one.success
    assert bool((many.norms[ok] <= one.norms[ok] * (1 + 1e-9)).all())
    assert bool((again.norms[many.success] <= many.norms[many.success] * (1 + 1e-9)).all())
    # the other classes win somewhere, and cost their passes
    assert bool((many.info["class_rank"] > 0).any()) and float(many.norms.sum()) < float(one.norms.sum())
    assert bool((many.forward_passes > one.forward_passes).all())
    assert bool((again.forward_passes >= many.forward_passes).all())
    won = many.info["class_rank"] > 0
    assert bool((many.norms[won] < one.norms[won]).all())


def test_classes_on_an_affine_model_keep_the_closed_form_and_rank_the_classes():
    lin, x, y, z = affine_problem(seed=1)
    res = trust_region(lin, x, y, norm=math.inf, classes=3, bounds=(-100, 100))
    torch.testing.assert_close(res.norms, closed_form(lin, x, y, z, math.inf), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="classes"):
        trust_region(lin, x, y, classes=0)
    with pytest.raises(ValueError, match="restarts"):
        trust_region(lin, x, y, restarts=0)
    with pytest.raises(ValueError, match="hardest"):
        trust_region(lin, x, y, classes=2, target_mode="hardest")
