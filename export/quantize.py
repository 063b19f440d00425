"""A faster CPU export: INT8 CLIP encoder and mask net, checked against FP32 on the same faces.

    clip_encoder  dynamic INT8: weights per output channel at export, activation ranges measured
                  per batch at run time (no calibration set needed); only MatMuls with constant
                  weights, so attention's activation x activation products and the output
                  projection stay FP32
    mask_net      static INT8 (QDQ) calibrated on drawn faces, weights per output channel: convs
                  run as VNNI integer kernels
    preprocess, head  stay FP32 (tiny; the head is what retraining republishes)

Every INT8 export runs the graphs it serves (staged, or fused into one backbone) on held-out drawn
faces against the FP32 PyTorch model (export/validate.py) and refuses to write a repository below
``min_agreement`` top-1 agreement or past the INT8 probability tolerance (export/precision_names.py).
The faces are SYNTHETIC: agreement on real faces must be checked with real data.

BF16 is not offered here: onnxruntime's CPU provider has BF16 fast-math GEMMs only on ARM64, so a BF16
graph would run slower than FP32 on x86 hosts (including those with AVX512-BF16). OpenVINO runs BF16
on them: ``--engine openvino`` (export/openvino_engine.py), which quantizes INT8 with NNCF instead.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)

from fer_triton.export.onnx_export import ExportValidationError

DEFAULT_CHECK_FACES = 128       # drawn faces export validates an INT8 repository on (export/validate.py)
DEFAULT_CALIBRATION_FACES = 32
CALIBRATION_SEED = 20261127     # calibration and check faces never overlap
CHECK_SEED = 7


@dataclass
class QuantizationReport:
    precision: str
    agreement: float                 # fraction of check faces with the same top-1 class as FP32 PyTorch
    check_faces: int
    max_abs_diff: float              # largest |probability difference| vs FP32 PyTorch
    min_agreement: float
    methods: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def metadata(self) -> dict:
        return {"precision": self.precision, "top1_agreement_vs_fp32": self.agreement,
                "agreement_faces": f"{self.check_faces} drawn synthetic faces",
                "quantization": self.methods}


def _weight_matmuls(path: Path) -> list[str]:
    """MatMul nodes with a constant weight, except the one that writes the graph output.

    The output projection (CLS token -> 512-d feature) is cheap and, measured on ViT-B/32, caused
    most of the INT8 feature error, so it stays FP32. (onnxruntime's dynamic quantizer leaves Gemm
    nodes, e.g. attention's out_proj, in FP32 anyway.)
    """
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in constants and not set(n.output) & outputs]


def _quantize_dynamic(src: Path, dst: Path) -> str:
    nodes = _weight_matmuls(src)
    if not nodes:
        raise ExportValidationError(f"{src.name}: no MatMul with constant weights to quantize")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes)
    return f"dynamic INT8, {len(nodes)} weight MatMuls (output projection kept FP32), per-channel weights"


class _PixelBatches(CalibrationDataReader):
    """Calibration data for the mask net: drawn faces through the exported FP32 preprocess graph."""

    def __init__(self, preprocess: Path, faces: np.ndarray, batch: int = 8):
        import onnxruntime as ort

        session = ort.InferenceSession(str(preprocess), providers=["CPUExecutionProvider"])
        self._batches = iter([{"pixels": session.run(["pixels"], {"faces": faces[i:i + batch]})[0]}
                              for i in range(0, len(faces), batch)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # part of onnxruntime's CalibrationDataReader interface; one pass is enough
        pass


def _prepare(src: Path, dst: Path) -> Path:
    """Rewrite two patterns of the torch export that keep onnxruntime on FP32 kernels after quantization.

    - ``Identity`` nodes that forward a constant (the exporter emits them for shared conv biases):
      onnxruntime fuses QDQ around a Conv into an integer QLinearConv only when the bias is a constant.
    - ``Gemm`` with a constant weight (attention's out_proj): the dynamic quantizer skips Gemm, so it
      becomes MatMul + Add, which it quantizes.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    rename, keep = {}, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Identity" and node.input[0] in constants:
            rename[node.output[0]] = node.input[0]
            continue
        if (node.op_type == "Gemm" and node.input[1] in constants and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)):
            weight = numpy_helper.to_array(constants[node.input[1]])
            name = f"{node.input[1]}.matmul"
            weight = weight.T.copy() if attrs.get("transB", 0) else weight
            graph.initializer.append(numpy_helper.from_array(weight, name))
            product = f"{node.output[0]}.matmul"
            keep.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}.MatMul"))
            keep.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}.Add")
                        if len(node.input) > 2 and node.input[2] else
                        helper.make_node("Identity", [product], [node.output[0]], name=f"{node.name}.Out"))
            continue
        keep.append(node)
    for node in keep:
        node.input[:] = [rename.get(i, i) for i in node.input]
    graph.ClearField("node")
    graph.node.extend(keep)
    outputs = {o.name for o in graph.output}
    if outputs & set(rename):
        raise ExportValidationError(f"{src.name}: a graph output is an Identity of a constant")
    onnx.save(model, str(dst))
    return dst


def _quantize_static(src: Path, dst: Path, preprocess: Path, faces: np.ndarray) -> str:
    # Percentile ranges (99.999%) instead of min/max: outlier activations of a few faces no longer
    # widen every step, which removed the top-1 flips that min/max calibration caused on ViT-B/32
    # (measured on 256 drawn faces). All convs are INT8: keeping only the first one in FP32 made
    # the whole backbone about 1.8x slower (a layout change around the one float conv).
    with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
        quantize_static(str(src), str(dst), _PixelBatches(preprocess, faces), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile)
    return f"static INT8 (QDQ), per-channel weights, percentile-calibrated on {len(faces)} drawn faces"


def quantize_stages(paths: dict[str, Path], names: dict[str, str], out_dir: Path, *, wire_size: int,
                    calibration_faces: int = DEFAULT_CALIBRATION_FACES) -> tuple[dict[str, Path], dict[str, str]]:
    """INT8 copies of the CLIP encoder and mask net in ``out_dir``; the other stages keep their FP32 files.

    ``paths`` maps Triton model names to validated FP32 ONNX files (as export_onnx_stages writes them);
    ``names`` maps stages to those model names. Returns the new mapping and {model name: how it was
    quantized}. The INT8 graphs are not checked here: export validates the graphs it serves (staged
    or fused) against PyTorch with export/validate.py. Raises ValueError for ``calibration_faces`` < 1,
    ExportValidationError when a graph has nothing to quantize.
    """
    from fer_triton.synthetic import draw_faces

    if calibration_faces < 1:
        raise ValueError(f"calibration_faces must be >= 1, not {calibration_faces}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration, _ = draw_faces(calibration_faces, wire_size, seed=CALIBRATION_SEED)
    new_paths = dict(paths)
    methods = {}
    clip_name, mask_name = names["clip_encoder"], names["mask_net"]
    new_paths[clip_name] = out_dir / f"{clip_name}.int8.onnx"
    prepared = _prepare(paths[clip_name], out_dir / f"{clip_name}.prepared.onnx")
    methods[clip_name] = _quantize_dynamic(prepared, new_paths[clip_name])
    new_paths[mask_name] = out_dir / f"{mask_name}.int8.onnx"
    prepared = _prepare(paths[mask_name], out_dir / f"{mask_name}.prepared.onnx")
    methods[mask_name] = _quantize_static(prepared, new_paths[mask_name], paths[names["preprocess"]], calibration)
    return new_paths, methods
