"""Stream many cameras through the served model: read -> find faces -> batch -> gRPC -> in-order results.

    readers (one thread per camera)  ->  per-camera frame queues (bounded; live cameras drop by policy)
    detect workers (round robin over cameras)  ->  face queue (bounded)
    sender: batches faces across cameras, keeps up to ``max_in_flight`` requests on the wire
            (tritonclient async_infer), retries with backoff on another or the same server
    collector: puts every frame back in order per camera, then writes and counts it

Back-pressure: a batch holds its window slot until it is answered or given up, so a slow or
absent server fills the face queue, then the frame queues; file readers then wait, live cameras
drop frames (counted). Memory stays bounded by the queue sizes.

Every frame read is resolved exactly once (faces / no face / bad frame / dropped / unfinished) and
every face found exactly once (result / error / unfinished); see results.Accounting.

Sites: a camera given as ``SITE/CAM=LOCATION`` is served by the site's own head. A batch holding any
such face goes to the ``<model>_sites`` ensemble with a site per face ("" for cameras without one,
which the base head serves), so faces of every site and camera still share one batch and the
backbone. Every site is checked with the server at the start: an unknown one stops the run before
any frame is read (it would fail every batch it shares).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable

import numpy as np

from fer_triton.client.faces import FaceDetector, crop_face, make_detector
from fer_triton.client.grpc_client import FerInputError, FerServerError, InferOutput
from fer_triton.client.ordering import FrameQueues, InOrder
from fer_triton.client.results import (FaceOutcome, FrameOutcome, JsonLinesWriter, ProgressDisplay, StreamStats,
                                       format_summary)
from fer_triton.client.servers import Backoff, ServerPool, is_retryable
from fer_triton.client.smoothing import TrackEvents, smoother_factory
from fer_triton.client.tracking import Classification, ReclassifyPolicy, TrackedFace, TrackedFrame, Tracking
from fer_triton.client.sources import BadFrame, Frame, FrameSource, SourceOpenError, SourceSpec, open_source

log = logging.getLogger(__name__)

DROP_POLICIES = ("oldest", "newest", "block")


@dataclass
class StreamConfig:
    batch_size: int = 16            # faces per request (capped at the model's max_batch_size)
    max_wait_ms: float = 5.0        # how long a partial batch waits for more faces
    max_in_flight: int = 4          # requests on the wire at once: lets Triton's dynamic batcher work
    queue_frames: int = 4           # frames buffered per camera
    live_drop: str = "oldest"       # live cameras, when their queue is full: drop "oldest", "newest", or "block"
    detector: str = "haar"          # "haar", "mtcnn", or "crops" when sources send face crops (faces.py)
    min_face: int = 40              # smallest face the detector reports, in pixels
    margin: float = 0.1             # widen detected boxes by this fraction of their side on each side
    detect_workers: int = 2
    request_timeout_s: float = 30.0
    retry_timeout_s: float = 120.0  # a batch that keeps failing this long becomes errors
    connect_wait_s: float = 10.0    # how long to wait at start for any server to answer
    stall_timeout_s: float = 10.0   # a live camera without frames this long is reported stalled
    fps: float | None = None        # pace file sources like live cameras (they then get the drop policy)
    drain_timeout_s: float = 30.0   # after stop(): how long to finish what was already read
    # Face tracks (tracking.py): None = off; "0" tracks and classifies every face, "10" every 10 frames,
    # "2s" every 2 seconds (and when a box moves: IoU with the last classified box below reclassify_min_iou).
    reclassify: str | None = None
    reclassify_min_iou: float = 0.5
    smooth: str = "ema:0.3"         # per-track smoothing (smoothing.py): none, ema:ALPHA, ema:HALF_LIFEs, window:N
    track_lost_frames: int = 30     # a track unseen for more processed frames than this ends
    # Faces through Triton's shared memory instead of the gRPC message (servers on this host): None, "system"
    # or "cuda" (client/shared_memory.py); one region per request in flight.
    shared_memory: str | None = None
    # Where faces are found: "client" (detector above, crops sent to <model>) or "server" (frames JPEG-encoded
    # at jpeg_quality and sent to <model>_frames, which detects, crops and classifies: client/server_detect.py).
    detect: str = "client"
    jpeg_quality: int = 90

    def check(self) -> None:
        for name in ("batch_size", "max_in_flight", "queue_frames", "detect_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.live_drop not in DROP_POLICIES:
            raise ValueError(f"live_drop must be one of {', '.join(DROP_POLICIES)}, not {self.live_drop!r}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, not {self.fps}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, not {self.margin}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, not {self.request_timeout_s}")
        if self.detect not in ("client", "server"):
            raise ValueError(f"detect must be 'client' or 'server', not {self.detect!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, not {self.jpeg_quality}")
        if self.reclassify is not None:
            ReclassifyPolicy.parse(self.reclassify, self.reclassify_min_iou)
            smoother_factory(self.smooth)


@dataclass
class _FrameJob:
    outcome: FrameOutcome
    read_t: float                    # time.monotonic() when read
    remaining: int = 0               # faces not yet resolved


@dataclass
class _FaceJob:
    frame: _FrameJob
    slot: int                        # index in frame.outcome.faces
    crop: np.ndarray | None          # None for a face that carries its track's result
    classification: Classification | None = None  # tracking: the track's classification this face is
    resolved: bool = False


@dataclass
class _Batch:
    faces: list[_FaceJob]
    first_sent: float | None = None
    attempts: int = 0
    last_error: str = ""
    done: bool = False               # resolved; its window slot is released
    expired_on: set[str] = field(default_factory=set)  # servers whose deadline it passed: they may still compute it
    seq: int = field(default_factory=itertools.count().__next__)


@dataclass
class StreamSummary:
    stats: StreamStats
    servers: list[dict]
    interrupted: bool = False
    stopped_by: str = "Ctrl-C"      # what stopped an interrupted run (the command sets SIGTERM when it was)

    @property
    def accounting(self):
        return self.stats.totals()

    def format(self) -> str:
        text = format_summary(self.stats, self.servers)
        return (f"stopped early ({self.stopped_by}): see 'unfinished'\n" if self.interrupted else "") + text


def _clock(frame: FrameOutcome) -> float:
    """A frame's time in seconds for tracking: its position in a video file, else its wall-clock read time."""
    return frame.position_ms / 1000.0 if frame.position_ms is not None else frame.timestamp


class StreamPipeline:
    """Run ``sources`` through the servers at ``urls``; ``run()`` blocks until every source has ended
    (or ``stop()``), and returns the summary. Results go to ``out`` (JSON Lines) and/or ``on_frame``."""

    def __init__(self, sources: list[SourceSpec | FrameSource], urls: list[str] | str, model: str = "cafe", *,
                 config: StreamConfig | None = None, out: IO[str] | None = None,
                 on_frame: Callable[[FrameOutcome], None] | None = None,
                 on_event: Callable[[dict], None] | None = None, uncertain=None, publish=None,
                 metrics_listen: tuple[str, int] | None = None,
                 progress: IO[str] | None = None, table_every_s: float = 0.0,
                 detector: FaceDetector | None = None):
        self.config = config or StreamConfig()
        self.config.check()
        self.sources = list(sources)
        cameras = [s.camera for s in self.sources]
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera ids must be unique, got {cameras}")
        if not cameras:
            raise ValueError("give at least one source")
        self.pool = ServerPool([urls] if isinstance(urls, str) else list(urls), model,
                               timeout_s=self.config.request_timeout_s, backoff=Backoff(),
                               shared_memory=self.config.shared_memory, shm_regions=self.config.max_in_flight + 1)
        self.detector = detector or make_detector(self.config.detector, min_face=self.config.min_face)
        self.stats = StreamStats(cameras)
        # camera -> its site ("" = the base model); FrameSource objects carry theirs in .spec
        self._sites = {s.camera: (getattr(s, "site", None) or getattr(getattr(s, "spec", None), "site", None) or "")
                       for s in self.sources}
        self._out, self._on_frame, self._progress_out = out, on_frame, progress
        self._table_every_s = table_every_s
        self._frames = FrameQueues(cameras, self.config.queue_frames)
        self._in_order = InOrder(cameras, self._emit)
        self._faces: queue.Queue[_FaceJob] = queue.Queue(maxsize=self.config.batch_size * self.config.max_in_flight)
        self._window = threading.Semaphore(self.config.max_in_flight)
        self._retries: list[tuple[float, int, _Batch]] = []
        self._live_batches: set[int] = set()   # seq of batches holding a window slot
        self._batches: dict[int, _Batch] = {}
        self._lock = threading.Lock()           # guards face resolution, batch slots, retries
        self._stopping = threading.Event()      # no new frames
        self._aborted = threading.Event()       # give up on what is queued and in flight
        self._readers_done = threading.Event()
        self._detect_done = threading.Event()
        self._last_frame: dict[str, float] = {}
        self.writer: JsonLinesWriter | None = None
        self.info = None  # the served model's ModelInfo, once run() has reached a server
        self._on_event, self.uncertain, self._publish = on_event, uncertain, publish
        self._tracking: Tracking | None = None
        self._events: dict[str, TrackEvents] = {}   # per camera, made in run() (needs the served classes)
        if self.config.reclassify is not None:
            self._tracking = Tracking(cameras, self._after_tracking,
                                      ReclassifyPolicy.parse(self.config.reclassify, self.config.reclassify_min_iou),
                                      lost_after_frames=self.config.track_lost_frames)
        self.metrics = None
        self._metrics_listen = metrics_listen
        if metrics_listen is not None:  # prometheus_client: only with --metrics-port (the stream extra)
            from fer_triton.extras import require

            require("stream", "prometheus_client", what="stream metrics (metrics_listen)")
            from fer_triton.client.stream_metrics import StreamMetrics

            tracking = self._tracking
            self.metrics = StreamMetrics(
                self.stats, servers=lambda: self.pool.servers,
                tracks=tracking.live_tracks if tracking is not None else None,
                classifications=(lambda: (dict(tracking.classified), dict(tracking.carried))) if tracking else None)

    # ---- outcomes -------------------------------------------------------------------------
    def _emit(self, outcome: FrameOutcome) -> None:
        """One frame leaves the pipeline (per camera in frame order, under InOrder's lock)."""
        if self._tracking is not None:
            self._smooth(outcome)
        self.stats.record(outcome)
        if self.metrics is not None:
            for face in outcome.faces:
                if face.error is None and not face.unfinished and face.latency_ms is not None:
                    self.metrics.observe_face(outcome.camera, face.latency_ms)
        if self.writer is not None:
            self.writer.frame(outcome)
        if self._on_frame is not None:
            self._on_frame(outcome)
        if self._on_event is not None:
            for event in outcome.events:
                self._on_event(event)

    def _smooth(self, outcome: FrameOutcome) -> None:
        """Smoothed probabilities of each tracked face, and the track events of this frame."""
        events = self._events[outcome.camera]
        for face in outcome.faces:
            if face.track is None:
                continue
            ok = face.error is None and not face.unfinished
            smoothed = events.face(outcome.index, outcome.timestamp, face.track, face.box,
                                   face.probabilities if ok else None, face.fresh, _clock(outcome))
            face.smoothed, face.smoothed_label = smoothed.smoothed, smoothed.label
            outcome.events.extend(smoothed.events)
        for track in outcome.ended_tracks:
            end = events.end(track, "lost", outcome.timestamp)
            if end is not None:
                outcome.events.append(end)

    def _finish_frame(self, job: _FrameJob, status: str, message: str = "", *, tracked: bool = False) -> None:
        if self._tracking is not None and not tracked:  # a frame the tracker never sees: do not wait for it
            self._tracking.skip(job.outcome.camera, job.outcome.index)
        job.outcome.status, job.outcome.message = status, message
        self._in_order.done(job.outcome)

    def _resolve_face(self, face: _FaceJob, **fields) -> None:
        with self._lock:
            if face.resolved:
                return
            face.resolved = True
            outcome = face.frame.outcome.faces[face.slot]
            for name, value in fields.items():
                setattr(outcome, name, value)
            face.frame.remaining -= 1
            complete = face.frame.remaining == 0
        if face.classification is not None:  # outside the lock: the faces carrying it resolve through here
            face.classification.resolve(probabilities=fields.get("probabilities"), label=fields.get("label"),
                                        error=fields.get("error"), unfinished=fields.get("unfinished", False),
                                        server=fields.get("server"))
        if complete:
            self._in_order.done(face.frame.outcome)

    def _carry(self, face: _FaceJob, source: Classification) -> None:
        """Resolve a face that carries its track's classification ``source`` (now resolved)."""
        if source.unfinished:
            self._resolve_face(face, unfinished=True)
        elif source.error is not None:
            self._resolve_face(face, error=f"carried from frame {source.frame}: {source.error}")
        else:
            self._resolve_face(face, probabilities=source.probabilities, label=source.label, server=source.server,
                               latency_ms=(time.monotonic() - face.frame.read_t) * 1000)

    def _record_event(self, event: dict) -> None:
        if self.writer is not None:
            self.writer.record(event)
        if self._on_event is not None:
            self._on_event(event)

    # ---- readers ---------------------------------------------------------------------------
    def _read_camera(self, item: SourceSpec | FrameSource) -> None:
        camera = item.camera
        source = None
        try:
            source = item if isinstance(item, FrameSource) else open_source(
                item, fps=self.config.fps, stall_timeout_s=self.config.stall_timeout_s)
            if isinstance(item, FrameSource):
                source.open()
            drop = self.config.live_drop if source.live else None
            frames = source.frames()
            expected = 0
            while not self._stopping.is_set():
                t0 = time.perf_counter()
                event = next(frames, None)
                if event is None:
                    break
                if event.index != expected or event.camera != camera:  # results are released in index order
                    raise ValueError(f"source sent frame {event.camera}#{event.index}, expected {camera}#{expected}")
                expected += 1
                # Video sources time their own reads, leaving out the fps pacing sleep.
                self.stats.add_timing("read", getattr(source, "read_ms", (time.perf_counter() - t0) * 1000))
                if self._stopping.is_set():  # read after stop: never accepted, so not counted
                    break
                self._accept(event, drop)
            status = "stopped" if self._stopping.is_set() else source.end_reason
        except SourceOpenError as exc:
            status = f"failed: {exc}"
        except Exception as exc:  # a broken source must not stop the other cameras
            log.exception("camera %s failed", camera)
            status = f"failed: {type(exc).__name__}: {exc}"
        finally:
            if source is not None:
                source.close()
        self.stats.set_status(camera, status)
        event = "source_error" if status.startswith("failed") else "stalled" if status.startswith(
            "stalled") else "ended"

        def closed() -> None:  # after the camera's last frame, so it really is the end
            if self._tracking is not None:
                self._tracking.finish(camera)
                reason = "stopped" if status == "stopped" else "camera " + event.replace("source_error", "failed")
                for end in self._events[camera].end_all(reason, time.time()):
                    self._record_event(end)
            if self.writer is not None:
                self.writer.event(camera, event, status)

        self._in_order.close(camera, self.stats.cameras[camera].frames_read, closed)

    def _accept(self, event: Frame | BadFrame, drop: str | None) -> None:
        camera = event.camera
        self._last_frame[camera] = time.monotonic()
        if self.stats.cameras[camera].status.startswith("stalled"):
            self.stats.set_status(camera, "running")
        job = _FrameJob(FrameOutcome(camera, event.index, event.timestamp, "pending",
                                     getattr(event, "position_ms", None), site=self._sites[camera] or None),
                        time.monotonic())
        self.stats.add(camera, frames_read=1)
        if isinstance(event, BadFrame):
            self._finish_frame(job, "bad_frame", event.message)
            return
        queued, dropped = self._frames.put(camera, (event, job), drop)
        for _, dropped_job in dropped:
            self.stats.add(camera, frames_dropped=1)
            self._finish_frame(dropped_job, "dropped", f"live queue full (policy: drop {drop})")
        if not queued and not dropped:  # closed while waiting for room
            self._finish_frame(job, "unfinished", "stopped before processing")

    # ---- detection -------------------------------------------------------------------------
    def _take_frame(self):
        """The next ``(frame, job)`` for a detect worker, or None once the readers are done and no frame is
        left (or the run aborted). Frames taken after an abort end as "unfinished" records, never lost."""
        while True:
            item = self._frames.get(timeout=0.05)
            if item is None:
                if (self._readers_done.is_set() and self._frames.empty()) or self._aborted.is_set():
                    return None
                continue
            frame, job = item
            if self._aborted.is_set():
                self._finish_frame(job, "unfinished", "stopped before processing")
                continue
            return frame, job

    def _detect_loop(self, wire_size: int) -> None:
        while (taken := self._take_frame()) is not None:
            frame, job = taken
            t0 = time.perf_counter()
            try:
                boxes = self.detector.detect(frame.image)
                crops = [crop_face(frame.image, box, wire_size, self.config.margin) for box in boxes]
            except Exception as exc:  # e.g. an odd frame the detector chokes on: report, go on
                self._finish_frame(job, "bad_frame", f"face detection failed: {type(exc).__name__}: {exc}")
                continue
            self.stats.add_timing("detect", (time.perf_counter() - t0) * 1000)
            frame.image = None  # free the full frame early: only crops travel on
            if self._tracking is not None:  # in frame order per camera, then _after_tracking
                self._tracking.frame(frame.camera, frame.index, _clock(job.outcome), boxes, (job, crops))
            else:
                self._start_faces(job, boxes, crops)

    def _after_tracking(self, tracked: TrackedFrame) -> None:
        job, crops = tracked.payload
        job.outcome.ended_tracks = tracked.ended
        self._start_faces(job, [f.box for f in tracked.faces], crops, tracked.faces)

    def _start_faces(self, job: _FrameJob, boxes, crops, tracked: list[TrackedFace] | None = None) -> None:
        """Queue a frame's fresh faces for the server; carried faces wait for their track's classification."""
        if not boxes:
            self._finish_frame(job, "no_face", tracked=tracked is not None)
            return
        job.outcome.status = "faces"
        job.outcome.faces = [FaceOutcome(box) for box in boxes]
        if tracked is not None:
            for out, face in zip(job.outcome.faces, tracked):
                out.track, out.fresh = face.track, face.fresh
                out.classified_frame = face.source.frame
        job.remaining = len(boxes)
        self.stats.add(job.outcome.camera, faces=len(boxes))
        for slot, crop in enumerate(crops):
            track = tracked[slot] if tracked is not None else None
            if track is not None and not track.fresh:
                face = _FaceJob(job, slot, None)
                track.source.then(lambda source, face=face: self._carry(face, source))
                continue
            face = _FaceJob(job, slot, crop, track.source if track is not None else None)
            while True:
                if self._aborted.is_set():
                    self._resolve_face(face, unfinished=True)
                    break
                try:
                    self._faces.put(face, timeout=0.1)
                    break
                except queue.Full:
                    continue

    # ---- sending ---------------------------------------------------------------------------
    def _next_batch(self) -> _Batch | None:
        """Up to batch_size faces from any cameras; waits at most max_wait_ms after the first one."""
        try:
            faces = [self._faces.get(timeout=0.02)]
        except queue.Empty:
            return None
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(faces) < self._batch_size:
            try:
                faces.append(self._faces.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return _Batch(faces)

    def _run_sender(self, done: threading.Event) -> None:
        try:
            self._send_loop()
        finally:
            done.set()

    def _due_retry(self) -> _Batch | None:
        with self._lock:
            if self._retries and self._retries[0][0] <= time.monotonic():
                return heapq.heappop(self._retries)[2]
        return None

    def _in_flight(self) -> int:
        with self._lock:
            return len(self._live_batches)

    def _send_loop(self) -> None:
        while not self._aborted.is_set():
            batch = self._due_retry()
            if batch is None:
                if not self._window.acquire(timeout=0.02):
                    continue
                batch = self._next_batch()
                if batch is None:
                    self._window.release()
                    if self._detect_done.is_set() and self._faces.empty() and self._in_flight() == 0:
                        return
                    continue
                with self._lock:
                    self._live_batches.add(batch.seq)
                    self._batches[batch.seq] = batch
            self._send(batch)

    def _start_attempt(self, batch: _Batch):
        """The server to send ``batch`` to now, counting the attempt; None when the batch was failed (past
        ``retry_timeout_s`` since its first send) or waits for a benched server to come back."""
        now = time.monotonic()
        if batch.first_sent is not None and now - batch.first_sent > self.config.retry_timeout_s:
            self._fail_batch(batch, f"gave up after {now - batch.first_sent:.0f}s and {batch.attempts} attempts; "
                                    f"last error: {batch.last_error}")
            return None
        server = self.pool.pick(exclude=batch.expired_on)
        if server is None:  # every server it may go to is benched: wait for the first to come back
            self._retry_later(batch, self.pool.next_ready_in(exclude=batch.expired_on))
            return None
        if batch.first_sent is None:
            batch.first_sent = now
        batch.attempts += 1
        return server

    def _guarded(self, batch: _Batch, handle):
        """``handle`` as a gRPC completion callback: an exception in it fails ``batch`` (logged) instead of
        vanishing inside a gRPC thread, so the batch's frames still end as records."""
        def done(*args) -> None:
            try:
                handle(*args)
            except Exception:
                log.exception("failed to handle an answer")
                self._fail_batch(batch, "internal error while handling the answer (see log)")

        return done

    def _send(self, batch: _Batch) -> None:
        first = batch.first_sent is None
        server = self._start_attempt(batch)
        if server is None:
            return
        if first:
            for face in batch.faces:
                self.stats.add(face.frame.outcome.camera, faces_sent=1)
        faces = np.stack([f.crop for f in batch.faces])
        sites = [self._sites[f.frame.outcome.camera] for f in batch.faces]
        started = time.perf_counter()
        done = self._guarded(batch, lambda output, error: self._on_answer(batch, server, output, error, started))
        try:
            server.client.submit(faces, done, sites=sites if any(sites) else None)
        except FerInputError as exc:       # a crop the model cannot take: not worth retrying
            self._fail_batch(batch, str(exc))
        except FerServerError as exc:      # e.g. model info unreadable right after a reconnect
            done(None, exc)

    def _on_answer(self, batch: _Batch, server, output, error, started: float) -> None:
        if error is None and len(output.probabilities) != len(batch.faces):
            self._fail_batch(batch, f"server answered {len(output.probabilities)} results for {len(batch.faces)} faces")
            return
        if error is None:
            self.pool.succeeded(server)
            request_ms = (time.perf_counter() - started) * 1000
            self.stats.add_timing("request", request_ms)
            if self.metrics is not None:
                self.metrics.observe_request(server.url, request_ms)
            now = time.monotonic()
            for face, probs, label in zip(batch.faces, output.probabilities, output.labels):
                if self.uncertain is not None and face.crop is not None:
                    frame = face.frame.outcome
                    self.uncertain.offer(face.crop, probs, camera=frame.camera, frame=frame.index,
                                         track=frame.faces[face.slot].track, timestamp=frame.timestamp,
                                         t=_clock(frame))
                self._resolve_face(face, probabilities=probs, label=label, server=server.url,
                                   latency_ms=(now - face.frame.read_t) * 1000)
            self._release(batch)
            return
        batch.last_error = str(error)
        log.info("request of %d faces to %s failed (%s): %s", len(batch.faces), server.url, error.status, error)
        if is_retryable(error):
            self.pool.failed(server, error)
            expired = error.status == "StatusCode.DEADLINE_EXCEEDED"
            if expired:  # the server may still be computing this batch: never send it there again
                batch.expired_on.add(server.url)
            if not self._aborted.is_set():
                if expired and not self.pool.has_other(batch.expired_on):
                    self._fail_batch(batch, f"no answer within the request timeout "
                                            f"({self.config.request_timeout_s:g} s) from {server.url}, which may "
                                            f"still be computing it; not sent again (raise --request-timeout)")
                    return
                self.stats.count_retry()
                self._retry_later(batch, 0.0)  # pick() skips benched and expired servers: failover is immediate
                return
        self._fail_batch(batch, str(error))

    def _retry_later(self, batch: _Batch, delay_s: float) -> None:
        with self._lock:
            heapq.heappush(self._retries, (time.monotonic() + delay_s, batch.seq, batch))

    def _fail_batch(self, batch: _Batch, message: str) -> None:
        for face in batch.faces:
            self._resolve_face(face, error=message)
        self._release(batch)

    def _release(self, batch: _Batch) -> None:
        with self._lock:
            if batch.done:
                return
            batch.done = True
            self._live_batches.discard(batch.seq)
            self._batches.pop(batch.seq, None)
        self._window.release()

    # ---- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; what was already read is still finished (up to drain_timeout_s)."""
        self._stopping.set()

    def abort(self) -> None:
        """Give up now: everything queued or in flight is reported as unfinished."""
        self._stopping.set()
        self._aborted.set()
        self._sweep()

    def _sweep(self) -> None:
        """Resolve as unfinished whatever is still queued or in flight (after abort, and once more
        after the threads are gone, for anything a thread was holding while abort() ran)."""
        for _, job in self._frames.close():
            self._finish_frame(job, "unfinished", "stopped before processing")
        while True:
            try:
                self._resolve_face(self._faces.get_nowait(), unfinished=True)
            except queue.Empty:
                break
        with self._lock:
            batches = list(self._batches.values())
            self._retries.clear()
        for batch in batches:  # answers that still arrive find these faces resolved and are ignored
            for face in batch.faces:
                self._resolve_face(face, unfinished=True)
            self._release(batch)

    def _watch_stalls(self) -> None:
        now = time.monotonic()
        for camera, stats in self.stats.cameras.items():
            last = self._last_frame.get(camera)
            # A full queue means back-pressure (a slow server), not a silent camera.
            if last is None or stats.status != "running" or self._frames.full(camera):
                continue
            if now - last > self.config.stall_timeout_s:
                self.stats.set_status(camera, f"stalled ({now - last:.0f}s without a frame)")
                if self.writer is not None:
                    self.writer.event(camera, "stalled", f"no frame for {now - last:.0f}s")

    def _check_sites(self, sites: list[str]) -> None:
        """Every server that answers must know every site (FerClient.check_sites): FerInputError naming the
        unknown ones, FerServerError for a server without site models. A server down for now is skipped."""
        for server in self.pool.servers:
            try:
                server.client.check_sites(sites)
            except FerServerError as exc:
                if not is_retryable(exc):
                    raise
                log.warning("server %s does not answer yet; its sites are not checked: %s", server.url, exc)

    # ---- run -------------------------------------------------------------------------------
    def run(self) -> StreamSummary:
        """Stream every source to the servers until all sources end or a stop is asked for; blocks.

        Frames are read per camera, faces found and cropped to the served wire size (UINT8
        [S, S, 3]), batched across cameras (at most ``batch_size`` faces, waiting at most
        ``max_wait_ms`` milliseconds) and sent with at most ``in_flight`` requests outstanding. Each
        result is written as one JSON Lines record; every frame read ends as a result, a drop, a bad
        frame, a no-face record, an error record, or an ``unfinished`` record after a stop. Returns the
        StreamSummary (per-camera counts, faces/s, latency percentiles in milliseconds). Raises
        FerServerError when no server answers within ``connect_wait_s`` at the start and, before any
        frame is read, FerInputError naming a site the server does not know, or FerServerError for a
        server without site models.
        """
        info = self.info = self.pool.info(wait_s=self.config.connect_wait_s)
        if self._tracking is not None:
            make = smoother_factory(self.config.smooth)
            self._events = {c: TrackEvents(c, info.classes, make) for c in self.stats.cameras}
        sites = sorted({s for s in self._sites.values() if s})
        if sites:
            self._check_sites(sites)
        self._batch_size = min(self.config.batch_size, info.max_batch_size or self.config.batch_size)
        if self._out is not None or self._publish is not None:
            self.writer = JsonLinesWriter(self._out, info.classes, publish=self._publish)
        metrics_server = None
        if self._metrics_listen is not None:
            from fer_triton.client.stream_metrics import MetricsServer

            metrics_server = MetricsServer(self.metrics.registry, *self._metrics_listen)
            self.metrics_url = metrics_server.url
            log.info("metrics at %s", metrics_server.url)
        progress = (ProgressDisplay(self.stats, self._progress_out, table_every_s=self._table_every_s)
                    if self._progress_out is not None else None)
        readers = [threading.Thread(target=self._read_camera, args=(s,), name=f"read-{s.camera}", daemon=True)
                   for s in self.sources]
        workers = [threading.Thread(target=self._detect_loop, args=(info.wire_size,), name=f"detect-{i}", daemon=True)
                   for i in range(self.config.detect_workers)]
        sender_done = threading.Event()
        sender = threading.Thread(target=self._run_sender, args=(sender_done,), name="send", daemon=True)
        for thread in [*readers, *workers, sender]:
            thread.start()
        interrupted, stopped_at = False, None
        # Not `while sender.is_alive(): sender.join(0.1)`: a KeyboardInterrupt landing inside Thread.join
        # (Python 3.11, 3.12) marks the still-running thread as finished, and the loop would end at once.
        while not sender_done.is_set():
            try:
                if all(not t.is_alive() for t in readers):
                    self._readers_done.set()
                if self._readers_done.is_set() and all(not t.is_alive() for t in workers):
                    self._detect_done.set()
                if self._stopping.is_set():
                    stopped_at = stopped_at or time.monotonic()
                    if time.monotonic() - stopped_at > 2.0:
                        self._readers_done.set()  # a reader stuck in a blocking read must not hold up the end
                    if time.monotonic() - stopped_at > self.config.drain_timeout_s and not self._aborted.is_set():
                        self.abort()
                self._watch_stalls()
                if progress:
                    progress.tick(self._in_flight())
                sender_done.wait(0.1)
            except KeyboardInterrupt:  # library use without StopSignals: first Ctrl-C stops, second gives up
                interrupted = True
                if self._stopping.is_set():
                    self.abort()
                else:
                    self.stop()
        try:
            for thread in workers:
                thread.join(5)
            for thread in readers:
                thread.join(1)
        except KeyboardInterrupt:  # a late Ctrl-C still ends with every frame accounted for
            interrupted = True
            self.abort()
        self._sweep()
        if metrics_server is not None:
            metrics_server.close()
        if progress:
            progress.tick(0, force=True)
            progress.finish()
        if self._in_order.waiting():
            log.error("%d frames never completed (a bug): they are missing from the output", self._in_order.waiting())
        servers = [{"url": s.url, "answered": s.answered, "errors": s.errors, "reconnects": s.reconnects,
                    "last_error": s.last_error} for s in self.pool.servers]
        self.pool.close()
        return StreamSummary(self.stats, servers, interrupted)
