"""Convert each CAFE stage to ONNX and validate it against PyTorch on the same inputs.

Like optimum's exporters: every stage declares its inputs, outputs and dynamic axes, and an export
always runs the ONNX graph with onnxruntime and fails loudly when it differs from PyTorch. The graphs
a repository finally serves (staged or fused, FP32 or INT8) are validated again as a chain by
export/validate.py.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fer_triton.export.onnx_chain import GRAPH_IO
from fer_triton.metrics import max_abs_diff
from fer_triton.model import CAFE, Head, Preprocess

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_ATOL = 1e-4


class ExportValidationError(RuntimeError):
    """An exported ONNX graph does not reproduce the PyTorch outputs within tolerance."""


@dataclass(frozen=True)
class StageSpec:
    """One Triton model's graph: tensor names are the repository's public API."""

    name: str                      # Triton model name
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]


@dataclass
class StageReport:
    name: str
    path: Path
    max_abs_diff: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    def check(self, atol: float) -> "StageReport":
        """Raise ExportValidationError naming every output when the worst difference exceeds ``atol``."""
        if self.worst > atol:
            raise ExportValidationError(
                f"{self.name}: ONNX differs from PyTorch by {self.worst:.3g} (> atol {atol:g}) in "
                + ", ".join(f"{k}={v:.3g}" for k, v in self.max_abs_diff.items())
            )
        return self


class HeadGraph(nn.Module):
    """The head stage as an ONNX graph: initializers keep the names head.fc.weight / head.fc.bias.

    Also used by retrain to publish new head versions with the same graph layout.
    """

    def __init__(self, head: Head):
        super().__init__()
        self.head = head

    def forward(self, clip_features, mask_logits):
        return self.head(clip_features, mask_logits)


def _sample_faces(wire_size: int):
    def faces(batch, gen):
        return (torch.randint(0, 256, (batch, wire_size, wire_size, 3), dtype=torch.uint8, generator=gen),)
    return faces


def _sample_pixels(wire_size: int, preprocess: Preprocess | None = None):
    preprocess, faces = preprocess or Preprocess(), _sample_faces(wire_size)

    def pixels(batch, gen):
        # Realistic pixel statistics: normalised random images, not unit Gaussians.
        return (preprocess(faces(batch, gen)[0]),)
    return pixels


def mask_net_spec(mask_net: nn.Module, name: str, wire_size: int = 224,
                  preprocess: Preprocess | None = None) -> StageSpec:
    """The mask-net stage alone (also used by retrain to publish a fine-tuned mask net).

    ``preprocess`` only shapes the sample pixels (default: ImageNet statistics).
    """
    return StageSpec(name, mask_net, *GRAPH_IO["mask_net"], _sample_pixels(wire_size, preprocess))


def stage_specs(model: CAFE, wire_size: int, names: dict[str, str]) -> list[StageSpec]:
    """The four graphs of the ensemble, with sample inputs shaped as Triton will feed them.

    The preprocess graph is the model's own (``model.preprocess``: as its checkpoint recorded).
    """
    preprocess = model.preprocess
    faces, pixels = _sample_faces(wire_size), _sample_pixels(wire_size, preprocess)

    def head_inputs(batch, gen):
        px = pixels(batch, gen)[0]
        with torch.no_grad():
            return model.clip(px), model.mask_net(px)

    return [
        StageSpec(names["preprocess"], preprocess, *GRAPH_IO["preprocess"], faces),
        StageSpec(names["clip_encoder"], model.clip, *GRAPH_IO["clip_encoder"], pixels),
        mask_net_spec(model.mask_net, names["mask_net"], wire_size, preprocess),
        StageSpec(names["head"], HeadGraph(model.head), *GRAPH_IO["head"], head_inputs),
    ]


def export_stage(spec: StageSpec, path: Path, *, batch: int = 3, atol: float = DEFAULT_ATOL,
                 seed: int = 0) -> StageReport:
    """Write ``spec`` as ONNX to ``path`` (dynamic batch axis) and validate it with onnxruntime."""
    import onnx
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    sample = spec.sample(batch, gen)
    spec.module.eval()
    dynamic_axes = {n: {0: "batch"} for n in spec.inputs + spec.outputs}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path is a fused op ONNX cannot express.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(spec.module, sample, str(path), input_names=list(spec.inputs),
                              output_names=list(spec.outputs), dynamic_axes=dynamic_axes,
                              opset_version=OPSET, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx.checker.check_model(str(path))
    # TensorRT engine caches key on names, not weights: a graph name with a weights hash keeps every
    # version and re-export from hitting another's engine (export/gpu.py).
    from fer_triton.export.gpu import stamp_weights_hash

    stamp_weights_hash(path)

    # Validate on a different batch size than the trace, to prove the batch axis is dynamic.
    check = spec.sample(batch + 2, gen)
    with torch.no_grad():
        expected = spec.module(*check)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(spec.outputs), {n: t.numpy() for n, t in zip(spec.inputs, check)})
    diffs = {}
    for out_name, exp, act in zip(spec.outputs, expected, got):
        exp = exp.numpy()
        if exp.shape != act.shape:
            raise ExportValidationError(f"{spec.name}: output {out_name} has shape {act.shape}, PyTorch {exp.shape}")
        diffs[out_name] = max_abs_diff(exp, act)
    return StageReport(spec.name, path, diffs).check(atol)


def export_onnx_stages(model: CAFE, out_dir: Path, wire_size: int, names: dict[str, str], *,
                       atol: float = DEFAULT_ATOL, on_report: Callable[[StageReport], None] | None = None
                       ) -> dict[str, StageReport]:
    """Export and validate all four stages into ``out_dir/<model name>.onnx``."""
    reports = {}
    for spec in stage_specs(model.eval(), wire_size, names):
        report = export_stage(spec, out_dir / f"{spec.name}.onnx", atol=atol)
        reports[spec.name] = report
        if on_report:
            on_report(report)
    return reports
