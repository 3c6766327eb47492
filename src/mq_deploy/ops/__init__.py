"""Custom operators shared by the TensorRT plugins, the onnxruntime CPU kernels and the lowering."""
