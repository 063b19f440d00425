"""Frame sources for the stream client: image files/folders, video files, OpenCV camera URLs and devices.

Each source has a camera id and yields, in order, one event per frame it reads:

    Frame       a decoded RGB frame (UINT8 [H, W, 3]), upright as a viewer or player shows it
    BadFrame    a frame that could not be decoded (unreadable image file, undecodable video frame)

and finally returns (StopIteration), leaving a short reason in ``end_reason``: "ended",
"stalled: ..." (a live stream without frames), or "failed: ..." (a video file of which no frame
can be decoded). Opening problems raise SourceOpenError before any frame is read. A source never
raises for one bad frame: it reports it and goes on, so one camera never stops the others.
Images are read by ``fer_triton.images.read_image`` (the project's one image reader), videos by
OpenCV + FFmpeg. Where a video file ends is found by reading it: a container's frame count, fps
and duration are estimates and never decide an error or the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_triton.client.grpc_client import SITE_NAME, SITE_NAME_RULE
from fer_triton.images import IMAGE_SUFFIXES, ImageReadError, list_images, read_image

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".mjpeg"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ID = re.compile(r"^[A-Za-z0-9_.@-]+$")  # no "/" or ":": "/data/a=b.mp4" stays a path


class SourceOpenError(RuntimeError):
    """A source cannot be opened (missing path, unknown format, unreachable camera)."""


@dataclass
class Frame:
    """One decoded frame of a camera."""

    camera: str
    index: int                        # 0, 1, 2 ... per camera, counting bad frames too
    timestamp: float                  # wall clock (Unix seconds) when the frame was read
    image: np.ndarray                 # RGB UINT8 [H, W, 3]
    position_ms: float | None = None  # position in a video file, when the source has one


@dataclass
class BadFrame:
    """A frame that was read but cannot be decoded; ``message`` says which (image file or frame index) and why."""

    camera: str
    index: int
    timestamp: float
    message: str


@dataclass(frozen=True)
class SourceSpec:
    """``[[SITE/]ID=]LOCATION``: a folder, image file, video file, URL (rtsp://, http://, ...) or device
    index. ``site``: the site whose head serves this camera's faces (None: the base model); the camera
    id of ``lobby/cam1=...`` is ``lobby/cam1``."""

    camera: str
    location: str
    site: str | None = None

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


def _site_prefix(text: str) -> tuple[str, str, str] | None:
    """(site, camera id, location) of ``SITE/CAM=LOCATION``; None when ``text`` is not of that form (or is a
    path that exists). ValueError naming the rule for a site name that cannot be one."""
    prefix, sep, location = text.partition("=")
    site, slash, cam = prefix.partition("/")
    if not sep or not slash or _URL.match(text) or Path(text).exists() or not _ID.match(site) or not _ID.match(cam):
        return None
    if not SITE_NAME.match(site):
        raise ValueError(f"source {text!r}: {site!r} is not a valid site name: use {SITE_NAME_RULE}")
    return site, f"{site}/{cam}", location.strip()


def parse_source(text: str) -> SourceSpec:
    """Parse ``[[SITE/]ID=]LOCATION``; without an ID the camera id is the file stem, folder name or device.

    ``SITE/ID=LOCATION`` (e.g. ``lobby/cam1=rtsp://10.0.0.5/s1``) serves the camera's faces with the
    site's own head; the camera id is then ``SITE/ID``. Raises ValueError for a source without a
    location or with a site name that breaks the rule.
    """
    with_site = _site_prefix(text)
    if with_site is not None:
        site, camera, location = with_site
        if not location:
            raise ValueError(f"source {text!r} names no location (expected SITE/ID=PATH, URL or device index)")
        return SourceSpec(camera, location, site)
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
        """One event per image file, in name order: a Frame (UINT8 RGB [H, W, 3] at the file's own size)
        or, for a file that cannot be read, a BadFrame whose message names the file and says why.

        Files are read by :func:`fer_triton.images.read_image`, the project's one image reader (EXIF
        orientation, alpha over black, the pixel limit); any decoder failure, a decompression bomb
        included, is that one file's BadFrame and the camera goes on with the next file.
        """
        for index, path in enumerate(self.paths):
            now = time.time()
            try:
                # Keep the file's own size: faces are found and cropped later, then resized.
                image = read_image(path)
            except ImageReadError as exc:
                yield BadFrame(self.camera, index, now, str(exc))
                continue
            yield Frame(self.camera, index, now, image)


class VideoSource(FrameSource):
    """A video file, stream URL or device index, read with OpenCV (FFmpeg for files and URLs).

    Frames come out as a player shows them: the rotation in the container's display matrix (a
    portrait phone video: landscape pixels plus "rotate 90") is applied on every open and every
    reopen. The container's frame count, fps and duration are estimates: neither errors nor the
    end of a file are derived from them.

    Files are read until reading stops: a read that fails is retried (OpenCV answers a read past
    the end at once) and, when a later read gives a frame again, every failed read before it is
    reported as a BadFrame (an undecodable frame inside the file); ``end_after_failed_reads`` failed
    reads in a row end the file ("ended"). A file of which no frame can be decoded ends as
    "failed: ...". Live streams: a failed read is a stall; the stream is reopened with backoff until
    ``stall_timeout_s`` passes without a frame. ``fps`` paces a file like a live camera (and makes it
    live: the drop policy applies).
    """

    def __init__(self, spec: SourceSpec, *, fps: float | None = None, stall_timeout_s: float = 10.0,
                 end_after_failed_reads: int = 32):
        super().__init__(spec)
        if end_after_failed_reads < 1:
            raise ValueError(f"end_after_failed_reads must be at least 1, not {end_after_failed_reads}")
        self.fps = fps
        self.live = spec.live or fps is not None
        self.stall_timeout_s = stall_timeout_s
        self.end_after_failed_reads = end_after_failed_reads
        self._cap = None
        self.read_ms = 0.0  # time the last read took (decode, network), without the fps pacing

    @property
    def _path(self) -> str:
        return self.spec.location.removeprefix("file://")

    def _open_capture(self):
        """A new ``cv2.VideoCapture`` on the location (check ``isOpened()``); used to open and to reopen.

        FFmpeg captures (files, URLs) get ``CAP_PROP_ORIENTATION_AUTO`` so that frames are rotated as
        the container's display matrix says. This OpenCV refuses that property as an ``open()``
        parameter (the open fails), so it is set on the opened capture, before the first read.
        """
        import cv2

        timeout_ms = int(self.stall_timeout_s * 1000)
        if self.spec.kind == "device":
            return cv2.VideoCapture(int(self._path))
        if self.spec.kind == "url":
            cap = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        else:
            cap = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        return cap

    def open(self) -> None:
        """Open the capture; raises SourceOpenError (naming the camera) for a missing file or a
        location OpenCV cannot open. Nothing is read yet."""
        if self.spec.kind == "video" and not Path(self._path).is_file():
            raise SourceOpenError(f"camera {self.camera}: video file {self.spec.location} does not exist")
        cap = self._open_capture()
        if not cap.isOpened():
            what = {"device": "camera device", "url": "stream"}.get(self.spec.kind, "video file")
            raise SourceOpenError(f"camera {self.camera}: OpenCV cannot open {what} {self.spec.location} "
                                  "(unreachable, or not a format FFmpeg reads)")
        self._cap = cap

    def _read(self):
        """One read: a BGR UINT8 [H, W, 3] frame, or None when OpenCV gives no frame; sets ``read_ms``."""
        t0 = time.perf_counter()
        ok, bgr = self._cap.read()
        self.read_ms = (time.perf_counter() - t0) * 1000
        return bgr if ok and bgr is not None and bgr.ndim == 3 and bgr.size else None

    def frames(self) -> Iterator[Frame | BadFrame]:
        """Frames (UINT8 RGB [H, W, 3], upright; ``position_ms`` for files) and BadFrames, in order,
        with consecutive indices from 0; on return ``end_reason`` says why reading stopped."""
        if self.spec.kind == "video":
            yield from self._file_frames()
        else:
            yield from self._live_frames()

    def _pace(self, index: int, started: float) -> None:
        if self.fps:  # pace like a camera: frame k is due at k / fps
            delay = started + index / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _file_frames(self) -> Iterator[Frame | BadFrame]:
        import cv2

        index, started = 0, time.monotonic()
        failed: list[float] = []  # wall clock of each failed read since the last frame
        while True:
            if not failed:
                self._pace(index, started)
            bgr = self._read()
            now = time.time()
            if bgr is None:
                failed.append(now)
                if len(failed) < self.end_after_failed_reads:
                    continue
                # Reading has stopped: the failed reads were the end of the data, not frames.
                if index == 0:
                    self.end_reason = (f"failed: camera {self.camera}: no frame of video file {self.spec.location} "
                                       "can be decoded (corrupt or truncated file, or a codec this OpenCV lacks)")
                else:
                    self.end_reason = "ended"
                return
            # A frame after failed reads: those reads met data FFmpeg could not decode inside the file.
            for when in failed:
                yield BadFrame(self.camera, index, when,
                               f"frame {index} cannot be decoded (corrupt data inside the video file; "
                               "the frames after it are read)")
                index += 1
            failed.clear()
            position = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            yield Frame(self.camera, index, now, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), position)
            index += 1

    def _live_frames(self) -> Iterator[Frame | BadFrame]:
        import cv2

        index, bad_in_a_row, started = 0, 0, time.monotonic()
        last_frame = time.monotonic()
        while True:
            self._pace(index, started)
            bgr = self._read()
            now = time.time()
            if bgr is not None:
                bad_in_a_row, last_frame = 0, time.monotonic()
                yield Frame(self.camera, index, now, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
                continue
            # A failed read is a stall (or the stream ended); reconnect until the stall timeout.
            stalled_for = time.monotonic() - last_frame
            if stalled_for >= self.stall_timeout_s:
                self.end_reason = f"stalled: no frame for {stalled_for:.1f}s (reconnects failed)"
                return
            time.sleep(min(1.0, 0.1 * 2 ** min(bad_in_a_row, 4)))
            bad_in_a_row += 1
            self._cap.release()
            self._cap = self._open_capture()

    def close(self) -> None:
        """Release the capture (idempotent)."""
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
