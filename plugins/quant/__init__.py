"""Quantized (INT8/INT4) and binarized students."""
