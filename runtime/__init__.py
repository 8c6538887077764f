"""Torch-free runtime: backends, DeviceEncoder, DeviceModel, ServerDecoder, HTTP service."""
