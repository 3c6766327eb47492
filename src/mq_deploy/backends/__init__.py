"""Runners: one `__call__(input_ids) -> logits` contract for every backend (torch, onnxruntime, ...)."""
