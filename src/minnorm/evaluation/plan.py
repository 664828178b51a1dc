"""What an evaluation runs: attack plans, epsilon grids and their validation.

Evaluation knows attacks only through the registry (``minnorm.attacks.get``). A minimal-norm
attack gives a per-sample norm directly. A fixed-epsilon attack (``spec.minimal`` is False) is
either run at given epsilons (mode ``fixed``) or turned into a minimal-norm estimate by a
per-sample bisection over its epsilon (mode ``search``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..core import AttackSpec, check_radius, parse_fraction, parse_norm
from ..core.norms import norm_name  # noqa: F401  (also imported from here by compare, results, norms, cli)
from ..core.validation import check_positive

MODES = ("minimal", "fixed", "search")


@dataclass
class AttackPlan:
    name: str
    spec: AttackSpec
    params: dict[str, Any]
    mode: str
    epsilons: list[float] = field(default_factory=list)  # mode "fixed": the radii it is run at
    search_max: float | None = None  # mode "search": upper end of the bisection

    def describe(self) -> dict[str, Any]:
        """The settings recorded with the results (and compared on resume)."""
        return {"name": self.name, "mode": self.mode, "norm": self.spec.norm_name, "paper": self.spec.paper,
                "params": self.spec.parameters(self.params), "epsilons": self.epsilons,
                "search_max": self.search_max}


def check_grid(grid: Iterable[float] | None, name: str = "epsilon grid") -> list[float] | None:
    """A strictly increasing list of finite radii >= 0, or a ValueError saying what to fix."""
    if grid is None:
        return None
    values = [check_radius(v, name) for v in grid]
    if not values:
        raise ValueError(f"{name} is empty: give at least one radius, e.g. 0.5,1,2")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"{name} must hold finite radii >= 0, got {bad}")
    for a, b in zip(values, values[1:]):
        if not b > a:
            raise ValueError(f"{name} must be strictly increasing, but {b:g} follows {a:g} in {values}; "
                             "sort it and drop repeats")
    return values


MAX_GRID = 10_000  # radii in a start:stop:count grid


def parse_grid(text: str, name: str) -> list[float]:
    """``0.1,0.2,0.5`` or ``start:stop:count`` (count points, both ends included)."""
    try:
        if text.count(":") == 2:
            start, stop, count = text.split(":")
            n = int(count)
            if not 2 <= n <= MAX_GRID:  # a count of 10**9 built the list for minutes
                raise ValueError
            a, b = float(start), float(stop)
            values = [a + (b - a) * i / (n - 1) for i in range(n)]
        else:
            values = [parse_fraction(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated numbers (0.1,0.2,0.5) or start:stop:count "
                         f"with count from 2 to {MAX_GRID}, got {text!r}") from None
    return check_grid(values, name)


def box_diameter(norm: float, numel: int, bounds: tuple[float, float]) -> float:
    """The largest lp distance inside the box: the default upper end of an epsilon search."""
    width = bounds[1] - bounds[0]
    return width if math.isinf(norm) else width * numel ** (1.0 / norm)


def make_plans(attacks: str | Sequence[Any] | Mapping[str, Mapping[str, Any]], norm: float | str, *,
               epsilons: Sequence[float] | None = None, eps_search: bool = False,
               search_max: float | None = None, quick: bool = False, targeted: bool = False) -> list[AttackPlan]:
    """Attack plans from names (``"ddn,fgsm"``, ``["ddn", ("pgd-l2", {"steps": 20})]`` or
    ``{"ddn": {"steps": 50}}``), checked against the registry and the evaluation's norm."""
    from ..core import registry

    p = parse_norm(norm)
    if isinstance(attacks, str):
        items: list[tuple[str, dict]] = [(a.strip(), {}) for a in attacks.split(",") if a.strip()]
    elif isinstance(attacks, Mapping):
        items = [(str(k), dict(v or {})) for k, v in attacks.items()]
    else:
        items = []
        for a in attacks:
            if isinstance(a, str):
                items.append((a, {}))
            elif isinstance(a, (tuple, list)) and len(a) == 2 and isinstance(a[0], str):
                items.append((a[0], dict(a[1] or {})))
            else:
                raise TypeError(f"attacks: expected names or (name, params) pairs, got {a!r}")
    if not items:
        raise ValueError("no attacks given: name at least one registered attack, e.g. ddn "
                         f"(available: {', '.join(registry.available())})")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"attacks are listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    grid = check_grid(epsilons, "epsilons")
    plans = []
    for name, params in items:
        spec = registry.get(name)
        if spec.norm != p:
            same = [s.name for s in registry.specs() if s.norm == p]
            where = f"attacks in this norm: {', '.join(same)}" if same else "no registered attack works in it"
            raise ValueError(f"attack {name!r} works in the {spec.norm_name} norm but the evaluation is in "
                             f"{norm_name(p)}; {where}")
        if targeted and not spec.targeted:
            raise ValueError(f"{name} is untargeted only; targeted attacks: "
                             f"{', '.join(s.name for s in registry.specs() if s.targeted and s.norm == p)}")
        given_eps = "eps" in params
        params = _check_params(spec, {**(spec.quick if quick else {}), **params})
        if spec.minimal:
            if "eps" in params and not quick:
                raise ValueError(f"{name} is a minimal-norm attack and takes no eps")
            params.pop("eps", None)
            plans.append(AttackPlan(name, spec, params, "minimal"))
        else:
            plans.append(_radius_plan(name, spec, params, given_eps, grid, eps_search, search_max))
    return plans


def _radius_plan(name: str, spec: AttackSpec, params: dict[str, Any], given_eps: bool, grid: list[float] | None,
                 eps_search: bool, search_max: float | None) -> AttackPlan:
    """The plan of a fixed-epsilon attack: its radius comes from ``epsilons`` (or the search's
    ``search_max``) or from its own ``eps`` parameter, never from both."""
    eps = params.pop("eps", None)
    if eps_search:
        if given_eps and search_max is not None:
            raise ValueError(f"{name}: eps={eps!r} in its parameters and search_max={search_max!r} both set the "
                             "upper end of the epsilon search; give it once (search_max, --search-max)")
        top = search_max if search_max is not None else eps
        if top is not None:
            top = check_positive("search_max (--search-max)" if search_max is not None else f"{name}'s eps", top)
        return AttackPlan(name, spec, params, "search", search_max=top)
    if given_eps and grid:
        raise ValueError(f"{name}: eps={eps!r} in its parameters and epsilons={grid} both set its radii; "
                         "give them once (epsilons, --epsilons or --eps)")
    radii = grid or ([float(eps)] if eps is not None else None)
    if not radii:
        raise ValueError(f"{name} is a fixed-epsilon attack: give the radii to run it at "
                         "(epsilons=[...], --epsilons 0.1,0.3) or ask for a per-sample epsilon "
                         "search (eps_search=True, --eps-search)")
    return AttackPlan(name, spec, params, "fixed", epsilons=check_grid(radii, "epsilons"))


def _check_params(spec: AttackSpec, params: dict[str, Any]) -> dict[str, Any]:
    return spec.check_params(params)
