"""Orthonormal Hadamard matrices of size n = m·2^k, and the fast transform y = x·H.

Canonical definition (shared by the passes, the CPU kernels and the CUDA Hadamard plugin):

    H_n = kron(B_m, S_{2^k}) / sqrt(n)

where S_{2^k} is the Sylvester matrix in natural order (S_1 = [1], S_{2j} = [[S, S], [S, -S]]) and
B_m (entries ±1, B_m·B_mᵀ = m·I) is a base matrix: B_1 = [1]; Paley I for m = q + 1 with q prime,
q ≡ 3 (mod 4) (m = 12, 20, 24, 44, 48, 60, 68, 72, 80, 84, 104, 108, 128, 132, 140, ...); Paley II for m = 2(q + 1)
with q prime, q ≡ 1 (mod 4) (m = 12, 28, 36, 60, 76, ...). The smallest m that is not a power of two
is chosen: for every n, `base_size(n)` gives the odd-part-covering m (e.g. 768 = 12·64,
2560 = 20·128, 5120 = 20·256, 1536 = 12·128, 40·2^k = 20·2^(k+1)).

With x viewed as (m, 2^k) (row-major, index i = a·2^k + b), x·H_n is a Walsh–Hadamard transform of
each row followed by the m×m product with B_m, scaled by 1/sqrt(n).
`random_signs` gives the QuaRot-style randomized variant H·diag(±1) ... applied as diag(s)·H.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import UserError

MAX_BASE = 256


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    i = 2
    while i * i <= q:
        if q % i == 0:
            return False
        i += 1
    return True


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = χ(j - i) over GF(q), q prime (χ: quadratic character)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if r in squares else -1 for r in range(1, q)], dtype=np.int64)
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(q: int) -> np.ndarray:
    """Paley I: q ≡ 3 mod 4 prime → Hadamard matrix of order q + 1."""
    Q = _jacobsthal(q)
    n = q + 1
    S = np.zeros((n, n), dtype=np.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return S + np.eye(n, dtype=np.int64)


def _paley2(q: int) -> np.ndarray:
    """Paley II: q ≡ 1 mod 4 prime → Hadamard matrix of order 2(q + 1)."""
    Q = _jacobsthal(q)
    n = q + 1
    C = np.zeros((n, n), dtype=np.int64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = Q
    blk_zero = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    blk_pm = np.array([[1, 1], [1, -1]], dtype=np.int64)
    H = np.zeros((2 * n, 2 * n), dtype=np.int64)
    for i in range(n):
        for j in range(n):
            H[2 * i:2 * i + 2, 2 * j:2 * j + 2] = blk_zero if C[i, j] == 0 else C[i, j] * blk_pm
    return H


@functools.lru_cache(maxsize=None)
def base_matrix(m: int) -> np.ndarray:
    """The ±1 base matrix B_m (int8), B_m·B_mᵀ = m·I; raises UserError if no construction is known."""
    if m == 1:
        return np.ones((1, 1), dtype=np.int8)
    if m == 2:
        return np.array([[1, 1], [1, -1]], dtype=np.int8)
    if m % 4 == 0:
        q = m - 1
        if _is_prime(q) and q % 4 == 3:
            return _paley1(q).astype(np.int8)
        if m % 2 == 0 and (m // 2 - 1) > 1:
            q = m // 2 - 1
            if _is_prime(q) and q % 4 == 1:
                return _paley2(q).astype(np.int8)
    raise UserError(f"no Hadamard base matrix of order {m} is available (Paley I/II with a prime field)")


def _split(n: int) -> tuple[int, int]:
    """n = m·2^k with m the odd-ish part that has a known base matrix (smallest such m)."""
    if n < 1:
        raise UserError(f"Hadamard size must be positive, got {n}")
    k = 0
    while n % (1 << (k + 1)) == 0:
        k += 1
    # try m = odd·1, odd·2, odd·4, ... (e.g. 40·2^k → 20·2^(k+1) is also 40·2^k)
    odd = n >> k
    for extra in range(0, k + 1):
        m = odd << extra
        if m == 1 or m == 2 and odd == 1:
            return 1, k
        try:
            base_matrix(m)
            return m, k - extra
        except UserError:
            continue
    raise UserError(f"no Hadamard matrix of size {n}: its odd part {odd} has no known base matrix "
                    "(supported: n = m·2^k with m in 1, 12, 20, 28, 36, 44, 60, ... )")


def base_size(n: int) -> tuple[int, int]:
    """(m, k) with n = m·2^k and B_m the base used for H_n."""
    return _split(n)


def is_supported(n: int) -> bool:
    try:
        _split(n)
        return True
    except UserError:
        return False


def sylvester(k: int) -> np.ndarray:
    S = np.ones((1, 1), dtype=np.int8)
    for _ in range(k):
        S = np.block([[S, S], [S, -S]])
    return S


@functools.lru_cache(maxsize=32)
def hadamard_matrix(n: int) -> np.ndarray:
    """The orthonormal H_n = kron(B_m, S_{2^k}) / sqrt(n) as float64 (n×n)."""
    m, k = _split(n)
    H = np.kron(base_matrix(m).astype(np.float64), sylvester(k).astype(np.float64))
    return H / np.sqrt(n)


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh–Hadamard transform along the last axis (length a power of two), natural order."""
    x = np.array(x, copy=True)
    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        x = y.reshape(*x.shape[:-1], n)
        h *= 2
    return x


def hadamard_transform(x: np.ndarray) -> np.ndarray:
    """x·H_n along the last axis without forming H_n: FWHT of each 2^k block, then the m×m base."""
    n = x.shape[-1]
    m, k = _split(n)
    xs = np.asarray(x, dtype=np.float64).reshape(*x.shape[:-1], m, 1 << k)
    xs = fwht(xs)
    xs = np.einsum("...ab,ac->...cb", xs, base_matrix(m).astype(np.float64))
    return (xs.reshape(x.shape) / np.sqrt(n)).astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def random_signs(n: int, seed: int) -> np.ndarray:
    """±1 vector for the randomized Hadamard diag(s)·H_n."""
    return np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)


def hadamard_transform_fp32(x: np.ndarray) -> np.ndarray:
    """`hadamard_transform` in fp32, for the CPU kernel of the Hadamard plugin: k butterfly stages on whole
    arrays, then the m×m base as one batched product (n log n work; a product with H_n is n² and, for
    n = 1536, costs as much as all of a layer's linears). Agrees with the float64 transform to ~1e-6."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    m, k = _split(n)
    P = 1 << k
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    y = x.reshape(rows * m, P)
    h = 1
    while h < P:
        v = y.reshape(rows * m, P // (2 * h), 2, h)
        y = np.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), axis=2).reshape(rows * m, P)
        h *= 2
    y = y.reshape(rows, m, P)
    if m > 1:
        y = np.matmul(base_matrix(m).astype(np.float32).T, y)  # out[c] = sum_a base[a, c] * y[a]
    return (y.reshape(x.shape) * np.float32(1.0 / np.sqrt(n))).astype(np.float32)
