"""The precisions fer-triton exports, named once, with the engines that run each.

    fp32  the reference: onnxruntime on the CPU (python backend) and on the GPU, and TensorRT.
          Each exported graph must lie within ``--atol`` of PyTorch.
    fp16  TensorRT only (the gpu_trt accelerator, ``fer-triton build-trt`` plans). Checked against
          FP32 at export on the CPU (onnxruntime FP16 graphs) and on the GPU host (check-precision).
    int8  onnxruntime on the CPU only (``fer-triton export --precision int8``).

A reduced precision (fp16, int8) applies to :data:`REDUCED_STAGES`; preprocess and head stay FP32. It
is held to the top-1 agreement bar (:data:`fer_triton.metrics.DEFAULT_MIN_TOP1_AGREEMENT`) and to its
own largest probability difference from FP32 (``max_prob_diff`` below).

Every list of precision names (command-line choices, option checks, benchmark variants) is derived
from :data:`PRECISIONS` with :func:`supported_by`.
"""

from __future__ import annotations

from dataclasses import dataclass

ONNXRUNTIME_CPU = "onnxruntime-cpu"    # the python-backend models of the CPU flavour (export --precision)
TENSORRT = "tensorrt"                  # gpu_trt's accelerator and build-trt plans (--gpu-precision)
ENGINES = (ONNXRUNTIME_CPU, TENSORRT)

# The stages a reduced precision converts: they hold nearly all of the model's FLOPs.
REDUCED_STAGES = ("clip_encoder", "mask_net")


@dataclass(frozen=True)
class Precision:
    name: str
    engines: tuple[str, ...]            # the engines of ENGINES that run it
    max_prob_diff: float | None         # default largest |p - p_fp32| at export; None for fp32 (atol applies)


PRECISIONS: tuple[Precision, ...] = (
    Precision("fp32", (ONNXRUNTIME_CPU, TENSORRT), None),
    # FP16 rounding moves probabilities by about 1e-4 (ViT-B/32, docs/gpu.md).
    Precision("fp16", (TENSORRT,), 0.02),
    # INT8 moves them by about 4e-3 (ViT-B/32 with random weights, 128 drawn faces, docs/benchmarks.md);
    # trained models are more confident and move more near their decision boundaries.
    Precision("int8", (ONNXRUNTIME_CPU,), 0.05),
)
_BY_NAME = {p.name: p for p in PRECISIONS}


def supported_by(engine: str) -> tuple[str, ...]:
    """The precision names ``engine`` runs, fp32 first. Raises ValueError for an unknown engine."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    return tuple(p.name for p in PRECISIONS if engine in p.engines)


def precision(name: str) -> Precision:
    """The precision called ``name``; ValueError naming the known ones otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"precision must be one of {tuple(_BY_NAME)}, not {name!r}")
    return _BY_NAME[name]


CPU_PRECISIONS = supported_by(ONNXRUNTIME_CPU)      # ("fp32", "int8")
TENSORRT_PRECISIONS = supported_by(TENSORRT)        # ("fp32", "fp16")
