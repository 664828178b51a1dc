"""Shared lp geometry: norms, dual exponents, Hölder-optimal directions, projections.

Everything works per sample on a batch ``[B, ...]``; radii may be floats or ``[B]`` tensors.
"""
from __future__ import annotations

import math

import torch


def parse_norm(p: float | int | str) -> float:
    """Accept 1, 2, 'inf', 'linf', 'l2', float('inf'), any p >= 1."""
    if isinstance(p, str):
        s = p.strip().lower().lstrip("l")
        try:
            p = math.inf if s in ("inf", "infinity") else float(s)
        except ValueError:
            raise ValueError(f"a norm is l1, l2, linf or a number p >= 1, got {p!r}") from None
    if isinstance(p, bool) or not isinstance(p, (int, float)) and not hasattr(p, "__float__"):
        raise ValueError(f"a norm is l1, l2, linf or a number p >= 1, got {p!r}")  # True would be l1
    p = float(p)
    if not p >= 1:
        raise ValueError(f"norm p must be >= 1 (or inf), got {p}")
    return p


def norm_name(p: float | int | str) -> str:
    """The tag of an lp norm in attack names, configs and files: ``l1``, ``l2``, ``l1.5``, ``linf``
    (``p`` in any form :func:`parse_norm` accepts)."""
    p = parse_norm(p)
    return "linf" if math.isinf(p) else f"l{p:g}"


def norm_label(p: float | int | str) -> str:
    """The display form of :func:`norm_name` (plots, titles, tables): ``L1``, ``L2``, ``Linf``."""
    return "L" + norm_name(p)[1:]


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (q = inf for p = 1, q = 1 for p = inf)."""
    p = parse_norm(p)
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)


def batch_view(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Reshape a per-sample ``[B]`` tensor so it broadcasts against ``like`` ``[B, ...]``."""
    if isinstance(v, torch.Tensor) and v.dim() == 1:
        return v.view(-1, *([1] * (like.dim() - 1)))
    return v


def lp_norm(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample lp norm of ``x`` ``[B, ...]`` -> ``[B]``."""
    p = parse_norm(p)
    flat = x.flatten(1)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    return torch.linalg.vector_norm(flat, ord=p, dim=1)


def relative_perturbation(adversarials: torch.Tensor, inputs: torch.Tensor, p: float) -> torch.Tensor:
    """||adv - x||_p / ||x||_p per sample: rho_p of the trust-region paper (eq. (4)) and the
    relative perturbation of DeepFool; inf for an all-zero input with a nonzero perturbation."""
    return lp_norm(adversarials - inputs, p) / lp_norm(inputs, p)


def holder_direction(g: torch.Tensor, p: float) -> torch.Tensor:
    """Maximiser of <g, d> over the unit lp ball, per sample (Hölder's equality case).

    d = sign(g) |g|^(q-1) / ||g||_q^(q-1) with q the dual exponent, so that <g, d> = ||g||_q.
    p = inf gives sign(g); p = 1 puts the whole budget on the largest |g_i| (first one on ties).
    A zero gradient gives a zero direction.
    """
    p = parse_norm(p)
    flat = g.flatten(1)
    if math.isinf(p):
        d = flat.sign()
    elif p == 1:
        idx = flat.abs().argmax(dim=1, keepdim=True)
        d = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign())
    else:
        q = dual_exponent(p)
        # scale by the max first so neither |g|^(q-1) nor the norm (|g|^2 for p = 2) under/overflows
        scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
        a = flat.abs() / scale if p == 2 else (flat.abs() / scale) ** (q - 1)
        d = flat.sign() * a / lp_norm(a, p).clamp_min(torch.finfo(flat.dtype).tiny)[:, None]
    return d.view_as(g)


def project_lp_ball(delta: torch.Tensor, p: float, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each sample of ``delta`` onto {||d||_p <= radius}, p in {1, 2, inf}."""
    p = parse_norm(p)
    r = batch_view(torch.as_tensor(radius, dtype=delta.dtype, device=delta.device).expand(delta.shape[0]), delta)
    if math.isinf(p):
        return torch.maximum(torch.minimum(delta, r), -r)
    if p == 2:
        n = batch_view(lp_norm(delta, 2), delta)
        return delta * torch.clamp(r / n.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)
    if p == 1:
        return _project_l1_ball(delta, r.flatten())
    raise ValueError(f"projection onto the l{p} ball is not implemented (use p in 1, 2, inf)")


def _project_l1_ball(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    # Duchi et al. (2008): soft-threshold at the level theta that puts the l1 mass at radius.
    flat = delta.flatten(1)
    a = flat.abs()
    inside = a.sum(1) <= radius
    srt, _ = a.sort(dim=1, descending=True)
    cums = srt.cumsum(1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = srt * ks > cums - radius[:, None]
    rho = (cond.to(flat.dtype) * ks).argmax(dim=1)  # last index where cond holds
    theta = (cums.gather(1, rho[:, None]).squeeze(1) - radius) / (rho + 1).to(flat.dtype)
    theta = torch.where(inside, torch.zeros_like(theta), theta.clamp_min(0))
    out = flat.sign() * (a - theta[:, None]).clamp_min(0)
    return out.view_as(delta)


def scale_to_norm(delta: torch.Tensor, p: float, radius: torch.Tensor | float) -> torch.Tensor:
    """Rescale each sample to lp norm exactly ``radius`` (projection onto the sphere); zeros stay zero."""
    if delta.flatten(1).shape[1] == 0:
        return delta.clone()
    # unit-max rows first, so that tiny or huge deltas neither under- nor overflow in the norm
    unit = delta / batch_view(delta.flatten(1).abs().amax(1).clamp_min(torch.finfo(delta.dtype).tiny), delta)
    n = lp_norm(unit, p)
    r = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
    factor = torch.where(n > 0, r / n.clamp_min(torch.finfo(delta.dtype).tiny), torch.zeros_like(n))
    return unit * batch_view(factor, delta)


def clip_box(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Clip to the input box [lower, upper]."""
    return x.clamp(bounds[0], bounds[1])


def holder_step_in_box(g: torch.Tensor, p: float, radius: torch.Tensor | float, x: torch.Tensor | None = None,
                       bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Maximiser of <g, eta> over {||eta||_p <= radius, lower <= x + eta <= upper}, per sample.

    The closed form of (GNII) in Balda et al. (Prop. 2, eqs. (6)-(7)) extended to the input box
    (call it with ``-grad L`` to minimise). Without ``x``/``bounds`` it is ``radius *
    holder_direction(g, p)``. With the box, every coordinate moves with sign(g_i) by ``t_i`` in
    ``[0, room_i]``, room_i being the distance to the face that sign points to, and the problem
    becomes ``max sum |g_i| t_i`` s.t. ``||t||_p <= radius``, ``0 <= t <= room``, solved exactly:

    - p = inf: ``t_i = min(radius, room_i)`` (the coordinates are independent).
    - p = 1: a fractional knapsack: fill the coordinates in decreasing order of |g_i| up to
      their room until the budget is spent.
    - 1 < p < inf: water-filling. The KKT conditions give ``t_i = min(room_i, c * w_i)`` with
      ``w = |holder_direction(g, p)|`` (proportional to |g|^(q-1), the unboxed optimum) and one
      multiplier level ``c`` per sample where ``||t||_p = radius``. ``||t(c)||_p^p`` is
      increasing and has the closed form ``sum_capped room^p + c^p sum_free w^p`` between the
      breakpoints ``room_i / w_i``; sorting them locates the segment and ``c`` solves exactly
      (no bisection). When even ``t = room`` fits in the ball, that is the answer.

    Cost: one sort of the coordinates per sample for p < inf. ``radius`` is a float or a
    ``[B]`` tensor; the result has ``g``'s shape.
    """
    p = parse_norm(p)
    flat = g.flatten(1)
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(flat.shape[0])
    if x is None or bounds is None:
        return holder_direction(g, p) * batch_view(r, g)
    xf = x.flatten(1).to(flat.dtype)
    room = torch.where(flat > 0, bounds[1] - xf, xf - bounds[0]).clamp_min(0)
    room = torch.where(flat == 0, torch.zeros_like(room), room)
    if flat.shape[1] == 0:
        return g.clone()
    if math.isinf(p):
        t = torch.minimum(room, r[:, None])
    elif p == 1:
        t = _greedy_fill(flat.abs(), room, r)
    else:
        tiny = torch.finfo(flat.dtype).tiny
        # Work in units of the radius: t_i <= radius always, so rooms beyond it change nothing.
        u = (room / r.clamp_min(tiny)[:, None]).clamp(max=1.0)
        t = _water_fill(holder_direction(flat, p).abs(), u, p) * r[:, None]
    return (flat.sign() * t).view_as(g)


def _greedy_fill(a: torch.Tensor, room: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    order = a.argsort(dim=1, descending=True, stable=True)
    cap = room.gather(1, order)
    before = cap.cumsum(1) - cap
    t_sorted = torch.minimum((radius[:, None] - before).clamp_min(0), cap)
    return torch.zeros_like(a).scatter_(1, order, t_sorted)


def _water_fill(w: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """t = min(u, c w) with ||t||_p = 1 (or t = u where w > 0 if that fits), u in [0, 1]."""
    free = w > 0
    breaks = torch.where(free, u / torch.where(free, w, torch.ones_like(w)), torch.full_like(w, math.inf))
    breaks, order = breaks.sort(dim=1, stable=True)
    up, wp = u.gather(1, order) ** p, w.gather(1, order) ** p
    up = torch.where(torch.isinf(breaks), torch.zeros_like(up), up)
    capped = up.cumsum(1)  # sum of room^p over the coordinates capped at breakpoint j (inclusive)
    rest = wp.flip(1).cumsum(1).flip(1) - wp  # sum of w^p over the coordinates after j
    rest = rest.clamp_min(0)
    level = torch.where(rest > 0, breaks ** p * rest, torch.zeros_like(rest))
    phi = torch.where(torch.isinf(breaks), torch.full_like(up, math.inf), capped + level)
    k = (phi <= 1).sum(1, keepdim=True)  # phi is nondecreasing along the sorted breakpoints
    total_w = wp.sum(1, keepdim=True)
    prev = (k - 1).clamp_min(0)
    used = torch.where(k > 0, capped.gather(1, prev), torch.zeros_like(total_w))
    left_w = torch.where(k > 0, rest.gather(1, prev), total_w)
    c = torch.where(left_w > 0, ((1 - used).clamp_min(0) / left_w.clamp_min(torch.finfo(w.dtype).tiny)) ** (1 / p),
                    torch.full_like(left_w, math.inf))
    t = torch.where(free, torch.minimum(u, c * w), torch.zeros_like(u))
    # For very large p, w^p of small coordinates can underflow to 0 and leave c = inf; shrinking
    # back onto the sphere keeps the step feasible (it is a no-op whenever nothing underflowed).
    n = lp_norm(t, p)
    return t / torch.where(n > 1, n, torch.ones_like(n))[:, None]


def project_l1_box(delta: torch.Tensor, radius: torch.Tensor | float, x: torch.Tensor,
                   bounds: tuple[float, float]) -> torch.Tensor:
    """Euclidean projection of ``delta`` onto {||d||_1 <= radius, lower <= x + d <= upper}, per sample.

    The KKT conditions give ``d_i = clip(sign(v_i) max(|v_i| - theta, 0), lower - x_i, upper - x_i)``
    with one threshold ``theta >= 0`` per sample (theta = 0 when the clipped ``v`` already lies in
    the ball). The l1 mass ``m(theta) = sum_i min(max(a_i - theta, 0), c_i)`` (``a = |v|``, ``c`` the
    room towards sign(v)) is piecewise linear and nonincreasing with breakpoints ``a_i - c_i`` and
    ``a_i``: sorting them locates the segment where ``m = radius``, and theta solves exactly there.
    This is the projection l1-APGD needs (Croce & Hein, ICML 2021, Sec. 3); projecting on the ball
    and then clipping to the box (Duchi et al.'s projection followed by a clip) is not it.
    """
    flat = delta.flatten(1)
    n = flat.shape[1]
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(flat.shape[0])
    xf = x.flatten(1).to(flat.dtype)
    a = flat.abs()
    cap = torch.where(flat >= 0, bounds[1] - xf, xf - bounds[0]).clamp_min(0)
    if n == 0:
        return delta.clone()
    lower = (a - cap).clamp_min(0)
    kinks = torch.cat([lower, a], dim=1).sort(dim=1).values
    mass = _l1_box_mass(a, lower, kinks)  # [B, 2n], nonincreasing along the sorted kinks
    j = (mass > r[:, None]).sum(1, keepdim=True)  # first kink with mass <= radius
    hi_t = kinks.gather(1, j.clamp(max=2 * n - 1))
    lo_t = torch.where(j > 0, kinks.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(hi_t))
    m_lo, m_hi = _l1_box_mass(a, lower, lo_t), _l1_box_mass(a, lower, hi_t)
    tiny = torch.finfo(flat.dtype).tiny
    slope = (m_lo - m_hi) / (hi_t - lo_t).clamp_min(tiny)
    theta = lo_t + torch.where(slope > 0, (m_lo - r[:, None]) / slope.clamp_min(tiny), torch.zeros_like(lo_t))
    theta = theta.clamp(lo_t, hi_t)
    theta = torch.where(_l1_box_mass(a, lower, torch.zeros_like(hi_t)) <= r[:, None], torch.zeros_like(theta), theta)
    t = torch.minimum((a - theta).clamp_min(0), cap)
    return (flat.sign() * t).view_as(delta)


def _l1_box_mass(a: torch.Tensor, lower: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """m(theta_j) = sum_i (a_i - clip(theta_j, l_i, a_i)) for every column of ``theta`` [B, m] -> [B, m],
    in O((n + m) log n) with sorted prefix sums (no [B, m, n] intermediate)."""
    su, sl = a.sort(dim=1).values, lower.sort(dim=1).values
    cu, cl = su.cumsum(1), sl.cumsum(1)
    theta = theta.contiguous()
    ku = torch.searchsorted(su, theta, right=False)  # count of a_i < theta
    kl = torch.searchsorted(sl, theta, right=False)  # count of l_i < theta
    zero = torch.zeros_like(theta)
    sum_u = torch.where(ku > 0, cu.gather(1, (ku - 1).clamp_min(0)), zero)  # sum of a_i < theta
    sum_l_above = cl[:, -1:] - torch.where(kl > 0, cl.gather(1, (kl - 1).clamp_min(0)), zero)  # sum of l_i >= theta
    middle = (kl - ku).to(a.dtype)  # l_i < theta <= a_i (l_i <= a_i, so a_i < theta implies l_i < theta)
    return cu[:, -1:] - (sum_u + sum_l_above + theta * middle)


def min_step_to_hyperplane(w: torch.Tensor, c: torch.Tensor, p: float, x: torch.Tensor | None = None,
                           bounds: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest lp step ``d`` with ``<w, d> = c`` and ``lower <= x + d <= upper``, per sample.

    The box-constrained projection onto a (linearised decision) hyperplane: FAB's eq. (5)
    (Croce & Hein, ICML 2020), DeepFool's eq. (11) and Balda et al.'s (8) with the box; any
    p >= 1. With ``s = sign(c)`` every coordinate moves by ``t_i`` in ``[0, room_i]`` towards
    ``s sign(w_i)``, and the problem is ``min ||t||_p`` s.t. ``sum |w_i| t_i = |c|``. Its KKT
    solution is ``t_i = min(lam a_i, room_i)`` with ``a_i = |w_i|^(q-1)`` (q the dual exponent:
    ``a_i = |w_i|`` for p = 2, ``a_i = 1`` for p = inf); for p = 1 the coordinates fill in
    decreasing order of ``|w_i|`` (a fractional knapsack). ``<w, t(lam)>`` is piecewise linear in
    ``lam`` with breakpoints ``room_i / a_i``; sorting them gives ``lam`` exactly. Without
    ``x``/``bounds`` the room is unlimited (the classic ``c / ||w||_q`` Hölder step).

    Returns ``(d, feasible)``: when even the whole room cannot reach ``|c|`` the step uses all of
    it (the closest the box allows) and ``feasible`` is False for that sample.
    """
    p = parse_norm(p)
    flat = w.flatten(1)
    cf = c.to(flat.dtype).reshape(-1, 1)
    s = torch.where(cf < 0, -torch.ones_like(cf), torch.ones_like(cf))
    g = flat * s  # now we need <g, d> = |c| >= 0
    if x is None or bounds is None:
        room = torch.full_like(flat, math.inf)
    else:
        xf = x.flatten(1).to(flat.dtype)
        room = torch.where(g > 0, bounds[1] - xf, xf - bounds[0]).clamp_min(0)
    room = torch.where(g == 0, torch.zeros_like(room), room)
    ag, target = g.abs(), cf.abs()
    if p == 1:
        t = _knapsack_fill(ag, room, target)
    else:
        t = _ramp_fill(ag, _ramp_weights(ag, p), room, target)
    reach = (ag * torch.where(torch.isinf(room), torch.zeros_like(room), room)).sum(1)
    feasible = torch.isinf(room).any(1) & (ag > 0).any(1) | (reach >= target[:, 0] * (1 - 1e-12))
    return (g.sign() * t).view_as(w), feasible


def _ramp_weights(ag: torch.Tensor, p: float) -> torch.Tensor:
    """``|w|^(q-1)`` up to a per-sample factor (which only rescales ``lam``): ``|w|`` for p = 2,
    the support of ``w`` for p = inf, else computed on ``|w| / max |w|`` so that it cannot overflow."""
    if p == 2:
        return ag
    if math.isinf(p):
        return (ag > 0).to(ag.dtype)
    scale = ag.amax(dim=1, keepdim=True).clamp_min(torch.finfo(ag.dtype).tiny)
    return (ag / scale) ** (dual_exponent(p) - 1)


def _knapsack_fill(ag: torch.Tensor, room: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    order = ag.argsort(dim=1, descending=True, stable=True)
    a, cap = ag.gather(1, order), room.gather(1, order)
    gain = torch.where(a > 0, a * cap, torch.zeros_like(a))
    before = torch.cat([torch.zeros_like(gain[:, :1]), gain.cumsum(1)[:, :-1]], dim=1)  # exclusive: inf-safe
    need = (target - before).clamp_min(0)
    t = torch.minimum(need / a.clamp_min(torch.finfo(a.dtype).tiny), cap)
    t = torch.where(a > 0, t, torch.zeros_like(t))
    return torch.zeros_like(ag).scatter_(1, order, t)


def _ramp_fill(ag: torch.Tensor, a: torch.Tensor, room: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """t = min(lam a, room) with sum ag t = target (or t = room where a > 0 if that falls short)."""
    free = a > 0
    breaks = torch.where(free, room / torch.where(free, a, torch.ones_like(a)), torch.full_like(a, math.inf))
    breaks, order = breaks.sort(dim=1, stable=True)
    ga, aa, cap = ag.gather(1, order), a.gather(1, order), room.gather(1, order)
    capped = torch.where(torch.isinf(breaks), torch.zeros_like(cap), ga * cap).cumsum(1)  # coordinates <= j capped
    slope_after = (ga * aa).flip(1).cumsum(1).flip(1) - ga * aa  # sum over coordinates after j
    value = torch.where(torch.isinf(breaks), torch.full_like(cap, math.inf), capped + breaks * slope_after.clamp_min(0))
    k = (value < target).sum(1, keepdim=True)  # breakpoints passed before reaching the target
    prev = (k - 1).clamp_min(0)
    used = torch.where(k > 0, capped.gather(1, prev), torch.zeros_like(target))
    slope = torch.where(k > 0, slope_after.gather(1, prev).clamp_min(0), (ga * aa).sum(1, keepdim=True))
    lam = torch.where(slope > 0, (target - used).clamp_min(0) / slope.clamp_min(torch.finfo(a.dtype).tiny),
                      torch.full_like(target, math.inf))
    return torch.where(free, torch.minimum(lam * a, room), torch.zeros_like(room))


def project_l2_box(delta: torch.Tensor, radius: torch.Tensor | float, x: torch.Tensor,
                   bounds: tuple[float, float], iterations: int = 60) -> torch.Tensor:
    """Euclidean projection of ``delta`` onto {||d||_2 <= radius, lower <= x + d <= upper}, per sample.

    The KKT conditions give ``d = clip(s v, lower - x, upper - x)`` with one scale ``s`` in (0, 1]
    per sample (``s = 1 / (1 + mu)``, ``mu`` the ball's multiplier): ``s = 1`` when the clipped
    ``v`` already lies in the ball, else the ``s`` where ``||clip(s v)||_2 = radius``, which is
    increasing in ``s`` and found by bisection (``iterations`` halvings, then the inner end, so the
    result never leaves the ball). Projecting on the ball and then clipping, the usual shortcut,
    is not this projection when the box binds (and Fashion-MNIST's zero background binds it).
    """
    flat = delta.flatten(1)
    r = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).expand(flat.shape[0])[:, None]
    xf = x.flatten(1).to(flat.dtype)
    lo_b, hi_b = bounds[0] - xf, bounds[1] - xf
    clipped = torch.minimum(torch.maximum(flat, lo_b), hi_b)
    inside = clipped.norm(dim=1, keepdim=True) <= r
    lo, hi = torch.zeros_like(r), torch.ones_like(r)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        big = torch.minimum(torch.maximum(mid * flat, lo_b), hi_b).norm(dim=1, keepdim=True) > r
        hi, lo = torch.where(big, mid, hi), torch.where(big, lo, mid)
    scaled = torch.minimum(torch.maximum(lo * flat, lo_b), hi_b)
    return torch.where(inside, clipped, scaled).view_as(delta)
