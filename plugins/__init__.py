"""First-party plugins: backbones, the Entropic Student, and quantized/binary students (all need torch)."""
