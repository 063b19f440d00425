"""What the stream client produces: per-frame outcomes, JSON Lines, live statistics, the final accounting.

Every frame read ends as exactly one of: faces (each face a result or an error), no face, bad
frame, dropped by the live-camera policy, or unfinished (a forced stop). Every face found ends as
exactly one of: result, error, unfinished. ``Accounting.balanced`` checks both identities.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import IO

import numpy as np

from fer_triton.client.faces import Box


@dataclass
class FaceOutcome:
    box: Box
    probabilities: np.ndarray | None = None   # [7] when the server answered
    label: str | None = None
    error: str | None = None                   # set when the face failed for good
    latency_ms: float | None = None            # frame read -> result received
    server: str | None = None
    unfinished: bool = False
    # With tracking (StreamConfig.reclassify set): the face's track, whether its result is a fresh
    # classification or carried over from the track's classification at ``classified_frame``, and the
    # track's smoothed probabilities FLOAT64 [7] / label after this face.
    track: int | None = None
    fresh: bool = True
    classified_frame: int | None = None
    smoothed: np.ndarray | None = None
    smoothed_label: str | None = None
    score: float | None = None                 # the detector's confidence 0..1 (server-side detection gives it)


@dataclass
class FrameOutcome:
    camera: str
    index: int
    timestamp: float
    status: str                      # "faces", "no_face", "bad_frame", "dropped", "unfinished"
    position_ms: float | None = None
    message: str = ""
    faces: list[FaceOutcome] = field(default_factory=list)
    site: str | None = None          # the camera's site (SITE/CAM=...): its faces were served by its head
    ended_tracks: list[int] = field(default_factory=list)   # tracks that ended with this frame (tracking)
    events: list[dict] = field(default_factory=list)        # track events, written after the frame's lines


def _percentile(values, q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, float), q)) if values else None


@dataclass
class Counters:
    """What happened to frames and faces; every frame read and every face found lands in one bucket."""

    frames_read: int = 0
    frames_dropped: int = 0
    frames_bad: int = 0
    frames_no_face: int = 0
    frames_with_faces: int = 0
    frames_unfinished: int = 0
    faces: int = 0              # faces found (accepted for inference)
    faces_sent: int = 0         # faces sent to a server at least once
    results: int = 0
    errors: int = 0
    faces_unfinished: int = 0


COUNTERS = tuple(f.name for f in fields(Counters))


@dataclass
class CameraStats(Counters):
    camera: str = ""
    status: str = "running"     # "running", "ended", or what stopped the camera
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)

    def latency(self, q: float) -> float | None:
        return _percentile(self.latencies_ms, q)


@dataclass
class Accounting(Counters):
    """Totals over all cameras."""

    @property
    def balanced(self) -> bool:
        frames_ok = self.frames_read == (self.frames_dropped + self.frames_bad + self.frames_no_face
                                         + self.frames_with_faces + self.frames_unfinished)
        return frames_ok and self.faces == self.results + self.errors + self.faces_unfinished

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in COUNTERS} | {"balanced": self.balanced}


class StreamStats:
    """Thread-safe counters and latencies per camera, fed by the pipeline."""

    def __init__(self, cameras: list[str]):
        self.started = time.monotonic()
        self.cameras = {c: CameraStats(camera=c) for c in cameras}
        self.retries = 0
        # Where the time goes, in ms per item: "read" (decode a frame), "detect" (find + crop faces),
        # "request" (one gRPC round trip, server queue + compute + transfer).
        self.timings: dict[str, deque] = {k: deque(maxlen=4096) for k in ("read", "detect", "request")}
        self._lock = threading.Lock()

    def add(self, camera: str, **counts: int) -> None:
        with self._lock:
            stats = self.cameras[camera]
            for name, n in counts.items():
                setattr(stats, name, getattr(stats, name) + n)

    def set_status(self, camera: str, status: str) -> None:
        with self._lock:
            self.cameras[camera].status = status

    def add_timing(self, name: str, ms: float) -> None:
        with self._lock:
            self.timings[name].append(ms)

    def timing(self, name: str, q: float | None = None) -> float | None:
        """Mean (q None) or percentile of the recent timings of one stage, in ms."""
        with self._lock:
            values = list(self.timings[name])
        if not values:
            return None
        return float(np.mean(values)) if q is None else _percentile(values, q)

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def record(self, frame: FrameOutcome) -> None:
        """Count one frame that left the pipeline (in order)."""
        with self._lock:
            stats = self.cameras[frame.camera]
            key = {"faces": "frames_with_faces", "no_face": "frames_no_face", "bad_frame": "frames_bad",
                   "unfinished": "frames_unfinished", "dropped": None}[frame.status]
            if key:
                setattr(stats, key, getattr(stats, key) + 1)
            for face in frame.faces:
                if face.unfinished:
                    stats.faces_unfinished += 1
                elif face.error is not None:
                    stats.errors += 1
                else:
                    stats.results += 1
                    stats.latencies_ms.append(face.latency_ms)

    def totals(self) -> Accounting:
        with self._lock:
            return Accounting(**{n: sum(getattr(s, n) for s in self.cameras.values()) for n in COUNTERS})

    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    def latency(self, q: float) -> float | None:
        with self._lock:
            return _percentile([v for s in self.cameras.values() for v in s.latencies_ms], q)


class JsonLinesWriter:
    """One JSON object per line: a face result or error, a frame without face or a bad frame,
    and camera events (source errors, stream ends). Dropped frames are only counted. Lines of a
    camera mapped to a site carry ``"site": NAME`` (what ``fer-triton drift --site`` reads)."""

    def __init__(self, out: IO[str] | None, classes: tuple[str, ...], publish=None):
        self.out, self.classes, self.publish = out, classes, publish
        self._lock = threading.Lock()

    def _write(self, obj: dict) -> None:
        with self._lock:
            if self.out is not None:
                self.out.write(json.dumps(obj) + "\n")
                self.out.flush()
            if self.publish is not None:  # e.g. MqttPublisher.publish: the same record, in the same order
                self.publish(obj)

    def record(self, obj: dict) -> None:
        """Write one ready record (a track event)."""
        self._write(obj)

    def frame(self, frame: FrameOutcome) -> None:
        if frame.status == "dropped":
            return
        head = {"camera": frame.camera, "frame": frame.index, "timestamp": round(frame.timestamp, 6)}
        if frame.site is not None:
            head["site"] = frame.site
        if frame.position_ms is not None:
            head["position_ms"] = round(frame.position_ms, 3)
        if frame.status in ("no_face", "bad_frame") or (frame.status == "unfinished" and not frame.faces):
            self._write(head | {"event": frame.status} | ({"error": frame.message} if frame.message else {}))
            for event in frame.events:  # tracks lost on a frame without face end there
                self._write(event)
            return
        for j, face in enumerate(frame.faces):
            line = head | {"face": j, "box": face.box.as_list()}
            if face.score is not None:
                line["score"] = round(float(face.score), 6)
            if frame.message:  # e.g. "capped: 40 found, 32 kept" from server-side detection
                line["note"] = frame.message
            if face.track is not None:
                line |= {"track": face.track, "fresh": face.fresh}
                if not face.fresh and face.classified_frame is not None:
                    line["classified_frame"] = face.classified_frame
            if face.unfinished:
                line["event"] = "unfinished"
            elif face.error is not None:
                line["error"] = face.error
            else:
                line |= {"label": face.label,
                         "probabilities": {c: round(float(p), 7) for c, p in zip(self.classes, face.probabilities)},
                         "latency_ms": round(face.latency_ms, 3), "server": face.server}
                if face.smoothed is not None:
                    line |= {"smoothed_label": face.smoothed_label,
                             "smoothed": {c: round(float(p), 7) for c, p in zip(self.classes, face.smoothed)}}
            self._write(line)
        for event in frame.events:
            self._write(event)

    def event(self, camera: str, event: str, message: str) -> None:
        self._write({"camera": camera, "event": event, "message": message, "timestamp": round(time.time(), 6)})


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


class ProgressDisplay:
    """A one-line live status (rewritten in place on a terminal), at most once per ``interval_s``."""

    def __init__(self, stats: StreamStats, out: IO[str] | None = None, interval_s: float | None = None,
                 table_every_s: float = 0.0):
        self.stats, self.out = stats, out or sys.stderr
        self.tty = getattr(self.out, "isatty", lambda: False)()
        self.interval_s = interval_s or (1.0 if self.tty else 10.0)  # a log file gets a line per 10 s
        self.table_every_s = table_every_s  # also print the per-camera table this often (0: never)
        self._last_t, self._last_results = time.monotonic(), 0
        self._last_table = time.monotonic()

    def tick(self, in_flight: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_t < self.interval_s:
            return
        total = self.stats.totals()
        rate = (total.results - self._last_results) / max(1e-9, now - self._last_t)
        self._last_t, self._last_results = now, total.results
        running = sum(s.status == "running" for s in self.stats.cameras.values())
        line = (f"cameras {running}/{len(self.stats.cameras)} running | frames {total.frames_read} "
                f"| faces/s {rate:6.1f} | results {total.results} | in flight {in_flight} "
                f"| p50 {_ms(self.stats.latency(50))} ms p99 {_ms(self.stats.latency(99))} ms "
                f"| dropped {total.frames_dropped} | errors {total.errors + total.frames_bad}")
        self.out.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if self.table_every_s and now - self._last_table >= self.table_every_s:
            self._last_table = now
            self.out.write(("\n" if self.tty else "") + format_summary(self.stats) + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def format_summary(stats: StreamStats, servers: list[dict] | None = None) -> str:
    """The end-of-run table: per camera counts, faces/s and latency, then the totals and servers."""
    elapsed = stats.elapsed()
    cols = ["camera", "read", "dropped", "bad", "no_face", "faces", "results", "errors", "unfinished",
            "faces/s", "p50 ms", "p99 ms", "status"]
    rows = []
    for s in stats.cameras.values():
        rows.append([s.camera, s.frames_read, s.frames_dropped, s.frames_bad, s.frames_no_face, s.faces, s.results,
                     s.errors, s.faces_unfinished, f"{s.results / elapsed:.1f}", _ms(s.latency(50)),
                     _ms(s.latency(99)), s.status])
    total = stats.totals()
    rows.append(["TOTAL", total.frames_read, total.frames_dropped, total.frames_bad, total.frames_no_face,
                 total.faces, total.results, total.errors, total.faces_unfinished, f"{total.results / elapsed:.1f}",
                 _ms(stats.latency(50)), _ms(stats.latency(99)), f"{elapsed:.1f}s"])
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    text_columns = (0, len(cols) - 1)  # camera and status read left to right; numbers line up right
    lines = ["  ".join(str(v).ljust(w) if i in text_columns else str(v).rjust(w)
                       for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in [cols, *rows]]
    lines.append(f"faces sent {total.faces_sent}, retried requests {stats.retries}; every face accounted for: "
                 f"{'yes' if total.balanced else 'NO'}")
    lines.append("mean time per item: " + ", ".join(
        f"{name} {'-' if stats.timing(name) is None else format(stats.timing(name), '.1f')} ms" for name in stats.timings))
    for server in servers or []:
        lines.append(f"server {server['url']}: {server['answered']} requests answered, {server['errors']} failed, "
                     f"{server['reconnects']} reconnects" + (f" (last error: {server['last_error']})"
                                                            if server["last_error"] else ""))
    return "\n".join(lines)
