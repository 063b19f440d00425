"""GPU commands: export's GPU options, `fer-triton build-trt` and `fer-triton check-precision`."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from fer_triton.export.gpu import VARIANTS, GPUOptions


def gpu_export_options(command):
    """The GPU options of `fer-triton export`; they reach the command as ``**gpu`` (see gpu_settings)."""
    options = [
        click.option("--target", type=click.Choice(["cpu", "gpu", "both"]), default="cpu", show_default=True,
                     help="cpu: python-backend configs (any host). gpu: native onnxruntime/TensorRT configs only. "
                          "both: CPU config.pbtxt + GPU variants in configs/<name>.pbtxt "
                          "(select with tritonserver --model-config-name)."),
        click.option("--gpu-precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
                     help="TensorRT precision of the gpu_trt and tensorrt variants (FP16 is checked against FP32)."),
        click.option("--gpu-max-batch-size", type=int, default=256, show_default=True,
                     help="Largest batch the GPU models' dynamic batcher forms (TensorRT profile max)."),
        click.option("--gpu-opt-batch-size", type=int, default=32, show_default=True,
                     help="Batch size TensorRT tunes for (profile opt); preferred batches are its doublings."),
        click.option("--gpu-instances", type=int, default=1, show_default=True, help="Model instances per GPU."),
        click.option("--gpu-queue-delay-us", type=int, default=1000, show_default=True,
                     help="Longest time the GPU batcher holds a request to form a bigger batch."),
        click.option("--gpu-default-config", type=click.Choice(VARIANTS), default="gpu", show_default=True,
                     help="Which variant becomes config.pbtxt with --target gpu (gpu_trt = TensorRT accelerator)."),
        click.option("--trt-cache-path", default=GPUOptions.trt_cache_path, show_default=True,
                     help="Writable folder in the serving container for TensorRT engine and timing caches."),
        click.option("--fp16-min-top1", type=float, default=GPUOptions.min_top1_agreement, show_default=True,
                     help="Export fails if FP16 agrees with FP32 on fewer top-1 classes than this fraction."),
        click.option("--fp16-max-prob-diff", type=float, default=GPUOptions.max_prob_diff, show_default=True,
                     help="Export fails if any FP16 probability differs from FP32 by more than this."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def gpu_settings(gpu: dict) -> tuple[str, GPUOptions]:
    """(target, GPUOptions) from the values of gpu_export_options."""
    return gpu["target"], GPUOptions(
        precision=gpu["gpu_precision"], max_batch_size=gpu["gpu_max_batch_size"],
        opt_batch_size=gpu["gpu_opt_batch_size"], instances=gpu["gpu_instances"],
        queue_delay_us=gpu["gpu_queue_delay_us"], default_variant=gpu["gpu_default_config"],
        trt_cache_path=gpu["trt_cache_path"], min_top1_agreement=gpu["fp16_min_top1"],
        max_prob_diff=gpu["fp16_max_prob_diff"])


def echo_gpu_result(result) -> None:
    """What export's GPU part did, for `fer-triton export`."""
    if result.target == "cpu":
        return
    if result.gpu_precision is not None:
        click.echo(f"  precision: {result.gpu_precision.summary()}")
    variants = ", ".join(VARIANTS)
    click.echo(f"GPU configs ({variants}) in <model>/configs/: serve with NVIDIA's Triton container and "
               f"--model-config-name=<variant> (docs/gpu.md)")


@click.command("build-trt")
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Exported repository (with GPU configs) on the serving host.")
@click.option("--profile", default="1/32/256", show_default=True,
              help="TensorRT optimisation profile: MIN/OPT/MAX batch size.")
@click.option("--precision", "precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True)
@click.option("--builder", type=click.Choice(["auto", "python", "trtexec"]), default="auto", show_default=True,
              help="TensorRT's Python API or trtexec (auto: the API when importable).")
@click.option("--prefix", default="cafe", show_default=True, help="Model name prefix in the repository.")
def build_trt(repository, profile, precision, builder, prefix):
    """Build TensorRT plans for the CLIP encoder and mask net (run on the GPU host that serves them)."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.export.tensorrt import (Profile, TensorRTBuildError, TensorRTUnavailableError,
                                            build_plans)

    try:
        parsed = Profile.parse(profile)
        plans = build_plans(repository, layout=RepositoryLayout(prefix), profile=parsed, precision=precision,
                            builder=builder, on_built=lambda p: click.echo(f"built {p}"))
    except (TensorRTUnavailableError, TensorRTBuildError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(plans)} plan(s) built ({precision}, batch {profile}); serve with --model-config-name=tensorrt, "
               f"then run `fer-triton check-precision` against the server")


@click.command("check-precision")
@click.option("-u", "--url", default="127.0.0.1:8001", show_default=True, help="Triton gRPC address.")
@click.option("-m", "--model", default="cafe", show_default=True, help="Ensemble name.")
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="The served repository: its FP32 model.onnx files are the reference.")
@click.option("-n", "--faces", "num_faces", type=int, default=64, show_default=True,
              help="How many drawn test faces to compare.")
@click.option("--min-top1", type=float, default=GPUOptions.min_top1_agreement, show_default=True)
@click.option("--max-prob-diff", type=float, default=GPUOptions.max_prob_diff, show_default=True)
def check_precision(url, model, repository, num_faces, min_top1, max_prob_diff):
    """Compare the served model (whatever engine runs it) with FP32 ONNX on the same faces."""
    from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError
    from fer_triton.export.precision import check_served
    from fer_triton.synthetic import draw_faces

    if num_faces < 1:
        raise click.ClickException(f"--faces must be >= 1, not {num_faces}")
    try:
        with FerClient(url, model) as client:
            wire_size = client.info().wire_size
        faces, _ = draw_faces(num_faces, wire_size, seed=11)
        report = check_served(url, repository, faces, model=model, min_top1_agreement=min_top1,
                              max_prob_diff=max_prob_diff)
    except (FerServerError, FerInputError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report.summary())
    if not report.passed:
        raise click.ClickException("served model disagrees with FP32 beyond the thresholds")
