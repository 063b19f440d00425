"""Checkpoint -> validated ONNX graphs -> Triton model repository (the library behind `fer-triton export`)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.export.onnx_export import DEFAULT_ATOL, StageReport, export_onnx_stages
from fer_triton.export.precision_names import CPU_ENGINES, CPU_PRECISIONS
from fer_triton.export.repository import RepositoryLayout, write_repository
from fer_triton.export.validate import validate_graphs
from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT

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
    engine: str = "onnxruntime"              # CPU engine of the heavy models: onnxruntime | openvino
    openvino: object | None = None           # openvino_engine.OpenVINOExport of --engine openvino
    engine_choice: object | None = None      # engine_choice.EngineChoice of --engine auto


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, wire_size: int = 224,
                      atol: float = DEFAULT_ATOL, max_batch_size: int = 64, threads: int = 0,
                      layout: RepositoryLayout = RepositoryLayout(), overwrite: bool = False,
                      on_report: Callable[[StageReport], None] | None = None,
                      target: str = "cpu", gpu_options=None, precision: str = "fp32",
                      min_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT, max_prob_diff: float | None = None,
                      fused: bool = False, engine: str = "onnxruntime",
                      inference_precision: str = "auto", detector=None,
                      auto_candidates: tuple[str, ...] | None = None) -> ExportResult:
    """Export every stage, validate each and the whole chain against PyTorch, then write the repository.

    The graphs the repository serves are validated as its ensemble runs them (export/validate.py):
    FP32 staged, FP32 fused (the merged backbone), INT8 staged and INT8 fused alike. ``atol``: FP32
    max |ONNX - PyTorch|. INT8: top-1 agreement with PyTorch of at least ``min_agreement`` and no
    probability moved by more than ``max_prob_diff`` (default: precision_names' INT8 tolerance) on
    drawn faces. ``engine`` (CPU): onnxruntime, openvino (export/openvino_engine.py: IR + NNCF INT8, BF16
    chosen at load per ``inference_precision``) or auto (export/engine_choice.py: the fastest variant
    measured on this host that passes the bar). ``detector``: export/detector.py's DetectorOptions (or
    "mtcnn" / "none"; None = MTCNN): the face detector and ``<prefix>_frames``.
    Nothing is written to ``output`` unless every check passed: raises
    ExportValidationError (AgreementError), PrecisionCheckError, FileExistsError or ValueError.
    """
    if wire_size not in WIRE_SIZES:
        raise ValueError(f"wire size must be one of {WIRE_SIZES}, not {wire_size}")
    from fer_triton.export.detector import DetectorOptions

    detector = DetectorOptions.parse(detector or "mtcnn")
    detector.validate()  # a DetectorExportError (ValueError) before any work
    if target not in TARGETS:
        raise ValueError(f"export target must be one of {TARGETS}, not {target!r}")
    if (precision != "fp32" or fused) and target != "cpu":
        raise ValueError("--precision int8 and --layout fused are CPU-only: use them with --target cpu")
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"CPU precision must be one of {', '.join(CPU_PRECISIONS)}, not {precision!r}")
    if engine not in CPU_ENGINES:
        raise ValueError(f"CPU engine must be one of {', '.join(CPU_ENGINES)}, not {engine!r}")
    if engine != "onnxruntime" and target != "cpu":
        raise ValueError("--engine openvino/auto is CPU-only: use it with --target cpu")
    if precision != "fp32" and not 0.0 < min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be in (0, 1], not {min_agreement}")
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
        tmp = Path(tmp)
        reports = export_onnx_stages(model, tmp, wire_size, names, atol=atol, on_report=on_report)
        paths = {name: r.path for name, r in reports.items()}
        fp32_graphs = {stage: paths[name] for stage, name in names.items()}
        chain_diff = validate_graphs(model, fp32_graphs, _validation_faces(wire_size, "fp32"), atol=atol,
                                     names=names).chain_max_prob_diff
        gpu_report = None
        if target != "cpu":
            gpu_report = check_export_precision(fp32_graphs, wire_size, gpu_options, tmp / "fp16")
        metadata = {
            **ckpt.provenance(checkpoint),
            "export_max_abs_diff": chain_diff,
            "precision": precision,
            "layout": "fused" if fused else "staged",
        }
        choice = None
        if engine == "auto":  # measure the candidates on this host, keep the fastest that passes the bar
            from fer_triton.export.engine_choice import choose_engine

            choice = choose_engine(model, paths, names, layout, tmp / "auto", wire_size=wire_size, fused=fused,
                                   atol=atol, min_agreement=min_agreement, max_prob_diff=max_prob_diff,
                                   threads=threads, candidates=auto_candidates)
            engine, precision, inference_precision = choice.engine, choice.precision, choice.inference_precision
            metadata.update(precision=precision, engine_choice=choice.summary())
        cpu_report = None
        openvino = None
        if engine == "openvino":
            from fer_triton.export.openvino_engine import export_openvino

            graphs = {stage: paths[name] for stage, name in names.items()}
            if fused:
                graphs = _fuse(graphs, tmp / "fused" / f"{layout.backbone}.onnx")
            openvino = export_openvino(model, graphs, {**names, "backbone": layout.backbone}, tmp / "openvino",
                                       wire_size=wire_size, precision=precision,
                                       inference_precision=inference_precision, atol=atol,
                                       min_agreement=min_agreement, max_prob_diff=max_prob_diff, threads=threads,
                                       reference=getattr(choice, "reference", None))
            metadata.update(openvino.metadata())
        elif precision != "fp32" or fused:  # other graphs than the FP32 stages above: validate what is served
            start = time.perf_counter()
            methods = {}
            if precision == "int8":
                from fer_triton.export.quantize import quantize_stages

                paths, methods = quantize_stages(paths, names, tmp / "int8", wire_size=wire_size)
            graphs = {stage: paths[name] for stage, name in names.items()}
            if fused:  # write_repository fuses the same files again, which gives the same graph
                graphs = _fuse(graphs, tmp / "fused" / f"{layout.backbone}.onnx")
            checked = validate_graphs(model, graphs, _validation_faces(wire_size, precision), precision=precision,
                                      atol=atol, min_agreement=min_agreement, max_prob_diff=max_prob_diff,
                                      names={"backbone": layout.backbone, **names})
            if "backbone" in checked.graphs:  # an FP32 backbone is a graph of its own: reported like the stages
                reports[layout.backbone] = checked.graphs["backbone"]
                if on_report:
                    on_report(reports[layout.backbone])
            if precision == "int8":
                from fer_triton.export.quantize import QuantizationReport

                cpu_report = QuantizationReport(precision, checked.top1_agreement, checked.faces,
                                                checked.chain_max_prob_diff, min_agreement, methods,
                                                seconds=time.perf_counter() - start)
                metadata.update(cpu_report.metadata())
                log.info("%s", checked.summary())
        write_repository(output, paths, layout=layout, wire_size=wire_size, classes=ckpt.classes,
                         max_batch_size=max_batch_size, threads=threads, metadata=metadata, overwrite=overwrite,
                         fused=fused, detector=detector)
        if openvino is not None:
            openvino.install(output, layout, fused=fused, threads=threads)
        if choice is not None:
            choice.save(output / layout.ensemble)
    gpu_configs = []
    if target != "cpu":
        gpu_configs = write_gpu_configs(output, layout=layout, wire_size=wire_size, num_classes=len(ckpt.classes),
                                        ensemble_max_batch_size=max_batch_size, opts=gpu_options,
                                        gpu_only=(target == "gpu"))
        # gpu_python (the pip-only GPU server) runs each stage's PyTorch graph, saved beside its model.onnx
        from fer_triton.export.torch_graphs import write_torch_graphs

        write_torch_graphs(model, output, layout=layout, wire_size=wire_size)
    return ExportResult(output, layout, reports, chain_diff, ckpt.describe_weights(), target, gpu_configs, gpu_report,
                        cpu_precision=cpu_report, fused=fused, engine=engine, openvino=openvino,
                        engine_choice=choice)


def _validation_faces(wire_size: int, precision: str) -> np.ndarray:
    """UINT8 faces [N, wire_size, wire_size, 3] to validate graphs of ``precision`` on.

    FP32: 4 random faces (every pixel value occurs). INT8: the 128 held-out drawn faces its top-1
    agreement is measured on (never the calibration faces).
    """
    if precision == "int8":
        from fer_triton.export.quantize import CHECK_SEED, DEFAULT_CHECK_FACES
        from fer_triton.synthetic import draw_faces

        return draw_faces(DEFAULT_CHECK_FACES, wire_size, seed=CHECK_SEED)[0]
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (4, wire_size, wire_size, 3), dtype=torch.uint8, generator=gen).numpy()


def _fuse(graphs: dict[str, Path], output: Path) -> dict[str, Path]:
    """The fused layout's graphs: preprocess + CLIP encoder + mask net merged into ``output``, and the head."""
    from fer_triton.export.fuse import fuse_backbone

    backbone = fuse_backbone(graphs["preprocess"], graphs["clip_encoder"], graphs["mask_net"], output)
    return {"backbone": backbone, "head": graphs["head"]}
