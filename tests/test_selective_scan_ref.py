"""The reference SelectiveScan (chunked numpy) against a plain per-step loop, sizes not powers of two."""

import numpy as np
import pytest

from mq_deploy.ops.selective_scan import selective_scan, softplus


def naive(u, delta, A, Bm, Cm, D, bias, h0=None):
    Bsz, L, Dn = u.shape
    N = A.shape[1]
    dt = np.log1p(np.exp((delta + bias).astype(np.float64)))
    h = np.zeros((Bsz, Dn, N)) if h0 is None else h0.astype(np.float64)
    y = np.zeros((Bsz, L, Dn))
    for t in range(L):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
        y[:, t] = (h * Cm[:, t, None, :]).sum(-1) + D * u[:, t]
    return y, h


@pytest.mark.parametrize("B,L,D,N,chunk", [(1, 1, 5, 3, 64), (3, 67, 24, 16, 8), (2, 130, 40, 7, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_naive(B, L, D, N, chunk, with_state):
    rng = np.random.default_rng(L + D)
    u = rng.standard_normal((B, L, D)).astype(np.float32)
    delta = rng.standard_normal((B, L, D)).astype(np.float32)
    A = -np.exp(rng.standard_normal((D, N))).astype(np.float32)
    Bm, Cm = (rng.standard_normal((B, L, N)).astype(np.float32) for _ in range(2))
    Dk, bias = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    h0 = rng.standard_normal((B, D, N)).astype(np.float32) if with_state else None
    y, h = selective_scan(u, delta, A, Bm, Cm, Dk, bias, True, initial_state=h0, chunk=chunk)
    y_ref, h_ref = naive(u, delta, A, Bm, Cm, Dk, bias, h0)
    assert y.shape == (B, L, D) and h.shape == (B, D, N)
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert np.abs(h - h_ref).max() <= 1e-5 * np.abs(h_ref).max()


def test_softplus_matches_torch_threshold():
    x = np.array([-100.0, -5.0, 0.0, 3.0, 19.9, 20.1, 500.0], dtype=np.float32)
    ref = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20.0).astype(np.float64))))
    np.testing.assert_allclose(softplus(x), ref, rtol=1e-6, atol=1e-38)  # exp(-100) is denormal in fp32
    assert np.isfinite(softplus(x)).all()
