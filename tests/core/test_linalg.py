"""core.linalg.power_iteration against torch.linalg on random matrices."""
import pytest
import torch

from minnorm.core.linalg import power_iteration


def _matrices(b: int, m: int, n: int, seed: int, gap: float = 0.7) -> torch.Tensor:
    """``[b, m, n]`` matrices A = U diag(s) V^T with random orthogonal U, V and s_2 / s_1 = gap."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(b, m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(b, n, k, generator=g, dtype=torch.float64)).Q
    s = torch.rand(b, k, generator=g, dtype=torch.float64) * gap
    s[:, 0] = 1.0
    s = s * (0.1 + 5 * torch.rand(b, 1, generator=g, dtype=torch.float64))  # per-row scale
    return u @ torch.diag_embed(s) @ v.transpose(1, 2)


def _normal_operator(a: torch.Tensor):
    def apply(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (a[rows].transpose(1, 2) @ (a[rows] @ v[..., None]))[..., 0]
    return apply


@pytest.mark.parametrize("seed", range(5))
def test_eigenpair_matches_torch_linalg(seed):
    a = _matrices(6, 9, 7, seed)
    g = torch.Generator().manual_seed(seed + 100)
    v, est = power_iteration(_normal_operator(a), torch.randn(6, 7, generator=g, dtype=torch.float64), 200)
    evals, evecs = torch.linalg.eigh(a.transpose(1, 2) @ a)
    torch.testing.assert_close(est, evals[:, -1], rtol=1e-10, atol=0)
    torch.testing.assert_close(est, torch.linalg.matrix_norm(a, 2) ** 2, rtol=1e-10, atol=0)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(6, dtype=torch.float64))
    cos = (v * evecs[:, :, -1]).sum(1).abs()
    torch.testing.assert_close(cos, torch.ones(6, dtype=torch.float64), rtol=1e-9, atol=0)


def test_estimate_is_a_lower_bound_increasing_to_the_top_eigenvalue():
    a = _matrices(8, 5, 12, seed=7, gap=0.95)
    top = torch.linalg.matrix_norm(a, 2) ** 2
    g = torch.Generator().manual_seed(3)
    start = torch.randn(8, 12, generator=g, dtype=torch.float64)
    previous = torch.zeros(8, dtype=torch.float64)
    for n in (1, 2, 4, 8, 16):
        _, est = power_iteration(_normal_operator(a), start, n)
        assert torch.all(est <= top * (1 + 1e-12))
        assert torch.all(est >= previous * (1 - 1e-12))
        previous = est


def test_own_estimate_and_tolerance_stop_rows_separately():
    """Monitoring ||A v|| (the largest singular value) with a tolerance: each row stops on its own,
    so rows that converge fast are applied fewer times."""
    a = _matrices(4, 6, 6, seed=11)
    a[0] = torch.diag(torch.tensor([2.0, 0.01, 0.01, 0.01, 0.01, 0.01], dtype=torch.float64))  # converges at once
    calls = torch.zeros(4, dtype=torch.long)

    def apply(v, rows):
        calls[rows] += 1
        av = (a[rows] @ v[..., None])[..., 0]
        return (a[rows].transpose(1, 2) @ av[..., None])[..., 0], av.norm(dim=1)

    start = torch.ones(4, 6, dtype=torch.float64)
    v, sigma = power_iteration(apply, start, 500, tol=1e-13)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(a, 2), rtol=1e-6, atol=0)
    assert calls[0] < calls[1:].min() and calls.max() < 500


def test_zero_operator_rows_keep_the_start():
    a = _matrices(3, 4, 4, seed=2)
    a[1] = 0
    start = torch.arange(12, dtype=torch.float64).view(3, 4) + 1
    v, est = power_iteration(_normal_operator(a), start, 30)
    assert est[1] == 0 and est[0] > 0 and est[2] > 0
    torch.testing.assert_close(v[1], start[1] / start[1].norm())


def test_float32_and_image_shaped_rows():
    a = _matrices(2, 10, 12, seed=5).float()
    start = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))

    def apply(v, rows):
        return _normal_operator(a)(v.flatten(1), rows).view_as(v)

    v, est = power_iteration(apply, start, 100)
    assert v.shape == start.shape and v.dtype == torch.float32
    torch.testing.assert_close(est, torch.linalg.matrix_norm(a, 2) ** 2, rtol=1e-4, atol=0)
