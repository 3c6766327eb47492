"""ONNX graph construction for Mamba models and the lowering of plugin nodes to standard ops."""
