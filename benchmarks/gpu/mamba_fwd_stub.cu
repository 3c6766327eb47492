// Stubs so that mamba-ssm's selective_scan.cpp links with only selective_scan_fwd_fp16.cu compiled
// (measurement only; mamba-ssm's sources are never committed here: run_all.sh reads them from
// .carry/mamba/csrc/selective_scan). Any call of a stubbed type combination raises.
#include <cstdint>
#include "selective_scan.h"
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/complex.h>

template <typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd&, cudaStream_t)
{
    TORCH_CHECK(false, "backward not built in this benchmark build");
}
template <typename input_t, typename weight_t>
void selective_scan_fwd_cuda(SSMParamsBase&, cudaStream_t);

#define MQ_BWD(I, W) template void selective_scan_bwd_cuda<I, W>(SSMParamsBwd&, cudaStream_t);
MQ_BWD(float, float) MQ_BWD(float, c10::complex<float>) MQ_BWD(at::Half, float) MQ_BWD(at::Half, c10::complex<float>)
MQ_BWD(at::BFloat16, float) MQ_BWD(at::BFloat16, c10::complex<float>)

#define MQ_FWD(I, W)                                                                                                   \
    template <>                                                                                                        \
    void selective_scan_fwd_cuda<I, W>(SSMParamsBase&, cudaStream_t)                                                   \
    {                                                                                                                  \
        TORCH_CHECK(false, "only the fp16 forward is built in this benchmark build");                                 \
    }
MQ_FWD(float, float) MQ_FWD(float, c10::complex<float>) MQ_FWD(at::BFloat16, float)
MQ_FWD(at::BFloat16, c10::complex<float>)
