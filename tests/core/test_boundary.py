"""core.boundary: minimal steps onto linearised boundaries, without the box, on its faces, exactly inside it."""
from __future__ import annotations

import math

import pytest
import torch

from minnorm.core import dual_exponent, lp_norm
from minnorm.core.boundary import linear_boundary_steps, nearest_boundary_step
from minnorm.core.norms import min_step_to_hyperplane

BOX = (0.0, 1.0)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_unboxed_steps_are_holder_steps(p):
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64)
    margins = torch.rand(3, 4, generator=g, dtype=torch.float64)
    grads[0, 1] = 0
    dist, steps = linear_boundary_steps(margins, grads, p)
    q = dual_exponent(p)
    assert math.isinf(dist[0, 1]) and torch.all(steps[0, 1] == 0)
    ok = torch.isfinite(dist)
    # Each step reaches its hyperplane exactly, with lp norm equal to the distance ...
    reach = (grads * steps).flatten(2).sum(2)
    torch.testing.assert_close(reach[ok], margins[ok])
    norms = torch.linalg.vector_norm(steps.flatten(2), ord=p, dim=2)
    torch.testing.assert_close(norms[ok], dist[ok])
    # ... and the distance is the margin over the dual norm (Hölder's bound, attained).
    torch.testing.assert_close(dist[ok], (margins / torch.linalg.vector_norm(grads.flatten(2), ord=q, dim=2))[ok])
    padded = linear_boundary_steps(margins, grads, p, pad=0.5)[1]
    torch.testing.assert_close(torch.linalg.vector_norm(padded.flatten(2), ord=p, dim=2)[ok], dist[ok] + 0.5)
    # box="none" (or no x) is this step whatever the box
    x = torch.rand(3, 2, 5, generator=g, dtype=torch.float64)
    none = linear_boundary_steps(margins, grads, p, 0.0, x, BOX, box="none")
    assert torch.equal(none[1], steps) and torch.equal(none[0], dist)


def _problem(seed: int, b: int = 4, c: int = 3, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(b, c, d, generator=g, dtype=torch.float64)
    margins = torch.rand(b, c, generator=g, dtype=torch.float64) * 0.5
    x = torch.rand(b, d, generator=g, dtype=torch.float64)
    x[:, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # two coordinates on faces
    return margins, grads, x


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, math.inf])
@pytest.mark.parametrize("seed", range(4))
def test_exact_box_steps_are_the_hyperplane_projections(p, seed):
    """Per class, the box-constrained minimal step (itself checked against HiGHS/SLSQP in
    test_norms.py); reachable planes are hit, the iterate stays in the box, unreachable ones are inf."""
    margins, grads, x = _problem(seed)
    dist, steps = linear_boundary_steps(margins, grads, p, 0.0, x, BOX)
    assert bool(((x[:, None] + steps >= -1e-15) & (x[:, None] + steps <= 1 + 1e-15)).all())
    for j in range(margins.shape[1]):
        ref, ok = min_step_to_hyperplane(grads[:, j], margins[:, j], p, x, BOX)
        torch.testing.assert_close(steps[:, j], ref)
        torch.testing.assert_close(dist[:, j], torch.where(ok, lp_norm(ref, p), torch.full_like(dist[:, j], math.inf)))
        hit = torch.isfinite(dist[:, j])
        torch.testing.assert_close((grads[:, j] * steps[:, j]).sum(1)[hit], margins[:, j][hit])
    # never shorter than the unboxed distance (the box only adds constraints)
    free, _ = linear_boundary_steps(margins, grads, p)
    assert bool((dist >= free * (1 - 1e-12)).all())


def test_exact_box_pad_reaches_the_padded_plane():
    margins, grads, x = _problem(7)
    x = torch.full_like(x, 0.5)  # the box does not bind: the boxed step is the padded Hölder step
    dist, steps = linear_boundary_steps(margins, grads, 2.0, 0.01, x, BOX)
    _, free = linear_boundary_steps(margins, grads, 2.0, 0.01)
    torch.testing.assert_close(steps, free)
    torch.testing.assert_close(dist, lp_norm(free.flatten(0, 1), 2).view_as(dist))


def test_faces_drops_only_components_that_push_through_a_face():
    margins, grads, x = _problem(1)
    margins[0, 0] = -margins[0, 0]  # a class that already wins steps back: the blocked side flips
    _, steps = linear_boundary_steps(margins, grads, 2.0, 0.0, x, BOX, box="faces")
    direction = grads * torch.where(margins < 0, -1.0, 1.0)[..., None]
    blocked = ((x[:, None] <= 0) & (direction < 0)) | ((x[:, None] >= 1) & (direction > 0))
    expected = linear_boundary_steps(margins, grads.masked_fill(blocked, 0), 2.0)[1]
    torch.testing.assert_close(steps, expected)
    assert bool((steps[blocked] == 0).all()) and bool(blocked.any())
    # the step never pushes a face coordinate out; interior ones may still overshoot (they are clipped later)
    assert bool((x[:, None, 0] + steps[..., 0] >= 0).all()) and bool((x[:, None, 1] + steps[..., 1] <= 1).all())


def test_nearest_picks_the_smallest_boxed_step_and_falls_back_when_none_is_reachable():
    # one sample, two classes: class 0 is nearer without the box, but its plane is behind a face
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    grads = torch.tensor([[[10.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    margins = torch.tensor([[1.0, 0.3]], dtype=torch.float64)
    assert nearest_boundary_step(margins, grads, 2.0)[0].item() == 0
    chosen, step = nearest_boundary_step(margins, grads, 2.0, 0.0, x, BOX)
    assert chosen.item() == 1
    torch.testing.assert_close(step, torch.tensor([[0.0, 0.3]], dtype=torch.float64))
    # neither plane reachable in the box: the unboxed nearest is taken, with all its room used
    margins = torch.tensor([[1.0, 0.9]], dtype=torch.float64)
    chosen, step = nearest_boundary_step(margins, grads, 2.0, 0.0, x, BOX)
    assert chosen.item() == 0 and torch.all(step == 0)
    chosen, step = nearest_boundary_step(margins, grads[:, [1, 0]], 2.0, 0.0, x, BOX)
    assert chosen.item() == 1 and torch.all(step == 0)


def test_bad_box_mode():
    margins, grads, x = _problem(0)
    with pytest.raises(ValueError, match="box"):
        linear_boundary_steps(margins, grads, 2.0, 0.0, x, BOX, box="clip")
