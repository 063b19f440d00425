"""Export = convert + validate: the graphs a repository will serve, run as its ensemble runs them, against PyTorch.

For every layout (staged, fused) and precision (fp32, int8) that ``fer-triton export`` writes:

- each FP32 graph (all of them in an FP32 export; preprocess and head in an INT8 one) is fed PyTorch's
  own inputs for it, and every output must lie within ``atol`` of PyTorch's;
- the whole chain (UINT8 faces -> probabilities, onnx_chain.OnnxChain) is compared with PyTorch on
  the same faces: FP32 within ``atol``; a reduced precision must keep the top-1 class on at least
  ``min_agreement`` of the faces and move no probability by more than ``max_prob_diff``.

Every failure raises ExportValidationError (AgreementError for too little agreement) naming the graph,
the output and the numbers, before anything is written to the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from fer_triton.export.onnx_chain import OnnxChain
from fer_triton.export.onnx_export import DEFAULT_ATOL, ExportValidationError, StageReport
from fer_triton.export.precision_names import REDUCED_STAGES
from fer_triton.export.precision_names import precision as precision_named
from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT, max_abs_diff, top1_agreement
from fer_triton.model import CAFE


class AgreementError(ExportValidationError):
    """Reduced-precision graphs' top-1 predictions agree with FP32 less often than required."""


def check_agreement(reference: np.ndarray, candidate: np.ndarray, min_agreement: float,
                    what: str = "INT8") -> float:
    """Top-1 agreement of ``candidate`` with ``reference`` (probabilities [N, classes] of the same faces).

    Raises AgreementError below ``min_agreement``, ValueError for arrays of different shapes.
    """
    agreement = top1_agreement(reference, candidate)
    if agreement < min_agreement:
        differing = int(round((1 - agreement) * len(reference)))
        raise AgreementError(
            f"{what} graphs agree with FP32 on the top-1 class for {agreement:.2%} of {len(reference)} faces "
            f"({differing} differ), below the required {min_agreement:.2%}: export FP32 instead "
            f"(--precision fp32) or lower --min-agreement"
        )
    return agreement


def pytorch_outputs(model: CAFE, faces: np.ndarray, *, batch: int = 32) -> dict[str, np.ndarray]:
    """What PyTorch computes for UINT8 faces [N,S,S,3], under the tensor names of onnx_chain.GRAPH_IO.

    pixels FP32 [N,3,224,224]; clip_features, mask_logits, masked_features FP32 [N,512]; logits,
    probabilities FP32 [N,classes], with the model's own preprocessing (``model.preprocess``).
    ``model`` must be in eval mode; ``batch`` bounds memory.
    """
    preprocess, parts = model.preprocess, []
    with torch.no_grad():
        for i in range(0, len(faces), batch):
            pixels = preprocess(torch.from_numpy(np.ascontiguousarray(faces[i:i + batch])))
            out = model(pixels)
            parts.append({"pixels": pixels, "clip_features": out.clip_features, "mask_logits": out.mask_logits,
                          "masked_features": out.masked_features, "logits": out.logits,
                          "probabilities": out.probabilities})
    return {name: torch.cat([p[name] for p in parts]).numpy() for name in parts[0]}


@dataclass
class GraphValidation:
    """What validate_graphs measured (all differences against PyTorch on the same faces)."""

    precision: str                    # fp32 | int8
    layout: str                       # staged | fused
    faces: int
    chain_max_prob_diff: float        # largest |p_onnx - p_pytorch| of the whole chain
    top1_agreement: float             # fraction of faces with PyTorch's top-1 class
    graphs: dict[str, StageReport] = field(default_factory=dict)   # FP32 graphs fed PyTorch's inputs

    def summary(self) -> str:
        return (f"{self.precision} {self.layout} graphs vs PyTorch on {self.faces} faces: top-1 agreement "
                f"{self.top1_agreement:.2%}, max |dp| {self.chain_max_prob_diff:.2e}")


def validate_graphs(model: CAFE, graphs: Mapping[str, str | Path], faces: np.ndarray, *, precision: str = "fp32",
                    atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
                    max_prob_diff: float | None = None, names: Mapping[str, str] | None = None,
                    threads: int = 0, batch: int = 32, chain: OnnxChain | None = None,
                    expected: Mapping[str, np.ndarray] | None = None) -> GraphValidation:
    """Validate the graphs of one layout (keys of onnx_chain.LAYOUTS) against ``model`` on UINT8 ``faces``.

    ``precision``: what the graphs of REDUCED_STAGES (and a fused backbone holding them) are; "fp32"
    holds every graph to ``atol``. ``max_prob_diff``: allowed |dp| of a reduced precision (default: its
    entry in precision_names.PRECISIONS). ``names``: Triton model names for the messages. ``chain``: run
    these (e.g. OpenVINO sessions, export/openvino_engine.py) instead of onnxruntime sessions of ``graphs``.
    ``expected``: ``pytorch_outputs(model, faces)`` when the caller has it already (several checks, same faces).
    Raises ExportValidationError or AgreementError as the module's docstring says.
    """
    names = names or {}
    reduced = set() if precision == "fp32" else {*REDUCED_STAGES, "backbone"}
    if max_prob_diff is None and reduced:
        max_prob_diff = precision_named(precision).max_prob_diff
    chain = chain or OnnxChain(graphs, threads=threads)
    expected = expected if expected is not None else pytorch_outputs(model, faces, batch=batch)
    fed = {"faces": faces, **expected}
    reports = {}
    for graph, path in chain.graphs.items():
        if graph not in reduced:
            got = chain.run_graph(graph, fed)
            reports[graph] = StageReport(names.get(graph, graph), path,
                                         {k: max_abs_diff(expected[k], v) for k, v in got.items()}).check(atol)
    probabilities = chain.run(faces, batch=batch, keep=("probabilities",))["probabilities"]
    diff = max_abs_diff(expected["probabilities"], probabilities)
    what = f"{precision.upper()} {chain.layout}"
    if not np.isfinite(probabilities).all():
        raise ExportValidationError(f"{what} ONNX graphs return NaN or infinite probabilities")
    agreement = top1_agreement(expected["probabilities"], probabilities)
    if not reduced and diff > atol:
        raise ExportValidationError(f"ONNX ensemble probabilities ({chain.layout} layout) differ from PyTorch by "
                                    f"{diff:.3g} (> atol {atol:g})")
    if reduced:
        check_agreement(expected["probabilities"], probabilities, min_agreement, what)
        if diff > max_prob_diff:
            raise ExportValidationError(
                f"{what} graphs move a probability by {diff:.3g} from PyTorch's on {len(faces)} faces, more than "
                f"the allowed {max_prob_diff:g}: export FP32 instead (--precision fp32)")
    return GraphValidation(precision, chain.layout, len(faces), diff, agreement, reports)
