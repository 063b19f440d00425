"""GPU commands: export's GPU options, `fer-triton gpu-configs`, `build-trt` and `check-precision`."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from fer_triton.export.gpu import VARIANTS, GPUOptions
from fer_triton.export.precision_names import TENSORRT_PRECISIONS


def _apply(options, command):
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


# How the GPU configs batch, scale and cache engines: `export` and `gpu-configs` share them.
CONFIG_OPTIONS = [
    click.option("--gpu-precision", type=click.Choice(TENSORRT_PRECISIONS), default="fp16", show_default=True,
                 help="TensorRT precision of the gpu_trt variant (FP16 is checked against FP32 at export)."),
    click.option("--gpu-max-batch-size", type=int, default=256, show_default=True,
                 help="Largest batch the GPU models' dynamic batcher forms (TensorRT profile max)."),
    click.option("--gpu-opt-batch-size", type=int, default=32, show_default=True,
                 help="Batch size TensorRT tunes for (profile opt); preferred batches are its doublings."),
    click.option("--gpu-instances", type=int, default=1, show_default=True, help="Model instances per GPU."),
    click.option("--gpu-queue-delay-us", type=int, default=1000, show_default=True,
                 help="Longest time the GPU batcher holds a request to form a bigger batch."),
    click.option("--trt-cache-path", default=GPUOptions.trt_cache_path, show_default=True,
                 help="Writable folder in the serving container for gpu_trt's TensorRT engine and timing caches "
                      "(one for all models; a named set uses <path>_<name>). Its parent must exist there: ONNX "
                      "Runtime creates only the last folder."),
    click.option("--gpu-python-precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp16",
                 show_default=True, help="gpu_python variant (pip-only GPU server): PyTorch autocast precision of "
                                         "the CLIP encoder and mask net; preprocess and head stay FP32."),
    click.option("--gpu-python-device", type=click.Choice(["auto", "cpu"]), default="auto", show_default=True,
                 help="gpu_python variant: auto = KIND_GPU instances on CUDA; cpu = KIND_CPU instances on the CPU "
                      "(a tritonserver without a GPU refuses KIND_GPU)."),
]


def gpu_export_options(command):
    """The GPU options of `fer-triton export`; they reach the command as ``**gpu`` (see gpu_settings)."""
    return _apply([
        click.option("--target", type=click.Choice(["cpu", "gpu", "both"]), default="cpu", show_default=True,
                     help="cpu: python-backend configs (any host). gpu: native onnxruntime/TensorRT configs only. "
                          "both: CPU config.pbtxt + GPU variants in configs/<name>.pbtxt "
                          "(select with tritonserver --model-config-name)."),
        *CONFIG_OPTIONS,
        click.option("--gpu-default-config", type=click.Choice(VARIANTS), default="gpu", show_default=True,
                     help="Which variant becomes config.pbtxt with --target gpu (gpu_trt = TensorRT accelerator)."),
        click.option("--fp16-min-top1", type=float, default=GPUOptions.min_top1_agreement, show_default=True,
                     help="Export fails if FP16 agrees with FP32 on fewer top-1 classes than this fraction."),
        click.option("--fp16-max-prob-diff", type=float, default=GPUOptions.max_prob_diff, show_default=True,
                     help="Export fails if any FP16 probability differs from FP32 by more than this."),
    ], command)


def gpu_settings(gpu: dict) -> tuple[str, GPUOptions]:
    """(target, GPUOptions) from the values of gpu_export_options (or CONFIG_OPTIONS alone)."""
    defaults = GPUOptions()
    return gpu.get("target", "gpu"), GPUOptions(
        precision=gpu["gpu_precision"], max_batch_size=gpu["gpu_max_batch_size"],
        opt_batch_size=gpu["gpu_opt_batch_size"], instances=gpu["gpu_instances"],
        queue_delay_us=gpu["gpu_queue_delay_us"], trt_cache_path=gpu["trt_cache_path"],
        default_variant=gpu.get("gpu_default_config", defaults.default_variant),
        min_top1_agreement=gpu.get("fp16_min_top1", defaults.min_top1_agreement),
        max_prob_diff=gpu.get("fp16_max_prob_diff", defaults.max_prob_diff),
        python_precision=gpu.get("gpu_python_precision", defaults.python_precision),
        python_device=gpu.get("gpu_python_device", defaults.python_device))


def echo_gpu_result(result) -> None:
    """What export's GPU part did, for `fer-triton export`."""
    if result.target == "cpu":
        return
    if result.gpu_precision is not None:
        click.echo(f"  precision: {result.gpu_precision.summary()}")
    variants = ", ".join(VARIANTS)
    click.echo(f"GPU configs ({variants}) in <model>/configs/: serve with NVIDIA's Triton container and "
               f"--model-config-name=<variant>, or without it: fer-triton serve --model-config-name gpu_python "
               f"(docs/gpu.md)")


@click.command("gpu-configs")
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="An exported repository (a CPU-only export works too).")
@click.option("--name", default="", help="Name of a set sized for one GPU type (e.g. t4): writes "
              "configs/<variant>_<name>.pbtxt; without it, the default gpu, gpu_trt and tensorrt configs.")
@click.option("--prefix", default="cafe", show_default=True, help="Model name prefix in the repository.")
@functools.partial(_apply, CONFIG_OPTIONS)
def gpu_configs(repository, name, prefix, **gpu):
    """Add GPU configs to an exported repository, e.g. one set per GPU type, without re-exporting."""
    from fer_triton.export.gpu import add_gpu_configs, config_name
    from fer_triton.export.repository import RepositoryLayout

    try:
        written = add_gpu_configs(repository, layout=RepositoryLayout(prefix), opts=gpu_settings(gpu)[1], name=name)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    names = ", ".join(config_name(v, name) for v in VARIANTS)
    click.echo(f"wrote {len(written)} configs ({names}) in {repository}/*/configs/: "
               f"select one with tritonserver --model-config-name")


@click.command("build-trt")
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Exported repository (with GPU configs) on the serving host.")
@click.option("--profile", default="1/32/256", show_default=True,
              help="TensorRT optimisation profile: MIN/OPT/MAX batch size.")
@click.option("--precision", "precision", type=click.Choice(TENSORRT_PRECISIONS), default="fp16", show_default=True)
@click.option("--builder", type=click.Choice(["auto", "python", "trtexec"]), default="auto", show_default=True,
              help="TensorRT's Python API or trtexec (auto: the API when importable).")
@click.option("--name", default="", help="Build for the GPU config set of this name (`gpu-configs --name`): "
              "model_<name>.plan and configs/tensorrt_<name>.pbtxt.")
@click.option("--prefix", default="cafe", show_default=True, help="Model name prefix in the repository.")
@click.option("--serving-tensorrt", default=None, metavar="X.Y|any",
              help="TensorRT version of the Triton container that loads the plans (default: the one "
                   "docs/gpu.md names); the build is refused when the builder's differs. 'any' skips the check.")
def build_trt(repository, profile, precision, builder, name, prefix, serving_tensorrt):
    """Build TensorRT plans for the CLIP encoder and mask net (run on the GPU host that serves them)."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.export.tensorrt import (SERVING_TENSORRT, Profile, TensorRTBuildError, TensorRTUnavailableError,
                                            TensorRTVersionError, build_plans)

    serving = SERVING_TENSORRT if serving_tensorrt is None else ("" if serving_tensorrt == "any" else serving_tensorrt)
    try:
        parsed = Profile.parse(profile)
        plans = build_plans(repository, layout=RepositoryLayout(prefix), profile=parsed, precision=precision,
                            builder=builder, name=name, on_built=lambda p: click.echo(f"built {p}"),
                            serving_tensorrt=serving)
    except (TensorRTUnavailableError, TensorRTBuildError, TensorRTVersionError, FileNotFoundError,
            ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    variant = "tensorrt" + (f"_{name}" if name else "")
    click.echo(f"{len(plans)} plan(s) built ({precision}, batch {profile}); serve with --model-config-name={variant}, "
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
