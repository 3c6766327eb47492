// Online Hadamard transform y = x·H_n along the last axis: the math of src/mq_deploy/quant/hadamard.py.
//
//   H_n = kron(B_m, S_{2^k}) / sqrt(n),  n = m·2^k
//
// x's row is viewed as (m, 2^k) row-major; each sub-row of 2^k gets a Walsh–Hadamard transform
// (natural/Sylvester order), then out[c, :] = Σ_a x[a, :]·B_m[a, c], scaled by 1/sqrt(n).
// B_m (m×m, entries ±1, row-major, B_m[a, c] at a·m + c) is a device buffer from the caller
// (`mq::hadamardBaseMatrix` builds it on the host, a port of quant/hadamard.py:base_matrix).
// Optional fused int8 output: q = saturate(round_half_even(y / outScale)) (ONNX QuantizeLinear, zp 0).
// Schedules:
//  * fp16 input, fp16/int8 output, m ∈ {1, 12, 20, 28}, 2^k ≥ 64, n ≤ 8192, 16-byte aligned x/y: the register path of
//    hadamardFast.cuh — the base product by additions in registers (Paley structure, ~m/2 additions per output)
//    together with column bits 0-1, the other butterflies in 16-float4 register rounds through padded shared
//    memory, no warp shuffles; next row group prefetched into registers, evict-first stores (setHadamardTuning).
//  * other inputs with n % 256 == 0 (n ≤ 8192): one thread per 8 consecutive elements, several rows per block, a
//    grid of the resident blocks walking row groups with loads two groups ahead, butterflies h = 1..4 in registers
//    and h = 8..128 by warp shuffles; shared memory for h ≥ 256 (register rounds of 3 stages) and the m×m base
//    product (m ∈ {12, 20, 28, 36, 44, 60} unrolled, any other m a generic loop).
//  * other sizes: one block per row in shared memory.
#pragma once
#include "common.h"
#include <vector>

namespace mq
{

struct HadamardParams
{
    int64_t rows{0}; //!< product of the leading dimensions
    int32_t n{0};    //!< transform size = m · 2^k
    int32_t m{1};    //!< base size (1 = pure Walsh–Hadamard)
    DType inType{DType::kFLOAT};  //!< fp32 or fp16
    DType outType{DType::kFLOAT}; //!< fp32, fp16 or int8
    float outScale{1.f};          //!< int8 output only
    void const* x{nullptr};
    void* y{nullptr};
    float const* baseMatrix{nullptr}; //!< m×m ±1 as fp32 (may be null when m == 1)
};

//! Host port of quant/hadamard.py: (m, k) with n = m·2^k; returns false if n has no known base.
bool hadamardSplit(int32_t n, int32_t& m, int32_t& k);

//! Host port of quant/hadamard.py:base_matrix (row-major m×m, ±1); empty if none is known.
std::vector<float> hadamardBaseMatrix(int32_t m);

//! Shared memory the kernel needs for one row (bytes): what the one-block-a-row schedule of the sizes the faster ones do
//! not take (n % 256 != 0 or n > 8192) allocates. At most kHadamardMaxSharedBytes, and at most what the device allows a
//! block (cudaDevAttrMaxSharedMemoryPerBlockOptin: ~99 KB on sm_86 / sm_89, ~163 KB on sm_80 / sm_87, ~227 KB on sm_90).
size_t hadamardSharedBytes(int32_t n, int32_t m);
constexpr size_t kHadamardMaxSharedBytes = 200 * 1024;

cudaError_t launchHadamard(HadamardParams const& p, cudaStream_t stream);

//! Tuning knobs of the fp16 register path (benchmarks), process-wide, -1 = the built-in default: row groups a block
//! processes (0 = a grid of the resident blocks walking all groups, k > 0 = k consecutive groups a block); flags:
//! 1 = prefetch the next group by cp.async into shared memory (else into registers), 2 = evict-first output stores,
//! 4 = the resident grid's last partial round spread over all blocks in pieces (default: 2).
void setHadamardTuning(int32_t groupsPerBlock, int32_t flags);

} // namespace mq
