"""Vision Mamba (Vim, Zhu et al. 2024): bidirectional Mamba image classifiers.

Modules (kept import-light: `model`, `data` and `torch_ref` need only numpy / torch, so the training
script runs on a machine without onnx):

| module | holds |
|---|---|
| `model` | `VimConfig`, `VimModel`/`VimLayer` (fp32 numpy weights), official state-dict naming, loader |
| `torch_ref` | `VimTorch`, the PyTorch reference (official `VisionMamba` v2 semantics, same names) |
| `graph` | ONNX builder: pixel_values → logits, two SelectiveScan plugin nodes per block |
| `passes` | the recipe passes for two scan directions sharing in_proj / out_proj |
| `quantize` | calibration on images → passes → integer weights + static scales |
| `compile`, `compare`, `evaluate` | `mq-deploy compile` / `compare` / `eval --task fashion_mnist` of a Vim |
| `data` | Fashion-MNIST reader and top-1 evaluation |
"""
