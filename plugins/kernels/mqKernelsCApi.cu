// Plain C entry points over the launchers (raw device pointers), for ctypes test/benchmark harnesses
// and for users who call the kernels without TensorRT. Every function returns a cudaError_t value.
#include "hadamardKernel.h"
#include "selectiveScanKernel.h"
#include "stateUpdateKernel.h"

#include <cstring>

extern "C"
{

int mq_selective_scan(int batch, int seq_len, int dim, int d_state, int delta_softplus, int in_type, int out_type,
    float u_scale, float delta_scale, float b_scale, float c_scale, void const* u, void const* delta, float const* A,
    void const* Bm, void const* Cm, float const* Dskip, float const* delta_bias, void const* z, float const* h0, void* y,
    float* last_state, int chunks, int poly_exp, void* workspace, size_t workspace_size, void* stream)
{
    mq::SelectiveScanParams p;
    p.batch = batch, p.seqLen = seq_len, p.dim = dim, p.dState = d_state, p.deltaSoftplus = delta_softplus != 0;
    p.inType = static_cast<mq::DType>(in_type), p.outType = static_cast<mq::DType>(out_type);
    p.uScale = u_scale, p.deltaScale = delta_scale, p.bScale = b_scale, p.cScale = c_scale;
    p.u = u, p.delta = delta, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Dskip, p.deltaBias = delta_bias, p.z = z;
    p.h0 = h0, p.y = y, p.lastState = last_state, p.chunks = chunks, p.polyExp = poly_exp;
    return static_cast<int>(mq::launchSelectiveScan(p, workspace, workspace_size, static_cast<cudaStream_t>(stream)));
}

size_t mq_selective_scan_workspace(int batch, int seq_len, int dim, int d_state, int chunks, int out_type)
{
    mq::SelectiveScanParams p;
    p.batch = batch, p.seqLen = seq_len, p.dim = dim, p.dState = d_state, p.chunks = chunks;
    p.outType = static_cast<mq::DType>(out_type);
    return mq::selectiveScanWorkspaceSize(p);
}

//! Workspace bytes that cover the automatic plan of every batch <= max_batch and sequence length <= max_seq_len
//! (what the TensorRT plugin reserves for a profile's largest shape).
size_t mq_selective_scan_max_workspace(int max_batch, int max_seq_len, int dim, int d_state)
{
    return mq::selectiveScanMaxWorkspaceSize(max_batch, max_seq_len, dim, d_state);
}

int mq_selective_scan_chunks(int batch, int seq_len, int dim, int d_state, int chunks, int out_type)
{
    mq::SelectiveScanParams p;
    p.batch = batch, p.seqLen = seq_len, p.dim = dim, p.dState = d_state, p.chunks = chunks;
    p.outType = static_cast<mq::DType>(out_type);
    return mq::selectiveScanChunks(p);
}

//! Writes what mq_selective_scan would run for these sizes and output type (chunks as passed to it, 0 = automatic):
//! out[0] schedule (1 token-serial; 2, 3 the experimental segment-parallel forms, 4 the experimental wide one), out[1] chunks, out[2] lanes
//! (token-serial: threads a channel, 2 or 4), out[3] groups, out[4] tokens of chunk 0, out[5] tokens of each later chunk.
void mq_selective_scan_plan(int batch, int seq_len, int dim, int d_state, int chunks, int out_type, int* out)
{
    mq::SelectiveScanParams p;
    p.batch = batch, p.seqLen = seq_len, p.dim = dim, p.dState = d_state, p.chunks = chunks;
    p.outType = static_cast<mq::DType>(out_type);
    mq::SelectiveScanPlan const plan = mq::selectiveScanPlan(p);
    out[0] = plan.schedule, out[1] = plan.chunks, out[2] = plan.schedule == 1 ? plan.split : plan.lanes;
    out[3] = plan.groups, out[4] = plan.chunkFirst, out[5] = plan.chunkLen;
}

//! 1 when the experimental schedule with this (lanes, groups) configuration is compiled in: 2 or 3 (segment-parallel,
//! -DMQ_SCAN_SEGMENTED=1), 4 (wide, -DMQ_SCAN_WIDE=1); else 0.
int mq_selective_scan_segmented_available(int schedule, int lanes, int groups)
{
    return mq::selectiveScanSegmentedAvailable(schedule, lanes, groups) ? 1 : 0;
}

//! Process-wide override of the scan's automatic schedule (benchmarks, tests); -1 / 0 = choose.
void mq_selective_scan_set_tuning(int schedule, int lanes, int groups)
{
    mq::setSelectiveScanTuning(schedule, lanes, groups);
}

int mq_state_update(int batch, int dim, int d_state, int dt_softplus, int type, float const* state_in, float* state_out,
    void const* x, void const* dt, float const* A, void const* Bm, void const* Cm, float const* Dskip,
    float const* dt_bias, void const* z, void* y, void* stream)
{
    mq::StateUpdateParams p;
    p.batch = batch, p.dim = dim, p.dState = d_state, p.dtSoftplus = dt_softplus != 0;
    p.type = static_cast<mq::DType>(type);
    p.stateIn = state_in, p.stateOut = state_out, p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm;
    p.Dskip = Dskip, p.dtBias = dt_bias, p.z = z, p.y = y;
    return static_cast<int>(mq::launchStateUpdate(p, static_cast<cudaStream_t>(stream)));
}

//! Writes (m, k) for n; returns 0 on success, -1 if n has no known base matrix.
int mq_hadamard_split(int n, int* m, int* k)
{
    return mq::hadamardSplit(n, *m, *k) ? 0 : -1;
}

//! Copies B_m (m×m row-major, ±1) to host memory `out`; returns 0, or -1 if none is known.
int mq_hadamard_base_matrix(int m, float* out)
{
    auto const B = mq::hadamardBaseMatrix(m);
    if (B.empty())
        return -1;
    std::memcpy(out, B.data(), B.size() * sizeof(float));
    return 0;
}

int mq_hadamard(long long rows, int n, int m, int in_type, int out_type, float out_scale, void const* x, void* y,
    float const* base_matrix, void* stream)
{
    mq::HadamardParams p;
    p.rows = rows, p.n = n, p.m = m, p.inType = static_cast<mq::DType>(in_type);
    p.outType = static_cast<mq::DType>(out_type), p.outScale = out_scale, p.x = x, p.y = y, p.baseMatrix = base_matrix;
    return static_cast<int>(mq::launchHadamard(p, static_cast<cudaStream_t>(stream)));
}

//! Benchmark knobs of the fp16 Hadamard register path (see hadamardKernel.h: setHadamardTuning); -1 = default.
void mq_hadamard_set_tuning(int groups_per_block, int flags)
{
    mq::setHadamardTuning(groups_per_block, flags);
}

} // extern "C"
