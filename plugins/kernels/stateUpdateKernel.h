// SelectiveStateUpdate (decode, one token): the math of src/mq_deploy/ops/state_update.py.
//
//   Δ = softplus(dt + dt_bias)          (or dt + dt_bias)
//   h = exp(Δ ⊙ A) ⊙ h + (Δ ⊙ x) ⊗ Bm   state (B, D, N) fp32, updated in place when stateOut == stateIn
//   y = (h · Cm + Dskip ⊙ x) [⊙ SiLU(z)]
//
// x, dt, z, y are (B, D) (= (B, 1, D) token-major); Bm, Cm are (B, N); A is (D, N).
// `type` (x, dt, z, y, Bm, Cm) is fp32 or fp16; A, Dskip, dt_bias and the state are fp32.
// Schedule: grid (batch, channel blocks); 4 threads per (batch, channel) below B·D = 8192, 2 from there on, in
// 128-thread blocks, reduced by shuffles; for N = 16 each owns 4 (8) consecutive states (vector loads, all loads
// issued before the math), otherwise every 4th (2nd) state. Measured on an H200: benchmarks/gpu/results/NOTES.md,
// "Decode block shape" and "Decode: the state update's (b, d) from a 2-D grid".
#pragma once
#include "common.h"

namespace mq
{

struct StateUpdateParams
{
    int32_t batch{0};
    int32_t dim{0};
    int32_t dState{0}; //!< N ≥ 1
    bool dtSoftplus{true};
    DType type{DType::kFLOAT};

    float const* stateIn{nullptr};
    float* stateOut{nullptr}; //!< may equal stateIn
    void const* x{nullptr};
    void const* dt{nullptr};
    float const* A{nullptr};
    void const* Bm{nullptr};
    void const* Cm{nullptr};
    float const* Dskip{nullptr};  //!< may be null
    float const* dtBias{nullptr}; //!< may be null
    void const* z{nullptr};       //!< optional gate
    void* y{nullptr};
};

cudaError_t launchStateUpdate(StateUpdateParams const& p, cudaStream_t stream);

} // namespace mq
