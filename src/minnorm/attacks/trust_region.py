"""Trust Region attack (Yao et al., "Trust Region Based Adversarial Attack on Neural Networks", 2019).

Algorithm 1 of the paper: pick an attack class from the top-k logits (Section 4.1, best or
hardest class), then repeatedly minimise a model of the margin f = z_y - z_t inside a trust
region of radius eps_j (eq. (3)): linear model for first order, quadratic model with
Hessian-vector products for second order; adapt the radius by the ratio of actual to predicted
change (sigma1 = 0.9, sigma2 = 0.5, eta). Beyond the paper (each behind an option):

- ``refine_steps``: after the first adversarial point keep walking along the decision boundary
  towards the input, so the result estimates the minimal norm rather than the first crossing;
- ``revisit``: re-select the attack class every few steps instead of once;
- targeted attacks (the published ports refuse them), and steps that respect the box exactly
  (the lp step is computed inside the box, not clipped afterwards), with no hard upper cap on
  the radius, so robust models are not left unbroken for lack of travel.

- ``classes``/``restarts``: the k best classes of Section 4.1 attacked at once (rows = samples x
  classes) and random restarts, keeping the smallest adversarial per sample.

Layout: :class:`_State` holds the per-row tensors of Algorithm 1 (a row is one sample and class);
one iteration of the loop in :func:`_run` is :func:`_evaluate_active` (evaluation, and the
index selection of Section 4.1 in :func:`_select`), :func:`_observe` (best adversarial, phase
change, the radius rule of Alg. 1 in :func:`_adapt_radius`) and :func:`_move` (the linear
model's step :func:`_linear_step`, or the quadratic one :func:`_second_order`); the search ends
with the segment search :func:`_pull_back`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..core import (
    AttackRun,
    check_int,
    check_positive,
    check_real,
    dual_exponent,
    lp_norm,
    parse_norm,
    per_objective_gradients,
    register,
    relative_perturbation,
    start_attack,
)
from ..core.norms import holder_step_in_box, min_step_to_hyperplane
from ..core.objectives import logit_difference, logit_margin, top_other_classes
from ..core.segment import regula_falsi
from ._minimal import random_in_ball
from ._trsub import lanczos

__all__ = ["trust_region"]

# Scale-free radii (measured on Fashion-MNIST CNNs, see docs/trust-region.md): the search starts
# at 0.3x the first linearised distance (1x, a DeepFool step, crosses 10-30% farther out; 0.1x
# crosses 3% nearer but costs 3 more passes, which refinement buys back at less), the boundary
# walk at 1x the distance of the first crossing (4x ends 5% higher after 10-20 steps).
_FIRST_RADIUS = 0.3
_REFINE_RADIUS = 1.0
# Restarts start at lp distance 0.5x the best norm so far, as FAB's do (on the shipped cnn, 20
# images, 0.25x to 1.5x changed the median ratio by < 0.5%, within noise of each other).
_RESTART_RADIUS = 0.5


@dataclass(frozen=True)
class _Options:
    """The checked options of :func:`trust_region` (see its docstring)."""
    p: float
    targeted: bool
    steps: int
    refine_steps: int
    adaptive: bool
    radius: float | None
    r_min: float
    r_max: float
    eta: float
    sigma1: float
    sigma2: float
    overshoot: float
    hardest: bool
    top_k: int
    revisit: int
    order: int
    lanczos_steps: int
    line_search: int
    classes: int
    restarts: int


def _check_options(norm, targeted: bool, target_mode: str, radius_bounds, **kw) -> _Options:
    """Validate the arguments of :func:`trust_region` (Alg. 1 needs eta > 1, 0 < sigma2 <= sigma1 < 1)."""
    p = parse_norm(norm)
    if p not in (2.0, math.inf):
        raise NotImplementedError(f"the trust region attack supports L2 and Linf, not l{p:g}")
    if isinstance(kw["order"], bool) or kw["order"] not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {kw['order']!r}")
    if kw["order"] == 2 and p != 2:
        raise NotImplementedError("the second-order trust region attack is defined for L2 only")
    if target_mode not in ("best", "hardest"):
        raise ValueError(f"target_mode must be 'best' or 'hardest', got {target_mode!r}")
    if targeted and target_mode == "hardest":
        raise ValueError("target_mode='hardest' chooses the target class; it cannot be combined with targeted=True")
    for name in ("steps", "top_k", "lanczos_steps", "classes", "restarts"):
        kw[name] = check_int(name, kw[name])
    for name in ("refine_steps", "revisit", "line_search"):
        kw[name] = check_int(name, kw[name], 0)
    check_positive("overshoot", kw["overshoot"], allow_zero=True)
    eta, sigma1, sigma2 = (check_real(name, kw[name]) for name in ("eta", "sigma1", "sigma2"))
    if not (eta > 1 and math.isfinite(eta)):
        raise ValueError(f"eta must be > 1 and finite, got {eta}")
    if not 0 < sigma2 <= sigma1 < 1:
        raise ValueError(f"need 0 < sigma2 <= sigma1 < 1, got sigma1={sigma1}, sigma2={sigma2}")
    r_min, r_max = (check_real("radius_bounds", v) for v in radius_bounds)
    if not 0 < r_min <= r_max:
        raise ValueError(f"radius_bounds must satisfy 0 < min <= max, got {radius_bounds!r}")
    if target_mode == "hardest" and kw["classes"] > 1:
        raise ValueError("classes > 1 keeps the smallest of several classes; target_mode='hardest' asks for the farthest")
    if kw["radius"] is not None:
        check_positive("radius", kw["radius"])
    return _Options(p=p, targeted=bool(targeted), r_min=r_min, r_max=r_max, hardest=target_mode == "hardest", **kw)


def _box_linear_step(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, need: torch.Tensor,
                     cap: torch.Tensor, p: float) -> torch.Tensor:
    """Smallest lp step d (p in 2, inf) with <w, d> >= need and lo <= d <= hi, its norm capped at ``cap``.

    Both the minimiser and the maximiser of <w, d> over the capped ball within the box lie on the
    path d(lam) = clip(lam * u, lo, hi) with u = w (L2) or sign(w) (Linf) (KKT, per coordinate),
    along which <w, d> and ||d|| are non-decreasing. The step is the minimal step onto the
    linearised boundary (:func:`~minnorm.core.norms.min_step_to_hyperplane`, the whole room when
    the box cannot reach it); where that is longer than ``cap`` the path stops at norm ``cap``,
    which is the maximiser of <w, d> in the capped ball (:func:`~minnorm.core.norms.holder_step_in_box`).
    ``need <= 0`` asks for no step. lo <= 0 <= hi, rows are [B, n]; the box goes to both as
    per-coordinate bounds (lo, hi) around the point 0.
    """
    zero = torch.zeros_like(w)
    d, _ = min_step_to_hyperplane(w, need.clamp_min(0), p, zero, (lo, hi))
    long = lp_norm(d, p) > cap
    if bool(long.any()):
        d[long] = holder_step_in_box(w[long], p, cap[long], zero[long], (lo[long], hi[long]))
    return d


class _Margin:
    """Per-sample margin m = z_a - z_c to drive below zero (the f = z_t - z_i of eq. (3)).

    Untargeted ("away" from y): c is the attack class, or the runner-up to y when ``runner``.
    Towards a class b (targeted, or the hardest class): c = b, a = the strongest other class.
    """

    def __init__(self, y: torch.Tensor, target: torch.Tensor, towards: torch.Tensor, runner: torch.Tensor):
        self.y, self.target, self.towards, self.runner = y, target, towards, runner

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.detach()
        up_y = z.scatter(1, self.y[:, None], -math.inf).argmax(1)
        up_t = z.scatter(1, self.target[:, None], -math.inf).argmax(1)
        a = torch.where(self.towards, up_t, self.y)
        c = torch.where(self.towards | ~self.runner, self.target, up_y)
        return logits.gather(1, a[:, None])[:, 0] - logits.gather(1, c[:, None])[:, 0]


def _adv_gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor, towards: torch.Tensor) -> torch.Tensor:
    """Logit gap by which a point is adversarial (> 0) or not: away from y, or towards ``target``
    (:func:`~minnorm.core.objectives.logit_margin`)."""
    return torch.where(towards, logit_margin(logits, target, True), logit_margin(logits, y, False))


@dataclass
class _State:
    """Per-row state of Algorithm 1. Row r attacks sample ``sample[r]`` from the start point
    ``x[r]`` (its flat perturbed input), with the ``rank[r]``-th attack class of Section 4.1; rows
    that start from the same point share the class selection of their ``lead`` row."""
    run: AttackRun
    o: _Options
    sample: torch.Tensor            # [R] the sample each row attacks
    rank: torch.Tensor              # [R] which class of the selection (0: the best, or the hardest)
    lead: torch.Tensor              # [R] the row whose selection this row shares at the start
    flat0: torch.Tensor             # [R, D] the clean input, flat
    x: torch.Tensor                 # [R, D] the current point x_j
    y: torch.Tensor                 # [R] the label (or the target when targeted)
    towards: torch.Tensor           # [R] bool: reach ``target`` (targeted, hardest) instead of leaving y
    target: torch.Tensor            # [R] the attack class i of Alg. 1 (or the target)
    runner: torch.Tensor            # [R] bool: the walk leaves y towards the runner-up
    active: torch.Tensor            # [R] bool: still iterating
    refining: torch.Tensor          # [R] bool: past the first crossing (the boundary walk)
    curved: torch.Tensor            # [R] bool: still using the quadratic model
    vanished: torch.Tensor          # [R] bool: its Hessian-vector product was zero
    n_search: torch.Tensor          # [R] search steps taken
    n_refine: torch.Tensor          # [R] refinement steps taken
    rad: torch.Tensor               # [R] the radius eps_j (nan before the first step)
    predicted: torch.Tensor         # [R] the margin the model predicted for x_j
    prev_margin: torch.Tensor       # [R] the margin at x_{j-1}
    kappa: torch.Tensor             # [R] the walk's margin target
    clean_margin: torch.Tensor      # [R] |margin| at the start
    best: torch.Tensor              # [R, D] the smallest adversarial seen
    best_norm: torch.Tensor         # [R] its norm (inf: none yet)
    best_gap: torch.Tensor          # [R] how far inside the adversarial region it is
    first_norm: torch.Tensor        # [R] norm at the first crossing
    chosen: torch.Tensor            # [R] the class selected at the start
    restart: torch.Tensor           # [R] the round of the row (0: from the input, else a restart)

    @classmethod
    def start(cls, run: AttackRun, o: _Options, sample: torch.Tensor, x: torch.Tensor, rank: torch.Tensor,
              lead: torch.Tensor, restart: int = 0) -> "_State":
        """Rows for the samples ``sample`` starting at the flat points ``x`` in round ``restart``."""
        r, dev, dt = len(sample), x.device, x.dtype
        nan = torch.full((r,), math.nan, dtype=dt, device=dev)
        no = torch.zeros(r, dtype=torch.bool, device=dev)
        flat0 = run.inputs.flatten(1)[sample]
        y = run.labels[sample]
        return cls(run=run, o=o, sample=sample, rank=rank, lead=lead, flat0=flat0, x=x.clone(), y=y,
                   towards=torch.full_like(no, o.targeted or o.hardest), target=y.clone(), runner=no.clone(),
                   active=~no, refining=no.clone(), curved=torch.full_like(no, o.order == 2), vanished=no.clone(),
                   n_search=torch.zeros(r, dtype=torch.long, device=dev), n_refine=torch.zeros(r, dtype=torch.long, device=dev),
                   rad=nan.clone() if o.radius is None else torch.full_like(nan, float(o.radius)),
                   predicted=nan.clone(), prev_margin=nan.clone(), kappa=nan.clone(), clean_margin=nan.clone(),
                   best=flat0.clone(), best_norm=torch.full_like(nan, math.inf), best_gap=nan.clone(),
                   first_norm=torch.full_like(nan, math.inf), chosen=y.clone(), restart=torch.full_like(sample, restart))

    def take(self, rows: torch.Tensor) -> "_State":
        """The state of the rows ``rows`` only."""
        return _State(**{f.name: _index(getattr(self, f.name), rows) for f in fields(self)})

    @staticmethod
    def cat(states: list["_State"]) -> "_State":
        """The rows of several states (of one attack run) one after the other."""
        return _State(**{f.name: torch.cat([getattr(t, f.name) for t in states])
                         if isinstance(getattr(states[0], f.name), torch.Tensor) else getattr(states[0], f.name)
                         for f in fields(_State)})

    def points(self, rows: torch.Tensor) -> torch.Tensor:
        """The current points of ``rows`` in the input's shape."""
        return self.x[rows].view((len(rows),) + self.run.inputs.shape[1:])

    def margin(self, rows: torch.Tensor) -> _Margin:
        return _Margin(self.y[rows], self.target[rows], self.towards[rows], self.runner[rows])

    def safe(self, z: torch.Tensor) -> torch.Tensor:
        """A point counts as adversarial only this far inside, so that the final pass (another
        batch composition, other rounding) agrees with the attack."""
        return 100 * torch.finfo(z.dtype).eps * z.abs().amax(1).clamp_min(1)


def _index(v, rows: torch.Tensor):
    return v[rows] if isinstance(v, torch.Tensor) else v


def _evaluate(s: _State, idx: torch.Tensor, second: torch.Tensor, last: torch.Tensor):
    """Logits, margin and gradient at rows ``idx`` (one forward and one backward pass each).
    Rows ``last`` stop after this evaluation whatever it shows: forward pass only. Rows
    ``second`` also get a Hessian-vector product (:func:`_with_hessian`); it acts on the rows
    ``idx[~last]``, returned with it."""
    run, dt, dev = s.run, s.x.dtype, s.x.device
    z = torch.zeros(len(idx), run.num_classes, dtype=dt, device=dev)
    m, g = torch.zeros(len(idx), dtype=dt, device=dev), torch.zeros_like(s.flat0[idx])
    if bool(last.any()):
        rows = idx[last]
        with torch.no_grad():
            z[last] = run.model(s.points(rows), s.sample[rows])
        m[last] = s.margin(rows)(z[last])
    rest, hvp = idx[~last], None
    if len(rest) == 0:
        return z, m, g, hvp, rest
    if not bool(second[~last].any()):
        z[~last], m[~last], gr = run.model.value_and_grad(s.points(rest), s.margin(rest), s.sample[rest])
        g[~last] = gr.flatten(1)
        return z, m, g, hvp, rest
    z[~last], m[~last], g[~last], hvp = _with_hessian(s, rest)
    return z, m, g, hvp, rest


def _with_hessian(s: _State, rest: torch.Tensor):
    """Logits, margin, gradient at rows ``rest`` and a Hessian-vector product closure ``hvp(v,
    rows)`` of the margin by double backprop (the H of eq. (3); one backward pass charged per
    product and row of the bool mask ``rows`` over ``rest``)."""
    model, margin, dt = s.run.model, s.margin(rest), s.x.dtype
    with torch.enable_grad():
        xr = s.points(rest).detach().requires_grad_(True)
        zr = model(xr, s.sample[rest])
        mr = margin(zr)
        (gr,) = torch.autograd.grad(mr.sum(), xr, create_graph=True)
    model.count_backward(s.sample[rest])

    def hvp(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        if not gr.requires_grad or not bool(rows.any()):
            return out      # the gradient does not depend on x: an affine model
        with torch.enable_grad():
            (h,) = torch.autograd.grad((gr * (v * rows[:, None].to(dt)).view_as(gr)).sum(), xr,
                                       retain_graph=True, allow_unused=True)
        model.count_backward(s.sample[rest[rows]])
        return out if h is None else h.detach().flatten(1)
    return zr.detach(), mr.detach(), gr.detach().flatten(1), hvp


def _select(s: _State, idx: torch.Tensor):
    """Index selection of Section 4.1 at the points of rows ``idx``: the ``top_k`` classes with
    the largest logits, ranked by linearised distance (z_y - z_j) / ||grad(z_y - z_j)||_q
    (smallest first; largest first for the hardest class). One forward and k backward passes per
    row. Returns the logits, and the ranked classes, margins and gradients ([r, k], [r, k],
    [r, k, D])."""
    run, tiny = s.run, torch.finfo(s.x.dtype).tiny
    k = min(s.o.top_k, run.num_classes - 1)
    with torch.enable_grad():
        xr = s.points(idx).detach().requires_grad_(True)
        z = run.model(xr, s.sample[idx])
        zd, yi = z.detach(), s.y[idx]
        cand = top_other_classes(zd, yi, k)
        diff = -logit_difference(z, yi, cand)          # z_y - z_j
        grads = per_objective_gradients(diff, xr).flatten(2)
    run.model.charge(s.sample[idx], backward=k)
    gap = diff.detach()
    q = dual_exponent(s.o.p)
    dist = torch.stack([gap[:, i].clamp_min(0) / lp_norm(grads[:, i], q).clamp_min(tiny) for i in range(k)], 1)
    order = dist.argsort(dim=1, descending=s.o.hardest, stable=True)
    return zd, cand.gather(1, order), gap.gather(1, order), grads[torch.arange(len(idx), device=idx.device)[:, None], order]


def _selected(s: _State, idx: torch.Tensor, shared: bool):
    """Attack class of each row ``idx`` by :func:`_select`: the class of the row's rank, at its
    own point, or (``shared``, at the start) at the point of its ``lead`` row, selected once."""
    if shared:
        leads = torch.unique(s.lead[idx])
        pos = torch.searchsorted(leads, s.lead[idx])
    else:
        leads, pos = idx, torch.arange(len(idx), device=idx.device)
    zd, classes, gaps, grads = _select(s, leads)
    rank = s.rank[idx].clamp_max(classes.shape[1] - 1)[:, None]
    return zd[pos], classes[pos].gather(1, rank)[:, 0], gaps[pos].gather(1, rank)[:, 0], grads[pos, rank[:, 0]]


def _evaluate_active(s: _State, it: int, idx: torch.Tensor):
    """Step 1 of an iteration: evaluate the active rows ``idx``; at the start (and every
    ``revisit`` search steps) choose the attack class by :func:`_select` (Alg. 1, "Index
    Selection"). Returns logits, margins, gradients, the Hessian-vector product closure and its
    rows (order 2), and which rows were selected now."""
    o = s.o
    if it == 0:
        sel = torch.full_like(idx, not o.targeted, dtype=torch.bool)
    elif o.revisit:
        sel = ~s.towards[idx] & ~s.refining[idx] & (s.n_search[idx] % o.revisit == 0)
    else:
        sel = torch.zeros_like(idx, dtype=torch.bool)
    ev = idx[~sel]
    z, m, g, hvp, hrows = _evaluate(s, ev, s.curved[ev] & ~s.refining[ev],
                                    s.refining[ev] & (s.n_refine[ev] >= o.refine_steps))
    if bool(sel.any()):
        zs, ts, ms, gs = _selected(s, idx[sel], it == 0)
        s.target[idx[sel]] = ts
        zf, mf, gf = (torch.zeros((len(idx),) + v.shape[1:], dtype=v.dtype, device=v.device) for v in (z, m, g))
        zf[~sel], mf[~sel], gf[~sel] = z, m, g
        zf[sel], mf[sel], gf[sel] = zs, ms, gs
        z, m, g = zf, mf, gf
        if it == 0:
            s.chosen[idx] = s.target[idx]
            if o.order == 2:
                # the selection pass built no double-backprop graph: evaluate again so that
                # the first step can use the quadratic model too
                z, m, g, hvp, hrows = _evaluate(s, idx, s.curved[idx], torch.zeros_like(sel))
                sel = torch.zeros_like(sel)
    if it == 0:
        s.clean_margin[idx] = m.abs()
    return z, m, g, hvp, hrows, sel


def _adapt_radius(s: _State, idx: torch.Tensor, m: torch.Tensor, sel: torch.Tensor, r: torch.Tensor,
                  ref: torch.Tensor) -> torch.Tensor:
    """The radius rule of Alg. 1: rho = actual / predicted change of the margin; eps x eta if
    rho > sigma1, / eta if rho < sigma2, clamped to ``radius_bounds``. Refinement moves along the
    boundary, where the predicted change has either sign: the linear model is judged there by
    its relative error (grow below 1 - sigma1, shrink above 1 - sigma2), with no upper bound."""
    o, tiny = s.o, torch.finfo(m.dtype).tiny
    pm, pr = s.prev_margin[idx], s.predicted[idx]
    ok = torch.isfinite(pm) & torch.isfinite(pr) & ~sel
    change, actual = pr - pm, m - pm
    rho = actual / torch.where(change != 0, change, torch.ones_like(change))
    err = (actual - change).abs() / change.abs().clamp_min(tiny)
    grow = ok & torch.where(ref, err < 1 - o.sigma1, (change < 0) & (rho > o.sigma1))
    shrink = ok & torch.where(ref, err > 1 - o.sigma2, (change < 0) & (rho < o.sigma2))
    r = torch.where(grow, r * o.eta, torch.where(shrink, r / o.eta, r))
    return torch.where(ref, r.clamp_min(o.r_min), r.clamp(o.r_min, o.r_max))


def _observe(s: _State, idx: torch.Tensor, z: torch.Tensor, m: torch.Tensor, sel: torch.Tensor):
    """Step 2 of an iteration: keep the best adversarial, switch rows that crossed the boundary
    to the walk (the "while" test of Alg. 1; the walk then leaves y towards the runner-up), update
    the radius (:func:`_adapt_radius`) and stop rows that are done. Returns the rows of ``idx``
    that step on, their perturbations, radii, phases and which just crossed."""
    o = s.o
    delta = s.x[idx] - s.flat0[idx]
    dn = lp_norm(delta, o.p)
    gap, thr = _adv_gap(z, s.y[idx], s.target[idx], s.towards[idx]), s.safe(z)
    adv = gap > thr
    better = adv & (dn < s.best_norm[idx])
    s.best[idx] = torch.where(better[:, None], s.x[idx], s.best[idx])
    s.best_norm[idx] = torch.where(better, dn, s.best_norm[idx])
    s.best_gap[idx] = torch.where(better, gap - thr, s.best_gap[idx])
    new = adv & ~s.refining[idx]
    s.first_norm[idx] = torch.where(new, dn, s.first_norm[idx])
    r, ref = s.rad[idx], s.refining[idx]
    if o.adaptive:
        r = _adapt_radius(s, idx, m, sel, r, ref)
    # The walk's margin target kappa doubles after a step that lands outside the adversarial
    # region and halves after one inside: it tracks the linearisation error.
    r = torch.where(new, _REFINE_RADIUS * dn, r)
    kap = s.kappa[idx]
    s.kappa[idx] = torch.where(new, o.overshoot * s.clean_margin[idx],
                               torch.where(ref, torch.where(adv, kap / 2, kap * 2), kap))
    s.refining[idx] = ref = ref | adv
    s.runner[idx] = s.runner[idx] | (new & ~s.towards[idx])
    done = (ref & (s.n_refine[idx] >= o.refine_steps)) | (~ref & (s.n_search[idx] >= o.steps)) | (s.best_norm[idx] == 0)
    s.active[idx] = ~done
    s.rad[idx] = r
    return ~done, delta, r, ref, new


def _linear_step(s: _State, kid: torch.Tensor, z: torch.Tensor, m: torch.Tensor, g: torch.Tensor,
                 delta: torch.Tensor, r: torch.Tensor, ref: torch.Tensor):
    """The first-order step of eq. (3) (the linear model, H = 0), inside the box.

    Search rows: the smallest step to the linearised boundary (plus the overshoot), at most the
    radius eps_j long; the first radius is 0.3x the first linearised distance. Refinement rows:
    the nearest point to the input on the linearised boundary (plus kappa), approached by at
    most the radius. Returns the step, the predicted margin, the required decrease, the box
    relative to x_j, and the radii."""
    o, p, tiny = s.o, s.o.p, torch.finfo(m.dtype).tiny
    margin_goal = torch.where(ref, s.kappa[kid], o.overshoot * m.abs()) + s.safe(z)
    need = torch.where(ref, m - (g * delta).sum(1), m) + margin_goal
    lo0, hi0 = s.run.bounds[0] - s.flat0[kid], s.run.bounds[1] - s.flat0[kid]
    lo = torch.where(ref[:, None], lo0, lo0 - delta)
    hi = torch.where(ref[:, None], hi0, hi0 - delta)
    first = torch.isnan(r) & ~ref
    if bool(first.any()):
        full = _box_linear_step(-g[first], lo[first], hi[first], need[first], torch.full_like(r[first], math.inf), p)
        r = r.clone()
        r[first] = (_FIRST_RADIUS * lp_norm(full, p)).clamp(o.r_min, o.r_max)
    cap = torch.where(ref, torch.full_like(r, math.inf), r)
    step = _box_linear_step(-g, lo, hi, need, cap, p)
    move = step - delta
    step = torch.where(ref[:, None], move * (r / lp_norm(move, p).clamp_min(tiny)).clamp_max(1)[:, None], step)
    return step, m + (g * step).sum(1), need, lo, hi, r


def _move(s: _State, idx: torch.Tensor, keep: torch.Tensor, z: torch.Tensor, m: torch.Tensor, g: torch.Tensor,
          delta: torch.Tensor, r: torch.Tensor, ref: torch.Tensor, new: torch.Tensor, hvp, hrows: torch.Tensor) -> None:
    """Step 3 of an iteration: x_{j+1} = clip(x_j + step) for the rows ``idx[keep]`` (Alg. 1,
    "Update"), the step from the linear model (:func:`_linear_step`) or, for order 2, the
    quadratic one (:func:`_second_order`); records the predicted margin for the next ratio."""
    kid, m, g, delta, r, ref, new = idx[keep], m[keep], g[keep], delta[keep], r[keep], ref[keep], new[keep]
    step, pred, need, lo, hi, r = _linear_step(s, kid, z[keep], m, g, delta, r, ref)
    s.rad[kid] = r
    if hvp is not None:
        use = s.curved[kid] & ~ref & torch.isin(kid, hrows)
        pred, step = _second_order(hrows, kid, hvp, g, m, step, pred, need, r, lo, hi, use, s.vanished, s.curved,
                                   s.o.lanczos_steps)
    s.predicted[kid] = torch.where(new, torch.full_like(pred, math.nan), pred)   # the walk switches the margin
    s.prev_margin[kid] = m
    s.x[kid] = (s.flat0[kid] + delta + step).clamp(*s.run.bounds)
    s.n_search[kid] += (~ref).long()
    s.n_refine[kid] += ref.long()


def _iterate(s: _State) -> _State:
    """Algorithm 1 on every row until each stops on its own: at the end of its refinement, or
    after ``steps`` search steps without success."""
    for it in range(s.o.steps + s.o.refine_steps + 1):
        idx = s.active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        z, m, g, hvp, hrows, sel = _evaluate_active(s, it, idx)
        keep, delta, r, ref, new = _observe(s, idx, z, m, sel)
        if bool(keep.any()):
            _move(s, idx, keep, z, m, g, delta, r, ref, new, hvp, hrows)
    return s


def _pull_back(s: _State) -> None:
    """Beyond the paper: ``line_search`` forward passes of regula falsi
    (:func:`~minnorm.core.segment.regula_falsi`) on the segment from the input to each row's best
    adversarial pull it back onto the boundary (the walk aims a little inside the region)."""
    found = torch.isfinite(s.best_norm) & (s.best_norm > 0)
    if not s.o.line_search or not bool(found.any()):
        return
    idx = found.nonzero().squeeze(1)
    zc = s.run.clean_logits[s.sample[idx]]
    y, target, towards = s.y[idx], s.target[idx], s.towards[idx]
    x0, x1 = s.flat0[idx], s.best[idx]

    def probe(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = s.run.model((x0 + t[:, None] * (x1 - x0)).view((len(idx),) + s.run.inputs.shape[1:]), s.sample[idx])
        return _adv_gap(z, y, target, towards) - s.safe(z)
    f0 = _adv_gap(zc, y, target, towards) - s.safe(zc)
    t = regula_falsi(probe, f0, s.best_gap[idx], s.safe(zc), s.o.line_search)
    s.best[idx] = x0 + t[:, None] * (x1 - x0)


def trust_region(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2, targeted: bool = False,
                 steps: int = 100, refine_steps: int = 20, adaptive: bool = True, radius: float | None = None,
                 radius_bounds: tuple[float, float] = (1e-6, math.inf), eta: float = 1.2, sigma1: float = 0.9,
                 sigma2: float = 0.5, overshoot: float = 0.02, target_mode: str = "best", top_k: int = 9,
                 revisit: int = 0, order: int = 1, lanczos_steps: int = 10, line_search: int = 3,
                 classes: int = 1, restarts: int = 1,
                 bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None):
    """Trust Region attack, Algorithm 1 of Yao et al.: first order (linear model of eq. (3)) or
    ``order=2`` (the quadratic model of eq. (3), a QCQP solved by Lanczos; L2 only).

    Search phase (at most ``steps`` iterations per sample, one forward and one backward each):
    step towards the linearised boundary of the attack class with length at most the radius
    eps_j, computed inside the box. ``adaptive`` updates eps_j by the ratio rho of actual to
    predicted change of the margin (Alg. 1: x eta if rho > sigma1, / eta if rho < sigma2, clamped
    to ``radius_bounds``); otherwise eps_j stays fixed ("TR Non-Adap"). ``radius=None`` starts at
    0.3x the first linearised distance of each sample. ``target_mode``: "best" (smallest linearised distance
    (z_y - z_j) / ||grad(z_y - z_j)||_q over the ``top_k`` classes, Section 4.1) or "hardest"
    (largest; the sample must then reach that class). ``revisit=R`` re-selects the best class
    every R search steps (k backward passes each time).

    Refinement (``refine_steps`` iterations after the first adversarial point): the nearest point
    to the input on the linearised boundary of the runner-up class (plus the overshoot), within
    the box, approached by at most a radius that grows or shrinks with the accuracy of the linear
    model (``adaptive=False``: fixed at the crossing distance). The best adversarial seen is
    kept, then ``line_search`` forward passes of regula falsi on the segment from the input to it
    pull it back onto the boundary (the walk aims a little inside the adversarial region).
    ``overshoot=0.02`` is the original's x1.02. Every sample stops on its own: at the end of its
    refinement, or after ``steps`` search steps without success.

    ``order=2`` (search steps only): ``lanczos_steps`` Hessian-vector products per step build a
    Krylov space of the margin's Hessian (see ``_trsub``); the step is the subproblem's solution
    at the smallest radius (<= eps_j) at which the quadratic model predicts the class change. On
    networks whose Hessian-vector product is exactly zero (ReLU, max-pooling) a sample falls back
    to first order after one product, and ``info["hessian_vanished"]`` says so.

    ``classes=k`` (beyond the paper; untargeted, ``target_mode="best"``): attack the k first
    classes of the Section 4.1 ranking at once, one row per sample and class (one selection per
    sample, then each row runs the whole search, walk and line search on its own), and keep the
    smallest adversarial of each sample. ``restarts=r``: r - 1 further rounds, each from a random
    point at lp distance half the best norm so far (samples with an adversarial only; ``generator``
    draws them), again over k classes. Costs about k x r times the passes of one run.

    ``info``: ``target_classes`` (chosen attack class, or the target), ``first_norms`` (norm at
    the first crossing: what the original returns), ``search_steps``, ``refine_steps``,
    ``class_rank`` and ``restart`` (which row won), and ``relative_perturbation`` ||dx||_p /
    ||x||_p (eq. (4); inf where the attack failed).
    """
    o = _check_options(norm, targeted, target_mode, radius_bounds, steps=steps, refine_steps=refine_steps,
                       adaptive=adaptive, radius=radius, eta=eta, sigma1=sigma1, sigma2=sigma2, overshoot=overshoot,
                       top_k=top_k, revisit=revisit, order=order, lanczos_steps=lanczos_steps, line_search=line_search,
                       classes=classes, restarts=restarts)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=o.p, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    return _finish(_winners(_rounds(run, o), run.batch_size))


def _rounds(run: AttackRun, o: _Options) -> _State:
    """The first round from the inputs, then ``restarts - 1`` rounds from random points at lp
    distance ``_RESTART_RADIUS`` x the best norm so far (samples with an adversarial only): the
    rows of every round, one after the other."""
    n, x0, rounds = run.batch_size, run.inputs, []
    norms = torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device)
    for r in range(o.restarts):
        again = torch.arange(n, device=x0.device)
        if r:
            again = again[torch.isfinite(norms) & (norms > 0)]
            if len(again) == 0:
                break
        start = x0[again] if r == 0 else random_in_ball(x0[again], o.p, norms[again] * _RESTART_RADIUS,
                                                        run.generator, run.bounds)
        s = _round(run, o, again, start.flatten(1), r)
        found = lp_norm(s.best - s.flat0, o.p).masked_fill(~torch.isfinite(s.best_norm), math.inf)
        norms = norms.scatter_reduce(0, s.sample, found, reduce="amin")
        rounds.append(s)
    return _State.cat(rounds)


def _round(run: AttackRun, o: _Options, samples: torch.Tensor, start: torch.Tensor, restart: int) -> _State:
    """One run of Algorithm 1 from the flat points ``start`` of ``samples``, batched over the
    ``classes`` best attack classes (rows = samples x classes; one class selection per sample,
    the row of rank j attacks the j-th class), each row pulled back onto the boundary."""
    k = 1 if o.targeted else min(o.classes, run.num_classes - 1)
    rows = torch.arange(len(samples) * k, device=samples.device)
    s = _State.start(run, o, samples.repeat_interleave(k), start.repeat_interleave(k, 0), rows % k, rows - rows % k,
                     restart)
    _iterate(s)
    _pull_back(s)
    return s


def _winners(s: _State, n: int) -> _State:
    """Per sample, the row (over classes and restarts) with the smallest adversarial; the first
    row of the sample where none was found. Ties keep the earlier row (the better-ranked class)."""
    dist = lp_norm(s.best - s.flat0, s.o.p).masked_fill(~torch.isfinite(s.best_norm), math.inf)
    least = torch.full((n,), math.inf, dtype=dist.dtype, device=dist.device).scatter_reduce(0, s.sample, dist, reduce="amin")
    hit = dist == least[s.sample]
    pos = torch.arange(len(dist), device=dist.device)
    first = torch.full((n,), len(dist), dtype=torch.long, device=dist.device).scatter_reduce(
        0, s.sample[hit], pos[hit], reduce="amin")
    return s.take(first)


def _finish(s: _State):
    """The result of the rows, one per sample in order, with the paper's relative perturbation (eq. (4))."""
    run, p = s.run, s.o.p
    res = run.finish(s.best.view_as(run.inputs), info={
        "target_classes": torch.where(s.towards, s.target, s.chosen), "first_norms": s.first_norm,
        "search_steps": s.n_search, "refine_steps": s.n_refine, "class_rank": s.rank, "restart": s.restart})
    res.info["relative_perturbation"] = torch.where(res.success, relative_perturbation(res.adversarials, run.inputs, p),
                                                    torch.full_like(res.norms, math.inf))
    if s.o.order == 2:
        res.info["hessian_vanished"] = s.vanished
    return res


def _second_order(ev: torch.Tensor, kid: torch.Tensor, hvp, g: torch.Tensor, m: torch.Tensor, step: torch.Tensor,
                  pred: torch.Tensor, need: torch.Tensor, r: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  use: torch.Tensor, vanished: torch.Tensor, curved: torch.Tensor, lanczos_steps: int,
                  bisections: int = 30):
    """Quadratic-model step (eq. (3)) for rows ``use`` of ``kid``: the Krylov space of the margin's
    Hessian is built once, then the smallest radius (<= eps_j) whose model value reaches the
    required decrease is found by bisection on the small problem alone (no further products).

    The box enters as an active set: coordinates at a bound that the descent direction -g pushes
    outwards are frozen (the subproblem lives on the others), since clipping them afterwards
    would undo much of the step on images with saturated pixels."""
    if not bool(use.any()):
        return pred, step
    rows = kid[use]
    pos = torch.searchsorted(ev, rows)
    gu = g[use]
    free = ~(((lo[use] >= 0) & (gu > 0)) | ((hi[use] <= 0) & (gu < 0)))
    freef = free.to(g.dtype)

    def local_hvp(v: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(len(ev), v.shape[1], dtype=v.dtype, device=v.device)
        full[pos] = v * freef
        mask = torch.zeros(len(ev), dtype=torch.bool, device=v.device)
        mask[pos] = act
        return hvp(full, mask)[pos] * freef

    cap = r[use].double()
    kry = lanczos(gu * freef, local_hvp, cap, max_iter=lanczos_steps)
    zero = kry.hessian_zero
    vanished[rows] |= zero
    curved[rows[zero]] = False          # a ReLU network: first order from now on
    goal = -need[use].double()
    lo, hi = torch.zeros_like(cap), cap.clone()
    reach = kry.small(cap)[1] <= goal
    for _ in range(bisections):
        mid = (lo + hi) / 2
        ok = kry.small(mid, newton_steps=30)[1] <= goal
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    d, value, _ = kry.solve(torch.where(reach, hi, cap))
    take = ~zero
    sub = step[use]
    sub = torch.where(take[:, None], d.to(step.dtype), sub)
    step = step.clone()
    step[use] = sub
    pred = pred.clone()
    pred[use] = torch.where(take, m[use] + value.to(pred.dtype), pred[use])
    return pred, step


_PAPER = "Yao et al. 2019, Trust Region Based Adversarial Attack on Neural Networks"
_PAPER = "Yao et al. 2019, Trust Region Based Adversarial Attack on Neural Networks"
for _p, _suffix in ((2.0, "l2"), (math.inf, "linf")):
    # Linf's walk converges in about half the steps of L2's (docs/trust-region.md)
    register(f"tr-{_suffix}", trust_region, norm=_p, minimal=True, targeted=True, paper=_PAPER,
             description=f"trust region attack ({_suffix}): adaptive radius, best class, boundary refinement",
             defaults={"norm": _p, "refine_steps": 20 if _p == 2 else 10}, quick={"steps": 20, "refine_steps": 10},
             roles={"certify-upper": {}} if math.isinf(_p) else {})  # the upper end of certify's searches
register("tr2-l2", trust_region, norm=2.0, minimal=True, targeted=True, paper=_PAPER,
         description="second-order trust region attack (l2): quadratic model by Lanczos, for smooth activations",
         defaults={"norm": 2.0, "order": 2}, quick={"steps": 20, "refine_steps": 10, "lanczos_steps": 5})
