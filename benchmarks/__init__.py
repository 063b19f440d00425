"""Benchmarks: served throughput and latency against in-process baselines (installed as fer_triton.benchmarks).

    fer-triton bench                      # true ViT-B/32 (random weights), FP32 and INT8, one command
    python -m fer_triton.benchmarks ...   # the same

See benchmarks/README.md.
"""
