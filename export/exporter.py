"""Checkpoint -> validated ONNX graphs -> Triton model repository (the library behind `fer-triton export`)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.export.onnx_export import DEFAULT_ATOL, StageReport, export_onnx_stages, validate_chain
from fer_triton.export.repository import RepositoryLayout, write_repository

log = logging.getLogger(__name__)

WIRE_SIZES = (224, 112)


@dataclass
class ExportResult:
    repository: Path
    layout: RepositoryLayout
    stage_reports: dict[str, StageReport]
    ensemble_max_abs_diff: float
    weights: str


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, wire_size: int = 224,
                      atol: float = DEFAULT_ATOL, max_batch_size: int = 64, threads: int = 0,
                      layout: RepositoryLayout = RepositoryLayout(), overwrite: bool = False,
                      on_report: Callable[[StageReport], None] | None = None) -> ExportResult:
    """Export every stage, validate each and the whole chain against PyTorch, then write the repository.

    Nothing is written to ``output`` unless every check passed.
    """
    if wire_size not in WIRE_SIZES:
        raise ValueError(f"wire size must be one of {WIRE_SIZES}, not {wire_size}")
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
        metadata = {
            "clip_model": ckpt.clip_model,
            "clip_weights": "random" if ckpt.clip_is_random else str(ckpt.clip_pretrained),
            "mask_net_init": ckpt.mask_net_init,
            "checkpoint": str(Path(checkpoint).resolve()),
            "export_max_abs_diff": chain_diff,
        }
        write_repository(output, paths, layout=layout, wire_size=wire_size, classes=ckpt.classes,
                         max_batch_size=max_batch_size, threads=threads, metadata=metadata, overwrite=overwrite)
    return ExportResult(output, layout, reports, chain_diff, ckpt.describe_weights())
