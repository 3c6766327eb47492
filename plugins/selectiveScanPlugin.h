// TensorRT IPluginV3 "SelectiveScan" (version 1, namespace mq_deploy) over kernels/selectiveScanKernel.
//
// Inputs: u, delta, A, Bm, Cm, Dskip, delta_bias [, z if has_z] [, h0 if has_initial_state]
// Outputs: y (B, L, D), last_state (B, D, N) fp32.
// Types: u/delta/Bm/Cm all fp32, all fp16, or all int8 (per-tensor scales from the attributes
// u_scale, delta_scale, B_scale, C_scale — the scales of the Q nodes in front of the plugin; 0, the default, on a
// float graph's node, which then offers no int8 formats; with int8 inputs, configurePlugin refuses a scale the node
// did not set rather than run at the default);
// y is fp16 for fp16 inputs, fp32 for fp32 and int8 inputs (the quantized graph gates in fp32); z has y's type;
// A, Dskip, delta_bias, h0 are fp32.
#pragma once
#include "pluginCommon.h"
#include "kernels/selectiveScanKernel.h"

namespace mq
{
namespace plugin
{

class SelectiveScanPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    //! `layer`: the network layer (ONNX node) createPlugin was asked for, named in warnings
    explicit SelectiveScanPlugin(Attrs attrs, std::string layer = "");

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
    bool int8Scales() const; //!< the node carries the four int8 scales (> 0)
    Attrs mAttrs;
    std::string mLayer;
};

class SelectiveScanPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SelectiveScanPluginCreator();
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    Attrs mAttrs; //!< declaration (names, types, defaults)
};

//! The one attribute list of SelectiveScan (creator fields, parsing, serialization).
Attrs selectiveScanAttrs();

} // namespace plugin
} // namespace mq
