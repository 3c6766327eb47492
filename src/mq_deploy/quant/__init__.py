"""Quantization math: pure array functions that know nothing of graphs or modules."""
