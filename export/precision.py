"""Reduced precision vs FP32 on the same faces: top-1 agreement and the largest probability difference.

Two checks share one report:
- ``check_fp16_onnx``: at export, converts the CLIP encoder and mask net (the stages TensorRT runs
  in FP16 on a GPU) to FP16 ONNX and runs the whole chain with onnxruntime on the CPU. Weights and
  activations are rounded to FP16 between ops; onnxruntime's CPU kernels compute some ops in FP32
  after casting, so this approximates TensorRT's FP16 numerics rather than reproducing them.
- ``check_served``: any served engine (TensorRT FP16 plans, INT8, ...) over gRPC against the
  repository's own FP32 ONNX files run in-process: the check to run on the GPU host itself.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_triton.export.onnx_chain import OnnxChain, latest_onnx  # noqa: F401 (re-exported)
from fer_triton.export.precision_names import REDUCED_STAGES, precision
from fer_triton.export.repository import RepositoryLayout, read_ensemble_config
from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT, max_abs_diff, top1_agreement

log = logging.getLogger(__name__)

# Defaults for a trained model; random-weight models have near-uniform probabilities and flip more.
DEFAULT_MAX_PROB_DIFF = precision("fp16").max_prob_diff
FP16_STAGES = REDUCED_STAGES


class PrecisionCheckError(RuntimeError):
    """A lower-precision model disagrees with FP32 beyond the allowed thresholds."""


@dataclass(frozen=True)
class PrecisionReport:
    candidate: str             # what was compared against FP32
    faces: int
    top1_agreement: float      # fraction of faces whose top class is the same
    max_prob_diff: float       # largest |p_candidate - p_fp32| over all faces and classes
    min_top1_agreement: float
    max_prob_diff_allowed: float

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= self.min_top1_agreement and self.max_prob_diff <= self.max_prob_diff_allowed

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{self.candidate} vs FP32 on {self.faces} faces: top-1 agreement {self.top1_agreement:.2%} "
                f"(need >= {self.min_top1_agreement:.2%}), max |dp| {self.max_prob_diff:.2e} "
                f"(allowed {self.max_prob_diff_allowed:.2e}): {verdict}")

    def raise_if_failed(self) -> "PrecisionReport":
        if not self.passed:
            raise PrecisionCheckError(self.summary())
        return self


def compare(reference: np.ndarray, candidate: np.ndarray, name: str, *,
            min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
            max_prob_diff: float = DEFAULT_MAX_PROB_DIFF) -> PrecisionReport:
    """Compare two [N, classes] probability arrays computed on the same faces.

    Raises ValueError unless both are non-empty [N, classes] arrays of one shape.
    """
    agreement = top1_agreement(reference, candidate)
    if not np.isfinite(candidate).all():
        agreement = 0.0  # NaN/inf (FP16 overflow) must fail, not slip through argmax(); max |dp| is inf
    return PrecisionReport(name, len(reference), agreement, max_abs_diff(reference, candidate),
                           min_top1_agreement, max_prob_diff)


def convert_to_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 copy of an ONNX graph whose inputs and outputs stay FP32 (as Triton's configs declare)."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight too small for FP16 (they become 0 or 1e-7)
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    # The converter retypes tensors but leaves "Cast to FLOAT" nodes (open_clip's LayerNorm casts back
    # to the input dtype) pointing at FP32: onnxruntime then refuses the graph. Point them at FP16.
    fp16_tensors = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16_tensors:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst


def check_fp16_onnx(paths: dict[str, Path], faces: np.ndarray, work_dir: str | Path, *, threads: int = 0,
                    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
                    max_prob_diff: float = DEFAULT_MAX_PROB_DIFF) -> PrecisionReport:
    """FP16 (CLIP encoder + mask net) vs FP32 chain on ``faces``; FP16 graphs go to ``work_dir``."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    reference = OnnxChain(paths, threads=threads)(faces)
    fp16_paths = dict(paths)
    for stage in FP16_STAGES:
        fp16_paths[stage] = convert_to_fp16(paths[stage], work_dir / f"{stage}.fp16.onnx")
    candidate = OnnxChain(fp16_paths, threads=threads, basic_optimization=FP16_STAGES)(faces)
    return compare(reference, candidate, "FP16 ONNX (CLIP encoder + mask net, onnxruntime CPU)",
                   min_top1_agreement=min_top1_agreement, max_prob_diff=max_prob_diff)


def exported_precision(repository: str | Path, layout: RepositoryLayout = RepositoryLayout()) -> str:
    """The precision `fer-triton export` recorded in the ensemble's config ("fp32" when not recorded)."""
    import json

    cfg = read_ensemble_config(repository, layout)
    metadata = cfg.parameters["fer_triton"].string_value if "fer_triton" in cfg.parameters else "{}"
    return json.loads(metadata or "{}").get("precision", "fp32")


def check_served(url: str, repository: str | Path, faces: np.ndarray, *, model: str = "cafe",
                 layout: RepositoryLayout | None = None, threads: int = 0,
                 min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
                 max_prob_diff: float = DEFAULT_MAX_PROB_DIFF) -> PrecisionReport:
    """The served ensemble (whatever engine runs it) vs the repository's FP32 ONNX on the same faces."""
    from fer_triton.client.grpc_client import FerClient

    layout = layout or RepositoryLayout(model)
    recorded = exported_precision(repository, layout)
    if recorded != "fp32":
        # Its model.onnx files are themselves reduced precision: comparing with them proves nothing.
        raise ValueError(f"{repository} was exported in {recorded}: the reference must be an FP32 export "
                         f"of the same checkpoint")
    reference = OnnxChain.from_repository(repository, layout, threads=threads)(faces)
    with FerClient(url, model) as client:
        served = client.infer_all(faces).probabilities
    return compare(reference, served, f"served model '{model}' at {url}",
                   min_top1_agreement=min_top1_agreement, max_prob_diff=max_prob_diff)


# Least to most lossy: a chain is as imprecise as its least precise stage.
_LOSS_ORDER = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class ServedPrecision:
    """The precision the server computes the CLIP encoder and mask net in, and how that was found."""

    precision: str             # fp32 | fp16 | int8
    on_gpu: bool               # FP32 on GPU kernels (TF32 possible) gets a looser bound than on the CPU
    source: str                # what said so, for logs and errors

    @property
    def tolerance(self) -> float:
        from fer_triton.export.precision_names import verify_tolerance

        return verify_tolerance(self.precision, on_gpu=self.on_gpu and self.precision == "fp32")

    def describe(self) -> str:
        where = " on GPU" if self.on_gpu else ""
        return f"{self.precision.upper()}{where} ({self.source})"


STRICT_FP32 = ServedPrecision("fp32", False, "nothing recorded: strict FP32 check")


def combine_served(engines: list, metadata: dict) -> ServedPrecision:
    """The served precision from the :class:`~fer_triton.export.gpu.ServedEngine` of each TensorRT stage
    and the ensemble's export ``metadata`` (its ``precision``: the CPU flavour's graphs).

    A python-backend stage runs the exported graphs (``metadata["precision"]``, FP32 when absent); a
    TensorRT plan whose build precision is not recorded counts as FP16 (build-trt's and the docs'
    default). With no engine known, the strict FP32 check applies.
    """
    found = []
    for engine in engines:
        if engine.engine in ("python", "onnxruntime-cpu", "other"):
            found.append((metadata.get("precision", "fp32"), False, f"{engine.model}: {engine.engine}"))
        elif engine.engine == "tensorrt_plan" and engine.precision is None:
            found.append(("fp16", True, f"{engine.model}: TensorRT plan, build precision not recorded, assumed FP16"))
        else:
            found.append((engine.precision or "fp32", engine.on_gpu,
                          f"{engine.model}: {engine.engine} {(engine.precision or 'fp32').upper()}"))
    if not found:
        recorded = metadata.get("precision")
        return ServedPrecision(recorded, False, "export metadata") if recorded in _LOSS_ORDER else STRICT_FP32
    worst = max(_LOSS_ORDER.index(p) for p, _, _ in found)
    return ServedPrecision(_LOSS_ORDER[worst], any(g for _, g, _ in found), "; ".join(s for _, _, s in found))


def served_precision(client, layout: RepositoryLayout | None = None) -> ServedPrecision:
    """What ``client``'s server runs the CLIP encoder and mask net in: read from the configs it reports
    for those models (on a GPU host the variant ``--model-config-name`` selected) and the ensemble's
    export metadata. Models it cannot read (fused layout, an old server) are left out; with none the
    strict FP32 check applies."""
    from tritonclient.utils import InferenceServerException

    from fer_triton.export.gpu import TRT_STAGES, ServedEngine

    layout = layout or RepositoryLayout(client.model)
    metadata = client.info().metadata
    names = [layout.backbone] if metadata.get("layout") == "fused" else [layout.stages[s] for s in TRT_STAGES]
    engines = []
    for name in names:
        try:
            cfg = client.triton.get_model_config(name, headers=client.headers, as_json=True)["config"]
        except (InferenceServerException, KeyError) as exc:
            log.debug("cannot read the config of %s: %s", name, exc)
            continue
        engines.append(ServedEngine.from_config(cfg))
    return combine_served(engines, metadata)


@dataclass(frozen=True)
class PublishCheck:
    """The served probabilities vs the new model's on the same faces, at the served precision's bound."""

    what: str
    served: ServedPrecision
    faces: int
    top1_agreement: float
    max_prob_diff: float

    @property
    def passed(self) -> bool:
        return self.top1_agreement == 1.0 and self.max_prob_diff <= self.served.tolerance

    def summary(self) -> str:
        return (f"served vs new {self.what} on {self.faces} held-out faces, server at {self.served.describe()}: "
                f"top-1 agreement {self.top1_agreement:.0%} (need 100%), max |dp| {self.max_prob_diff:.3g} "
                f"(allowed {self.served.tolerance:.0e})")


def check_published(served: np.ndarray, expected: np.ndarray, precision_served: ServedPrecision,
                    what: str) -> PublishCheck:
    """Compare served and expected [N, classes] probabilities after a publish (see PublishCheck)."""
    agreement = top1_agreement(expected, served) if np.isfinite(served).all() else 0.0
    return PublishCheck(what, precision_served, len(expected), agreement, max_abs_diff(expected, served))
