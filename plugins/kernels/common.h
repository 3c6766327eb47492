// Shared helpers for the mq-deploy kernels: element types, dtype codes, conversions.
// No TensorRT types here: the kernels are usable (and tested) on their own.
#pragma once
#include <cstdint>
#include <cstring>
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
//! int8 → fp32, exact for every value; by default I2F (as toFloat uses it). kAlu: the float with bits
//! 0x4B000000 | (q + 128) is 2^23 + q + 128, so one logic op and one FADD give q on the ALU and FMA pipes; I2F runs on
//! the XU pipe with the exponentials (16 a clock an SM on Hopper). The scan takes the ALU form in its output body only
//! (selectiveScanKernel.cu, MQ_SCAN_INT8_CVT). Host and device: plugins/tests/scan_plan_host.cu checks all 256 values
//! against the cast on the CPU.
template <bool kAlu = false>
__host__ __device__ __forceinline__ float int8ToFloat(int8_t v)
{
    if constexpr (kAlu)
    {
        uint32_t const bits = 0x4B000000u | (static_cast<uint32_t>(static_cast<uint8_t>(v)) ^ 0x80u); // 2^23 + q + 128
#ifdef __CUDA_ARCH__
        float const f = __uint_as_float(bits);
#else
        float f;
        std::memcpy(&f, &bits, sizeof f);
#endif
        return f - 8388736.f; // - (2^23 + 128)
    }
    else
        return static_cast<float>(v);
}
__device__ __forceinline__ float toFloat(int8_t v, float scale) { return int8ToFloat(v) * scale; }
//! toFloat with the int8 conversion chosen by the caller (kAlu: int8ToFloat's ALU form, else I2F).
template <bool kAlu, typename T>
__device__ __forceinline__ float toFloatAs(T v, float scale) { return toFloat(v, scale); }
template <bool kAlu>
__device__ __forceinline__ float toFloatAs(int8_t v, float scale) { return int8ToFloat<kAlu>(v) * scale; }

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
