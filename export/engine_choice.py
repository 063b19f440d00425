"""``fer-triton export --engine auto``: measure the CPU engines and precisions on this host, keep the fastest
that passes the agreement bar, and record why in the repository.

Candidates (the layout asked for, staged or fused; the same graphs the repository would serve):

    onnxruntime fp32    the FP32 ONNX graphs (validated within --atol before this runs)
    onnxruntime int8    export/quantize.py's INT8 graphs
    openvino fp32       FP32 IR compiled at f32
    openvino bf16       the same IR compiled at bf16 (only where the CPU reports BF16)
    openvino int8       NNCF INT8 IR, at f32, and at bf16 where the CPU reports BF16

Each reduced-precision candidate is validated against the FP32 PyTorch model exactly as its own export
would be (top-1 agreement >= --min-agreement, largest probability difference); one that fails is kept
in the record with the reason and never chosen. The passing ones are timed in-process, in this one run,
on a batch of drawn faces (``batch`` faces, ``calls`` timed calls after one warm-up), and the fastest
wins. The record goes to ``<repo>/<prefix>/engine_choice.json`` and a summary into the ensemble's
``fer_triton`` metadata (``engine_choice``). Timings on a shared or busy host move: the record gives
every figure so a reader can judge the margin.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np

RECORD_NAME = "engine_choice.json"
CANDIDATES = ("onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino bf16", "openvino int8",
              "openvino int8+bf16")


class _Skip(Exception):
    """A candidate left out by ``candidates``."""
DEFAULT_BATCH = 16
DEFAULT_CALLS = 3


@dataclass
class Candidate:
    engine: str                     # onnxruntime | openvino
    precision: str                  # files: fp32 | int8
    inference_precision: str        # openvino: f32 | bf16; onnxruntime: "-"
    passed: bool = False
    reason: str = ""
    top1_agreement: float | None = None
    max_prob_diff: float | None = None
    faces_per_s: float | None = None

    @property
    def name(self) -> str:
        if self.engine == "onnxruntime":
            return f"onnxruntime {self.precision}"
        if self.precision == "fp32":
            return f"openvino {'bf16' if self.inference_precision == 'bf16' else 'fp32'}"
        return f"openvino int8{'+bf16' if self.inference_precision == 'bf16' else ''}"


@dataclass
class EngineChoice:
    """The candidates measured and the one chosen (highest faces/s among those that passed)."""

    candidates: list[Candidate]
    chosen: Candidate
    layout: str
    batch: int
    calls: int
    min_agreement: float
    cpu: str = ""
    capabilities: list[str] = field(default_factory=list)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def engine(self) -> str:
        return self.chosen.engine

    @property
    def precision(self) -> str:
        return self.chosen.precision

    @property
    def inference_precision(self) -> str:
        return self.chosen.inference_precision if self.chosen.engine == "openvino" else "auto"

    def why(self) -> str:
        passed = sorted((c for c in self.candidates if c.passed), key=lambda c: -(c.faces_per_s or 0))
        runner_up = f"; next {passed[1].name} {passed[1].faces_per_s:.1f} faces/s" if len(passed) > 1 else ""
        return (f"{self.chosen.name}: fastest of {len(passed)} candidates that passed top-1 agreement >= "
                f"{self.min_agreement:.0%} ({self.chosen.faces_per_s:.1f} faces/s in-process, batch {self.batch}"
                f"{runner_up})")

    def lines(self) -> list[str]:
        out = []
        for c in self.candidates:
            speed = f"{c.faces_per_s:8.1f} faces/s" if c.faces_per_s is not None else "      not timed"
            agree = f"agreement {c.top1_agreement:.2%}, max |dp| {c.max_prob_diff:.1e}" \
                if c.top1_agreement is not None else ""
            mark = "CHOSEN " if c is self.chosen else ("passed " if c.passed else "REJECTED")
            out.append(f"{c.name:<20} {speed}  {mark} {agree} {c.reason}".rstrip())
        out.append(f"chose {self.why()}")
        return out

    def summary(self) -> dict:
        """For the ensemble's metadata: the choice, the reason and every candidate's faces/s."""
        return {"chosen": self.chosen.name, "why": self.why(), "record": RECORD_NAME,
                "faces_per_s": {c.name: c.faces_per_s for c in self.candidates if c.faces_per_s is not None},
                "rejected": {c.name: c.reason for c in self.candidates if not c.passed}}

    def to_json(self) -> dict:
        return {"chosen": asdict(self.chosen) | {"name": self.chosen.name}, "why": self.why(),
                "layout": self.layout, "batch": self.batch, "timed_calls": self.calls,
                "min_agreement": self.min_agreement, "cpu": self.cpu, "openvino_capabilities": self.capabilities,
                "date": self.date, "measured": "in-process, drawn faces, one run; agreement on drawn faces "
                "against the FP32 PyTorch model (agreement, not accuracy)",
                "candidates": [asdict(c) | {"name": c.name} for c in self.candidates]}

    def save(self, ensemble_dir: Path) -> Path:
        path = Path(ensemble_dir) / RECORD_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _faces_per_s(chain, faces: np.ndarray, calls: int) -> float:
    chain(faces)  # warm-up: first-call allocations and OpenVINO's shape compilation
    start = time.perf_counter()
    for _ in range(calls):
        chain(faces)
    return calls * len(faces) / (time.perf_counter() - start)


def choose_engine(model, paths: Mapping[str, Path], names: Mapping[str, str], layout, work_dir: Path, *,
                  wire_size: int, fused: bool, atol: float, min_agreement: float,
                  max_prob_diff: float | None = None, threads: int = 0, batch: int = DEFAULT_BATCH,
                  calls: int = DEFAULT_CALLS, candidates: tuple[str, ...] | None = None) -> EngineChoice:
    """Validate and time every candidate (module docstring) from the FP32 ONNX files ``paths``
    ({Triton model name: file}, as export_onnx_stages writes them); ``names``: {stage: model name}.
    ``candidates``: only these names (CANDIDATES; default all; onnxruntime fp32 is always measured).

    Raises ExportValidationError when no candidate passes (onnxruntime fp32 always does once the FP32
    export validated, so in practice this cannot happen).
    """
    from fer_triton.benchmarks.machine import cpu_model
    from fer_triton.export import openvino_engine as ov_engine
    from fer_triton.export.exporter import _fuse
    from fer_triton.export.onnx_chain import OnnxChain
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.quantize import quantize_stages
    from fer_triton.export.validate import validate_graphs
    from fer_triton.synthetic import draw_faces

    wanted = set(CANDIDATES if candidates is None else candidates) | {"onnxruntime fp32"}
    unknown = wanted - set(CANDIDATES)
    if unknown:
        raise ValueError(f"unknown --engine auto candidates {sorted(unknown)}: choose from {CANDIDATES}")
    work_dir = Path(work_dir)
    all_names = {**names, "backbone": layout.backbone}

    def layout_graphs(model_paths: Mapping[str, Path], tag: str) -> dict[str, Path]:
        graphs = {stage: Path(model_paths[name]) for stage, name in names.items()}
        return _fuse(graphs, work_dir / tag / f"{layout.backbone}.onnx") if fused else graphs

    timing_faces = draw_faces(batch, wire_size, seed=11)[0]
    reference = ov_engine.Reference(model, wire_size)
    fp32_graphs = layout_graphs(paths, "fp32")
    candidates: list[tuple[Candidate, object]] = []

    ort_fp32 = Candidate("onnxruntime", "fp32", "-")
    chain = OnnxChain(fp32_graphs, threads=threads)
    check = ov_engine._agreement(model, chain, reference.faces("check"), reference.outputs("check")["probabilities"])
    ort_fp32.passed, ort_fp32.top1_agreement, ort_fp32.max_prob_diff = True, check.top1_agreement, \
        check.chain_max_prob_diff
    ort_fp32.reason = f"FP32 graphs within atol {atol:g} of PyTorch"
    candidates.append((ort_fp32, chain))

    ort_int8 = Candidate("onnxruntime", "int8", "-")
    try:
        if ort_int8.name not in wanted:
            raise _Skip
        int8_paths, _ = quantize_stages(dict(paths), names, work_dir / "ort_int8", wire_size=wire_size)
        graphs = layout_graphs(int8_paths, "ort_int8_fused")
        result = validate_graphs(model, graphs, reference.faces("check"), precision="int8",
                                 min_agreement=min_agreement, max_prob_diff=max_prob_diff, names=all_names,
                                 expected=reference.outputs("check"))
        ort_int8.passed, ort_int8.top1_agreement, ort_int8.max_prob_diff = True, result.top1_agreement, \
            result.chain_max_prob_diff
        candidates.append((ort_int8, OnnxChain(graphs, threads=threads)))
    except _Skip:
        pass
    except (ExportValidationError, ValueError) as exc:
        ort_int8.reason = str(exc)
        candidates.append((ort_int8, None))

    host = ov_engine.host_precision("auto")
    precisions = ["f32"] + (["bf16"] if host == "bf16" else [])
    for files in ("fp32", "int8"):
        here = [p for p in precisions if Candidate("openvino", files, p).name in wanted]
        if not here:
            continue
        try:
            ir_files = {}
            for graph in fp32_graphs:
                if graph not in ov_engine.OPENVINO_GRAPHS:
                    continue
                xml = work_dir / f"openvino_{files}" / all_names[graph] / ov_engine.IR_FILENAME
                if files == "fp32":
                    ir_files[graph] = ov_engine.convert_ir(fp32_graphs[graph], xml)
                else:
                    from fer_triton.export.quantize import CALIBRATION_SEED, DEFAULT_CALIBRATION_FACES

                    calibration = draw_faces(DEFAULT_CALIBRATION_FACES, wire_size, seed=CALIBRATION_SEED)[0]
                    samples = ov_engine.calibration_samples(graph, calibration, fp32_graphs.get("preprocess"))
                    ir_files[graph], _ = ov_engine.quantize_ir(fp32_graphs[graph], xml, samples,
                                                               transformer=graph in ov_engine.TRANSFORMER_GRAPHS)
        except Exception as exc:  # a conversion failure rejects the candidates, it does not stop the export
            for p in here:
                candidates.append((Candidate("openvino", files, p, reason=f"conversion failed: {exc}"), None))
            continue
        for p in here:
            cand = Candidate("openvino", files, p)
            try:
                check = ov_engine.validate_openvino(model, fp32_graphs, ir_files, files=files, inference_precision=p,
                                                    wire_size=wire_size, atol=atol, min_agreement=min_agreement,
                                                    max_prob_diff=max_prob_diff, names=all_names, threads=threads,
                                                    reference=reference)
                cand.passed, cand.top1_agreement, cand.max_prob_diff = True, check.top1_agreement, check.max_prob_diff
                candidates.append((cand, ov_engine.openvino_chain(fp32_graphs, ir_files, precision=p,
                                                                  threads=threads)))
            except ExportValidationError as exc:
                cand.reason = str(exc)
                candidates.append((cand, None))

    for cand, chain in candidates:
        if cand.passed and chain is not None:
            cand.faces_per_s = round(_faces_per_s(chain, timing_faces, calls), 2)
    passed = [c for c, _ in candidates if c.passed and c.faces_per_s]
    if not passed:
        raise ExportValidationError("--engine auto: no engine/precision passed the agreement bar")
    chosen = max(passed, key=lambda c: c.faces_per_s)
    out = EngineChoice([c for c, _ in candidates], chosen, "fused" if fused else "staged", batch, calls,
                       min_agreement, cpu=cpu_model(), capabilities=ov_engine.cpu_capabilities())
    out.reference = reference  # the export that follows checks the chosen variant on the same faces
    return out
