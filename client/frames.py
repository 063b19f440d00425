"""Whole frames in, classified faces out: the client of the served ``<model>_frames`` model.

    from fer_triton.client.grpc_client import FerClient
    with FerClient("127.0.0.1:8001") as client:
        result = client.frames().infer(encoded=[jpeg_bytes, png_bytes], raw=frames_uint8)
    for face in result.faces:          # one row per face: frame index, box, crop box, score, probabilities
        print(face.frame, face.box, face.score, face.label)
    for frame in result.frames:        # one report per frame sent: faces found / kept, or its error
        print(frame.index, frame.status, frame.note)

The server (a Triton python-backend model using BLS, ``export/triton_python/frames_model.py``)
decodes each frame, finds faces with the detector served next to it, cuts each face square with a
margin to the classifier's wire size by the rule the client-side detectors use
(``export/triton_python/face_crops.py``), and classifies every face of the request in one call to
the ``<model>`` ensemble.

Frame numbering: encoded frames are 0..E-1 in the order given, raw frames E..E+R-1.

Nothing sent is lost: every frame ends in :attr:`FramesResult.frames` as faces, an explicit "no
face" (``status == "no_face"``), or an explicit error (``status == "error"``, message from the
server naming the frame and what was wrong: undecodable bytes, an empty frame, a frame above the
server's pixel limit). More faces than the server's ``max_faces_per_frame``: the best-scoring are
kept and the frame's note says ``capped: N found, K kept``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fer_triton.client.faces import Box
from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError, _server_error

FRAMES_SUFFIX = "_frames"           # <model>_frames: the frames model of the <model> ensemble
TIMING_STEPS = ("decode", "detect", "crop", "classify")   # the frames model's timings_ms, in this order


@dataclass
class FaceRow:
    """One face the server found and classified.

    ``frame``: index of the frame it came from (encoded 0..E-1, raw E..E+R-1); ``box``: the
    detector's box in frame pixels (x, y, w, h, clipped to the frame); ``crop_box``: the square region
    cut out (the box widened by the server's margin, clipped); ``score``: detector confidence 0..1;
    ``probabilities`` / ``logits``: FP32 [C]; ``label``: the most probable class;
    ``masked_features``: FP32 [512] when asked for; ``crop``: UINT8 [S, S, 3] wire-size crop when asked for.
    """

    frame: int
    box: Box
    crop_box: Box
    score: float
    probabilities: np.ndarray
    logits: np.ndarray | None
    label: str
    masked_features: np.ndarray | None = None
    crop: np.ndarray | None = None

    def as_record(self, classes: Sequence[str]) -> dict:
        """A JSON-ready dict: frame, box, crop_box, score, label, probabilities per class."""
        return {"frame": self.frame, "box": self.box.as_list(), "crop_box": self.crop_box.as_list(),
                "score": round(float(self.score), 6), "label": self.label,
                "probabilities": {c: round(float(p), 7) for c, p in zip(classes, self.probabilities)}}


@dataclass
class FrameReport:
    """What happened to one frame sent: ``found`` faces detected (before the cap), ``kept`` returned,
    or ``error`` (a message naming the frame and the problem; then no face rows)."""

    index: int
    found: int = 0
    kept: int = 0
    error: str = ""

    @property
    def status(self) -> str:
        """"faces", "no_face" or "error"."""
        return "error" if self.error else "faces" if self.kept else "no_face"

    @property
    def capped(self) -> bool:
        return not self.error and self.found > self.kept

    @property
    def note(self) -> str:
        """"capped: N found, K kept" when the server's max_faces_per_frame cut faces, else ""."""
        return f"capped: {self.found} found, {self.kept} kept" if self.capped else ""


@dataclass
class FramesResult:
    """The answer to one frames request: ``faces`` (ordered by frame, then top-to-bottom, left-to-right),
    ``frames`` (one report per frame sent, in frame-index order), the class names, and the server's
    ``timings_ms`` {decode, detect, crop, classify} of this request when asked for (milliseconds)."""

    faces: list[FaceRow]
    frames: list[FrameReport]
    classes: tuple[str, ...]
    timings_ms: dict[str, float] | None = None

    def faces_of(self, frame: int) -> list[FaceRow]:
        """The face rows of one frame (empty for a frame without face or with an error)."""
        return [f for f in self.faces if f.frame == frame]

    @property
    def errors(self) -> list[FrameReport]:
        return [f for f in self.frames if f.error]


def _as_bytes(item, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise FerInputError(f"encoded frame {index}: expected the bytes of one image file (JPEG/PNG/BMP/WebP), "
                        f"got {type(item).__name__}" + (f" {item.dtype} {list(item.shape)}"
                                                        if isinstance(item, np.ndarray) else ""))


def _as_raw(raw, first_index: int) -> np.ndarray | None:
    """Raw frames as one UINT8 [R, H, W, 3] array (a single [H, W, 3] frame is promoted)."""
    if raw is None:
        return None
    if isinstance(raw, (list, tuple)):
        if not raw:
            return None
        for i, frame in enumerate(raw):
            if not isinstance(frame, np.ndarray):
                raise FerInputError(f"raw frame {first_index + i}: expected a numpy array, got {type(frame).__name__}")
        shapes = {tuple(f.shape) for f in raw}
        if len(shapes) > 1:
            raise FerInputError(f"raw frames of one request must share one size, got shapes {sorted(shapes)}: "
                                "send each size in its own request, or send them encoded")
        raw = np.stack(raw)
    if not isinstance(raw, np.ndarray):
        raise FerInputError(f"raw frames must be a numpy array UINT8 [R, H, W, 3], got {type(raw).__name__}")
    if raw.ndim == 3:
        raw = raw[None]
    if raw.dtype != np.uint8:
        raise FerInputError(f"raw frames must be UINT8 RGB pixels, got dtype {raw.dtype}")
    if raw.ndim != 4 or raw.shape[3] != 3:
        raise FerInputError(f"raw frames must have shape [R, H, W, 3] (RGB), got {list(raw.shape)}")
    if raw.shape[0] == 0:
        return None
    if raw.shape[1] == 0 or raw.shape[2] == 0:
        raise FerInputError(f"raw frames have no pixels: shape {list(raw.shape)}")
    return np.ascontiguousarray(raw)


class FramesClient:
    """Send whole frames to ``<model>_frames`` through a :class:`FerClient`'s connection (its URL,
    headers, deadline and TLS settings).

    ``model``: the frames model's name (default: the client's model + ``_frames``). Thread-safe as
    the FerClient is. Raises FerInputError (nothing sent) for bad input and FerServerError for a
    request the server refuses as a whole or cannot be reached for.
    """

    def __init__(self, client: FerClient, model: str | None = None):
        self.client = client
        self.model = model or client.model + FRAMES_SUFFIX

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the classifier behind the frames model (read once from ``client.model``)."""
        return self.client.info().classes

    def request(self, encoded: Sequence[bytes] | None = None, raw=None, *, with_features: bool = False,
                with_crops: bool = False, with_timings: bool = False):
        """(inputs, outputs, number of frames) for one request; FerInputError naming what was wrong."""
        items = [] if encoded is None else encoded
        if isinstance(items, (bytes, bytearray)):
            raise FerInputError("encoded frames must be a list of image files' bytes, not one bytes object "
                                "(wrap a single frame in a list)")
        blobs = [_as_bytes(item, i) for i, item in enumerate(items)]
        frames = _as_raw(raw, len(blobs))
        if not blobs and frames is None:
            raise FerInputError("no frame to send: give encoded frames (image files' bytes) and/or raw UINT8 "
                                "frames [R, H, W, 3]")
        inputs = []
        if blobs:
            tensor = grpcclient.InferInput("encoded_frames", [len(blobs)], "BYTES")
            array = np.empty(len(blobs), dtype=np.object_)
            array[:] = blobs
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        if frames is not None:
            tensor = grpcclient.InferInput("raw_frames", list(frames.shape), "UINT8")
            tensor.set_data_from_numpy(frames)
            inputs.append(tensor)
        names = ["frame_index", "boxes", "crop_boxes", "scores", "probabilities", "logits", "face_counts",
                 "frame_errors"]
        names += (["masked_features"] if with_features else []) + (["crops"] if with_crops else [])
        names += ["timings_ms"] if with_timings else []
        count = len(blobs) + (0 if frames is None else len(frames))
        return inputs, [grpcclient.InferRequestedOutput(n) for n in names], count

    def parse(self, result, count: int) -> FramesResult:
        """A FramesResult from a tritonclient InferResult of a request of ``count`` frames.

        Raises FerServerError when the answer does not fit the contract (missing outputs, lengths that
        disagree), naming what was off.
        """
        def get(name: str, required: bool = True):
            array = result.as_numpy(name)
            if array is None and required:
                raise FerServerError(f"{self.model!r} answered without its {name!r} output")
            return array

        classes = self.classes
        index = get("frame_index").astype(np.int64).reshape(-1)
        boxes = get("boxes").reshape(-1, 4)
        crop_boxes = get("crop_boxes").reshape(-1, 4)
        scores = get("scores").reshape(-1)
        probs = get("probabilities")
        logits = get("logits", False)
        features = get("masked_features", False)
        crops = get("crops", False)
        counts = get("face_counts").reshape(-1)
        errors = get("frame_errors").reshape(-1)
        n = len(index)
        if len(counts) != count or len(errors) != count:
            raise FerServerError(f"{self.model!r} answered {len(counts)} face counts and {len(errors)} frame errors "
                                 f"for {count} frames")
        if not (len(boxes) == len(crop_boxes) == len(scores) == len(probs) == n) or \
                (n and (index.min() < 0 or index.max() >= count)):
            raise FerServerError(f"{self.model!r} answered inconsistent face outputs: {n} frame indices, "
                                 f"{len(boxes)} boxes, {len(scores)} scores, {len(probs)} probability rows")
        width = probs.shape[-1] if probs.ndim == 2 else len(classes)
        probs = probs.reshape(n, width)
        logits = None if logits is None else logits.reshape(n, width)
        features = None if features is None else features.reshape(n, -1 if n else 512)
        labels = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
        faces = [FaceRow(frame=int(index[i]), box=Box(*map(int, boxes[i])), crop_box=Box(*map(int, crop_boxes[i])),
                         score=float(scores[i]), probabilities=probs[i],
                         logits=None if logits is None else logits[i],
                         label=classes[labels[i]] if labels[i] < len(classes) else str(int(labels[i])),
                         masked_features=None if features is None else features[i],
                         crop=None if crops is None else crops[i])
                 for i in range(n)]
        kept = np.bincount(index, minlength=count) if n else np.zeros(count, np.int64)
        reports = []
        for i in range(count):
            message = errors[i]
            message = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message or "")
            reports.append(FrameReport(i, found=int(counts[i]), kept=int(kept[i]), error=message))
        timings = get("timings_ms", False)
        if timings is not None:
            timings = {step: float(v) for step, v in zip(TIMING_STEPS, timings.reshape(-1))}
        return FramesResult(faces, reports, classes, timings)

    def infer(self, encoded: Sequence[bytes] | None = None, raw=None, *, with_features: bool = False,
              with_crops: bool = False, with_timings: bool = False, request_id: str = "") -> FramesResult:
        """One request: ``encoded`` image files' bytes (E of them) and/or ``raw`` UINT8 RGB frames
        [R, H, W, 3] of one size (or a list of equal-size [H, W, 3] arrays, or one such array).

        ``with_features``: masked features FP32 [512] per face; ``with_crops``: the wire-size crops the
        classifier saw, UINT8 [S, S, 3] per face; ``with_timings``: the server's milliseconds in decode,
        detect, crop and classify. Returns a FramesResult with a report for each of the E + R frames.
        Raises FerInputError (nothing sent) or FerServerError (the request refused as a whole).
        """
        inputs, outputs, count = self.request(encoded, raw, with_features=with_features, with_crops=with_crops,
                                              with_timings=with_timings)
        c = self.client
        try:
            result = c.triton.infer(self.model, inputs, c.model_version, outputs=outputs, request_id=request_id,
                                    headers=c.headers, client_timeout=c.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"frames inference on {self.model!r} at {c.url} failed") from exc
        return self.parse(result, count)

    def submit(self, callback: Callable[[FramesResult | None, FerServerError | None], None],
               encoded: Sequence[bytes] | None = None, raw=None, *, with_features: bool = False,
               with_timings: bool = False, request_id: str = "") -> None:
        """Send without waiting: ``callback(result, error)`` runs on a gRPC thread with a FramesResult or a
        FerServerError. Bad input raises FerInputError at once (nothing sent)."""
        inputs, outputs, count = self.request(encoded, raw, with_features=with_features, with_timings=with_timings)
        c = self.client

        def done(result, error):
            if error is not None:
                callback(None, _server_error(error, f"frames inference on {self.model!r} at {c.url} failed"))
                return
            try:
                parsed = self.parse(result, count)
            except FerServerError as exc:
                callback(None, exc)
                return
            except Exception as exc:  # an answer off the contract: the caller must still hear back
                callback(None, FerServerError(f"cannot read the answer of {self.model!r} at {c.url}: "
                                              f"{type(exc).__name__}: {exc}"))
                return
            callback(parsed, None)

        try:
            c.triton.async_infer(self.model, inputs, done, c.model_version, outputs=outputs, request_id=request_id,
                                 headers=c.headers, client_timeout=c.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"frames inference on {self.model!r} at {c.url} failed") from exc


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """UINT8 RGB [H, W, 3] -> JPEG file bytes with OpenCV's ``imencode`` (libjpeg; ``quality`` 1..100).

    Raises ValueError for an array that is not UINT8 [H, W, 3] or a quality outside 1..100.
    """
    import cv2

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be 1..100, not {quality}")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a UINT8 RGB frame [H, W, 3], got {getattr(rgb, 'dtype', type(rgb))} "
                         f"{list(getattr(rgb, 'shape', []))}")
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode a {rgb.shape[1]}x{rgb.shape[0]} frame")
    return buffer.tobytes()


@dataclass
class PhotoResult:
    """One photo sent whole to the frames model: its face rows, or the error that stopped it."""

    name: str
    faces: list[FaceRow]
    report: FrameReport | None = None   # None when the file could not even be read here
    error: str = ""

    def records(self, classes: Sequence[str]) -> list[dict]:
        """JSON-ready records: one per face ({"image", "face", box, crop_box, score, label, probabilities},
        plus "note" when the server capped the faces), one {"image", "error"} for a failed photo, or one
        {"image", "event": "no_face"} for a photo without face."""
        if self.error:
            return [{"image": self.name, "error": self.error}]
        if not self.faces:
            return [{"image": self.name, "event": "no_face"}]
        note = {"note": self.report.note} if self.report is not None and self.report.capped else {}
        return [{"image": self.name, "face": j} | {k: v for k, v in face.as_record(classes).items() if k != "frame"}
                | note for j, face in enumerate(self.faces)]


def classify_photos(frames: FramesClient, paths: Sequence, *, per_request: int = 8,
                    max_request_bytes: int = 64 << 20) -> list[PhotoResult]:
    """Send image files whole (their bytes, decoded by the server) and classify every face in them.

    Requests hold at most ``per_request`` photos and ``max_request_bytes`` bytes (one bigger photo goes
    alone). Returns one PhotoResult per path, in order: faces, no face, or an error (file unreadable
    here, or the server's per-frame message: undecodable, empty, above its pixel limit). Raises
    FerServerError when a request fails as a whole.
    """
    results: list[PhotoResult | None] = [None] * len(paths)
    batch: list[tuple[int, bytes]] = []

    def flush() -> None:
        if not batch:
            return
        answer = frames.infer([blob for _, blob in batch])
        for slot, (i, _) in enumerate(batch):
            report = answer.frames[slot]
            error = f"{paths[i]}: {report.error}" if report.error else ""   # report.error names the request's frame
            results[i] = PhotoResult(str(paths[i]), answer.faces_of(slot), report, error)
        batch.clear()

    size = 0
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except OSError as exc:
            results[i] = PhotoResult(str(path), [], None, f"{path}: cannot read ({exc.strerror or exc})")
            continue
        if batch and (len(batch) >= per_request or size + len(blob) > max_request_bytes):
            flush()
            size = 0
        batch.append((i, blob))
        size += len(blob)
    flush()
    return results
