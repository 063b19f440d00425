"""Frame sources for the stream client: image files/folders, video files, OpenCV camera URLs and devices.

Each source has a camera id and yields, in order, one event per frame it reads:

    Frame       a decoded RGB frame (UINT8 [H, W, 3])
    BadFrame    a frame that could not be decoded (corrupt image, undecodable video frame)

and finally returns (StopIteration) with a short reason: "ended", or a message naming what went
wrong (ended early, stalled). Opening problems raise SourceOpenError before any frame is read.
A source never raises for one bad frame: it reports it and goes on, so one camera never stops
the others.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_triton.images import IMAGE_SUFFIXES, ImageReadError, list_images

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".mjpeg"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ID = re.compile(r"^[A-Za-z0-9_.@-]+$")  # no "/" or ":": "/data/a=b.mp4" stays a path


class SourceOpenError(RuntimeError):
    """A source cannot be opened (missing path, unknown format, unreachable camera)."""


@dataclass
class Frame:
    camera: str
    index: int                        # 0, 1, 2 ... per camera, counting bad frames too
    timestamp: float                  # wall clock (Unix seconds) when the frame was read
    image: np.ndarray                 # RGB UINT8 [H, W, 3]
    position_ms: float | None = None  # position in a video file, when the source has one


@dataclass
class BadFrame:
    camera: str
    index: int
    timestamp: float
    message: str


@dataclass(frozen=True)
class SourceSpec:
    """``[ID=]LOCATION``: a folder, image file, video file, URL (rtsp://, http://, ...) or device index."""

    camera: str
    location: str

    @property
    def kind(self) -> str:
        if self.location.isdigit():
            return "device"
        if _URL.match(self.location) and not self.location.startswith("file://"):
            return "url"
        path = Path(self.location.removeprefix("file://"))
        if path.is_dir():
            return "folder"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return "image"
        return "video"

    @property
    def live(self) -> bool:
        """Live sources keep producing frames whether or not we keep up: they get the drop policy."""
        return self.kind in ("device", "url")


def parse_source(text: str) -> SourceSpec:
    """Parse ``[ID=]LOCATION``; without an ID the camera id is the file stem, folder name or device."""
    camera, sep, location = text.partition("=")
    # "rtsp://host/x?a=b" has an "=" too: only treat the prefix as an id when it looks like one.
    if not sep or _URL.match(text) or not _ID.match(camera) or "://" in camera:
        camera, location = "", text
    location = location.strip()
    if not location:
        raise ValueError(f"source {text!r} names no location (expected [ID=]PATH, URL or device index)")
    if not camera:
        if location.isdigit():
            camera = f"device{location}"
        elif _URL.match(location):
            camera = re.sub(r"[^A-Za-z0-9_.-]+", "_", location.split("://", 1)[1]).strip("_") or "camera"
        else:
            camera = Path(location).stem or location
    return SourceSpec(camera, location)


def parse_sources(texts: list[str]) -> list[SourceSpec]:
    """Parse many sources; camera ids must be unique (give duplicates an ID= prefix)."""
    specs = [parse_source(t) for t in texts]
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.camera in seen:
            raise ValueError(f"two sources share camera id {spec.camera!r} ({seen[spec.camera]} and "
                             f"{spec.location}); name them with ID=LOCATION")
        seen[spec.camera] = spec.location
    return specs


class FrameSource:
    """Base class: ``open()`` then iterate ``frames()``; ``close()`` releases the device or file."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.camera = spec.camera
        self.live = spec.live
        self.end_reason = "ended"

    def open(self) -> None:
        pass

    def frames(self) -> Iterator[Frame | BadFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageFilesSource(FrameSource):
    """An image file or a folder of images (sorted, recursive): one frame per image, in name order."""

    def open(self) -> None:
        path = Path(self.spec.location.removeprefix("file://"))
        if not path.exists():
            raise SourceOpenError(f"camera {self.camera}: {path} does not exist")
        self.paths = list_images([path])
        if not self.paths:
            raise SourceOpenError(f"camera {self.camera}: folder {path} holds no image "
                                  f"({', '.join(sorted(IMAGE_SUFFIXES))})")

    def frames(self) -> Iterator[Frame | BadFrame]:
        for index, path in enumerate(self.paths):
            now = time.time()
            try:
                # Keep the file's own size: faces are found and cropped later, then resized.
                image = read_image(path)
            except ImageReadError as exc:
                yield BadFrame(self.camera, index, now, str(exc))
                continue
            yield Frame(self.camera, index, now, image)


def read_image(path: Path) -> np.ndarray:
    """An image file at its own size as RGB UINT8; transparent pixels become black (as `infer` does)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P"):
                image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc


class VideoSource(FrameSource):
    """A video file, stream URL or device index, read with OpenCV (FFmpeg for files and URLs).

    Files: a frame FFmpeg cannot decode is reported and skipped; the file ending before the frame
    count in its header is reported as "ended early". Live streams: a failed read is a stall; the
    stream is reopened with backoff until ``stall_timeout_s`` passes without a frame.
    ``fps`` paces a file like a live camera (and makes it live: the drop policy applies).
    """

    def __init__(self, spec: SourceSpec, *, fps: float | None = None, stall_timeout_s: float = 10.0,
                 max_bad_in_a_row: int = 3):
        super().__init__(spec)
        self.fps = fps
        self.live = spec.live or fps is not None
        self.stall_timeout_s = stall_timeout_s
        self.max_bad_in_a_row = max_bad_in_a_row
        self._cap = None
        self.frame_count = 0
        self.read_ms = 0.0  # time the last read took (decode, network), without the fps pacing

    def _open_capture(self):
        import cv2

        location = self.spec.location.removeprefix("file://")
        timeout_ms = int(self.stall_timeout_s * 1000)
        if self.spec.kind == "device":
            cap = cv2.VideoCapture(int(location))
        elif self.spec.kind == "url":
            cap = cv2.VideoCapture(location, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            cap = cv2.VideoCapture(location, cv2.CAP_FFMPEG)
        return cap

    def open(self) -> None:
        if self.spec.kind == "video" and not Path(self.spec.location.removeprefix("file://")).is_file():
            raise SourceOpenError(f"camera {self.camera}: video file {self.spec.location} does not exist")
        cap = self._open_capture()
        if not cap.isOpened():
            what = {"device": "camera device", "url": "stream"}.get(self.spec.kind, "video file")
            raise SourceOpenError(f"camera {self.camera}: OpenCV cannot open {what} {self.spec.location} "
                                  "(unreachable, or not a format FFmpeg reads)")
        self._cap = cap
        import cv2

        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.spec.kind == "video" else 0

    def frames(self) -> Iterator[Frame | BadFrame]:
        import cv2

        index, bad_in_a_row, started = 0, 0, time.monotonic()
        last_frame = time.monotonic()
        while True:
            if self.fps:  # pace like a camera: frame k is due at k / fps
                delay = started + index / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            ok, bgr = self._cap.read()
            self.read_ms = (time.perf_counter() - t0) * 1000
            now = time.time()
            if ok and bgr is not None and bgr.ndim == 3 and bgr.size:
                bad_in_a_row, last_frame = 0, time.monotonic()
                position = self._cap.get(cv2.CAP_PROP_POS_MSEC) if self.spec.kind == "video" else None
                yield Frame(self.camera, index, now, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), position)
                index += 1
                continue
            if self.spec.kind == "video":
                if index >= self.frame_count:
                    self.end_reason = "ended"
                    return
                # Undecodable frame inside the file: report it and try to skip past it.
                yield BadFrame(self.camera, index, now, f"frame {index} of {self.frame_count} cannot be decoded")
                index += 1
                bad_in_a_row += 1
                if bad_in_a_row >= self.max_bad_in_a_row:
                    self.end_reason = (f"ended early after frame {index - 1} of {self.frame_count}: "
                                       f"{bad_in_a_row} undecodable frames in a row (corrupt or truncated file)")
                    return
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                continue
            # Live: a failed read is a stall (or the stream ended); reconnect until the stall timeout.
            stalled_for = time.monotonic() - last_frame
            if stalled_for >= self.stall_timeout_s:
                self.end_reason = f"stalled: no frame for {stalled_for:.1f}s (reconnects failed)"
                return
            time.sleep(min(1.0, 0.1 * 2 ** min(bad_in_a_row, 4)))
            bad_in_a_row += 1
            self._cap.release()
            self._cap = self._open_capture()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(spec: SourceSpec, *, fps: float | None = None, stall_timeout_s: float = 10.0) -> FrameSource:
    """Build and open the source for ``spec``; raises SourceOpenError naming the camera and what failed."""
    if spec.kind in ("folder", "image"):
        source: FrameSource = ImageFilesSource(spec)
    else:
        source = VideoSource(spec, fps=fps, stall_timeout_s=stall_timeout_s)
    source.open()
    return source
