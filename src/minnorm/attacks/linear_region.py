"""Linear-region attack (Croce, Rauber and Hein, "Scaling up the randomized gradient-free
adversarial attack reveals overestimation of robustness using established attacks", IJCV 2020),
minimal L2 perturbations for piecewise-affine networks.

Inside one linear region the network is affine, so the smallest adversarial perturbation there is
a convex QP (eq. 10 untargeted, eq. 11 targeted). Algorithm 1 samples regions near the best point
found so far (eq. 12-14), skips regions whose activation pattern it has visited already, solves the
QP of each new region in the dual (:mod:`.qp`) with constraint products from JVP/VJP of the frozen
network (:mod:`.piecewise`), and keeps the smallest adversarial. Beyond the authors' code: many
images at once, max-pooling layers, and a cache of visited activation patterns.
"""
from __future__ import annotations

import functools
import math

import torch
from tqdm.auto import tqdm

from ..core import (AttackResult, available, check_int, check_positive, check_real, clip_box, get, lp_norm, parse_norm, register,
                    start_attack)
from ..core.norms import norm_name
from ..core.segment import bisect_segment, segment_points
from .ddn import ddn
from .deepfool import deepfool
from ._piecewise import PiecewiseAffine, Region, RegionOperator
from ._lp import solve_lp
from ._qp import ScaledOperator, block_scales, solve_qp

__all__ = ["linear_region_attack"]

_OVERSHOOT = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1)
# passes per row a budgeted solve keeps in hand: 4 solver steps (<= 3 products each), the final
# product and the overshoot checks of its solution
_BUDGET_RESERVE = 4 * 3 + 1 + len(_OVERSHOOT)
# random JVPs that estimate the row norms ranking the ReLUs to flip (the squared estimate of one
# row norm has a relative spread of sqrt(2 / _PROBES)); networks with no more ReLUs get them exactly
_PROBES = 32


def linear_region_attack(model, inputs: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False,
                         norm: float | str = 2, regions: int = 100, qp_steps: int = 60, classes: int = 2, starts: int = 3,
                         q: float = 0.8, gamma: float = 6.0, power_iterations: int = 8, precondition_rows: int = 10,
                         decision_scale: float = 10.0, retries: int = 2, qp_tol: float = 1e-5, search_steps: int = 20,
                         init: str | torch.Tensor = "deepfool", init_steps: int = 100,
                         init_params: dict | None = None, starting_points: torch.Tensor | None = None,
                         bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
                         warm_start: bool = False, step_scale: float = 1.0, progress: bool = False,
                         pay_as_you_go: bool = False, flips: int = 0, flip_rounds: int = 3) -> AttackResult:
    """Algorithm 1 of the paper for p = 2 (``lra-l2``), p = inf (``lra-linf``) or p = 1 (``lra-l1``),
    batched over images; settings, measurements and their history in docs/linear-region.md.

    Starts (Sec. 4): one from an attack, ``init`` (DeepFool in the attack's norm, DDN where it
    fails or for targeted, any registered minimal-norm attack by name with its registry defaults
    updated by ``init_params``, or a tensor ``[B, *x]`` of given points: no passes, a start
    that is not adversarial is dropped); with
    ``starting_points`` (``[P, *x]`` reference data) also the closest reference point of each of
    the ``starts`` next most likely classes. A binary search of ``search_steps`` steps on the
    segment to the image follows. Each start then runs ``regions`` iterations: a point ``y`` is
    sampled around its best adversarial (eq. 12-14, ``q``, ``gamma``); if ``y``'s activation
    pattern is new, the minimal-norm problem of its region towards the ``classes`` most likely
    other classes (eq. 10; eq. 11 targeted) is solved by at most ``qp_steps`` steps, a QP for
    p = 2 (:mod:`._qp`; ``step_scale`` its first step), an LP for p = inf or 1 (:mod:`._lp`),
    ended early once the dual bound shows the region cannot win (``warm_start``: the chain's
    last multipliers). Rows are preconditioned per layer (``precondition_rows``,
    ``decision_scale``, Sec. 4.2). A solution counts only once a forward pass confirms it.
    ``flips=k`` (not in the paper) adds up to ``flip_rounds`` rounds of flipping the ``k`` ReLUs
    nearest to switching (:meth:`_Search.flip`). Under a pass budget a solve ends once its image
    is past it; ``pay_as_you_go`` ends it while the image can still pay for it and starts no
    region it cannot pay for (the standard ensemble's polish; off by default, so that a budget
    that is not reached changes nothing). ``info``: ``regions_solved``, ``cache_hits``,
    ``qp_pruned``, ``qp_steps`` per image. Supported layers: see :mod:`._piecewise`.
    """
    p = _check_settings(inputs, norm, init, q, step_scale, gamma=gamma, decision_scale=decision_scale, qp_tol=qp_tol,
                        retries=retries, regions=regions, qp_steps=qp_steps, classes=classes, starts=starts,
                        power_iterations=power_iterations, precondition_rows=precondition_rows,
                        search_steps=search_steps, init_steps=init_steps, flip_rounds=flip_rounds)
    flips = check_int("flips", flips, minimum=0)
    start = (init, _init_params(init, init_params, targeted))  # the starting attack (or points), its parameters
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=p, generator=generator)
    x0, n = run.inputs, run.batch_size
    if n == 0:
        return run.finish(inputs.clone())
    with PiecewiseAffine(model) as net:
        search = _Search(run, net, p=p, q=float(q), gamma=float(gamma), classes=classes, qp=dict(
            steps=qp_steps, power_iterations=power_iterations, tol=qp_tol, line_tol=qp_tol),
            rows=precondition_rows, decision_scale=float(decision_scale), retries=retries,
            warm_start=bool(warm_start), pay_as_you_go=bool(pay_as_you_go))
        if p == 2:
            search.qp["step_scale"] = float(step_scale)
        todo = (~run.is_adversarial(run.clean_logits)).nonzero().squeeze(1)
        adv = x0.clone()
        if todo.numel():
            first = _starting_points(run, todo, starting_points, starts, start, init_steps, p)
            best, norms = _walk(search, todo, first, search_steps, regions, progress, (flips, flip_rounds))
            found = torch.isfinite(norms)
            adv[todo[found]] = best[found]
    info = {"regions_solved": search.solved, "cache_hits": search.hits, "qp_pruned": search.pruned,
            "qp_steps": search.steps}
    return run.finish(adv, info=info)


def _walk(search: "_Search", todo: torch.Tensor, first: torch.Tensor, search_steps: int, regions: int,
          progress: bool, flips: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1's loop for the images ``todo`` from their starting points ``first``: the
    segment search, then ``regions`` sampled regions, then up to ``flips[1]`` rounds of flips
    of the ``flips[0]`` ReLUs nearest to switching (:meth:`_Search.flip`: one at a time, then in
    pairs where no single flip helped; while a round improves some chain); each image's best
    point and norm."""
    count, rounds = flips if flips[0] > 0 else (0, 0)
    search.start(todo, first, search_steps, slots=regions * (search.retries + 1) + rounds * count * (count + 1) // 2)
    label = f"lra-{norm_name(search.p)}"
    for j in tqdm(range(regions), desc=label, unit="region", leave=False, disable=not progress):
        search.step(j, regions)
    active = torch.isfinite(search.norm).nonzero().squeeze(1)
    for _ in range(rounds):  # each chain on while its last round helped
        if active.numel() == 0:
            break
        active = active[search.flip(active, count)]
    return search.best()


def _check_settings(inputs: torch.Tensor, norm: float | str, init: str | torch.Tensor, q: float, step_scale: float, *,
                    gamma: float, decision_scale: float, qp_tol: float, retries: int, **counts: int) -> float:
    """Refuse bad hyper-parameters before any pass; returns the parsed norm."""
    if isinstance(inputs, torch.Tensor) and inputs.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"the linear-region attack solves its region LPs/QPs in the inputs' dtype, which must be "
                        f"float32 or float64, got {inputs.dtype}")
    for name, value in counts.items():
        check_int(name, value)
    check_int("retries", retries, minimum=0)
    check_positive("gamma", gamma)
    check_positive("decision_scale", decision_scale)
    check_positive("qp_tol", qp_tol)
    if not 1 <= check_real("step_scale", step_scale) < math.inf:
        raise ValueError(f"step_scale must be >= 1 and finite, got {step_scale}")
    if isinstance(init, torch.Tensor):
        if init.shape != inputs.shape:
            raise ValueError(f"init as a tensor must have the inputs' shape {tuple(inputs.shape)}, got {tuple(init.shape)}")
    elif init not in ("deepfool", "ddn") and not (init in available() and get(init).minimal):
        raise ValueError(f"init must be 'deepfool', 'ddn' or a registered minimal-norm attack, got {init!r}")
    if not 0.5 <= check_real("q", q) <= 1.0:
        raise ValueError(f"q must lie in [0.5, 1], got {q}")
    p = parse_norm(norm)
    if p not in (1, 2, math.inf):
        raise ValueError(f"norm must be 1, 2 or inf, got {norm!r}")
    return p


def _init_params(init: str | torch.Tensor, params: dict | None, targeted: bool) -> dict:
    """``params`` for the named starting attack ``init``, checked against its registry entry (a
    targeted run starts from DDN where ``init`` has no targeted mode: no params for it then)."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"init_params must be a dict of the starting attack's parameters, got {params!r}")
    if isinstance(init, torch.Tensor) or init in ("deepfool", "ddn"):
        if params:
            what = "a tensor" if isinstance(init, torch.Tensor) else repr(init)
            raise ValueError(f"init_params apply to a registered attack named by init, not to init={what}")
        return {}
    spec = get(init)
    if targeted and params and not spec.targeted:
        raise ValueError(f"init={init!r} has no targeted mode: a targeted run starts from DDN, so init_params "
                         "would be ignored")
    return spec.check_params(params)


def _starting_points(run, todo: torch.Tensor, reference: torch.Tensor | None, starts: int,
                     start: tuple[str | torch.Tensor, dict], init_steps: int, p: float = 2) -> torch.Tensor:
    """``[b, M, *x]`` candidate adversarials per image to attack (NaN where there is none); the
    DeepFool start uses the attack's norm ``p``, DDN's (an L2 attack) is a start for any norm;
    ``start`` is the starting attack (or points) and the parameters for a named one."""
    x0, y = run.inputs[todo], run.labels[todo]
    init, params = start
    if isinstance(init, torch.Tensor):
        if reference is not None:
            raise ValueError("init as a tensor of starting points and starting_points do not combine")
        return init[todo].to(x0)[:, None]
    if init not in ("deepfool", "ddn") and (get(init).targeted or not run.targeted):
        res = get(init)(run.model.model, x0, y, targeted=run.targeted, bounds=run.bounds, generator=run.generator,
                        **params)
    elif init == "ddn" or run.targeted:
        res = ddn(run.model.model, x0, y, targeted=run.targeted, steps=init_steps, bounds=run.bounds,
                  generator=run.generator)
    else:
        res = deepfool(run.model.model, x0, y, norm=p, bounds=run.bounds)
    run.model.charge(todo, forward=res.forward_passes, backward=res.backward_passes)
    first = torch.where(res.success.view(-1, *[1] * (x0.dim() - 1)), res.adversarials, torch.nan)[:, None]
    miss = (~res.success).nonzero().squeeze(1)
    if miss.numel() and init == "deepfool" and not run.targeted:
        # DeepFool can stall (the L1 step moves one coordinate at a time): DDN's point instead
        more = ddn(run.model.model, x0[miss], y[miss], steps=init_steps, bounds=run.bounds, generator=run.generator)
        run.model.charge(todo[miss], forward=more.forward_passes, backward=more.backward_passes)
        first[miss, 0] = torch.where(more.success.view(-1, *[1] * (x0.dim() - 1)), more.adversarials, torch.nan)
    if reference is None:
        return first
    if not isinstance(reference, torch.Tensor) or reference.shape[1:] != x0.shape[1:]:
        raise ValueError(f"starting_points must be a tensor [P, {', '.join(map(str, x0.shape[1:]))}], "
                         f"got {getattr(reference, 'shape', type(reference).__name__)}")
    reference = reference.to(device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        pred = torch.cat([run.model.model(chunk).argmax(1) for chunk in reference.split(512)])
    dist = torch.cdist(x0.flatten(1), reference.flatten(1), p=p)
    if run.targeted:
        dist = dist.masked_fill(pred[None] != y[:, None], math.inf)
        k = min(starts, dist.shape[1])
        d, pick = dist.topk(k, dim=1, largest=False)
    else:
        order = run.clean_logits[todo].scatter(1, y[:, None], -math.inf).argsort(1, descending=True)
        cls = order[:, :min(starts, run.num_classes - 1)]
        masked = dist[:, None, :].masked_fill(pred[None, None, :] != cls[:, :, None], math.inf)
        d, pick = masked.min(2)
    out = torch.where(torch.isfinite(d).view(*d.shape, *[1] * (x0.dim() - 1)), reference[pick], torch.nan)
    return torch.cat([first, out], 1)


class _Search:
    """State of Algorithm 1 for ``c`` chains (image x start), laid out as a ``[b, M]`` grid."""

    def __init__(self, run, net: PiecewiseAffine, *, p: float, q: float, gamma: float, classes: int, qp: dict, rows: int,
                 decision_scale: float, retries: int, warm_start: bool = False, pay_as_you_go: bool = False):
        self.retries, self.pay_as_you_go = retries, pay_as_you_go
        # products per row before a region's first solver step (_solve measures it on each region)
        r = run.num_classes if run.targeted else 1
        self.setup = 3 + r + len(net.layers) + 2 * qp["power_iterations"]
        self.run, self.net, self.q, self.gamma, self.classes, self.qp = run, net, q, gamma, classes, qp
        self.rows, self.decision_scale = rows, decision_scale
        self.warm_start, self.p = warm_start, p
        self.solved = torch.zeros(run.batch_size, dtype=torch.long, device=run.inputs.device)
        self.hits = torch.zeros_like(self.solved)
        self.pruned = torch.zeros_like(self.solved)  # QPs the dual bound rejected (Sec. 4.1 early stop)
        self.steps = torch.zeros_like(self.solved)  # dual steps taken over all QPs
        self.mu = None  # per chain, the unscaled multipliers of its last region's most promising QP

    # ------------------------------------------------------------------ bookkeeping

    def _forward(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.run.model(x, owner)

    def _offer(self, chains: torch.Tensor, points: torch.Tensor, ok: torch.Tensor) -> None:
        """Record ``points`` (adversarial where ``ok``) for ``chains`` if they beat the chain's best."""
        norms = torch.where(ok, lp_norm(points - self.x0[chains], self.p), torch.full_like(ok, math.inf, dtype=points.dtype))
        # several candidates per chain: keep each chain's smallest (sort by norm, then stably by chain)
        order = norms.argsort()
        order = order[chains[order].argsort(stable=True)]
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = chains[order][1:] != chains[order][:-1]
        chains, points, norms = chains[order[first]], points[order[first]], norms[order[first]]
        better = norms < self.norm[chains]
        self.point[chains[better]] = points[better]
        self.norm[chains[better]] = norms[better]

    def _image_best(self) -> torch.Tensor:
        return self.norm.view(-1, self.m).amin(1)

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        norms, pick = self.norm.view(-1, self.m).min(1)
        points = self.point.view(-1, self.m, *self.point.shape[1:])
        return points[torch.arange(points.shape[0], device=pick.device), pick], norms

    # ------------------------------------------------------------------ Algorithm 1

    def start(self, todo: torch.Tensor, first: torch.Tensor, steps: int, slots: int = 0) -> None:
        """Binary search on the segment from each image to each starting point (Sec. 4); room
        for ``slots`` visited regions per chain."""
        b, self.m = first.shape[:2]
        self.todo = todo
        self.chain_image = torch.arange(b, device=todo.device).repeat_interleave(self.m)
        self.owner = todo[self.chain_image]
        self.x0 = self.run.inputs[self.owner]
        self.labels = self.run.labels[self.owner]
        target = first.flatten(0, 1)
        valid = ~torch.isnan(target.flatten(1)).any(1)
        target = torch.where(valid.view(-1, *[1] * (target.dim() - 1)), target, self.x0)
        self.point = self.x0.clone()
        self.norm = torch.full((self.owner.numel(),), math.inf, dtype=self.x0.dtype, device=self.x0.device)
        c, dev = self.owner.numel(), self.x0.device
        self.seen = torch.zeros(c, slots, 2, dtype=torch.long, device=dev)  # pattern hashes per chain
        self.filled = torch.zeros(c, slots, dtype=torch.bool, device=dev)
        self.slot = torch.zeros(c, dtype=torch.long, device=dev)
        idx = valid.nonzero().squeeze(1)
        ok = self.run.is_adversarial(self._forward(target[idx], self.owner[idx]), self.owner[idx])
        idx = idx[ok]
        x0, end, own = self.x0[idx], target[idx], self.owner[idx]
        hi = bisect_segment(lambda pts, r: self.run.is_adversarial(self._forward(pts, own[r]), own[r]), x0, end, steps)
        self._offer(idx, segment_points(x0, end, hi), torch.ones_like(hi, dtype=torch.bool))

    def _sample(self, chains: torch.Tensor, gamma: float) -> torch.Tensor:
        """eq. 12-14: a point around the chain's best ``x0 + delta``, biased towards ``x0``."""
        gen = self.run.generator
        delta = (self.point[chains] - self.x0[chains]).flatten(1)
        norm = delta.norm(dim=1, keepdim=True)
        unit = delta / norm
        perp = torch.randn(delta.shape, generator=gen, device=gen.device, dtype=delta.dtype).to(delta.device)
        perp = perp - (perp * unit).sum(1, keepdim=True) * unit
        perp = perp / perp.norm(dim=1, keepdim=True).clamp_min(torch.finfo(delta.dtype).tiny)
        u = torch.rand(delta.shape[0], 3, generator=gen, device=gen.device, dtype=delta.dtype).to(delta.device)
        theta = math.pi * u[:, :1] * torch.where(u[:, 1:2] < self.q, 1.0, -1.0)
        direction = torch.cos(theta) * perp - torch.sin(theta) * unit
        step = norm * u[:, 2:] ** gamma
        y = self.x0[chains] + (delta + step * direction).view_as(self.x0[chains])
        return clip_box(y, self.run.bounds)

    def step(self, j: int, total: int) -> None:
        """One iteration of Algorithm 1 for every chain with an adversarial. A chain whose sample
        falls in a visited region resamples up to ``retries`` times with ``gamma`` halved each
        time (a wider search), so that iterations are not spent on cache hits."""
        chains = torch.isfinite(self.norm).nonzero().squeeze(1)
        gamma = self.gamma
        for _ in range(self.retries + 1):
            if chains.numel() == 0:
                return
            y = self._sample(chains, gamma)
            owner = self.owner[chains]
            logits, region = self.net.capture(y, functools.partial(self.run.model, index=owner))
            self._offer(chains, y, self.run.is_adversarial(logits, self.owner[chains]))  # best seen, invariant 7
            seen, new = self._visit(chains, region)
            if new.numel():
                self._solve(chains[new], y[new], logits[new], region.take(new))
            chains, gamma = chains[seen], gamma / 2

    def _visit(self, chains: torch.Tensor, region, classes: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of the chains' regions were visited before (a cache hit), and the indices of
        the new ones to solve now (those the image can pay for), marked visited."""
        h = region.hashes().to(self.x0.device)
        seen = ((self.seen[chains] == h[:, None, :]).all(2) & self.filled[chains]).any(1)
        self.hits.index_add_(0, self.owner[chains], seen.long())
        new = (~seen).nonzero().squeeze(1)
        if self.pay_as_you_go:
            new = new[self._can_pay(chains[new], classes)]
        c = chains[new]  # start() sized the slots for every region a chain can visit
        self.seen[c, self.slot[c]], self.filled[c, self.slot[c]] = h[new], True
        self.slot[c] += 1
        return seen, new

    def flip(self, chains: torch.Tensor, count: int) -> torch.Tensor:
        """One round of a local search over activation patterns (not in the paper): at each
        chain's best point, the ``count`` ReLUs nearest to switching (smallest ``|z_j| /
        ||grad z_j||_2``, :meth:`_row_norms_squared`) are flipped one at a time, and where no
        single flip helped, in pairs; the problem of each flipped region is solved towards the
        best point's class. Regions sampled around a point (eq. 12-14) rarely differ from it in
        exactly the neurons that keep a smaller minimum out of reach; a flipped region need not
        contain the point, and its solution is kept only once the true network confirms it.
        Per chain of ``chains`` (all with an adversarial): whether it improved."""
        if chains.numel() == 0 or not self.net.layers:  # an affine model has nothing to flip
            return torch.zeros_like(chains, dtype=torch.bool)
        before = self.norm[chains].clone()
        y, owner = self.point[chains], self.owner[chains]
        logits, region = self.net.capture(y, functools.partial(self.run.model, index=owner))
        score, sizes = self._switch_distance(chains, y, region)
        top = score.topk(min(count, score.shape[1]), dim=1, largest=False)
        near = top.indices.masked_fill(~torch.isfinite(top.values), -1)
        k = near.shape[1]
        every = torch.arange(chains.numel(), device=y.device)
        for sets in ([[a] for a in range(k)], [[a, b] for a in range(k) for b in range(a + 1, k)]):
            todo = every[self.norm[chains] >= before]  # pairs only where no single flip helped
            if sets and todo.numel():
                self._flip_sets(chains, todo, near, sets, y, logits, region, sizes)
        return self.norm[chains] < before

    def _flip_sets(self, chains, todo, near, sets, y, logits, region, sizes) -> None:
        """For the chains ``chains[todo]``: solve the regions with the ReLUs of each set (indices
        into ``near``, the chain's nearest ReLUs) flipped, those not visited before."""
        pick = torch.tensor([s + [-1] * (2 - len(s)) for s in sets], device=y.device)  # [sets, 2]
        flips = torch.where(pick >= 0, near[todo][:, pick.clamp_min(0)], -1).flatten(0, 1)  # [t * sets, 2]
        rows = todo.repeat_interleave(len(sets))
        ok = (flips[:, 0] >= 0) & ((pick[:, 1] < 0).repeat(todo.numel()) | (flips[:, 1] >= 0))
        rows, flips = rows[ok], flips[ok]
        flipped = _flipped(region.take(rows), flips, sizes)
        _, new = self._visit(chains[rows], flipped, classes=1)
        if new.numel():  # towards the class of the best point only
            self._solve(chains[rows[new]], y[rows[new]], logits[rows[new]], flipped.take(new), classes=1)

    def _switch_distance(self, chains: torch.Tensor, y: torch.Tensor, region) -> tuple[torch.Tensor, list[int]]:
        """``[c, constraints]``: per ReLU ``|z_j| / ||grad z_j||_2`` at ``y`` (inf for max-pool
        constraints and constant neurons), the row norms from random JVPs of the region; and
        the number of constraints of each piecewise layer."""
        none = torch.zeros(chains.numel(), 1, self.run.num_classes, dtype=y.dtype, device=y.device)  # no decision row needed
        op = RegionOperator(self.net, region, y, self.x0[chains], none, self.run.model, self.owner[chains])
        sq = self._row_norms_squared(op, y)
        op.flush()
        score = op.value.abs() / sq.sqrt()
        score = torch.where(sq > 0, score, torch.full_like(score, math.inf))
        relu = torch.cat([torch.full((n,), p.dtype == torch.bool, device=y.device)
                          for n, p in zip(op.sizes[1:], region.patterns)])
        return score[:, 1:].masked_fill(~relu, math.inf), op.sizes[1:]

    def _row_norms_squared(self, op: RegionOperator, y: torch.Tensor) -> torch.Tensor:
        """``||a_j||_2^2`` for every row of ``op``: exact (one VJP per row) where the rows are no
        more than ``_PROBES``, else estimated from ``_PROBES`` random JVPs (``E[(a_j v)^2] =
        ||a_j||^2`` for standard normal ``v``)."""
        rows = op.value.shape[1]
        sq = torch.zeros_like(op.value)
        if rows - 1 <= _PROBES:  # row 0 is the (empty) decision row
            for j in range(1, rows):
                w = torch.zeros_like(op.value)
                w[:, j] = 1
                sq[:, j] = op.rmatvec(w).flatten(1).pow(2).sum(1)
            return sq
        gen = self.run.generator
        for _ in range(_PROBES):
            v = torch.randn(y.shape, generator=gen, device=gen.device, dtype=y.dtype).to(y.device)
            sq += op.jvp(v).pow(2)
        return sq / _PROBES

    def _can_pay(self, chains: torch.Tensor, classes: int = 0) -> torch.Tensor:
        """Under a pass budget, the chains whose image can still pay for solving a region: its
        set-up (the region's forward pass, offsets, row scales, power iterations: at most
        ``self.setup`` products per row, the blocks counted at the last solve), a few solver
        steps and the checks of the solution, for each of its rows in this solve."""
        left = self.run.model.passes_left()
        if left is None:
            return torch.ones_like(chains, dtype=torch.bool)
        owner = self.owner[chains]
        per = 1 if self.run.targeted else min(classes or self.classes, self.run.num_classes - 1)
        rows = torch.bincount(owner, minlength=left.shape[0])[owner] * per
        return left[owner] >= rows * (self.setup + _BUDGET_RESERVE)

    def _solve(self, chains: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, region, classes: int = 0) -> None:
        """The problem of each ``region`` towards the ``classes`` (default ``self.classes``) most
        likely other classes at ``y`` (all classes at once, targeted); solutions the network
        confirms are offered to the chains."""
        run, k = self.run, self.run.num_classes
        eye = torch.eye(k, dtype=y.dtype, device=y.device)
        lab = self.labels[chains]
        if run.targeted:
            per = 1
            decision = (eye[lab][:, None, :] - eye[None]).contiguous()  # f_s - f_r >= 0 for all r, eq. 11
        else:
            per = min(classes or self.classes, k - 1)
            cls = logits.scatter(1, lab[:, None], -math.inf).topk(per, dim=1).indices.flatten()
            decision = (eye[cls] - eye[lab.repeat_interleave(per)])[:, None, :]  # f_l - f_c >= 0, eq. 10
        rows = torch.arange(chains.numel(), device=y.device).repeat_interleave(per)
        ch = chains[rows]
        self.solved.index_add_(0, self.owner[chains], torch.ones_like(chains))
        op = RegionOperator(self.net, region.take(rows), y[rows], self.x0[ch], decision, run.model, self.owner[ch])
        # products per row before the solver's first step: forward, offsets, a scale per decision
        # row and per layer block, two per power iteration (see _can_pay)
        self.setup = 2 + decision.shape[1] + len(op.sizes) + 2 * self.qp["power_iterations"]
        b = op.offsets()
        scale = self._scales(op)
        lower = run.bounds[0] - self.x0[ch]
        upper = run.bounds[1] - self.x0[ch]
        bound = self._image_best()[self.chain_image[ch]]
        mu0 = None
        if self.warm_start and self.mu is not None:
            # neighbouring regions share their rows (one per neuron): start from the chain's last duals
            mu0 = torch.where(self.has_mu[ch, None], self.mu[ch] / scale, torch.zeros_like(scale))
        solve = solve_qp if self.p == 2 else functools.partial(solve_lp, p=self.p)
        # Under a pass budget a row whose sample is past it ends (its passes are not credited);
        # pay_as_you_go ends it while the sample can still pay for the next check's products, the
        # final one and the overshoot checks below, so that its solution is credited.
        reserve = _BUDGET_RESERVE if self.pay_as_you_go else 0
        sol = solve(ScaledOperator(op, scale), b * scale, lower, upper, bound=bound, generator=run.generator,
                    mu0=mu0, stop=functools.partial(op.out_of_budget, reserve), **self.qp)
        op.flush()
        self.pruned.index_add_(0, self.owner[ch], sol.pruned.long())
        self.steps.index_add_(0, self.owner[ch], sol.iterations)
        if self.warm_start:
            self._keep_duals(chains, per, sol.mu * scale, sol.dual)
        # Rows the dual bound ruled out are dropped; the rest are checked on the true network even
        # when the primal point is slightly infeasible (Sec. 4.2), along the ray at a few overshoots,
        # since the exact optimum lies on the decision boundary itself.
        idx = (~sol.pruned & (lp_norm(sol.delta, self.p) < bound)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        f = torch.tensor(_OVERSHOOT, dtype=y.dtype, device=y.device)
        cand = self.x0[ch[idx]][:, None] + (1 + f).view(1, -1, *[1] * (y.dim() - 1)) * sol.delta[idx][:, None]
        cand = clip_box(cand, run.bounds).flatten(0, 1)
        owner = self.owner[ch[idx]].repeat_interleave(len(_OVERSHOOT))
        adv = run.is_adversarial(self._forward(cand, owner), owner)
        self._offer(ch[idx].repeat_interleave(len(_OVERSHOOT)), cand, adv)

    def _keep_duals(self, chains: torch.Tensor, per: int, mu: torch.Tensor, dual: torch.Tensor) -> None:
        """Remember, per chain, the multipliers of its QP with the smallest dual bound."""
        if self.mu is None:
            self.mu = torch.zeros(self.owner.numel(), mu.shape[1], dtype=mu.dtype, device=mu.device)
            self.has_mu = torch.zeros(self.owner.numel(), dtype=torch.bool, device=mu.device)
        pick = dual.view(-1, per).argmin(1) + torch.arange(chains.numel(), device=mu.device) * per
        self.mu[chains], self.has_mu[chains] = mu[pick], True

    def _scales(self, op: RegionOperator) -> torch.Tensor:
        """Sec. 4.2: exact unit norm times ``decision_scale`` for the decision rows, the sampled
        per-layer mean row norm for the rest."""
        r, n = op.sizes[0], op.n
        like = op.y
        dec = []
        for i in range(r):
            w = torch.zeros(n, sum(op.sizes), dtype=like.dtype, device=like.device)
            w[:, i] = 1
            norm = op.rmatvec(w).flatten(1).norm(dim=1)
            dec.append(torch.where(norm > 0, self.decision_scale / norm.clamp_min(torch.finfo(like.dtype).tiny),
                                   torch.ones_like(norm)))
        layers = block_scales(op, op.sizes, like, self.run.generator, self.rows)[:, r:]
        return torch.cat([torch.stack(dec, 1), layers], 1)


def _flipped(region: Region, index: torch.Tensor, sizes: list[int]) -> Region:
    """``region`` with, per representative, the ReLUs at the flat indices ``index`` ``[n, m]``
    (over all piecewise layers' constraints, in order, ``sizes[l]`` for layer ``l``; -1 for
    none) switched. A ReLU layer has one constraint per neuron; max-pool patterns stay."""
    patterns, start = [], 0
    rows = torch.arange(region.n, device=index.device)[:, None].expand_as(index)
    for p, size in zip(region.patterns, sizes):
        flat = p.reshape(region.n, -1).clone()
        mine = (index >= start) & (index < start + size)
        if p.dtype == torch.bool and bool(mine.any()):
            flat[rows[mine], index[mine] - start] ^= True
        patterns.append(flat.view_as(p))
        start += size
    return Region(patterns, region.n)


_QUICK = {"regions": 8, "qp_steps": 60, "power_iterations": 8, "init_steps": 20, "search_steps": 10}
_PAPER = "Croce, Rauber and Hein 2020 (linear-region attack)"
register("lra-l2", linear_region_attack, norm=2, minimal=True, targeted=True, paper=_PAPER, defaults={"norm": 2},
         description="Linear-region attack: exact QPs in sampled linear regions of a ReLU/max-pool network",
         quick=_QUICK)
_QUICK_LP = {"regions": 5, "qp_steps": 40, "power_iterations": 6, "init_steps": 20, "search_steps": 10}
register("lra-linf", linear_region_attack, norm=math.inf, minimal=True, targeted=True, paper=_PAPER,
         defaults={"norm": math.inf}, quick=_QUICK_LP,
         description="Linear-region attack for Linf: region LPs (primal-dual) in sampled linear regions")
register("lra-l1", linear_region_attack, norm=1, minimal=True, targeted=True, paper=_PAPER, defaults={"norm": 1},
         quick=_QUICK_LP, description="Linear-region attack for L1: region LPs (primal-dual) in sampled linear regions")
