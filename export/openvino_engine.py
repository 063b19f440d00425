r"""OpenVINO as a CPU engine: IR conversion, NNCF INT8, in-process sessions, validation and repository files.

``fer-triton export --engine openvino`` serves the heavy graphs (CLIP encoder and mask net, or the
fused backbone) with OpenVINO; preprocess and head stay onnxruntime (tiny; the head is what retrain
republishes). Each such model version holds

    model.onnx            the FP32 ONNX graph (what onnxruntime, GPU configs and retrain read)
    model.xml, model.bin  the OpenVINO IR served: FP32 weights (``--precision fp32``), or the NNCF
                          INT8 model (``--precision int8``)
    model.py              export/triton_python/openvino_model.py (python backend, the pip tritonserver)

and two configs: ``config.pbtxt`` (python backend + OpenVINO runtime) and ``configs/openvino.pbtxt``
(Triton's own ``openvino`` backend, for NVIDIA's containers on CPU hosts: ``--model-config-name=openvino``;
preprocess and head get the native ``onnxruntime_onnx`` backend on CPU instances there).

Precisions:

    fp32  IR converted with ``openvino.convert_model`` / ``save_model`` (weights kept FP32)
    bf16  not a file: the runner compiles the FP32 (or INT8) IR with INFERENCE_PRECISION_HINT bf16 when
          the CPU reports BF16 (AVX-512 BF16 or AMX), f32 elsewhere (config parameter
          ``inference_precision``: auto | bf16 | f32)
    int8  NNCF post-training quantization (``nncf.quantize``) calibrated on drawn face crops fed as the
          graph takes them (pixels for the staged encoders, UINT8 faces for the fused backbone), with
          ``model_type=TRANSFORMER`` for graphs holding the ViT (NNCF's recommendation for transformers:
          SmoothQuant and no quantizers on the attention's element-wise ops)

Every variant the repository can run on the export host is validated against the FP32 PyTorch
model before anything is written (export/validate.py): FP32 compiled at f32 within ``atol``; BF16
(where the CPU has it) and INT8 by top-1 agreement on held-out drawn faces (``min_agreement``) and
the largest probability difference. Drawn faces and random weights measure AGREEMENT with FP32,
not accuracy.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from fer_triton.export.onnx_chain import GRAPH_IO, LAYOUTS, OnnxChain
from fer_triton.export.triton_python.openvino_model import (PRECISION_CHOICES, choose_inference_precision,
                                                           compile_config)

log = logging.getLogger(__name__)

# The graphs OpenVINO runs: nearly all of the model's FLOPs. Preprocess and head stay onnxruntime.
OPENVINO_GRAPHS = ("clip_encoder", "mask_net", "backbone")
# Graphs holding the ViT: NNCF's transformer model type.
TRANSFORMER_GRAPHS = ("clip_encoder", "backbone")
IR_FILENAME = "model.xml"
CONFIG_VARIANT = "openvino"          # configs/openvino.pbtxt: Triton's openvino backend
RUNNER_SOURCE_NAME = "openvino_model.py"


def cpu_capabilities() -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU, e.g. ["FP32", "BF16", "INT8", ...]."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def host_precision(requested: str = "auto") -> str:
    """What the runner compiles for on this host: "bf16" or "f32" (see choose_inference_precision)."""
    return choose_inference_precision(cpu_capabilities(), requested)[0]


class OpenVINOSession:
    """One OpenVINO model compiled for the CPU, with onnxruntime's ``run(output_names, feeds)`` interface.

    ``path``: IR (.xml) or ONNX file; ``precision``: "bf16" or "f32" (INFERENCE_PRECISION_HINT);
    ``threads``: inference threads (0 = one per core). Compiled as the Triton runner compiles it
    (one latency stream, compile_config), so in-process and served runs compute the same.
    """

    def __init__(self, path: str | Path, precision: str = "f32", threads: int = 0):
        import openvino as ov

        if precision not in ("bf16", "f32"):
            raise ValueError(f"OpenVINO inference precision must be bf16 or f32, not {precision!r}")
        core = ov.Core()
        self.path, self.precision = Path(path), precision
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", compile_config(precision, threads))
        self._request = self.compiled.create_infer_request()

    def run(self, output_names, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(self._request.get_tensor(name).data) for name in output_names]


def openvino_chain(graphs: Mapping[str, str | Path], ir_files: Mapping[str, str | Path], *,
                   precision: str = "f32", threads: int = 0) -> OnnxChain:
    """The layout's graphs run as the repository runs them: ``ir_files`` ({graph: IR}) with OpenVINO at
    ``precision``, the others (preprocess, head) with onnxruntime from ``graphs`` ({graph: ONNX})."""
    sessions = {g: OpenVINOSession(p, precision, threads) for g, p in ir_files.items()}
    return OnnxChain({**graphs, **{g: Path(p) for g, p in ir_files.items()}}, threads=threads, sessions=sessions)


def convert_ir(onnx_path: Path, xml_path: Path) -> Path:
    """FP32 IR of an ONNX graph (``model.xml`` + ``model.bin``); weights are NOT compressed to FP16."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def quantize_ir(onnx_path: Path, xml_path: Path, samples: list[dict[str, np.ndarray]], *,
                transformer: bool) -> tuple[Path, str]:
    """NNCF INT8 IR of an ONNX graph, calibrated on ``samples`` (one feed dict per face).

    Returns (IR path, how it was quantized). ``transformer``: NNCF's ``ModelType.TRANSFORMER``.
    Raises ValueError without samples.
    """
    import nncf
    import openvino as ov

    if not samples:
        raise ValueError("NNCF calibration needs at least one sample")
    model = ov.convert_model(str(onnx_path))
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    kept = kept_float(model)
    if kept:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=kept, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                              preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
                              **kwargs)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    kind = "transformer model type (SmoothQuant), mixed preset" if transformer else "performance preset"
    kept = f", {len(kept)} layers kept float (ViT patch embedding, output projection)" if kept else ""
    return xml_path, f"NNCF post-training INT8, {kind}, calibrated on {len(samples)} drawn faces{kept}"


def kept_float(model) -> list[str]:
    """Layers NNCF leaves unquantized: the ViT's patch-embedding convolution and its output projection
    (the MatMul writing ``clip_features``).

    Measured on the tiny test model (128 drawn faces, fused, NNCF 3.4): quantizing both flipped the
    top-1 class of 2 faces (98.4%); keeping them float gave 100% at f32. They hold a few % of the FLOPs.
    (onnxruntime's INT8 export keeps the output projection FP32 for the same reason, export/quantize.py.)
    """
    names = []
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        outputs = {n for out in op.outputs() for n in out.get_names()}
        if kind == "MatMul" and "clip_features" in outputs:
            names.append(name)
        elif kind == "Convolution" and "visual/conv1" in name:
            names.append(name)
    return names


def calibration_samples(graph: str, faces: np.ndarray, preprocess: Path | None) -> list[dict[str, np.ndarray]]:
    """One feed per face for ``graph``: UINT8 faces [1,S,S,3] (backbone) or FP32 pixels [1,3,224,224]
    (clip_encoder, mask_net: ``preprocess``'s output, as the ensemble feeds them)."""
    (name,) = GRAPH_IO[graph][0]
    if name == "faces":
        return [{"faces": faces[i:i + 1]} for i in range(len(faces))]
    import onnxruntime as ort

    session = ort.InferenceSession(str(preprocess), providers=["CPUExecutionProvider"])
    pixels = session.run(["pixels"], {"faces": faces})[0]
    return [{"pixels": pixels[i:i + 1]} for i in range(len(pixels))]


@dataclass
class VariantCheck:
    """One way the repository can run on this host, validated against FP32 PyTorch at export."""

    files: str                  # fp32 | int8: the IR written
    inference_precision: str    # bf16 | f32: what OpenVINO computes the floating-point layers in
    faces: int
    top1_agreement: float
    max_prob_diff: float

    @property
    def name(self) -> str:
        """fp32, bf16, int8 or int8+bf16 (INT8 layers, the rest in BF16)."""
        if self.files == "fp32":
            return "fp32" if self.inference_precision == "f32" else "bf16"
        return "int8" if self.inference_precision == "f32" else "int8+bf16"

    def line(self) -> str:
        return (f"OpenVINO {self.name} vs FP32 PyTorch on {self.faces} drawn faces: top-1 agreement "
                f"{self.top1_agreement:.2%}, max |dp| {self.max_prob_diff:.2e}")


@dataclass
class OpenVINOExport:
    """What export_openvino wrote and measured: the IR of each OpenVINO model and every check."""

    precision: str                          # fp32 | int8 (the IR files)
    inference_precision: str                # the config parameter: auto | bf16 | f32
    host_precision: str                     # what the runner chooses on the export host: bf16 | f32
    ir_files: dict[str, Path]               # Triton model name -> IR (.xml, its .bin beside it)
    checks: list[VariantCheck] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    min_agreement: float = 0.99

    @property
    def served(self) -> VariantCheck:
        """The check of what the runner runs on the export host."""
        return next(c for c in self.checks if c.inference_precision == self.host_precision)

    def metadata(self) -> dict:
        """Entries for the ensemble's ``fer_triton`` parameter."""
        served = self.served
        out = {"engine": "openvino", "openvino_inference_precision": self.inference_precision,
               "openvino_export_host_precision": self.host_precision,
               "openvino_checks": {c.name: {"top1_agreement": round(c.top1_agreement, 4),
                                            "max_prob_diff": float(f"{c.max_prob_diff:.3g}"), "faces": c.faces}
                                   for c in self.checks},
               "agreement_note": "drawn faces vs the FP32 PyTorch model: agreement, not accuracy"}
        if self.methods:
            out["quantization"] = self.methods
        if served.name != "fp32":
            out.update(top1_agreement_vs_fp32=served.top1_agreement,
                       agreement_faces=f"{served.faces} drawn synthetic faces")
        # what the publish check (export/precision.py) allows for: the loosest precision served here
        out["precision"] = "int8" if self.precision == "int8" else ("bf16" if self.host_precision == "bf16" else "fp32")
        return out

    def install(self, repository: Path, layout, *, fused: bool, threads: int = 0) -> list[Path]:
        """Put the IR, the OpenVINO runner and the configs into an exported repository (see module docstring)."""
        return install_openvino(repository, layout, self.ir_files, fused=fused, threads=threads,
                                inference_precision=self.inference_precision,
                                bf16_hint=self.host_precision == "bf16")


def _check_faces(wire_size: int) -> np.ndarray:
    from fer_triton.export.quantize import CHECK_SEED, DEFAULT_CHECK_FACES
    from fer_triton.synthetic import draw_faces

    return draw_faces(DEFAULT_CHECK_FACES, wire_size, seed=CHECK_SEED)[0]


class Reference:
    """The FP32 PyTorch model's outputs on the check faces (and the FP32 faces), computed once for the
    several checks of one export."""

    def __init__(self, model, wire_size: int):
        self.model, self.wire_size, self._outputs = model, wire_size, {}

    def faces(self, kind: str) -> np.ndarray:
        return _check_faces(self.wire_size) if kind == "check" else _fp32_faces(self.wire_size)

    def outputs(self, kind: str) -> dict[str, np.ndarray]:
        from fer_triton.export.validate import pytorch_outputs

        if kind not in self._outputs:
            self._outputs[kind] = pytorch_outputs(self.model, self.faces(kind))
        return self._outputs[kind]


def _fp32_faces(wire_size: int) -> np.ndarray:
    import torch

    gen = torch.Generator().manual_seed(1)  # as exporter._validation_faces: every pixel value occurs
    return torch.randint(0, 256, (4, wire_size, wire_size, 3), dtype=torch.uint8, generator=gen).numpy()


def _agreement(model, chain: OnnxChain, faces: np.ndarray, expected: np.ndarray | None = None):
    from fer_triton.export.validate import GraphValidation, pytorch_outputs
    from fer_triton.metrics import max_abs_diff, top1_agreement

    expected = expected if expected is not None else pytorch_outputs(model, faces)["probabilities"]
    got = chain.run(faces, batch=32, keep=("probabilities",))["probabilities"]
    return GraphValidation("fp32", chain.layout, len(faces), max_abs_diff(expected, got), top1_agreement(expected, got))


def validate_openvino(model, graphs: Mapping[str, Path], ir_files: Mapping[str, Path], *, files: str,
                      inference_precision: str, wire_size: int, atol: float, min_agreement: float,
                      max_prob_diff: float | None = None, names: Mapping[str, str] | None = None,
                      threads: int = 0, reference: Reference | None = None) -> VariantCheck:
    """Run the layout as served (``ir_files`` on OpenVINO at ``inference_precision``) against PyTorch.

    FP32 files at f32: every graph and the chain within ``atol`` (4 random faces), then top-1 agreement
    on the held-out drawn faces. Anything else: top-1 agreement >= ``min_agreement`` and max |dp| <=
    ``max_prob_diff`` (default: precision_names' entry) on the drawn faces.
    Raises ExportValidationError (AgreementError) naming the variant.
    """
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.validate import AgreementError, validate_graphs

    chain = openvino_chain(graphs, ir_files, precision=inference_precision, threads=threads)
    ref = reference or Reference(model, wire_size)
    check = VariantCheck(files, inference_precision, 0, 0.0, 0.0)
    names = {"backbone": "backbone", **(names or {})}
    try:
        if check.name == "fp32":
            validate_graphs(model, graphs, ref.faces("fp32"), atol=atol, names=names, chain=chain,
                            expected=ref.outputs("fp32"))
            result = _agreement(model, chain, ref.faces("check"), ref.outputs("check")["probabilities"])
        else:
            precision = "int8" if files == "int8" else "bf16"
            result = validate_graphs(model, graphs, ref.faces("check"), precision=precision, names=names,
                                     min_agreement=min_agreement, max_prob_diff=max_prob_diff, chain=chain,
                                     expected=ref.outputs("check"))
    except AgreementError as exc:
        raise AgreementError(f"OpenVINO {check.name}: {exc}; or serve at FP32 (inference_precision f32)"
                             if "bf16" in check.name else f"OpenVINO {check.name}: {exc}") from exc
    except ExportValidationError as exc:
        raise ExportValidationError(f"OpenVINO {check.name}: {exc}") from exc
    check.faces, check.top1_agreement, check.max_prob_diff = result.faces, result.top1_agreement, \
        result.chain_max_prob_diff
    return check


def export_openvino(model, graphs: Mapping[str, Path], names: Mapping[str, str], work_dir: Path, *,
                    wire_size: int, precision: str = "fp32", inference_precision: str = "auto",
                    atol: float = 1e-4, min_agreement: float = 0.99, max_prob_diff: float | None = None,
                    threads: int = 0, calibration_faces: int | None = None,
                    reference: Reference | None = None) -> OpenVINOExport:
    """IR for the OpenVINO graphs of one layout, validated as the repository will run them.

    ``graphs``: {graph: validated FP32 ONNX} of the staged or fused layout (onnx_chain.LAYOUTS);
    ``names``: {graph: Triton model name}. ``precision``: fp32 | int8 (files). ``inference_precision``:
    the runner's config parameter (auto | bf16 | f32). Checks every inference precision the runner can
    choose on this host (f32 always; bf16 where the CPU has it, unless f32 is pinned).
    Raises ValueError for bad settings, ExportValidationError / AgreementError when a check fails.
    """
    from fer_triton.export.quantize import CALIBRATION_SEED, DEFAULT_CALIBRATION_FACES
    from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT

    if precision not in ("fp32", "int8"):
        raise ValueError(f"OpenVINO file precision must be fp32 or int8 (bf16 is chosen at load), not {precision!r}")
    if inference_precision not in PRECISION_CHOICES:
        raise ValueError(f"inference precision must be one of {PRECISION_CHOICES}, not {inference_precision!r}")
    work_dir = Path(work_dir)
    host = host_precision(inference_precision)
    ir_files, methods = {}, {}
    calibration = None
    for graph in graphs:
        if graph not in OPENVINO_GRAPHS:
            continue
        xml = work_dir / names[graph] / IR_FILENAME
        if precision == "fp32":
            ir_files[graph] = convert_ir(graphs[graph], xml)
            continue
        if calibration is None:
            from fer_triton.synthetic import draw_faces

            calibration = draw_faces(calibration_faces or DEFAULT_CALIBRATION_FACES, wire_size,
                                     seed=CALIBRATION_SEED)[0]
        samples = calibration_samples(graph, calibration, graphs.get("preprocess"))
        ir_files[graph], methods[names[graph]] = quantize_ir(graphs[graph], xml, samples,
                                                              transformer=graph in TRANSFORMER_GRAPHS)
    if not ir_files:
        raise ValueError(f"no graph for OpenVINO among {sorted(graphs)}")
    out = OpenVINOExport(precision, inference_precision, host, {names[g]: p for g, p in ir_files.items()},
                         methods=methods, min_agreement=min_agreement or DEFAULT_MIN_TOP1_AGREEMENT)
    precisions = ["f32"] + (["bf16"] if host == "bf16" else [])
    reference = reference or Reference(model, wire_size)
    for p in precisions:
        check = validate_openvino(model, graphs, ir_files, files=precision, inference_precision=p,
                                  wire_size=wire_size, atol=atol, min_agreement=min_agreement,
                                  max_prob_diff=max_prob_diff, names=names, threads=threads, reference=reference)
        log.info("%s", check.line())
        out.checks.append(check)
    return out


def _variant_config(cfg, stage_is_openvino: bool, *, threads: int, bf16_hint: bool, single_thread: bool):
    """configs/openvino.pbtxt from a model's python-backend config: same tensors, batching, versions."""
    from tritonclient.grpc import model_config_pb2 as mc

    variant = mc.ModelConfig()
    variant.CopyFrom(cfg)
    variant.ClearField("backend")
    variant.ClearField("parameters")
    if stage_is_openvino:
        variant.backend = "openvino"
        variant.default_model_filename = IR_FILENAME
        # Triton openvino_backend README, "Parameters": one latency stream per instance (the dynamic
        # batcher makes the batches), HINT_BF16 where the export host has native BF16.
        variant.parameters["PERFORMANCE_HINT"].string_value = "LATENCY"
        variant.parameters["NUM_STREAMS"].string_value = "1"
        if threads:
            variant.parameters["INFERENCE_NUM_THREADS"].string_value = str(threads)
        if bf16_hint:
            variant.parameters["HINT_BF16"].string_value = "YES"
    else:
        variant.platform = "onnxruntime_onnx"
        variant.default_model_filename = "model.onnx"
        if threads or single_thread:
            variant.parameters["intra_op_thread_count"].string_value = str(threads or 1)
    return variant


def install_openvino(repository: Path, layout, ir_files: Mapping[str, Path], *, fused: bool,
                     inference_precision: str = "auto", threads: int = 0, bf16_hint: bool = False) -> list[Path]:
    """Turn an exported CPU repository's models in ``ir_files`` ({model name: IR}) into OpenVINO models.

    Copies the IR (.xml/.bin) into version 1 beside model.onnx, replaces model.py by the OpenVINO runner,
    sets the runner's config parameters, and writes ``configs/openvino.pbtxt`` for every composing model
    (Triton's openvino backend for those, native onnxruntime on CPU for preprocess and head) and the
    site head. Returns the files written; FileNotFoundError when a model folder is missing.
    """
    from importlib import resources

    from fer_triton.export.repository import (SINGLE_THREAD_STAGES, config_text, parse_config,
                                             sync_site_head_configs)

    repository = Path(repository)
    runner = Path(str(resources.files("fer_triton.export") / "triton_python" / RUNNER_SOURCE_NAME))
    stage_of = {v: k for k, v in layout.stages.items()} | {layout.backbone: "backbone"}
    written = []
    for model_name in layout.served_models(fused):
        model_dir = repository / model_name
        if not (model_dir / "config.pbtxt").is_file():
            raise FileNotFoundError(f"{model_dir}/config.pbtxt is missing: export the repository first")
        cfg = parse_config(model_dir / "config.pbtxt")
        if model_name in ir_files:
            version = model_dir / "1"
            xml = Path(ir_files[model_name])
            shutil.copyfile(xml, version / IR_FILENAME)
            shutil.copyfile(xml.with_suffix(".bin"), version / "model.bin")
            shutil.copyfile(runner, version / "model.py")
            for key in ("intra_op_threads", "onnx_file"):
                if key in cfg.parameters:
                    del cfg.parameters[key]
            cfg.parameters["engine"].string_value = "openvino"
            cfg.parameters["openvino_file"].string_value = IR_FILENAME
            cfg.parameters["inference_precision"].string_value = inference_precision
            cfg.parameters["inference_threads"].string_value = str(threads)
            (model_dir / "config.pbtxt").write_text(config_text(cfg))
            written += [version / IR_FILENAME, version / "model.bin", version / "model.py", model_dir / "config.pbtxt"]
        variant = _variant_config(cfg, model_name in ir_files, threads=threads, bf16_hint=bf16_hint,
                                  single_thread=stage_of.get(model_name) in SINGLE_THREAD_STAGES)
        (model_dir / "configs").mkdir(exist_ok=True)
        path = model_dir / "configs" / f"{CONFIG_VARIANT}.pbtxt"
        path.write_text(config_text(variant))
        written.append(path)
    if (repository / layout.site_head).is_dir():
        written += [p for p in sync_site_head_configs(repository, layout) if p.parent.name == "configs"]
    return written


def repository_chain(repository: str | Path, layout=None, *, threads: int = 0) -> OnnxChain:
    """The graphs an exported repository serves, run in this process as its server runs them: models whose
    config says ``engine: openvino`` on OpenVINO (their IR, at the precision their runner chooses on this
    host), the others on onnxruntime. For an onnxruntime-only repository this is OnnxChain.from_repository.
    """
    from fer_triton.export.onnx_chain import repository_graphs
    from fer_triton.export.repository import RepositoryLayout, parse_config

    layout = layout or RepositoryLayout()
    repository = Path(repository)
    graphs = repository_graphs(repository, layout)
    model_of = {stage: name for stage, name in layout.stages.items()} | {"backbone": layout.backbone}
    sessions, capabilities = {}, None
    for graph, onnx_path in graphs.items():
        cfg = parse_config(repository / model_of[graph] / "config.pbtxt")
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        if params.get("engine") != "openvino":
            continue
        if capabilities is None:
            capabilities = cpu_capabilities()
        from fer_triton.export.triton_python.openvino_model import model_path

        precision, _ = choose_inference_precision(capabilities, params.get("inference_precision", "auto"))
        path = model_path(str(onnx_path.parent), params.get("openvino_file", IR_FILENAME))
        sessions[graph] = OpenVINOSession(path, precision, int(params.get("inference_threads", "0")) or threads)
    return OnnxChain(graphs, threads=threads, sessions=sessions)


def served_engine(repository: str | Path, layout=None) -> str:
    """"openvino" when the repository's heavy models run on OpenVINO (config parameter ``engine``), else
    "onnxruntime"."""
    from fer_triton.export.onnx_chain import repository_graphs
    from fer_triton.export.repository import RepositoryLayout, parse_config

    layout = layout or RepositoryLayout()
    model_of = {stage: name for stage, name in layout.stages.items()} | {"backbone": layout.backbone}
    for graph in repository_graphs(repository, layout):
        cfg = parse_config(Path(repository) / model_of[graph] / "config.pbtxt")
        if "engine" in cfg.parameters and cfg.parameters["engine"].string_value == "openvino":
            return "openvino"
    return "onnxruntime"
