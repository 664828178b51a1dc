"""``minnorm.evaluate``: registered attacks over a data set, in batches, resumable, shardable.

Batches are fixed globally (batch ``b`` holds samples ``b*batch_size ...``); each attack on
batch ``b`` gets its own generator seeded from ``(seed, b, attack name)``. So a batch's result
depends neither on which process ran it nor on what ran before, which is what makes a resumed
run and a ``torchrun`` run (batches dealt round-robin over ranks) equal to a single uninterrupted
process.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..core import (check_bounds, check_eval_mode, check_label_range, check_logits, check_positive,
                    model_errors_explained, parse_norm, radius_text)
from . import distributed as dist_util
from .execute import merge_outcomes, run_plan
from .plan import box_diameter, check_grid, make_plans
from .results import Evaluation, batch_record, build_table
from .store import RunStore, environment, jsonable, model_fingerprint, tensor_fingerprint


TARGET_MODES = ("random", "least-likely", "all")


def batch_seed(seed: int, batch: int, attack: str) -> int:
    digest = hashlib.sha256(f"{seed}/{batch}/{attack}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _radii(eps, epsilons, eps_search: bool, grid) -> tuple:
    """The checked radii the user asks about (``eps``), those fixed-eps attacks run at
    (``epsilons``, by default ``eps`` unless searching) and the curves' ``grid``."""
    eps, epsilons = (None if r is None else check_grid(_as_list(r), name) for r, name in ((eps, "eps"), (epsilons, "epsilons")))
    if epsilons is None and not eps_search:
        epsilons = eps
    return eps, epsilons, check_grid(grid)


def _as_list(radii) -> list:
    """One radius (a number, ``"8/255"``, a 0-d tensor) as a list of one; a sequence as it is."""
    single = isinstance(radii, (int, float, str)) or getattr(radii, "ndim", None) == 0
    return [radii] if single else radii


def _default_search_max(plans, p: float, x: torch.Tensor, box: tuple[float, float]) -> None:
    """An eps search without ``search_max`` searches up to the box's diameter in norm ``p``."""
    for plan in plans:
        if plan.mode == "search" and plan.search_max is None:
            plan.search_max = box_diameter(p, x[0].numel() if len(x) else 1, box)


def _config(model, x: torch.Tensor, y: torch.Tensor, plans, p: float, settings: dict[str, Any],
            describe: dict[str, Any] | None) -> dict[str, Any]:
    """What a run records (and a resume compares against): model, data, attacks, norm, settings."""
    config = {"model": {**(describe or {}).get("model", {}), "class": type(model).__qualname__,
                        "fingerprint": model_fingerprint(model)},
              "data": {**(describe or {}).get("data", {}), "samples": len(x), "shape": list(x.shape[1:]),
                       "fingerprint": tensor_fingerprint(x, y)},
              "attacks": [pl.describe() for pl in plans], "norm": "linf" if math.isinf(p) else p, **settings}
    return jsonable(config)


def evaluate(model, data, attacks: str | Sequence[Any] | Mapping[str, Any], norm: float | str = 2, *,
             batch_size: int = 100, seed: int = 0, budget: int | None = None,
             epsilons: Sequence[float] | None = None, eps_search: bool = False, search_steps: int = 10,
             search_max: float | None = None, grid: Sequence[float] | None = None,
             bounds: tuple[float, float] = (0.0, 1.0), out: str | os.PathLike | None = None,
             overwrite: bool = False, device: torch.device | str | None = None, progress: bool = True,
             save_adversarials: bool = True, examples: int = 6, sanity_margin: float = 0.1,
             quick: bool = False, describe: dict[str, Any] | None = None,
             targets: str | int | torch.Tensor | None = None, keep_tensors: bool = False,
             eps: float | Sequence[float] | None = None, certify: str | None = None,
             certify_time_limit: float = 120.0) -> Evaluation:
    """Run registered ``attacks`` on the correctly classified samples of ``data``.

    ``data`` is a pair ``(inputs, labels)`` of tensors (or a dataset of such pairs). ``attacks``:
    ``"ddn,tr-l2"``, a list of names or ``(name, params)`` pairs, or ``{name: params}``; all must
    work in ``norm``. Fixed-epsilon attacks run at ``epsilons`` or, with ``eps_search``, are
    bisected per sample (``search_steps`` steps on ``[0, search_max]``, default the box diameter).
    ``budget`` caps forward+backward passes per sample per attack (see :mod:`.execute`).
    ``grid`` is the epsilon grid of the robust accuracy curves (default: 21 radii up to the
    largest best-of-all norm). With ``out`` every batch is saved as it finishes, an unfinished
    run in ``out`` is resumed, and the reports are written there at the end; a finished run is
    kept unless ``overwrite``. Under ``torchrun`` the batches are shared among the ranks.

    ``targets`` makes the evaluation targeted: a tensor ``[N]`` of target classes, a class index,
    ``"random"`` / ``"least-likely"`` (a class other than the label, drawn per sample from the
    seed, or the lowest clean logit), or ``"all"`` (every other class in turn; a sample's norm
    is its smallest over the targets). A given target equal to the sample's label asks nothing (the
    sample already is of that class): such samples are left out of the evaluation, its table and
    every number (``config["left_out"]`` counts them), and a ValueError says so when that is all
    of them. ``eps`` are the radii the user asks about: the headline robust accuracy and the
    summary's columns are reported there, and fixed-epsilon attacks run there unless ``epsilons``
    say otherwise; each must be answered by a minimal-norm attack, an epsilon search or a
    fixed-epsilon attack run at it (else ValueError: no number is printed for an untested radius).
    ``keep_tensors`` keeps this process's inputs and adversarials in ``Evaluation.tensors``.
    Everything is validated (settings, labels against the model's classes, every attack's
    hyper-parameters) before any file is written.
    """
    (x, y), p = _as_tensors(data), parse_norm(norm)
    _check_settings(batch_size, budget, search_steps, examples, sanity_margin, seed)
    eps, epsilons, grid = _radii(eps, epsilons, eps_search, grid)
    check_eval_mode(model)
    lo, hi = _check_box(x, bounds)
    plans = _plans(attacks, p, x, (lo, hi), eps, dict(epsilons=epsilons, eps_search=eps_search, search_max=search_max,
                                                       quick=quick, targeted=targets is not None))
    device = torch.device(device) if device is not None else _model_device(model)
    targets = _check_with_model(model, x, y, targets, plans, (lo, hi), device, certify, certify_time_limit)

    config = _config(model, x, y, plans, p, {
        "seed": seed, "batch_size": batch_size, "budget": budget, "search_steps": search_steps, "bounds": [lo, hi],
        "grid": grid, "examples": examples, "sanity_margin": sanity_margin, "targets": _describe_targets(targets),
        "left_out": _left_out(targets, y), "eps": eps, "certify": certify,
        "certify_time_limit": certify_time_limit if certify == "exact" else None}, describe)

    group = dist_util.setup(device)
    try:
        return _run(model, x, y, plans, config, group, out=out, overwrite=overwrite, device=device,
                    progress=progress, save_adversarials=save_adversarials, targets=targets,
                    keep_tensors=keep_tensors)
    finally:
        group.close()


def _check_box(x: torch.Tensor, bounds) -> tuple[float, float]:
    lo, hi = check_bounds(bounds)
    if len(x) and (float(x.min()) < lo or float(x.max()) > hi):
        raise ValueError(f"inputs must lie in the box {bounds}, found values in [{float(x.min()):g}, "
                         f"{float(x.max()):g}]; rescale the data to the box (in Python, or pass bounds=)")
    return lo, hi


def _plans(attacks, p: float, x: torch.Tensor, box: tuple[float, float], eps, options: dict[str, Any]) -> list:
    """The attack plans (``make_plans`` with ``options``), every asked radius answered by one, an
    epsilon search's default upper end filled in."""
    plans = make_plans(attacks, p, **options)
    _check_answered(eps, plans)
    _default_search_max(plans, p, x, box)
    return plans


def _check_answered(eps: list[float] | None, plans) -> None:
    """Every radius the user asks about needs an attack that answers it: a minimal-norm attack or
    an epsilon search answers every radius, a fixed-epsilon attack only those it runs at. Elsewhere
    robust accuracy would count every sample as robust for want of an attack (100%, untested)."""
    if not eps or any(plan.mode != "fixed" for plan in plans):
        return
    ran = sorted({e for plan in plans for e in plan.epsilons})
    untested = [e for e in eps if e not in ran]
    if untested:
        raise ValueError(f"eps {', '.join(radius_text(e) for e in untested)}: no attack runs there (the fixed-epsilon "
                         f"attacks run at {', '.join(radius_text(e) for e in ran)} and no minimal-norm attack or "
                         "epsilon search is in the run); add it to epsilons (--epsilons) or drop it from eps (--eps)")


def _check_certify(certify, targets, time_limit) -> None:
    if certify not in (None, "bound", "exact"):
        raise ValueError(f"certify must be None, 'bound' or 'exact', got {certify!r}")
    if certify == "exact":
        from ..certify.api import check_time_limit

        check_time_limit(time_limit, "certify_time_limit")
    if certify is not None and targets is not None:
        raise ValueError("certification bounds untargeted robustness; drop targets or certify")


def _check_settings(batch_size, budget, search_steps, examples, sanity_margin, seed) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be a whole number of passes >= 1 (or None), got {budget!r}")
    # 0 steps reported the box diameter; past ~60 halvings a float64 interval stops shrinking (and each step runs the attack)
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or not 1 <= search_steps <= 64:
        raise ValueError(f"search_steps must be an integer from 1 to 64, got {search_steps!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an integer >= 0, got {examples!r}")
    check_positive("sanity_margin", sanity_margin, allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):  # "1" and 1.0 would seed other batches
        raise ValueError(f"seed must be an integer, got {seed!r}")


def _run(model, x, y, plans, config, group, *, out, overwrite, device, progress, save_adversarials, targets,
         keep_tensors) -> Evaluation:
    store = RunStore(out) if out is not None else None
    done: set[int] = set()
    if store is not None:
        # Rank 0 opens (or refuses) the folder; the others learn the verdict from it.
        verdict = None
        if group.rank == 0:
            try:
                done = store.open(config, overwrite=overwrite)
            except ValueError as err:
                verdict = str(err)
        verdict, done = group.broadcast((verdict, done))
        if verdict is not None:
            raise ValueError(verdict)
    try:
        return _attack_batches(model, x, y, plans, config, group, store, done, out=out, device=device,
                               progress=progress, save_adversarials=save_adversarials, targets=targets,
                               keep_tensors=keep_tensors)
    except BaseException:
        if store is not None:
            store.close()  # a notebook that goes on must not keep the folder locked
        raise


def _attack_batches(model, x, y, plans, config, group, store, done, *, out, device, progress, save_adversarials,
                    targets, keep_tensors) -> Evaluation:
    bs = config["batch_size"]
    n_batches = math.ceil(len(x) / bs)
    mine = [b for b in range(n_batches) if b % group.world == group.rank and b not in done]
    records, kept = [], []
    if done and group.rank == 0 and progress:
        print(f"resuming: {len(done)} of {n_batches} batches done", file=sys.stderr)
    if config.get("left_out") and group.rank == 0 and progress:
        print(f"note: {config['left_out']} of {len(x)} samples left out: their target is their own label (a targeted "
              f"attack towards a sample's own class asks nothing); every number is over the other "
              f"{len(x) - config['left_out']}", file=sys.stderr)
    todo = sum(min(bs, len(x) - b * bs) for b in mine) * len(plans)
    bar = tqdm(total=todo, desc="evaluate", unit="sample", disable=(not progress or group.rank != 0) or None,
               dynamic_ncols=True)
    for b in mine:
        record, tensors = _one_batch(model, x, y, b, bs, plans, config, device, targets, bar)
        record["rank"] = group.rank  # bookkeeping only: results never depend on it
        if store is not None:
            store.save_batch(b, record, tensors if save_adversarials else None)
        records.append(record)
        if keep_tensors:
            kept.append(tensors)
    bar.close()
    records = group.gather(records)
    environments = [environment()]
    if store is not None and group.rank == 0:
        for r in records:  # ranks without a shared file system: keep every batch with the results
            if not (store.batches / f"batch-{r['batch']:06d}.json").is_file():
                store.save_batch(r["batch"], r, None)
        records = store.load_batches()  # with the batches of earlier, interrupted attempts
        environments = store.manifest()["environments"]
    records, environments = group.broadcast((records, environments))
    evaluation = Evaluation(config, environments, build_table(records, config["attacks"]),
                            Path(out) if out is not None else None)
    if keep_tensors:
        evaluation.tensors = {k: torch.cat([t[k] for t in kept]) for k in kept[0]} if kept else {}
    if store is not None and group.rank == 0:
        evaluation.save(store.folder)
        store.finish()
    group.barrier()
    return evaluation


def _one_batch(model, x, y, b, bs, plans, config, device, targets, bar=None):
    index = torch.arange(b * bs, min((b + 1) * bs, len(x)))
    if isinstance(targets, torch.Tensor):  # left out: their target is their label (see evaluate)
        index = index[targets[index] != y[index].cpu()]
    xb, yb = x[index].to(device), y[index].to(device)
    with torch.no_grad():
        logits = model(xb) if len(xb) else None
    pred = logits.argmax(dim=1) if len(xb) else yb.clone()
    correct = pred == yb
    tb = None
    if targets is not None and targets != "all":
        tb = _batch_targets(targets, logits, yb, index, b, config["seed"])
    xa, ya = xb[correct], (yb if tb is None else tb)[correct]
    outcomes = {}
    for plan in plans:
        if bar is not None:
            bar.set_description(f"{plan.name} ({plan.spec.norm_name}), batch {b}")
        gen = torch.Generator(device=device).manual_seed(batch_seed(config["seed"], b, plan.name))
        run = partial(run_plan, plan, model, generator=gen, bounds=tuple(config["bounds"]), budget=config["budget"],
                      search_steps=config["search_steps"])
        if targets == "all":
            outcomes[plan.name] = _every_target(run, xa, ya, logits.shape[1])
        else:
            outcomes[plan.name] = run(xa, ya, targeted=tb is not None)
        if bar is not None:
            bar.update(len(xb))
    record = batch_record(b, index, yb.cpu(), pred.cpu(), outcomes)
    if tb is not None:
        record["target"] = tb.cpu().tolist()
    if config.get("certify") and len(xa):
        record["certify"] = _certify_batch(model, xa, ya, outcomes, config)
    tensors = {"index": index[correct.cpu()], "inputs": xa.cpu()}
    for name, o in outcomes.items():
        tensors[f"adv/{name}"] = o.adversarials
        with torch.no_grad():  # for reports (confusion matrix, example captions); not an attack pass
            tensors[f"adv_pred/{name}"] = model(o.adversarials.to(device)).argmax(dim=1).cpu() if len(xa) else \
                torch.zeros(0, dtype=torch.long)
    return record, tensors


def _certify_batch(model, x, y, outcomes, config) -> dict[str, list]:
    """Certified radius (and exact minimal norm) of each attacked sample of a batch, from the
    best adversarial of all attacks (the upper end of the bracket)."""
    from .. import certify

    norms = torch.stack([o.norms for o in outcomes.values()])
    best = norms.argmin(dim=0)
    advs = torch.stack([o.adversarials for o in outcomes.values()])[best, torch.arange(len(x))]
    upper = norms.min(dim=0).values.to(x.dtype)
    p = parse_norm(config["norm"])
    kw = dict(norm=p, bounds=tuple(config["bounds"]), upper=upper.to(x.device), adversarials=advs.to(x.device))
    if config["certify"] == "exact":
        res = certify.exact(model, x, y, time_limit=config["certify_time_limit"], **kw)
    else:
        res = certify.lower_bound(model, x, y, **kw)
    floats = lambda t: [float(v) if math.isfinite(v) else None for v in t.double().tolist()]  # noqa: E731
    return {"lower": floats(res.lower), "upper": floats(res.upper), "status": list(res.status),
            "seconds": [float(v) for v in res.seconds.tolist()]}


def _every_target(run, x: torch.Tensor, y: torch.Tensor, classes: int):
    """``targets="all"``: the attack towards every other class; per sample the smallest norm."""
    parts = []
    for t in range(classes):
        rows = (y != t).nonzero().flatten()
        parts.append((rows.cpu(), run(x[rows], torch.full_like(y[rows], t), targeted=True)))
    return merge_outcomes(len(x), x, parts)


def _check_targets(targets, y: torch.Tensor, classes: int):
    """A target mode, or the given targets as a CPU tensor of classes of the model (``classes``);
    refused when every sample's target is its own label (all of them would be left out)."""
    if targets is None or isinstance(targets, str) and targets in TARGET_MODES:
        return targets
    if isinstance(targets, int) and not isinstance(targets, bool):
        if not 0 <= targets < classes:  # checked as an int: one too big for a tensor gets this message too
            raise ValueError(f"target {targets} is out of range: targets must be in 0..{classes - 1} (the model has "
                             f"{classes} classes)")
        targets = torch.full_like(y, targets)
    if isinstance(targets, str):
        raise ValueError(f"targets must be one of {', '.join(TARGET_MODES)}, a class or a tensor of classes, "
                         f"got {targets!r}")
    if not isinstance(targets, torch.Tensor) or targets.shape != y.shape or targets.is_floating_point():
        raise ValueError(f"targets must be an integer tensor shaped like the labels {tuple(y.shape)}")
    try:
        check_label_range(targets, classes)
    except ValueError as err:
        raise ValueError(f"targets: {err}") from None
    if bool((targets.cpu() == y.cpu()).all()):
        raise ValueError(f"every sample's target is its own label{_one_class(targets)}: a targeted attack towards "
                         "a sample's own class asks nothing, so nothing is left to attack; choose another target")
    return targets.long().cpu()


def _one_class(targets: torch.Tensor) -> str:
    return f" (class {int(targets[0])})" if bool((targets == targets[0]).all()) else ""


def _left_out(targets, y: torch.Tensor) -> int | None:
    """How many samples a given target leaves out (their target is their label); None when none."""
    if not isinstance(targets, torch.Tensor):
        return None
    return int((targets == y.cpu()).sum()) or None


def _describe_targets(targets) -> str | None:
    if targets is None or isinstance(targets, str):
        return targets
    return "given:" + tensor_fingerprint(targets)


def _batch_targets(targets, logits, yb, index, b, seed) -> torch.Tensor:
    """Targets of batch ``b`` (samples ``index``): given, least likely clean class, or a seeded
    random other class."""
    if isinstance(targets, torch.Tensor):
        return targets[index].to(yb.device)
    if targets == "least-likely":
        masked = logits.clone()
        masked[torch.arange(len(yb)), yb] = math.inf
        return masked.argmin(dim=1)
    # A uniform shift in 1..K-1 never lands on the label and is uniform over the others.
    gen = torch.Generator().manual_seed(batch_seed(seed, b, "targets"))
    return (yb + torch.randint(1, logits.shape[1], yb.shape, generator=gen).to(yb.device)) % logits.shape[1]


def _check_with_model(model, x, y, targets, plans, bounds, device, certify, certify_time_limit):
    """The checks that need the model (its classes, the targets against them, certification,
    every attack's parameters); the checked targets."""
    targets = _check_targets(targets, y, _classes(model, x, y, device))
    _check_certify(certify, targets, certify_time_limit)
    _preflight(model, x, y, targets, plans, bounds, device, certify)
    return targets


def _preflight(model, x, y, targets, plans, bounds, device, certify=None) -> None:
    """Every check that needs the model, before any file is written (with :func:`_classes`): each
    attack's hyper-parameters (by a call on an empty batch, which validates them and runs nothing)."""
    for plan in plans:
        extra = {} if plan.mode == "minimal" else {"eps": plan.epsilons[0] if plan.epsilons else plan.search_max}
        try:
            plan.spec(model, x[:0].to(device), y[:0].to(device), bounds=bounds, targeted=targets is not None,
                      **plan.params, **extra)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{plan.name}: {err}") from None
    if certify is not None:
        from ..certify import build_graph

        build_graph(model)  # names the first layer it cannot encode


def _classes(model, x: torch.Tensor, y: torch.Tensor, device) -> int:
    """The model's class count, from its output on one sample (checked), and the labels against it."""
    with torch.no_grad(), model_errors_explained(model, x[:1].to(device)):
        logits = model(x[:1].to(device))
    k = check_logits(logits, 1)
    check_label_range(y, k)
    return k


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _gather(data)
    if not torch.is_floating_point(x):
        raise TypeError(f"inputs must be a floating-point tensor, got {x.dtype}")
    if y.dim() != 1 or len(y) != len(x) or torch.is_floating_point(y):
        raise ValueError(f"labels must be an integer tensor [N] matching {len(x)} inputs, got "
                         f"{y.dtype} {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError("data holds no samples")
    return x, y.long()


def _gather(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` from a pair of tensors, a DataLoader of pair batches or a Dataset of pairs."""
    if isinstance(data, (tuple, list)):
        return _pair(data, "data", tensors=True)
    if isinstance(data, torch.utils.data.DataLoader):
        batches = [_pair(b, "each batch of the DataLoader") for b in data]
        if not batches:
            raise ValueError("data is an empty DataLoader")
        return torch.cat([a for a, _ in batches]), torch.cat([b for _, b in batches])
    if isinstance(data, torch.utils.data.Dataset):
        pairs = [_pair(data[i], "each item of the Dataset") for i in range(len(data))]
        if not pairs:
            raise ValueError("data is an empty dataset")
        return torch.stack([a for a, _ in pairs]), torch.as_tensor([int(b) for _, b in pairs])
    raise TypeError(f"data must be a pair (inputs, labels) of tensors, a Dataset of pairs or a DataLoader, "
                    f"got {type(data).__name__}")


def _pair(item, what: str, tensors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``item`` as ``(inputs, labels)`` tensors; with ``tensors`` both must already be tensors
    (numpy arrays are refused rather than converted with numpy's float64 default)."""
    kinds = (f"({', '.join(type(t).__name__ for t in list(item)[:3])}{', ...' if len(item) > 3 else ''})"
             if isinstance(item, (tuple, list)) else type(item).__name__)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"{what} must be a pair (inputs, labels), got {kinds}")
    if tensors and not all(isinstance(t, torch.Tensor) for t in item):
        raise TypeError(f"{what} must be a pair (inputs, labels) of tensors, got {kinds}; convert arrays with "
                        "torch.as_tensor (inputs as float32 for a float32 model)")
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])
