// Shared helpers for the mq-deploy kernels: element types, dtype codes, conversions.
// No TensorRT types here: the kernels are usable (and tested) on their own.
#pragma once
#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mq
{

//! Element type of a tensor handed to a launcher (values match the C API).
enum class DType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kINT8 = 2,
};

#ifdef __CUDACC__ // device helpers; the DType enum above is also used by host-only (plugin) code
//! Load one element as fp32; int8 is dequantized with a per-tensor scale (x = q * scale).
__device__ __forceinline__ float toFloat(float v, float /*scale*/) { return v; }
__device__ __forceinline__ float toFloat(__half v, float /*scale*/) { return __half2float(v); }
__device__ __forceinline__ float toFloat(int8_t v, float scale) { return static_cast<float>(v) * scale; }

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }

//! ONNX QuantizeLinear (zero point 0): saturate(round_half_even(x / scale)) to [-128, 127].
__device__ __forceinline__ int8_t quantizeInt8(float x, float scale)
{
    float q = rintf(x / scale);
    q = fminf(fmaxf(q, -128.f), 127.f);
    return static_cast<int8_t>(static_cast<int32_t>(q));
}

//! softplus as torch: x for x > 20, else log1p(exp(x)).
__device__ __forceinline__ float softplusTorch(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float siluf(float z) { return z / (1.f + expf(-z)); }
#endif // __CUDACC__

} // namespace mq
