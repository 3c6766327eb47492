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


def _inputs(B, L, D, N, with_state, seed):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((B, L, D)).astype(np.float32)
    delta = rng.standard_normal((B, L, D)).astype(np.float32)
    A = -np.exp(rng.standard_normal((D, N))).astype(np.float32)
    Bm, Cm = (rng.standard_normal((B, L, N)).astype(np.float32) for _ in range(2))
    Dk, bias = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    h0 = rng.standard_normal((B, D, N)).astype(np.float32) if with_state else None
    return u, delta, A, Bm, Cm, Dk, bias, h0


@pytest.mark.parametrize("B,L,D,N,chunk", [(1, 1, 5, 3, 64), (3, 67, 24, 16, 8), (2, 130, 40, 7, 64)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_naive(B, L, D, N, chunk, with_state):
    u, delta, A, Bm, Cm, Dk, bias, h0 = _inputs(B, L, D, N, with_state, L + D)
    y, h = selective_scan(u, delta, A, Bm, Cm, Dk, bias, True, initial_state=h0, chunk=chunk)
    y_ref, h_ref = naive(u, delta, A, Bm, Cm, Dk, bias, h0)
    assert y.shape == (B, L, D) and h.shape == (B, D, N)
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert np.abs(h - h_ref).max() <= 1e-5 * np.abs(h_ref).max()


def test_softplus_matches_torch_threshold():
    # (10.5: log1p(exp(x)) - x = 2.8e-5 there, 2.6e-6 of x: a threshold at 10 instead of 20 fails rtol 1e-6)
    x = np.array([-100.0, -5.0, 0.0, 3.0, 10.5, 15.0, 19.9, 20.1, 500.0], dtype=np.float32)
    ref = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20.0).astype(np.float64))))
    np.testing.assert_allclose(softplus(x), ref, rtol=1e-6, atol=1e-38)  # exp(-100) is denormal in fp32
    assert np.isfinite(softplus(x)).all()


@pytest.mark.parametrize("B,L,D,N", [(1, 1, 5, 3), (3, 67, 130, 16), (2, 300, 770, 8), (1, 5, 1000, 16)])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("kernel", ["numpy", "native"])
def test_fast_cpu_kernels_match_naive(B, L, D, N, with_state, kernel):
    from mq_deploy.ops import native
    from mq_deploy.ops.selective_scan import selective_scan_cpu

    if kernel == "native":
        assert native.library() is not None, native.status()  # CI has a C compiler: the fast path must build
    u, delta, A, Bm, Cm, Dk, bias, h0 = _inputs(B, L, D, N, with_state, B * L + D)
    fn = native.selective_scan_fast if kernel == "native" else selective_scan_cpu
    y, h = fn(u, delta, A, Bm, Cm, Dk, bias, True, h0)
    y_ref, h_ref = naive(u, delta, A, Bm, Cm, Dk, bias, h0)
    assert y.shape == (B, L, D) and h.shape == (B, D, N) and y.dtype == h.dtype == np.float32
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()
    assert np.abs(h - h_ref).max() <= 1e-5 * np.abs(h_ref).max()
    if h0 is not None:
        assert not np.shares_memory(h, h0)  # the caller's state is not overwritten


def test_native_kernel_can_be_disabled(tmp_path):
    import subprocess
    import sys

    code = ("from mq_deploy.ops import native; import numpy as np; print(native.status()); "
            "y, h = native.selective_scan_fast(np.ones((1, 3, 4), np.float32), np.zeros((1, 3, 4), np.float32), "
            "-np.ones((4, 2), np.float32), np.ones((1, 3, 2), np.float32), np.ones((1, 3, 2), np.float32), "
            "np.zeros(4, np.float32)); print(y.shape)")
    env = {**__import__("os").environ, "MQ_DEPLOY_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["numpy (disabled by MQ_DEPLOY_NATIVE=0)", "(1, 3, 4)"]
    env = {**env, "MQ_DEPLOY_NATIVE": "1", "CC": str(tmp_path / "no-such-cc"), "MQ_DEPLOY_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("numpy (could not build") and out.splitlines()[1] == "(1, 3, 4)"
