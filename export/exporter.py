"""Checkpoint -> validated ONNX graphs -> Triton model repository (the library behind `fer-triton export`)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.export.onnx_export import DEFAULT_ATOL, StageReport, export_onnx_stages, validate_chain
from fer_triton.export.repository import RepositoryLayout, write_repository

log = logging.getLogger(__name__)

WIRE_SIZES = (224, 112)
TARGETS = ("cpu", "gpu", "both")


@dataclass
class ExportResult:
    repository: Path
    layout: RepositoryLayout
    stage_reports: dict[str, StageReport]
    ensemble_max_abs_diff: float
    weights: str
    target: str = "cpu"                      # cpu | gpu | both (GPU configs: export/gpu.py)
    gpu_configs: list[Path] = field(default_factory=list)
    gpu_precision: object | None = None      # precision.PrecisionReport of the FP16 check
    cpu_precision: object | None = None      # quantize.QuantizationReport of an INT8 export
    fused: bool = False                      # CPU layout with one backbone model (export/fuse.py)


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, wire_size: int = 224,
                      atol: float = DEFAULT_ATOL, max_batch_size: int = 64, threads: int = 0,
                      layout: RepositoryLayout = RepositoryLayout(), overwrite: bool = False,
                      on_report: Callable[[StageReport], None] | None = None,
                      target: str = "cpu", gpu_options=None, precision: str = "fp32",
                      min_agreement: float = 0.99, fused: bool = False) -> ExportResult:
    """Export every stage, validate each and the whole chain against PyTorch, then write the repository.

    Nothing is written to ``output`` unless every check passed.
    """
    if wire_size not in WIRE_SIZES:
        raise ValueError(f"wire size must be one of {WIRE_SIZES}, not {wire_size}")
    if target not in TARGETS:
        raise ValueError(f"export target must be one of {TARGETS}, not {target!r}")
    if (precision != "fp32" or fused) and target != "cpu":
        raise ValueError("--precision int8 and --layout fused are CPU-only: use them with --target cpu")
    if precision not in ("fp32", "int8"):
        raise ValueError(f"CPU precision must be fp32 or int8, not {precision!r}")
    if target != "cpu":
        from fer_triton.export.gpu import GPUOptions, check_export_precision, write_gpu_configs

        gpu_options = gpu_options or GPUOptions()
        gpu_options.validate(max_batch_size)
    output = Path(output)
    if not overwrite and (output / layout.ensemble).exists():
        raise FileExistsError(f"{output / layout.ensemble} exists; pass --overwrite to replace the exported models")
    ckpt = CAFECheckpoint.load(checkpoint)
    model = ckpt.build_model()
    names = layout.stages
    with tempfile.TemporaryDirectory(prefix="fer-triton-export-") as tmp:
        reports = export_onnx_stages(model, Path(tmp), wire_size, names, atol=atol, on_report=on_report)
        paths = {name: r.path for name, r in reports.items()}
        chain_diff = validate_chain(model, paths, names, wire_size, atol=atol)
        gpu_report = None
        if target != "cpu":
            gpu_report = check_export_precision({stage: paths[name] for stage, name in names.items()},
                                                wire_size, gpu_options, Path(tmp) / "fp16")
        metadata = {
            "clip_model": ckpt.clip_model,
            "clip_weights": "random" if ckpt.clip_is_random else str(ckpt.clip_pretrained),
            "mask_net_init": ckpt.mask_net_init,
            "checkpoint": str(Path(checkpoint).resolve()),
            "export_max_abs_diff": chain_diff,
            "precision": precision,
            "layout": "fused" if fused else "staged",
        }
        cpu_report = None
        if precision == "int8":  # checks top-1 agreement with the FP32 graphs, raises below min_agreement
            from fer_triton.export.quantize import quantize_stages

            paths, cpu_report = quantize_stages(paths, names, Path(tmp) / "int8", wire_size=wire_size,
                                                min_agreement=min_agreement)
            metadata.update(cpu_report.metadata())
        write_repository(output, paths, layout=layout, wire_size=wire_size, classes=ckpt.classes,
                         max_batch_size=max_batch_size, threads=threads, metadata=metadata, overwrite=overwrite,
                         fused=fused)
    gpu_configs = []
    if target != "cpu":
        gpu_configs = write_gpu_configs(output, layout=layout, wire_size=wire_size, num_classes=len(ckpt.classes),
                                        ensemble_max_batch_size=max_batch_size, opts=gpu_options,
                                        gpu_only=(target == "gpu"))
    return ExportResult(output, layout, reports, chain_diff, ckpt.describe_weights(), target, gpu_configs, gpu_report,
                        cpu_precision=cpu_report, fused=fused)
