"""`fer-triton export`: checkpoint -> validated ONNX -> Triton model repository."""

from __future__ import annotations

from pathlib import Path

import click

from fer_triton.export.detector_cli import detector_export_options, detector_settings
from fer_triton.export.engine_cli import echo_engine_result, engine_export_options, engine_settings
from fer_triton.export.gpu_cli import echo_gpu_result, gpu_export_options, gpu_settings
from fer_triton.export.precision_names import CPU_PRECISIONS
from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT


@click.command()
@click.option("-c", "--checkpoint", required=True, type=click.Path(path_type=Path),
              help="CAFE checkpoint (from `fer-triton train` or `fer-triton demo`).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Model repository to write.")
@click.option("--wire-size", type=click.Choice(["224", "112"]), default="224", show_default=True,
              help="Face-crop size clients send (the graph resizes to 224 when needed).")
@click.option("--atol", type=float, default=1e-4, show_default=True,
              help="Largest allowed |ONNX - PyTorch| difference (FP32).")
@click.option("--max-batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=0, show_default=True,
              help="onnxruntime intra-op threads per model (0 = one per core).")
@click.option("--prefix", default="cafe", show_default=True, help="Model name prefix in the repository.")
@click.option("--overwrite", is_flag=True, help="Replace models already in the repository.")
@click.option("--precision", type=click.Choice(CPU_PRECISIONS), default="fp32", show_default=True,
              help="CPU flavour: int8 quantizes the CLIP encoder and mask net (faster; checked against fp32).")
@click.option("--min-agreement", type=float, default=DEFAULT_MIN_TOP1_AGREEMENT, show_default=True,
              help="int8: least top-1 agreement with fp32 on drawn faces, else the export fails.")
@click.option("--layout", type=click.Choice(["staged", "fused"]), default="staged", show_default=True,
              help="CPU flavour: fused runs preprocess + CLIP + mask net as one model (one process).")
@gpu_export_options
@detector_export_options
@engine_export_options
def export(checkpoint, output, wire_size, atol, max_batch_size, threads, prefix, overwrite, precision,
           min_agreement, layout, **gpu):
    """Export a CAFE checkpoint to ONNX (validated against PyTorch) and a Triton repository."""
    from fer_triton.checkpoint import CheckpointError
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.precision import PrecisionCheckError
    from fer_triton.export.repository import RepositoryLayout

    def report(r):
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        click.echo(f"  {r.name:<22} ONNX vs PyTorch max |diff|: {diffs}")

    detector = detector_settings(gpu)  # pops the --detector options out of **gpu
    engine = engine_settings(gpu)  # pops --engine / --inference-precision out of **gpu
    click.echo(f"exporting {checkpoint} (wire size {wire_size}, atol {atol:g})")
    try:
        result = export_checkpoint(checkpoint, output, wire_size=int(wire_size), atol=atol,
                                   max_batch_size=max_batch_size, threads=threads,
                                   layout=RepositoryLayout(prefix), overwrite=overwrite, on_report=report,
                                   target=gpu_settings(gpu)[0], gpu_options=gpu_settings(gpu)[1],
                                   precision=precision, min_agreement=min_agreement, fused=layout == "fused",
                                   detector=detector, **engine)
    except (CheckpointError, ExportValidationError, PrecisionCheckError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"  {'ensemble (uint8 -> probabilities)':<22} max |diff|: {result.ensemble_max_abs_diff:.2e}")
    if result.cpu_precision is not None:
        q = result.cpu_precision
        click.echo(f"  int8 vs fp32 top-1 agreement: {q.agreement:.2%} on {q.check_faces} drawn faces "
                   f"(min {q.min_agreement:.2%}), max |dp| {q.max_abs_diff:.2e}")
    echo_engine_result(result, click.echo)
    click.echo(f"weights: {result.weights}")
    click.echo(f"wrote {result.repository}: ensemble '{result.layout.ensemble}' + "
               f"{', '.join(result.layout.served_models(result.fused))}")
    if detector.kind != "none":
        click.echo(f"frames in, faces out: '{result.layout.frames}' ({detector.kind} detector; docs/frames.md)")
    echo_gpu_result(result)
