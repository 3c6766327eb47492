// TensorRT IPluginV3 "Hadamard" (version 1, namespace mq_deploy) over kernels/hadamardKernel.
//
// Input x (..., n) fp32 or fp16; output y = x·H_n (same shape): x's type, or int8 when out_scale > 0
// (fused QuantizeLinear, zero point 0). Attributes: n (int), out_scale (float, 0 = no quantization).
// B_m is built from n with the C++ port of quant/hadamard.py:base_matrix and kept on the device, one copy per device and
// order for the whole process: put there when the first execution context attaches an instance (attachToContext), never
// freed, so enqueue allocates and copies nothing and may be captured into a CUDA graph from the first call on
// (Torch-TensorRT captures its first run), and creating or destroying a context does not disturb a capture another
// thread holds.
#pragma once
#include "pluginCommon.h"
#include "kernels/hadamardKernel.h"

namespace mq
{
namespace plugin
{

class HadamardPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit HadamardPlugin(Attrs attrs);
    HadamardPlugin(HadamardPlugin const&) = delete; // clone() builds a fresh instance
    HadamardPlugin& operator=(HadamardPlugin const&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;
    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t nbInputs() const;
    //! Points mBaseDev at B_m on the current device (m > 1; uploaded there by the first instance, synchronously, on a
    //! private stream, in relaxed capture mode): for a context's instance before any enqueue, or in the first enqueue
    //! of an instance no context attached (the builder's timing runs).
    void uploadBase();
    Attrs mAttrs;
    int32_t mM{1};
    std::vector<float> mBase;
    float const* mBaseDev{nullptr}; //!< the process's copy (not freed with the instance)

public:
    ~HadamardPlugin() override;
};

class HadamardPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    HadamardPluginCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    Attrs mAttrs; //!< declaration (names, types, defaults)
};

//! The one attribute list of Hadamard (creator fields, parsing, serialization).
Attrs hadamardAttrs();

} // namespace plugin
} // namespace mq
