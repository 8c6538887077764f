"""Exporters: torch -> ONNX / OpenVINO IR / TensorRT plan, post-training quantization, parity checks, bundles."""
