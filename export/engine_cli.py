"""`fer-triton export` options of the CPU engine (--engine, --inference-precision) and what export prints."""

from __future__ import annotations

from typing import Callable

import click

from fer_triton.export.precision_names import CPU_ENGINES
from fer_triton.export.triton_python.openvino_model import PRECISION_CHOICES

ENGINE_OPTIONS = (
    click.option("--engine", type=click.Choice(CPU_ENGINES), default="onnxruntime", show_default=True,
                 help="CPU engine of the CLIP encoder and mask net (or fused backbone): openvino = OpenVINO IR "
                      "(--precision int8: NNCF), BF16 chosen at load where the CPU has it; auto = measure the "
                      "engines and precisions on this host and write the fastest that passes --min-agreement."),
    click.option("--inference-precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                 help="openvino: float precision at load (auto: BF16 where the CPU reports it, else FP32)."),
)


def engine_export_options(fn):
    for option in reversed(ENGINE_OPTIONS):
        fn = option(fn)
    return fn


def engine_settings(options: dict) -> dict:
    """Pop the engine options out of the command's keyword arguments: export_checkpoint's keywords.
    Raises MissingExtraError (naming the ``openvino`` extra) for openvino/auto without OpenVINO and NNCF."""
    from fer_triton.extras import require

    engine = options.pop("engine", "onnxruntime")
    if engine != "onnxruntime":
        require("openvino", what=f"fer-triton export --engine {engine}")
    return {"engine": engine, "inference_precision": options.pop("inference_precision", "auto")}


def echo_engine_result(result, echo: Callable[[str], None]) -> None:
    """Print the OpenVINO checks and the engine choice of an ExportResult (nothing for onnxruntime)."""
    choice = getattr(result, "engine_choice", None)
    if choice is not None:
        echo("  engine choice (measured in-process on this host, fastest that passes the bar):")
        for line in choice.lines():
            echo(f"    {line}")
    openvino = getattr(result, "openvino", None)
    if openvino is not None:
        for check in openvino.checks:
            echo(f"  {check.line()}")
        echo(f"  OpenVINO: {openvino.precision} IR; the runner's inference_precision is {openvino.inference_precision}"
             f" (on this CPU: {openvino.host_precision}); configs/openvino.pbtxt serves the same files with "
             f"Triton's openvino backend")
        echo("  (drawn faces against the FP32 PyTorch model: this measures agreement, not accuracy)")
