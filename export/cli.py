"""`fer-triton export`: checkpoint -> validated ONNX -> Triton model repository."""

from __future__ import annotations

from pathlib import Path

import click

from fer_triton.export.gpu_cli import echo_gpu_result, gpu_export_options, gpu_settings


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
@gpu_export_options
def export(checkpoint, output, wire_size, atol, max_batch_size, threads, prefix, overwrite, **gpu):
    """Export a CAFE checkpoint to ONNX (validated against PyTorch) and a Triton repository."""
    from fer_triton.checkpoint import CheckpointError
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.precision import PrecisionCheckError
    from fer_triton.export.repository import RepositoryLayout

    def report(r):
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in r.max_abs_diff.items())
        click.echo(f"  {r.name:<22} ONNX vs PyTorch max |diff|: {diffs}")

    click.echo(f"exporting {checkpoint} (wire size {wire_size}, atol {atol:g})")
    try:
        result = export_checkpoint(checkpoint, output, wire_size=int(wire_size), atol=atol,
                                   max_batch_size=max_batch_size, threads=threads,
                                   layout=RepositoryLayout(prefix), overwrite=overwrite, on_report=report,
                                   target=gpu_settings(gpu)[0], gpu_options=gpu_settings(gpu)[1])
    except (CheckpointError, ExportValidationError, PrecisionCheckError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"  {'ensemble (uint8 -> probabilities)':<22} max |diff|: {result.ensemble_max_abs_diff:.2e}")
    click.echo(f"weights: {result.weights}")
    click.echo(f"wrote {result.repository}: ensemble '{result.layout.ensemble}' + "
               f"{', '.join(result.layout.stages.values())}")
    echo_gpu_result(result)
