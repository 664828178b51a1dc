"""``exact`` and ``lower_bound``: both sides of the bracket
``certified lower bound <= true minimal norm <= best attack norm``, per sample."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.norms import lp_norm, parse_norm
from ..core.validation import check_inputs, check_int, check_logits, check_positive, model_errors_explained
from .bounds import certified_radius, margin_spec, propagate
from .crown import backward_bounds, certified_radius_fast, make_plan
from .graph import Graph, build_graph
from .milp import encode, tighten
from .solvers import solve

__all__ = ["CertifyResult", "check_time_limit", "default_attack", "exact", "lower_bound"]

# SCIP (the default solver) takes time limits up to 1e20 s and has no "no limit" value.
MAX_TIME_LIMIT = 1e20
REL_TOL = 1e-4  # "exact" when the proven lower bound is within this relative distance of the witness
ABS_TOL = 1e-7  # ... or within this absolute distance: float32's resolution of inputs in [0, 1] is 6e-8


def default_attack(p: float) -> str:
    """The attack whose norms are the upper end of the searches when none is given: the registered
    attack with the ``certify-upper`` role in the lp norm ``p`` (tr-linf, ddn, convex-min-l1)."""
    from ..core.registry import with_role

    return with_role("certify-upper", p)[0].name


def _close(lower: float, upper: float) -> bool:
    return math.isfinite(upper) and upper - lower <= REL_TOL * upper + ABS_TOL


@dataclass
class CertifyResult:
    """Per-sample brackets ``lower <= minimal norm <= upper`` (equal where proven).

    ``status``: ``exact`` (a solver closed the gap to ``REL_TOL`` and the witness flips the
    model), ``bracket`` (time ran out), ``certified`` (bound propagation only), or
    ``misclassified`` (the clean input is already adversarial: both bounds 0). ``witnesses``
    hold an input achieving ``upper`` (verified by a float32 forward pass of the model; the
    clean input where ``upper`` is ``inf``). ``seconds`` is per sample. ``info["proven_lower"]``
    keeps the proven lower bounds before ``lower`` is set to ``upper`` on exact samples (the
    witness must flip the model by a margin, so it can sit up to 1e-4 above the bound)."""

    lower: torch.Tensor
    upper: torch.Tensor
    status: list[str]
    seconds: torch.Tensor
    witnesses: torch.Tensor
    norm: float
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.status)

    @property
    def proven(self) -> torch.Tensor:
        return torch.tensor([s in ("exact", "misclassified") for s in self.status], dtype=torch.bool)


def _diameter(p: float, n: int, box: tuple[float, float]) -> float:
    """The largest lp norm of a perturbation inside the box."""
    return (box[1] - box[0]) * (1.0 if math.isinf(p) else n ** (1 / p))


def _start(model, inputs, labels, norm, bounds) -> tuple[float, tuple[float, float], Graph, torch.Tensor]:
    p = parse_norm(norm)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"certification supports the L1, L2 and Linf norms, got {norm!r}")
    box = check_inputs(inputs, labels, bounds)
    graph = build_graph(model)
    with torch.no_grad(), model_errors_explained(model, inputs):
        logits = model(inputs)
    check_logits(logits, inputs.shape[0], labels)
    return p, box, graph, logits


def _empty(inputs: torch.Tensor, p: float, method: str) -> CertifyResult:
    """The result for a batch of no samples."""
    none = torch.zeros(0, dtype=torch.float64)
    return CertifyResult(none, none.clone(), [], none.clone(), inputs.detach().clone(), p,
                         {"method": method, "proven_lower": []})


def _check_given(inputs: torch.Tensor, upper, adversarials) -> None:
    """An attack's norms and adversarials handed in: one norm >= 0 (inf: none found) and one
    adversarial per input."""
    if upper is not None:
        up = torch.as_tensor(upper, dtype=torch.float64).reshape(-1)
        if bool((torch.isnan(up) | (up < 0)).any()):
            raise ValueError("upper must hold norms >= 0 (inf where the attack found no adversarial), got "
                             f"{[float(v) for v in up[torch.isnan(up) | (up < 0)][:3]]}")
    if adversarials is not None and tuple(adversarials.shape) != tuple(inputs.shape):
        raise ValueError(f"adversarials must have the inputs' shape {tuple(inputs.shape)}, "
                         f"got {tuple(adversarials.shape)}")


def _upper_from_attack(model, inputs, labels, p, box, upper, adversarials, attack):
    """The attack side: ``(norms [B] float64, adversarials or None)``; runs ``attack`` (or the
    default for the norm) when ``upper`` is not given."""
    if upper is not None:
        up = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).cpu()
        if up.numel() != inputs.shape[0]:
            raise ValueError(f"upper has {up.numel()} values for {inputs.shape[0]} inputs")
        return up, adversarials
    from .. import attacks
    names = [attack] if isinstance(attack, str) else list(attack or [default_attack(p)])
    best = torch.full((inputs.shape[0],), math.inf, dtype=torch.float64)
    advs = inputs.clone()
    for name in names:
        spec = attacks.get(name)
        if spec.norm != p or not spec.minimal:
            raise ValueError(f"{name} is not a minimal-norm attack of the certified norm")
        res = spec(model, inputs, labels, bounds=box)
        norms = torch.where(res.success.cpu(), res.norms.double().cpu(), torch.full_like(best, math.inf))
        better = norms < best
        best = torch.where(better, norms, best)
        advs[better.to(advs.device)] = res.adversarials[better.to(advs.device)]
    return best, advs


def verify_witness(model, x0: torch.Tensor, candidate: torch.Tensor, label: int, p: float,
                   box: tuple[float, float]) -> tuple[torch.Tensor | None, float]:
    """A float32 (the model's own dtype) forward pass decides whether ``candidate`` flips the
    model by a margin of 1e-6 (relative to the largest logit) so that the flip survives rounding;
    if it lands on the decision boundary it is pushed outward along the segment from ``x0`` by
    relative steps 1e-8 ... 1e-3, and along the box-constrained steepest ascent of the margin by
    relative lengths 1e-7 ... 1e-2 (a sparse L1 witness whose moved pixels sit on the box's faces
    cannot move along the segment); the shorter of the two is kept. Returns ``(witness, norm)`` or ``(None, inf)``."""
    cand = candidate.to(x0.dtype).clamp(*box)
    with torch.no_grad():
        if _flips(model, cand, label):
            return cand, float(lp_norm((cand - x0)[None].double(), p))
        found = (None, math.inf)
        for s in (1e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3):
            x = (x0 + (1 + s) * (cand - x0)).clamp(*box)
            if _flips(model, x, label):
                found = (x, float(lp_norm((x - x0)[None].double(), p)))
                break
    other = _push_by_gradient(model, x0, cand, label, p, box)
    return other if other[1] < found[1] else found


def _flips(model, x: torch.Tensor, label: int) -> bool:
    """A clear flip, not a tie that batch composition or rounding could turn back."""
    z = model(x[None])[0].double()
    other = torch.cat([z[:label], z[label + 1:]]).max()
    return float(other - z[label]) > 1e-6 * max(1.0, float(z.abs().max()))


def _push_by_gradient(model, x0, cand, label, p, box):
    """Steps of lp length ``s ||cand - x0||`` (``s`` = 1e-7 ... 1e-2) from ``cand`` along the
    box-constrained Hölder direction of the margin's gradient (``core.norms.holder_step_in_box``)."""
    from ..core.norms import holder_step_in_box

    x = cand.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = model(x[None])[0]
        other = torch.cat([z[:label], z[label + 1:]]).max()
        (grad,) = torch.autograd.grad(other - z[label], x)
    size = max(float(lp_norm((cand - x0)[None].double(), p)), 1e-6)
    with torch.no_grad():
        for s in (1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2):
            step = holder_step_in_box(grad[None], p, s * size, cand[None], box)[0]
            xs = (cand + step).clamp(*box)
            if _flips(model, xs, label):
                return xs, float(lp_norm((xs - x0)[None].double(), p))
    return None, math.inf


def lower_bound(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = "linf",
                bounds: tuple[float, float] = (0.0, 1.0), upper: torch.Tensor | None = None,
                adversarials: torch.Tensor | None = None, attack: str | list[str] | None = None,
                rounds: int = 6, method: str = "auto", rel_tol: float = 0.05) -> CertifyResult:
    """Certified radius per sample by linear bound propagation: no input in the ``norm`` ball of
    radius ``lower`` (intersected with the box) changes the prediction.

    ``method``: ``backward`` (:mod:`.crown`: CROWN back-substitution, float32 search proven in
    float64, within ``rel_tol`` of its best radius; chains of conv/linear/ReLU/max-pool layers),
    ``forward`` (:mod:`.bounds`: forward linear forms, every supported graph), or ``auto``
    (backward where the graph allows it). ``upper``/``adversarials`` are an attack's norms and
    adversarials (the search's upper end, and the witnesses); when omitted, ``attack`` (default
    :func:`default_attack`) is run. ``rounds``: propagations per sample at most."""
    start = time.perf_counter()
    rounds, rel_tol = check_int("rounds", rounds), check_positive("rel_tol", rel_tol)
    p, box, graph, logits = _start(model, inputs, labels, norm, bounds)
    _check_given(inputs, upper, adversarials)
    if inputs.shape[0] == 0:
        return _empty(inputs, p, "linear bound propagation")
    b, n = inputs.shape[0], inputs[0].numel()
    up, advs = _upper_from_attack(model, inputs, labels, p, box, upper, adversarials, attack)
    wrong = (logits.argmax(1) != labels).cpu()
    high = torch.where(torch.isfinite(up), up, torch.full_like(up, _diameter(p, n, box)))
    x0 = inputs.detach().double().cpu()
    lower, used = None, "forward"
    if method in ("auto", "backward"):
        lower = certified_radius_fast(graph, x0, labels.cpu(), p, box, high.clamp_min(1e-12), rel_tol, max_rounds=rounds)
        used = "backward"
        if lower is None and method == "backward":
            raise ValueError("method='backward' needs a chain of conv/linear/ReLU/max-pool layers; use 'forward'")
    elif method != "forward":
        raise ValueError(f"unknown method {method!r}; choose auto, backward or forward")
    if lower is None:
        lower, used = certified_radius(graph, x0, labels.cpu(), p, box, high.clamp_min(1e-12), rounds=rounds), "forward"
    witnesses, upper_out = _check_attack_witnesses(model, inputs, labels, advs, up, p, box)
    lower = torch.where(wrong, torch.zeros_like(lower), torch.minimum(lower, upper_out))
    upper_out = torch.where(wrong, torch.zeros_like(upper_out), upper_out)
    status = ["misclassified" if w else ("exact" if _close(lo, u) else "certified")
              for w, lo, u in zip(wrong.tolist(), lower.tolist(), upper_out.tolist())]
    raw = lower.tolist()
    lower = torch.where(torch.tensor([s == "exact" for s in status]), upper_out, lower)
    per = (time.perf_counter() - start) / max(b, 1)
    return CertifyResult(lower, upper_out, status, torch.full((b,), per, dtype=torch.float64),
                         witnesses, p, {"method": f"linear bound propagation (CROWN relaxations, {used})",
                                        "proven_lower": raw})


def _check_attack_witnesses(model, inputs, labels, advs, up, p, box):
    """Re-check the attack's adversarials with the model; norms where they flip it, else inf."""
    witnesses = inputs.detach().clone()
    out = torch.full_like(up, math.inf)
    if advs is None:
        return witnesses, out
    for i in range(inputs.shape[0]):
        if not math.isfinite(float(up[i])):
            continue
        w, nrm = verify_witness(model, inputs[i], advs[i], int(labels[i]), p, box)
        if w is not None:
            witnesses[i], out[i] = w, nrm
    return witnesses, out


def check_time_limit(seconds: float, name: str = "time_limit") -> float:
    """A solver time limit in seconds: > 0, finite and at most :data:`MAX_TIME_LIMIT` (SCIP's
    largest; inf and NaN made SCIP print errors and fail)."""
    seconds = check_positive(name, seconds)
    if seconds > MAX_TIME_LIMIT:
        raise ValueError(f"{name} must be at most {MAX_TIME_LIMIT:g} seconds (the MIP solver's largest), got {seconds:g}")
    return seconds


def exact(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = "linf",
          time_limit: float = 120.0, bounds: tuple[float, float] = (0.0, 1.0),
          upper: torch.Tensor | None = None, adversarials: torch.Tensor | None = None,
          attack: str | list[str] | None = None, solver: str = "auto", progress: bool = False) -> CertifyResult:
    """Exact minimal adversarial perturbation per sample, as a MILP (Linf, L1: HiGHS) or MIQP (L2:
    SCIP) with per-neuron bounds propagated in the ball of the attack's norm (:mod:`.milp`).

    Per sample: the certified radius (``lower_bound``) and the per-target margin bounds at the
    cutoff ``upper (1 + 1e-4)`` prune the targets that cannot be reached; the rest are solved in
    decreasing order of their logit at the attack's adversarial, each with the best norm so far
    as its cutoff, within ``time_limit`` seconds for the whole sample. Every solver witness is
    re-checked by a forward pass of ``model`` (:func:`verify_witness`)."""
    time_limit = check_time_limit(time_limit)
    p, box, graph, logits = _start(model, inputs, labels, norm, bounds)
    _check_given(inputs, upper, adversarials)
    if inputs.shape[0] == 0:
        return _empty(inputs, p, "MILP")
    b, n = inputs.shape[0], inputs[0].numel()
    up, advs = _upper_from_attack(model, inputs, labels, p, box, upper, adversarials, attack)
    # a tight certified radius closes easy samples (e.g. affine classifiers) without a solver
    cert = lower_bound(model, inputs, labels, norm=p, bounds=box, upper=up, adversarials=advs, rounds=12, rel_tol=1e-5)
    lower, upper_out, witnesses = cert.lower.clone(), cert.upper.clone(), cert.witnesses.clone()
    status, seconds = list(cert.status), cert.seconds.clone()
    info = {"targets_solved": [0] * b, "proven_lower": list(cert.info["proven_lower"]), "method": "MILP"}
    rows = range(b)
    if progress:
        from tqdm import tqdm
        rows = tqdm(rows, desc=f"exact l{'inf' if math.isinf(p) else int(p)}", unit="sample")
    for i in rows:
        if status[i] in ("misclassified", "exact"):
            continue
        t0 = time.perf_counter()
        cutoff = float(up[i]) if math.isfinite(float(up[i])) else _diameter(p, n, box)
        res = _solve_sample(model, graph, inputs[i], int(labels[i]), p, box, cutoff * (1 + REL_TOL) + 1e-9,
                            logits[i] if advs is None else None, advs[i] if advs is not None else None,
                            time_limit, solver)
        wit, wnorm, bound, solved = res
        if wit is not None and wnorm < float(upper_out[i]):
            witnesses[i], upper_out[i] = wit, wnorm
        lo = max(float(lower[i]), min(bound, float(upper_out[i])))
        info["targets_solved"][i], info["proven_lower"][i] = solved, lo
        proven = _close(lo, float(upper_out[i]))
        status[i] = "exact" if proven else "bracket"
        lower[i] = upper_out[i] if proven else lo
        seconds[i] += time.perf_counter() - t0
    return CertifyResult(lower, upper_out, status, seconds, witnesses, p, info)


def _solve_sample(model, graph, x, label, p, box, cutoff, clean_logits, adv, time_limit, solver):
    """One sample: ``(witness, its norm, proven lower bound, targets solved)``."""
    start = time.perf_counter()
    x0 = x.detach().double().cpu()[None]
    k = graph.forward(x0)[-1].shape[1]
    spec = margin_spec(torch.tensor([label]), k)
    plan = make_plan(graph, tuple(x0.shape[1:]), torch.float64)
    if plan is not None:  # back-substitution: tighter neuron bounds, fewer binaries
        res, _ = backward_bounds(plan, x0, torch.tensor([cutoff], dtype=torch.float64), p, box, spec)
    else:
        res = propagate(graph, x0, torch.tensor([cutoff], dtype=torch.float64), p, box, spec)
    with torch.no_grad():
        score = (model(adv[None]) if adv is not None else clean_logits[None]).double().cpu()[0]
    reachable = [j for j in range(k) if j != label and float(res.spec_lower[0, j]) <= 0]
    reachable.sort(key=lambda j: -float(score[j]))
    best_w, best_n, bound, solved = None, math.inf, cutoff, 0
    for j in reachable:
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            bound = 0.0  # targets left unsolved: only the certified radius bounds them
            break
        cut = min(cutoff, best_n * (1 + 1e-9))
        # bound tightening gets at most half of what is left, the branch and bound the rest
        neurons = tighten(graph, x0, label, j, p, res.neurons, cut, box, time.perf_counter() + left / 2)
        if neurons is None:  # even the LP relaxation cannot reach target j within the cutoff
            bound, solved = min(bound, cut), solved + 1
            continue
        prob = encode(graph, x0, label, j, p, neurons, cut, box)
        sol = solve(prob, time_limit - (time.perf_counter() - start), solver)
        tb = sol.bound
        if p == 2 and math.isfinite(tb):
            tb = math.sqrt(max(tb, 0.0))  # the MIQP minimises the squared norm
        if sol.status == "infeasible":  # nothing of this target below the cutoff (a norm, not squared)
            tb = cut
        bound = min(bound, tb)
        solved += sol.status != "limit"
        if sol.x is not None:
            cand = torch.as_tensor(sol.x[prob.x], dtype=torch.float64).view_as(x).to(x.device)
            w, nrm = verify_witness(model, x.detach(), cand, label, p, box)
            if w is not None and nrm < best_n:
                best_w, best_n = w, nrm
    return best_w, best_n, bound, solved
