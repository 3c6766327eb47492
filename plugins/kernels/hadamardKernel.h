// Online Hadamard transform y = x·H_n along the last axis: the math of src/mq_deploy/quant/hadamard.py.
//
//   H_n = kron(B_m, S_{2^k}) / sqrt(n),  n = m·2^k
//
// x's row is viewed as (m, 2^k) row-major; each sub-row of 2^k gets a Walsh–Hadamard transform
// (natural/Sylvester order), then out[c, :] = Σ_a x[a, :]·B_m[a, c], scaled by 1/sqrt(n).
// B_m (m×m, entries ±1, row-major, B_m[a, c] at a·m + c) is a device buffer from the caller
// (`mq::hadamardBaseMatrix` builds it on the host, a port of quant/hadamard.py:base_matrix).
// Optional fused int8 output: q = saturate(round_half_even(y / outScale)) (ONNX QuantizeLinear, zp 0).
// Schedule: for n % 256 == 0 (n ≤ 8192) and 16-byte aligned x/y, one thread per 8 consecutive elements,
// several rows per block, a grid of the resident blocks walking row groups with loads two groups ahead,
// butterflies h = 1..4 in registers and h = 8..128 by warp shuffles; shared memory only for h ≥ 256
// (register rounds of 3 stages) and the m×m base product. Other sizes: one block per row in shared memory.
// m ∈ {12, 20, 28, 36, 44, 60} have unrolled base products, any other m a generic loop.
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

//! Shared memory the kernel needs for one row (bytes).
size_t hadamardSharedBytes(int32_t n, int32_t m);

cudaError_t launchHadamard(HadamardParams const& p, cudaStream_t stream);

} // namespace mq
