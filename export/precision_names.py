"""The precisions fer-triton exports, named once, with the engines that run each.

    fp32  the reference: onnxruntime on the CPU (python backend) and on the GPU, and TensorRT.
          Each exported graph must lie within ``--atol`` of PyTorch.
    fp16  TensorRT only (the gpu_trt accelerator, ``fer-triton build-trt`` plans). Checked against
          FP32 at export on the CPU (onnxruntime FP16 graphs) and on the GPU host (check-precision).
    int8  onnxruntime on the CPU (``fer-triton export --precision int8``) and OpenVINO (NNCF, ``--engine
          openvino``).
    bf16  OpenVINO on CPUs with native BF16 (AVX-512 BF16 or AMX): chosen when the model loads, from the
          same FP32 files (export/openvino_engine.py); checked against FP32 at export like int8.

A reduced precision (fp16, int8) applies to :data:`REDUCED_STAGES`; preprocess and head stay FP32. It
is held to the top-1 agreement bar (:data:`fer_triton.metrics.DEFAULT_MIN_TOP1_AGREEMENT`) and to its
own largest probability difference from FP32 (``max_prob_diff`` below).

After a publish (``fer-triton retrain``), the served probabilities are compared with the new model's
own (FP32, computed on the client). That check allows the *served* precision's
``verify_max_prob_diff`` (:func:`verify_tolerance`) and needs every top-1 class to agree: an FP16
TensorRT engine already moves probabilities by about 1.5e-4 (the CPU simulation), more than the FP32
bound of 1e-4, and GPU FP32 engines (cuDNN/cuBLAS with TF32, TensorRT FP32) by more than the CPU.

Every list of precision names (command-line choices, option checks, benchmark variants) is derived
from :data:`PRECISIONS` with :func:`supported_by`.
"""

from __future__ import annotations

from dataclasses import dataclass

ONNXRUNTIME_CPU = "onnxruntime-cpu"    # the python-backend models of the CPU flavour (export --precision)
TENSORRT = "tensorrt"                  # gpu_trt's accelerator and build-trt plans (--gpu-precision)
OPENVINO_CPU = "openvino-cpu"          # export --engine openvino (python backend or Triton's openvino backend)
ENGINES = (ONNXRUNTIME_CPU, TENSORRT, OPENVINO_CPU)

# The stages a reduced precision converts: they hold nearly all of the model's FLOPs.
REDUCED_STAGES = ("clip_encoder", "mask_net")


@dataclass(frozen=True)
class Precision:
    name: str
    engines: tuple[str, ...]            # the engines of ENGINES that run it
    max_prob_diff: float | None         # default largest |p - p_fp32| at export; None for fp32 (atol applies)
    # Largest |p_served - p_new| a publish accepts when the server runs this precision (top-1 must agree too).
    # Far below max_prob_diff: it must still tell the new model from the one it replaces.
    verify_max_prob_diff: float = 1e-4


PRECISIONS: tuple[Precision, ...] = (
    Precision("fp32", (ONNXRUNTIME_CPU, TENSORRT, OPENVINO_CPU), None, 1e-4),
    # FP16 rounding moves probabilities by about 1e-4 (ViT-B/32, docs/gpu.md).
    # The publish check: ~30x the 1.5e-4 measured in the CPU simulation, for TensorRT's own kernels.
    Precision("fp16", (TENSORRT,), 0.02, 5e-3),
    # INT8 moves them by about 4e-3 (ViT-B/32 with random weights, 128 drawn faces, docs/benchmarks.md);
    # trained models are more confident and move more near their decision boundaries.
    # Dynamic quantisation scales activations per batch: the same face moves with its batch-mates.
    Precision("int8", (ONNXRUNTIME_CPU, OPENVINO_CPU), 0.05, 2e-2),
    # BF16 keeps 8 significant bits: like int8 it is held to the agreement bar, not to atol.
    Precision("bf16", (OPENVINO_CPU,), 0.05, 2e-2),
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


# FP32 on a GPU (the gpu variant's CUDA kernels, TensorRT FP32): cuDNN/cuBLAS and TensorRT use TF32
# tensor cores by default on Ampere and later, which round matmul inputs to 10 mantissa bits.
GPU_FP32_VERIFY_MAX_PROB_DIFF = 1e-3


def verify_tolerance(name: str, *, on_gpu: bool = False) -> float:
    """Largest |p_served - p_new| the publish check allows when the server runs precision ``name``
    (``on_gpu``: FP32 on GPU kernels, which may use TF32). ValueError for an unknown name."""
    tolerance = precision(name).verify_max_prob_diff
    return max(tolerance, GPU_FP32_VERIFY_MAX_PROB_DIFF) if on_gpu else tolerance


CPU_PRECISIONS = supported_by(ONNXRUNTIME_CPU)      # ("fp32", "int8")
TENSORRT_PRECISIONS = supported_by(TENSORRT)        # ("fp32", "fp16")
OPENVINO_PRECISIONS = supported_by(OPENVINO_CPU)    # ("fp32", "int8", "bf16"); bf16 is a load-time choice

# `fer-triton export --engine`: which runtime serves the CLIP encoder and mask net (or fused backbone) on CPU hosts.
CPU_ENGINES = ("onnxruntime", "openvino", "auto")
