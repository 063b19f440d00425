"""fer-triton: serve the CAFE facial-expression model on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
