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
"""
from __future__ import annotations

import math

import torch

from ..core import (
    check_int,
    check_positive,
    dual_exponent,
    lp_norm,
    parse_norm,
    register,
    relative_perturbation,
    start_attack,
)
from ._trsub import lanczos

__all__ = ["trust_region"]

# Scale-free radii (measured on Fashion-MNIST CNNs, see docs/trust-region.md): the search starts
# at 0.3x the first linearised distance (1x, a DeepFool step, crosses 10-30% farther out; 0.1x
# crosses 3% nearer but costs 3 more passes, which refinement buys back at less), the boundary
# walk at 1x the distance of the first crossing (4x ends 5% higher after 10-20 steps).
_FIRST_RADIUS = 0.3
_REFINE_RADIUS = 1.0


def _box_linear_step(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, need: torch.Tensor,
                     cap: torch.Tensor, p: float) -> torch.Tensor:
    """Smallest lp step d (p in 2, inf) with <w, d> >= need and lo <= d <= hi, its norm capped at ``cap``.

    Both the minimiser and the maximiser of <w, d> over the capped ball within the box lie on the
    path d(lam) = clip(lam * u, lo, hi) with u = w (L2) or sign(w) (Linf) (KKT, per coordinate),
    along which <w, d> and ||d|| are non-decreasing and piecewise linear (resp. quadratic) in lam.
    Sorting the saturation points gives lam in closed form; lo <= 0 <= hi, rows are [B, n].
    """
    u = w.sign() if math.isinf(p) else w
    au = u.abs()
    t = torch.where(au > 0, torch.where(u > 0, hi, -lo) / au.clamp_min(torch.finfo(u.dtype).tiny),
                    torch.full_like(u, math.inf))
    ts, order = t.sort(dim=1)
    finite = torch.isfinite(ts)
    slope = (w * u).gather(1, order)                      # d<w, d>/dlam of an unsaturated coordinate
    gain = torch.where(finite, slope * ts, torch.zeros_like(ts))
    zero = ts.new_zeros(ts.shape[0], 1)
    a = torch.cat([zero, gain.cumsum(1)], 1)              # <w, d> from the k first saturated coordinates
    b = slope.sum(1, keepdim=True) - torch.cat([zero, slope.cumsum(1)], 1)
    b = b.clamp_min(0)
    right = torch.cat([ts, torch.full_like(zero, math.inf)], 1)
    fend = torch.where(b > 0, a + right * b, a)
    k = (fend < need[:, None]).sum(1, keepdim=True).clamp_max(ts.shape[1])
    lam1 = ((need[:, None] - a.gather(1, k)) / b.gather(1, k)).squeeze(1)
    lam1 = torch.where((fend.gather(1, k).squeeze(1) >= need), lam1.clamp_min(0), torch.full_like(lam1, math.inf))
    if math.isinf(p):
        lam2 = cap
    else:
        uu = u.gather(1, order).square()
        s = torch.cat([zero, torch.where(finite, uu * ts.square(), torch.zeros_like(ts)).cumsum(1)], 1)
        v = (uu.sum(1, keepdim=True) - torch.cat([zero, uu.cumsum(1)], 1)).clamp_min(0)
        nend = torch.where(v > 0, s + right.square() * v, s)
        c2 = cap.square()[:, None]
        k2 = (nend < c2).sum(1, keepdim=True).clamp_max(ts.shape[1])
        lam2 = ((c2 - s.gather(1, k2)) / v.gather(1, k2)).clamp_min(0).sqrt().squeeze(1)
        lam2 = torch.where(nend.gather(1, k2).squeeze(1) >= c2.squeeze(1), lam2, torch.full_like(lam2, math.inf))
    tmax = torch.where(finite, ts, torch.zeros_like(ts)).amax(1)
    lam = torch.minimum(torch.minimum(lam1, lam2), tmax)
    return torch.maximum(torch.minimum(lam[:, None] * u, hi), lo)


class _Margin:
    """Per-sample margin m = z_a - z_c to drive below zero.

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
    """Logit gap by which a point is adversarial (> 0) or not: away from y, or towards ``target``."""
    away = logits.scatter(1, y[:, None], -math.inf).amax(1) - logits.gather(1, y[:, None])[:, 0]
    to = logits.gather(1, target[:, None])[:, 0] - logits.scatter(1, target[:, None], -math.inf).amax(1)
    return torch.where(towards, to, away)


def _segment_root(probe, f_lo: torch.Tensor, f_hi: torch.Tensor, level: torch.Tensor, evaluations: int) -> torch.Tensor:
    """Smallest known adversarial fraction t of the segment [x0, best]: Illinois regula falsi on
    the adversarial gap f(t) (f(0) < 0 < f(1)), ``evaluations`` forward passes in all.

    The gap is nearly affine along a short segment (exactly so within one linear region of a ReLU
    network), so false position lands within float noise in 2-3 passes where bisection needs
    about 10 for 0.1%; the Illinois halving keeps a curved gap from stalling one end. Each probe
    aims at f = ``level`` (> 0, tiny) rather than at f = 0, so that it lands clearly on one side:
    a probe at the exact root would let rounding (another batch composition) pick the side."""
    t_lo, t_hi = torch.zeros_like(f_lo), torch.ones_like(f_hi)
    side = torch.zeros_like(f_lo)            # +1: the last update moved t_hi, -1: t_lo
    for _ in range(evaluations):
        w = t_hi - t_lo
        c = torch.minimum(level, f_hi / 2)
        t = t_hi - (f_hi - c) * w / (f_hi - f_lo)
        # a guard band keeps each probe strictly inside the bracket
        t = torch.minimum(torch.maximum(t, t_lo + 1e-3 * w), t_hi - 1e-3 * w)
        f = probe(t)
        hit = f > 0
        f_lo = torch.where(hit & (side > 0), f_lo / 2, f_lo)
        f_hi = torch.where(~hit & (side < 0), f_hi / 2, f_hi)
        t_hi, f_hi = torch.where(hit, t, t_hi), torch.where(hit, f, f_hi)
        t_lo, f_lo = torch.where(hit, t_lo, t), torch.where(hit, f_lo, f)
        side = torch.where(hit, torch.ones_like(side), -torch.ones_like(side))
    return t_hi


def trust_region(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2, targeted: bool = False,
                 steps: int = 100, refine_steps: int = 20, adaptive: bool = True, radius: float | None = None,
                 radius_bounds: tuple[float, float] = (1e-6, math.inf), eta: float = 1.2, sigma1: float = 0.9,
                 sigma2: float = 0.5, overshoot: float = 0.02, target_mode: str = "best", top_k: int = 9,
                 revisit: int = 0, order: int = 1, lanczos_steps: int = 10, line_search: int = 3,
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

    ``info``: ``target_classes`` (chosen attack class, or the target), ``first_norms`` (norm at
    the first crossing: what the original returns), ``search_steps``, ``refine_steps``, and
    ``relative_perturbation`` ||dx||_p / ||x||_p (eq. (4); inf where the attack failed).
    """
    p = parse_norm(norm)
    if p not in (2.0, math.inf):
        raise NotImplementedError(f"the trust region attack supports L2 and Linf, not l{p:g}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and p != 2:
        raise NotImplementedError("the second-order trust region attack is defined for L2 only")
    if target_mode not in ("best", "hardest"):
        raise ValueError(f"target_mode must be 'best' or 'hardest', got {target_mode!r}")
    if targeted and target_mode == "hardest":
        raise ValueError("target_mode='hardest' chooses the target class; it cannot be combined with targeted=True")
    steps, top_k = check_int("steps", steps), check_int("top_k", top_k)
    lanczos_steps = check_int("lanczos_steps", lanczos_steps)
    refine_steps, revisit = check_int("refine_steps", refine_steps, 0), check_int("revisit", revisit, 0)
    line_search = check_int("line_search", line_search, 0)
    check_positive("overshoot", overshoot, allow_zero=True)
    if not (eta > 1 and math.isfinite(eta)):
        raise ValueError(f"eta must be > 1 and finite, got {eta}")
    if not 0 < sigma2 <= sigma1 < 1:
        raise ValueError(f"need 0 < sigma2 <= sigma1 < 1, got sigma1={sigma1}, sigma2={sigma2}")
    r_min, r_max = (float(v) for v in radius_bounds)
    if not 0 < r_min <= r_max:
        raise ValueError(f"radius_bounds must satisfy 0 < min <= max, got {radius_bounds!r}")
    if radius is not None:
        check_positive("radius", radius)

    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=p, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    x0, y, n = run.inputs, run.labels, run.batch_size
    dev, dt = x0.device, x0.dtype
    flat0 = x0.flatten(1)
    lo0, hi0 = run.bounds[0] - flat0, run.bounds[1] - flat0
    hardest = target_mode == "hardest"
    q = dual_exponent(p)
    k = min(top_k, run.num_classes - 1)
    tiny = torch.finfo(dt).tiny

    def safe(z: torch.Tensor) -> torch.Tensor:
        # a point counts as adversarial only this far inside, so the final pass (another batch
        # composition, other rounding) agrees with the attack
        return 100 * torch.finfo(dt).eps * z.abs().amax(1).clamp_min(1)

    towards = torch.full((n,), targeted or hardest, device=dev)
    target = y.clone()
    runner = torch.zeros(n, dtype=torch.bool, device=dev)

    def evaluate(idx: torch.Tensor, second: torch.Tensor, last: torch.Tensor):
        """Logits, margin and gradient at rows ``idx``. Rows ``last`` stop after this evaluation
        whatever it shows: forward pass only. Rows ``second`` also get a Hessian-vector product
        closure by double backprop (one backward pass charged per product and row); it acts on
        the rows ``idx[~last]``, returned with it."""
        z = torch.zeros(len(idx), run.num_classes, dtype=dt, device=dev)
        m, g = torch.zeros(len(idx), dtype=dt, device=dev), torch.zeros_like(flat0[idx])
        if bool(last.any()):
            with torch.no_grad():
                z[last] = run.model(x[idx[last]], idx[last])
            m[last] = _Margin(y[idx[last]], target[idx[last]], towards[idx[last]], runner[idx[last]])(z[last])
        rest, hvp = idx[~last], None
        if len(rest) == 0:
            return z, m, g, hvp, rest
        margin = _Margin(y[rest], target[rest], towards[rest], runner[rest])
        if not bool(second[~last].any()):
            z[~last], m[~last], gr = run.model.value_and_grad(x[rest], margin, rest)
            g[~last] = gr.flatten(1)
            return z, m, g, hvp, rest
        with torch.enable_grad():
            xr = x[rest].detach().requires_grad_(True)
            zr = run.model(xr, rest)
            mr = margin(zr)
            (gr,) = torch.autograd.grad(mr.sum(), xr, create_graph=True)
        run.model.count_backward(rest)
        z[~last], m[~last], g[~last] = zr.detach(), mr.detach(), gr.detach().flatten(1)

        def hvp(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(v)
            if not gr.requires_grad or not bool(rows.any()):
                return out      # the gradient does not depend on x: an affine model
            with torch.enable_grad():
                (h,) = torch.autograd.grad((gr * (v * rows[:, None].to(dt)).view_as(gr)).sum(), xr,
                                           retain_graph=True, allow_unused=True)
            run.model.count_backward(rest[rows])
            return out if h is None else h.detach().flatten(1)
        return z, m, g, hvp, rest

    def select(idx: torch.Tensor):
        """Attack class among the top-k by linearised distance (Section 4.1): k backward passes."""
        with torch.enable_grad():
            xr = x[idx].detach().requires_grad_(True)
            z = run.model(xr, idx)
            zd, yi = z.detach(), y[idx]
            cand = zd.scatter(1, yi[:, None], -math.inf).topk(k, dim=1).indices
            best_d = torch.full((len(idx),), -math.inf if hardest else math.inf, dtype=dt, device=dev)
            best_c, best_g = cand[:, 0].clone(), torch.zeros_like(xr).flatten(1)
            one_y = torch.zeros_like(zd).scatter(1, yi[:, None], 1.0)
            for i in range(k):
                c = cand[:, i]
                # a scalar objective: explicit grad_outputs make torch import sympy (2 s) on first use
                w = one_y - torch.zeros_like(zd).scatter(1, c[:, None], 1.0)
                (g,) = torch.autograd.grad((z * w).sum(), xr, retain_graph=i < k - 1)
                run.model.count_backward(idx)
                g = g.flatten(1)
                gap = zd.gather(1, yi[:, None])[:, 0] - zd.gather(1, c[:, None])[:, 0]
                d = gap.clamp_min(0) / lp_norm(g, q).clamp_min(tiny)
                better = d > best_d if hardest else d < best_d
                best_d, best_c = torch.where(better, d, best_d), torch.where(better, c, best_c)
                best_g = torch.where(better[:, None], g, best_g)
        m = zd.gather(1, yi[:, None])[:, 0] - zd.gather(1, best_c[:, None])[:, 0]
        return zd, best_c, m, best_g

    def _probe(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Forward pass at x0 + s (best - x0) for rows ``idx``: how far inside the adversarial region."""
        with torch.no_grad():
            z = run.model((flat0[idx] + s[:, None] * (best[idx] - flat0[idx])).view((len(idx),) + x0.shape[1:]), idx)
        return _adv_gap(z, y[idx], target[idx], towards[idx]) - safe(z)

    x = x0.clone()
    active = torch.ones(n, dtype=torch.bool, device=dev)
    refining = torch.zeros_like(active)
    curved = torch.full_like(active, order == 2)          # rows still using the quadratic model
    vanished = torch.zeros_like(active)
    n_search = torch.zeros(n, dtype=torch.long, device=dev)
    n_refine = torch.zeros_like(n_search)
    nan = torch.full((n,), math.nan, dtype=dt, device=dev)
    rad = nan.clone() if radius is None else torch.full_like(nan, float(radius))
    predicted, prev_margin = nan.clone(), nan.clone()      # margin predicted by the model, and before the step
    best, best_norm, first_norm = flat0.clone(), torch.full_like(nan, math.inf), torch.full_like(nan, math.inf)
    best_gap = nan.clone()
    chosen, kappa, clean_margin = y.clone(), nan.clone(), nan.clone()

    for it in range(steps + refine_steps + 1):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        # 1. evaluate the active rows (class selection at the start, and every `revisit` steps)
        if it == 0:
            sel = torch.full_like(idx, not targeted, dtype=torch.bool)
        elif revisit:
            sel = ~towards[idx] & ~refining[idx] & (n_search[idx] % revisit == 0)
        else:
            sel = torch.zeros_like(idx, dtype=torch.bool)
        ev = idx[~sel]
        z, m, g, hvp, hrows = evaluate(ev, curved[ev] & ~refining[ev], refining[ev] & (n_refine[ev] >= refine_steps))
        if bool(sel.any()):
            zs, ts, ms, gs = select(idx[sel])
            target[idx[sel]] = ts
            zf, mf, gf = (torch.zeros((len(idx),) + v.shape[1:], dtype=dt, device=dev) for v in (z, m, g))
            zf[~sel], mf[~sel], gf[~sel] = z, m, g
            zf[sel], mf[sel], gf[sel] = zs, ms, gs
            z, m, g = zf, mf, gf
            if it == 0:
                chosen[idx] = target[idx]
                if order == 2:
                    # the selection pass built no double-backprop graph: evaluate again so that
                    # the first step can use the quadratic model too
                    z, m, g, hvp, hrows = evaluate(idx, curved[idx], torch.zeros_like(sel))
                    sel = torch.zeros_like(sel)
        if it == 0:
            clean_margin[idx] = m.abs()
        # 2. best adversarial, phase changes, trust-region ratio (Alg. 1)
        xi = x[idx].flatten(1)
        delta = xi - flat0[idx]
        dn = lp_norm(delta, p)
        gap, thr = _adv_gap(z, y[idx], target[idx], towards[idx]), safe(z)
        adv = gap > thr
        better = adv & (dn < best_norm[idx])
        best[idx] = torch.where(better[:, None], xi, best[idx])
        best_norm[idx] = torch.where(better, dn, best_norm[idx])
        best_gap[idx] = torch.where(better, gap - thr, best_gap[idx])
        new = adv & ~refining[idx]
        first_norm[idx] = torch.where(new, dn, first_norm[idx])
        r, ref = rad[idx], refining[idx]
        if adaptive:
            pm, pr = prev_margin[idx], predicted[idx]
            ok = torch.isfinite(pm) & torch.isfinite(pr) & ~sel
            change, actual = pr - pm, m - pm
            rho = actual / torch.where(change != 0, change, torch.ones_like(change))
            # refinement moves along the boundary, where the predicted change has either sign:
            # judge the linear model by its relative error there
            err = (actual - change).abs() / change.abs().clamp_min(tiny)
            grow = ok & torch.where(ref, err < 1 - sigma1, (change < 0) & (rho > sigma1))
            shrink = ok & torch.where(ref, err > 1 - sigma2, (change < 0) & (rho < sigma2))
            r = torch.where(grow, r * eta, torch.where(shrink, r / eta, r))
            r = torch.where(ref, r.clamp_min(r_min), r.clamp(r_min, r_max))
        # The walk's margin target kappa doubles after a step that lands outside the adversarial
        # region and halves after one inside: it tracks the linearisation error.
        r = torch.where(new, _REFINE_RADIUS * dn, r)
        kap = kappa[idx]
        kappa[idx] = torch.where(new, overshoot * clean_margin[idx],
                                 torch.where(ref, torch.where(adv, kap / 2, kap * 2), kap))
        refining[idx] = ref = ref | adv
        runner[idx] = runner[idx] | (new & ~towards[idx])
        done = (ref & (n_refine[idx] >= refine_steps)) | (~ref & (n_search[idx] >= steps)) | (best_norm[idx] == 0)
        active[idx] = ~done
        rad[idx] = r
        keep = ~done
        if not bool(keep.any()):
            continue
        # 3. steps: search rows towards the boundary, refinement rows towards the input along it
        kid, m, g, delta, r, ref, new = idx[keep], m[keep], g[keep], delta[keep], r[keep], ref[keep], new[keep]
        margin_goal = torch.where(ref, kappa[kid], overshoot * m.abs()) + safe(z[keep])
        need = torch.where(ref, m - (g * delta).sum(1), m) + margin_goal
        lo = torch.where(ref[:, None], lo0[kid], lo0[kid] - delta)
        hi = torch.where(ref[:, None], hi0[kid], hi0[kid] - delta)
        first = torch.isnan(r) & ~ref
        if bool(first.any()):
            full = _box_linear_step(-g[first], lo[first], hi[first], need[first], torch.full_like(r[first], math.inf), p)
            r = r.clone()
            r[first] = (_FIRST_RADIUS * lp_norm(full, p)).clamp(r_min, r_max)
        cap = torch.where(ref, torch.full_like(r, math.inf), r)
        step = _box_linear_step(-g, lo, hi, need, cap, p)
        rad[kid] = r
        move = step - delta
        step = torch.where(ref[:, None], move * (r / lp_norm(move, p).clamp_min(tiny)).clamp_max(1)[:, None], step)
        pred = m + (g * step).sum(1)
        if hvp is not None:
            pred, step = _second_order(hrows, kid, hvp, g, m, step, pred, need, r, lo, hi,
                                       curved[kid] & ~ref & torch.isin(kid, hrows), vanished, curved, lanczos_steps)
        predicted[kid] = torch.where(new, nan[kid], pred)    # entering refinement switches the margin
        prev_margin[kid] = m
        x[kid] = (flat0[kid] + delta + step).clamp(*run.bounds).view_as(x[kid])
        n_search[kid] += (~ref).long()
        n_refine[kid] += ref.long()

    found = torch.isfinite(best_norm) & (best_norm > 0)
    if line_search and bool(found.any()):
        idx = found.nonzero().squeeze(1)
        zc = run.clean_logits[idx]
        f0 = _adv_gap(zc, y[idx], target[idx], towards[idx]) - safe(zc)
        t = _segment_root(lambda s: _probe(s, idx), f0, best_gap[idx], safe(zc), line_search)
        best[idx] = flat0[idx] + t[:, None] * (best[idx] - flat0[idx])
    res = run.finish(best.view_as(x0), info={
        "target_classes": torch.where(towards, target, chosen), "first_norms": first_norm,
        "search_steps": n_search, "refine_steps": n_refine})
    res.info["relative_perturbation"] = torch.where(res.success, relative_perturbation(res.adversarials, x0, p),
                                                    torch.full_like(res.norms, math.inf))
    if order == 2:
        res.info["hessian_vanished"] = vanished
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
for _p, _suffix in ((2.0, "l2"), (math.inf, "linf")):
    # Linf's walk converges in about half the steps of L2's (docs/trust-region.md)
    register(f"tr-{_suffix}", trust_region, norm=_p, minimal=True, targeted=True, paper=_PAPER,
             description=f"trust region attack ({_suffix}): adaptive radius, best class, boundary refinement",
             defaults={"norm": _p, "refine_steps": 20 if _p == 2 else 10}, quick={"steps": 20, "refine_steps": 10})
register("tr2-l2", trust_region, norm=2.0, minimal=True, targeted=True, paper=_PAPER,
         description="second-order trust region attack (l2): quadratic model by Lanczos, for smooth activations",
         defaults={"norm": 2.0, "order": 2}, quick={"steps": 20, "refine_steps": 10, "lanczos_steps": 5})
