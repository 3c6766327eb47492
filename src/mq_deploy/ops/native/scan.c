/* CPU kernels for onnxruntime runs of mq-deploy graphs (the CUDA plugins' semantics, fp32).
 * Built on first use by mq_deploy/ops/native.py with the system C compiler; numpy is the fallback.
 *
 * selective_scan: u, dt [B, L, D] (dt after bias and softplus); A [D, N]; Bm, Cm [B, L, N];
 *                 h [B, D, N] initial state in, final state out; y [B, L, D] out (without the D skip).
 *   h_t = exp(dt_t * A) * h_{t-1} + (dt_t * u_t) * Bm_t,   y_t = sum_n h_t * Cm_t
 * One (batch, channel) pair per iteration of the parallel loop; its N states live in registers and the
 * N exponentials of a step vectorize (glibc's libmvec).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MQ_MAX_N 256
#define MQ_PARALLEL_MIN (1 << 18) /* elementwise work below which a call stays on one thread */

int mq_selective_scan_f32(const float* u, const float* dt, const float* A, const float* Bm, const float* Cm,
                          float* h, float* y, int64_t B, int64_t L, int64_t D, int64_t N) {
  if (N > MQ_MAX_N) return 1;
  /* small calls (a decode step: L = 1) run on the calling thread: waking a team costs more than the work, and
   * its threads compete with onnxruntime's for the same cores (~10 ms a call on a loaded 2-core machine) */
#pragma omp parallel for collapse(2) schedule(static) if (B * D * L * N >= MQ_PARALLEL_MIN)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      float hs[MQ_MAX_N];
      const float* a = A + d * N;
      float* hp = h + (b * D + d) * N;
      memcpy(hs, hp, (size_t)N * sizeof(float));
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (b * L + t) * D + d;
        const float dl = dt[i], du = dl * u[i];
        const float* bt = Bm + (b * L + t) * N;
        const float* ct = Cm + (b * L + t) * N;
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          hs[n] = expf(dl * a[n]) * hs[n] + du * bt[n];
          acc += hs[n] * ct[n];
        }
        y[i] = acc;
      }
      memcpy(hp, hs, (size_t)N * sizeof(float));
    }
  }
  return 0;
}

/* hadamard: y = x · H_n along rows of length n = m · P (P a power of two), H_n = (base_m ⊗ H_P) / sqrt(n):
 * a fast Walsh-Hadamard transform of each of the m blocks of P, then out[c] = sum_a base[a][c] · block[a].
 * x, y: [rows, n] (may alias); base: [m, m] row-major; tmp: per-thread scratch of n floats. */
#include <stdlib.h>

int mq_hadamard_f32(const float* x, float* y, int64_t rows, int64_t m, int64_t P, const float* base, float scale) {
  const int64_t n = m * P;
  int err = 0;
#pragma omp parallel if (rows * n >= MQ_PARALLEL_MIN / 4)
  {
    float* t = (float*)malloc((size_t)n * sizeof(float));
    if (!t) {
#pragma omp atomic write
      err = 1;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      if (!t) continue;
      memcpy(t, x + r * n, (size_t)n * sizeof(float));
      for (int64_t a = 0; a < m; ++a) {
        float* v = t + a * P;
        for (int64_t h = 1; h < P; h *= 2)
          for (int64_t i = 0; i < P; i += 2 * h)
#pragma omp simd
            for (int64_t j = i; j < i + h; ++j) {
              const float p = v[j], q = v[j + h];
              v[j] = p + q;
              v[j + h] = p - q;
            }
      }
      float* out = y + r * n;
      if (m == 1) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) out[p] = t[p] * scale;
      } else {
        for (int64_t c = 0; c < m; ++c) {
          float* o = out + c * P;
          const float w0 = base[c] * scale;
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) o[p] = w0 * t[p];
          for (int64_t a = 1; a < m; ++a) {
            const float w = base[a * m + c] * scale;
            const float* s = t + a * P;
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) o[p] += w * s[p];
          }
        }
      }
    }
    free(t);
  }
  return err;
}
