r"""Run a repository's ONNX graphs in this process, wired as the ensemble wires them.

    staged   faces -> [preprocess] -> pixels -> [clip_encoder] -> clip_features -\
                                           \-> [mask_net]     -> mask_logits   --> [head] -> masked_features,
    fused    faces -> [backbone] -> clip_features, mask_logits ------------------/            logits, probabilities

Tensors pass between graphs by name, as the ensemble's input_map/output_map pass them. The one
runner behind export validation, the INT8 and FP16 checks, ``fer-triton check-precision`` and the
benchmark's in-process baseline.

Tensors (N faces, wire size S): faces UINT8 [N,S,S,3]; pixels FP32 [N,3,224,224] (ImageNet-normalised);
clip_features, mask_logits, masked_features FP32 [N,512]; logits, probabilities FP32 [N,classes].
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping

import numpy as np

from fer_triton.export.repository import RepositoryLayout, read_ensemble_config

# Each graph's inputs and outputs, by the tensor names of the repository's public API.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "preprocess": (("faces",), ("pixels",)),
    "clip_encoder": (("pixels",), ("clip_features",)),
    "mask_net": (("pixels",), ("mask_logits",)),
    "backbone": (("faces",), ("clip_features", "mask_logits")),      # fused: export/fuse.py
    "head": (("clip_features", "mask_logits"), ("masked_features", "logits", "probabilities")),
}
# The graphs of each layout, in the order the ensemble runs them.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "staged": ("preprocess", "clip_encoder", "mask_net", "head"),
    "fused": ("backbone", "head"),
}


def latest_onnx(model_dir: Path) -> Path:
    """model.onnx of the highest numeric version: what an ensemble step with version -1 runs.

    Raises FileNotFoundError when ``model_dir`` holds no ``<version>/model.onnx``.
    """
    model_dir = Path(model_dir)
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                      and (p / "model.onnx").is_file()) if model_dir.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"no <version>/model.onnx under {model_dir}: is this an exported repository?")
    return versions[-1][1] / "model.onnx"


def repository_graphs(repository: str | Path, layout: RepositoryLayout = RepositoryLayout()) -> dict[str, Path]:
    """{graph: model.onnx} of the models the ensemble's steps call (keys of one of :data:`LAYOUTS`).

    A step pinned to a version (retrain's pair publish) gives that version's file, -1 the newest.
    Raises FileNotFoundError for a missing ensemble config or model file, ValueError for a step that
    calls a model which is not part of ``layout``.
    """
    repository = Path(repository)
    graph_of = {name: stage for stage, name in layout.stages.items()} | {layout.backbone: "backbone"}
    graphs = {}
    for step in read_ensemble_config(repository, layout).ensemble_scheduling.step:
        if step.model_name not in graph_of:
            raise ValueError(f"the ensemble {layout.ensemble} calls {step.model_name!r}, which is not a model of "
                             f"the {layout.prefix!r} layout")
        model_dir = repository / step.model_name
        pinned = model_dir / str(step.model_version) / "model.onnx"
        path = latest_onnx(model_dir) if step.model_version == -1 else pinned
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the ensemble calls version {step.model_version} of "
                                    f"{step.model_name}")
        graphs[graph_of[step.model_name]] = path
    return graphs


def _session(path: Path, threads: int, basic: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # All optimizations, as Triton's python-backend runner (export/triton_python/onnx_model.py); basic only
    # where asked: onnxruntime's extended CPU fusions crash on FP16 graphs (seen with 1.32).
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = levels.ORT_ENABLE_BASIC if basic else levels.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxChain:
    """The graphs of one layout as onnxruntime sessions, run in the ensemble's order.

    ``graphs``: {graph: ONNX file} with the keys of ``LAYOUTS["staged"]`` or ``LAYOUTS["fused"]``.
    ``threads``: onnxruntime intra-op threads per session (0 = one per core).
    ``basic_optimization``: graphs to run with basic graph optimizations only (FP16 graphs).
    ``sessions``: {graph: runner} for graphs run by another engine (an object with onnxruntime's
    ``run(output_names, feeds) -> list of arrays``, e.g. export/openvino_engine.OpenVINOSession);
    their ``graphs`` entry is then only recorded (it may be an OpenVINO IR).
    Raises ValueError for any other set of graphs.
    """

    def __init__(self, graphs: Mapping[str, str | Path], *, threads: int = 0,
                 basic_optimization: Collection[str] = (), sessions: Mapping[str, object] | None = None):
        layouts = [name for name, order in LAYOUTS.items() if set(order) == set(graphs)]
        if not layouts:
            raise ValueError(f"graphs {sorted(graphs)} are neither the staged {list(LAYOUTS['staged'])} nor the "
                             f"fused {list(LAYOUTS['fused'])} layout")
        self.layout = layouts[0]
        self.graphs = {g: Path(graphs[g]) for g in LAYOUTS[self.layout]}
        sessions = sessions or {}
        self._sessions = {g: sessions[g] if g in sessions else _session(p, threads, g in basic_optimization)
                          for g, p in self.graphs.items()}

    @classmethod
    def from_repository(cls, repository: str | Path, layout: RepositoryLayout = RepositoryLayout(), *,
                        threads: int = 0) -> "OnnxChain":
        """The graphs an exported repository serves (see :func:`repository_graphs`)."""
        return cls(repository_graphs(repository, layout), threads=threads)

    def run_graph(self, graph: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on the tensors it takes (looked up by name in ``tensors``): {output name: array}."""
        inputs, outputs = GRAPH_IO[graph]
        return dict(zip(outputs, self._sessions[graph].run(list(outputs), {n: tensors[n] for n in inputs})))

    def run(self, faces: np.ndarray, *, batch: int | None = None,
            keep: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every tensor the graphs pass and return, for UINT8 faces [N,S,S,3] (see the module's docstring).

        ``batch``: run at most this many faces at once (bounded memory on the full-size model).
        ``keep``: only these tensor names (default: all; ``pixels`` exists in the staged layout only).
        """
        if batch is not None and len(faces) > batch:
            parts = [self.run(faces[i:i + batch], keep=keep) for i in range(0, len(faces), batch)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        tensors = {"faces": faces}
        for graph in self.graphs:
            tensors.update(self.run_graph(graph, tensors))
        del tensors["faces"]
        return {k: v for k, v in tensors.items() if keep is None or k in keep}

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities FP32 [N, classes] for UINT8 faces [N,S,S,3]."""
        return self.run(faces, keep=("probabilities",))["probabilities"]
