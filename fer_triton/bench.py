"""`fer-triton bench`: served throughput and latency against in-process baselines, in one command."""

from __future__ import annotations

from pathlib import Path

import click


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not numbers:
        raise click.BadParameter("give at least one value")
    return numbers


@click.command()
@click.option("--model-size", type=click.Choice(["vit-b-32", "tiny"]), default="vit-b-32", show_default=True,
              help="vit-b-32: the true CLIP ViT-B/32 + ResNet-18 (random weights); tiny: a quick check.")
@click.option("-c", "--checkpoint", type=click.Path(path_type=Path),
              help="Benchmark this CAFE checkpoint instead of a random-weight one.")
@click.option("-b", "--batch-sizes", default="1,16", show_default=True, callback=_ints,
              help="Comma-separated batch sizes.")
@click.option("--concurrency", default="1,2", show_default=True, callback=_ints,
              help="Comma-separated numbers of requests in flight.")
@click.option("--variants", default="fp32-staged,fp32-fused,int8-fused", show_default=True,
              help="Served repositories: <fp32|int8>-<staged|fused> (onnxruntime) or ov-<fp32|bf16|int8>-<staged|fused> "
                   "(OpenVINO), comma-separated.")
@click.option("--duration", default=6.0, show_default=True, help="Seconds per measured point.")
@click.option("--min-requests", default=3, show_default=True, help="At least this many timed requests per client.")
@click.option("--threads", default=0, show_default=True, help="In-process threads (0 = all cores).")
@click.option("--no-baselines", is_flag=True, help="Skip the in-process onnxruntime and PyTorch runs.")
@click.option("--no-perf-analyzer", is_flag=True, help="Skip NVIDIA's perf_analyzer.")
@click.option("-w", "--workdir", type=click.Path(path_type=Path), default=Path("build/bench"), show_default=True,
              help="Checkpoint and exported repositories go here.")
@click.option("--reuse-exports", is_flag=True, help="Serve repositories already in --workdir instead of exporting.")
@click.option("--shared-memory", type=click.Choice(["system", "cuda"]), is_flag=False, flag_value="system",
              default=None, help="Also measure every served point with faces through Triton's shared memory: system "
                                 "(/dev/shm; the default when given alone) or cuda (GPU hosts).")
@click.option("--frames", "frames_bench", is_flag=True,
              help="Instead: frames/s through the <prefix>_frames model (server-side detection) against client-side "
                   "detection + crops, 640x480 and 1280x720, 1-4 faces (benchmarks/frames.py).")
@click.option("--detection-quality", is_flag=True,
              help="Instead: recall and false positives of the served MTCNN, Haar and facenet MTCNN on the astronaut "
                   "photo, lfw_subset and drawn faces (benchmarks/detection_quality.py).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("build/bench/result.json"),
              show_default=True, help="Write the full result here.")
def bench(model_size, checkpoint, batch_sizes, concurrency, variants, duration, min_requests, threads,
          no_baselines, no_perf_analyzer, workdir, reuse_exports, json_path, shared_memory=None, frames_bench=False,
          detection_quality=False):
    """Measure served faces/s and p50/p95/p99 latency against onnxruntime in-process and PyTorch eager."""
    if frames_bench or detection_quality:
        from fer_triton.benchmarks.detection_bench import run_detection_benchmarks

        run_detection_benchmarks(frames_bench, detection_quality, model_size=model_size, checkpoint=checkpoint,
                                 workdir=workdir, json_path=json_path, echo=click.echo)
        return
    from fer_triton.benchmarks.bench import BenchConfig, BenchError, run_benchmark
    from fer_triton.benchmarks.report import format_report, save_json
    from fer_triton.checkpoint import CheckpointError
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.server import TritonServerError

    cfg = BenchConfig(model_size=model_size, checkpoint=checkpoint, workdir=workdir,
                      variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
                      batch_sizes=batch_sizes, concurrency=concurrency, duration_s=duration,
                      min_requests=min_requests, threads=threads, baselines=not no_baselines,
                      perf_analyzer=not no_perf_analyzer, reuse_exports=reuse_exports)
    cfg.shared_memory = shared_memory
    try:
        result = run_benchmark(cfg, echo=click.echo)
    except (BenchError, CheckpointError, ExportValidationError, TritonServerError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("")
    click.echo(format_report(result))
    click.echo(f"\nwrote {save_json(result, json_path)}")
