// SelectiveScan (prefill) kernel: the math of src/mq_deploy/ops/selective_scan.py.
//
//   Δ_t = softplus(δ_t + b_dt)                      (or δ_t + b_dt without softplus)
//   h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) ⊗ Bm_t      h ∈ R^{B×D×N}, fp32, h_{-1} = h0 or 0
//   y_t = (h_t · Cm_t + Dskip ⊙ u_t) [⊙ SiLU(z_t)]
//
// Token-major layout: u, delta, z, y are (B, L, D); Bm, Cm are (B, L, N); A is (D, N);
// Dskip, delta_bias are (D,); h0 and last_state are (B, D, N) fp32.
// Element types: `in` (u, delta, Bm, Cm) is fp32, fp16 or int8 (per-tensor scales, x = q·scale);
// `out` (z, y) is fp32 or fp16. A, Dskip, delta_bias, states are fp32.
//
// Schedule: two threads per (batch, channel) (adjacent lanes) each hold 8 of the N states (zero-padded to
// 16) in registers and walk the tokens; Δ (softplus) of each token is computed by one of the two and
// swapped by a shuffle, the partial outputs are swapped back so that each token's y is finished (D·u, SiLU)
// and stored by one thread. Or four threads per channel hold 4 states each; selectiveScanPlan picks 2 or 4, and the
// chunks below, as the least time of a cost model fitted on 8 to 132 SMs (planCost in selectiveScanKernel.cu).
// u/Δ/z/Bm/Cm tiles are double-buffered in shared memory (u/Δ/z by cp.async when rows are 16-byte aligned), the next
// tile copied while the current one is computed (one barrier per tile).
// Where B·D is too small to fill the GPU, L can be split into C chunks: pass 1 runs chunk 0 with outputs from the
// true initial state and chunks 1 … C-2 from zero (local state and Σ Δ), pass 3 reruns chunks 1 … C-1 from
// their start states, which each block first chains from those (h_start[c+1] = exp(A·ΣΔ_c)·h_start[c] + h_local[c]).
// From 3 chunks on, chunk 0 (the output body in pass 1) is shorter than the others (SelectiveScanPlan::chunkFirst).
// On sm_90+, where pass 1 holds ≥ 4 blocks an SM, pass 3 is a programmatic dependent launch of pass 1: its blocks
// start their first tile copies in pass 1's free slots and wait (griddepcontrol.wait) only before reading pass 1's
// results.
// Experimental, built only with -DMQ_SCAN_SEGMENTED=1 and run only on request (schedules 2 and 3): two
// segment-parallel schedules (selectiveScanSeg.cuh, selectiveScanSeg2.cuh) that split L inside a block without
// recomputing exponentials; both measured slower than the token-serial schedule on every benchmarked shape
// (benchmarks/gpu/results/NOTES.md). Built only with -DMQ_SCAN_WIDE=1 (schedule 4): the token-serial loop with 8 or 16
// threads a channel in one pass (selectiveScanWide.cuh), also slower (latency-bound at 1-2 warps a scheduler).
#pragma once
#include "common.h"
#include <cstddef>

namespace mq
{

struct SelectiveScanParams
{
    int32_t batch{0};
    int32_t seqLen{0};
    int32_t dim{0};   //!< D (d_inner)
    int32_t dState{0}; //!< N, 1..16
    bool deltaSoftplus{true};

    DType inType{DType::kFLOAT};  //!< u, delta, Bm, Cm
    DType outType{DType::kFLOAT}; //!< z, y
    float uScale{1.f}, deltaScale{1.f}, bScale{1.f}, cScale{1.f}; //!< int8 only

    void const* u{nullptr};
    void const* delta{nullptr};
    float const* A{nullptr};
    void const* Bm{nullptr};
    void const* Cm{nullptr};
    float const* Dskip{nullptr};     //!< may be null (treated as 0)
    float const* deltaBias{nullptr}; //!< may be null (treated as 0)
    void const* z{nullptr};          //!< optional gate, `out` type
    float const* h0{nullptr};        //!< optional initial state
    void* y{nullptr};
    float* lastState{nullptr};       //!< optional final state

    //! 0: choose (token-serial); 1: token-serial (with `chunks`); experimental: 2, 3 segment-parallel, 4 wide
    int32_t schedule{0};
    //! schedule 2: lanes scanning one (channel, state group), 8 / 16 / 32; 3: lanes a channel, 4 / 8; 4: lanes a channel, 8 / 16
    int32_t segLanes{0};
    //! schedule 2: state groups a channel, 1 / 2 / 4; 3: warps (segments) a block, 4 / 8; 4: threads a block, 64 / 128;
    //! 0 = choose
    int32_t segGroups{0};
    int32_t chunks{0};   //!< token-serial: number of sequence chunks; 0 = choose from the GPU size
    int32_t polyExp{-1}; //!< 0: all exps on the MUFU unit; 1-2: the first 2 on the FMA pipe; ≥3: the first 4; -1: default (0)
    int32_t numSMs{0};   //!< 0 = query the current device
};

//! What `launchSelectiveScan` will run for these params.
struct SelectiveScanPlan
{
    int32_t schedule{1}; //!< 1: token-serial, 2 / 3: segment-parallel (selectiveScanSeg.cuh / selectiveScanSeg2.cuh), 4: wide
    int32_t chunks{1};   //!< token-serial chunks (1 for the experimental schedules)
    int32_t lanes{0};    //!< experimental schedules: (lanes, groups) as segLanes / segGroups; 0 for token-serial
    int32_t groups{0};
    int32_t split{2};    //!< token-serial: threads a channel, 2 (8 states each) or 4 (4 states each)
    int32_t chunkFirst{0}; //!< token-serial: tokens of chunk 0 (shorter than the others from 3 chunks on)
    int32_t chunkLen{0};   //!< token-serial: tokens of every later chunk (the last one may be cut short by L)
};
SelectiveScanPlan selectiveScanPlan(SelectiveScanParams const& p);

//! Chunks that `launchSelectiveScan` will use for these params (after resolving `chunks == 0`).
int32_t selectiveScanChunks(SelectiveScanParams const& p);

//! True when the library was built with this experimental schedule and (lanes, groups) configuration: 2 or 3
//! (segment-parallel, -DMQ_SCAN_SEGMENTED=1), 4 (wide, -DMQ_SCAN_WIDE=1).
bool selectiveScanSegmentedAvailable(int32_t schedule, int32_t lanes, int32_t groups);

//! Process-wide override of the automatic choice (benchmarks and tests): schedule 1 / 2 / 3 / 4 (0 or -1 = choose), and
//! for schedules 2 / 3 / 4 the (lanes, groups) configuration (0 or -1 = choose); schedule 1 with lanes 2 or 4 forces
//! the token-serial threads a channel. Explicit params fields take precedence.
void setSelectiveScanTuning(int32_t schedule, int32_t lanes, int32_t groups);

//! Bytes of workspace `launchSelectiveScan` needs (0 when one chunk is used).
size_t selectiveScanWorkspaceSize(SelectiveScanParams const& p);

//! Workspace bytes that cover the automatic plan (params.chunks = 0) of every batch ≤ maxBatch and sequence
//! length ≤ maxSeqLen on any GPU: the plan makes at most max(1, L / 128) chunks. What a TensorRT profile's largest
//! shape must reserve (the workspace of the largest shape's own plan can be smaller than a shorter one's, because
//! chunks are rounded to whole tiles).
size_t selectiveScanMaxWorkspaceSize(int32_t maxBatch, int32_t maxSeqLen, int32_t dim, int32_t dState);

//! Runs the scan on `stream`. Supported (in, out) types: (fp32, fp32), (fp16, fp16), (int8, fp16), (int8, fp32).
//! Returns cudaErrorInvalidValue for unsupported params.
cudaError_t launchSelectiveScan(SelectiveScanParams const& p, void* workspace, size_t workspaceSize, cudaStream_t stream);

} // namespace mq
