"""`fer-triton stream --detect server`: frames go to the served ``<model>_frames`` model instead of crops.

    readers (one thread per camera)  ->  per-camera frame queues (as in client/pipeline.py)
    encode workers: JPEG-encode each frame (OpenCV imencode, ``jpeg_quality``)  ->  frame queue (bounded)
    sender: batches frames across cameras, keeps up to ``max_in_flight`` requests on the wire, retries
            and fails over exactly as for crops
    answer: per frame, its faces (box, detector score, probabilities) -> tracker (when on) -> in order out

The server decodes, detects, crops and classifies (client/frames.py describes the answer). Everything
else is :class:`~fer_triton.client.pipeline.StreamPipeline`'s: back-pressure, in-order output, stop and
abort, retries, the accounting. Each frame read still ends exactly once: faces, no face, bad frame
(the server's per-frame error: undecodable, empty, above its pixel limit; or the request failing for
good), dropped, or unfinished.

With tracking (``reclassify`` set) every face is classified by the server anyway, so every face is
fresh (the reclassify interval saves nothing here and is set to 0); tracks and smoothing work as with
client-side detection, with the detector's scores in the records. Sites and ``--save-uncertain``
need client-side detection (the frames model serves the base head and returns no crops by default).
"""

from __future__ import annotations

import logging
import queue
import re
import time
from collections import deque
from dataclasses import dataclass

from fer_triton.client.faces import WholeFrame
from fer_triton.client.frames import FRAMES_SUFFIX, TIMING_STEPS, FrameReport, FramesClient, FramesResult, encode_jpeg
from fer_triton.client.grpc_client import FerInputError, FerServerError, _server_error
from fer_triton.client.pipeline import StreamPipeline, StreamSummary, _Batch, _clock, _FaceJob, _FrameJob
from fer_triton.client.results import FaceOutcome
from fer_triton.client.servers import is_retryable
from fer_triton.client.tracking import ReclassifyPolicy, TrackedFrame

log = logging.getLogger(__name__)

_FRAME_PREFIX = re.compile(r"^frame \d+: ")


@dataclass
class _FrameSend:
    """A frame on its way to the frames model (it takes a face's place in the sender's queue and batches)."""

    frame: _FrameJob
    jpeg: bytes
    resolved: bool = False


class ServerDetectPipeline(StreamPipeline):
    """A StreamPipeline whose faces are found on the server: same arguments, ``config.detect == "server"``.

    ``frames_model``: the served frames model (default ``<model>_frames``). Raises ValueError for a
    camera mapped to a site or an ``uncertain`` collector (both need client-side crops).
    """

    def __init__(self, sources, urls, model: str = "cafe", *, frames_model: str | None = None, **kwargs):
        kwargs.setdefault("detector", WholeFrame())  # never used: no client-side detector is built
        super().__init__(sources, urls, model, **kwargs)
        self.frames_model = frames_model or model + FRAMES_SUFFIX
        sited = sorted(c for c, s in self._sites.items() if s)
        if sited:
            raise ValueError(f"cameras {sited} are mapped to sites: site heads need --detect client "
                             "(the frames model serves the base head)")
        if self.uncertain is not None:
            raise ValueError("--save-uncertain needs --detect client (the frames model returns no crops)")
        if getattr(self.config, "shared_memory", None):
            raise ValueError("--shared-memory carries face crops: with --detect server the JPEG frames go in the "
                             "gRPC message (drop --shared-memory or use --detect client)")
        if self._tracking is not None:
            if self.config.reclassify not in ("0", "0f"):
                log.info("--detect server: the server classifies every face, so every tracked face is fresh "
                         "(reclassify %s does not apply)", self.config.reclassify)
            self._tracking.policy = ReclassifyPolicy(0.0, "frames", self.config.reclassify_min_iou)
        # Where the time goes: the client encodes instead of detecting; the server says what it spent.
        self.stats.timings.pop("detect", None)
        for name in ("encode", *(f"server {step}" for step in TIMING_STEPS)):
            self.stats.timings[name] = deque(maxlen=4096)

    def run(self) -> StreamSummary:
        """As :meth:`StreamPipeline.run`; first checks that every server that answers serves the frames
        model (FerServerError naming it and how to get it otherwise)."""
        from tritonclient.utils import InferenceServerException

        self.pool.info(wait_s=self.config.connect_wait_s)
        for server in self.pool.servers:
            client = server.client
            try:
                client.triton.get_model_config(self.frames_model, headers=client.headers,
                                               client_timeout=client.timeout_s)
            except InferenceServerException as exc:
                error = _server_error(exc, f"{server.url} does not serve the frames model {self.frames_model!r} "
                                           "(a repository exported before server-side detection has none: run "
                                           "`fer-triton export` again, or use --detect client)")
                if not is_retryable(error):
                    raise error from exc
                log.warning("server %s does not answer yet; its frames model is not checked: %s", server.url, exc)
        return super().run()

    # ---- frames -> JPEG ------------------------------------------------------------------------
    def _detect_loop(self, wire_size: int) -> None:
        while (taken := self._take_frame()) is not None:
            frame, job = taken
            t0 = time.perf_counter()
            try:
                jpeg = encode_jpeg(frame.image, self.config.jpeg_quality)
            except Exception as exc:  # an odd frame OpenCV cannot encode: report, go on
                self._finish_frame(job, "bad_frame", f"JPEG encoding failed: {type(exc).__name__}: {exc}")
                continue
            self.stats.add_timing("encode", (time.perf_counter() - t0) * 1000)
            frame.image = None
            send = _FrameSend(job, jpeg)
            while True:
                if self._aborted.is_set():
                    self._resolve_face(send, unfinished=True)
                    break
                try:
                    self._faces.put(send, timeout=0.1)
                    break
                except queue.Full:
                    continue

    # ---- resolution ----------------------------------------------------------------------------
    def _claim(self, send: _FrameSend) -> bool:
        """True for the one caller that gets to resolve ``send`` (an answer, a failure, or a sweep)."""
        with self._lock:
            if send.resolved:
                return False
            send.resolved = True
            return True

    def _resolve_face(self, face, **fields) -> None:
        if not isinstance(face, _FrameSend):
            super()._resolve_face(face, **fields)
            return
        if not self._claim(face):
            return
        if fields.get("unfinished"):
            self._finish_frame(face.frame, "unfinished", "stopped before the server answered")
        else:
            self._finish_frame(face.frame, "bad_frame", f"server-side detection failed: {fields.get('error')}")

    # ---- sending -------------------------------------------------------------------------------
    def _send(self, batch: _Batch) -> None:
        server = self._start_attempt(batch)
        if server is None:
            return
        started = time.perf_counter()

        def answer(result: FramesResult | None, error: FerServerError | None) -> None:
            if error is not None:
                self._on_answer(batch, server, None, error, started)  # retry / failover / fail as for crops
            else:
                self._on_frames(batch, server, result, started)

        done = self._guarded(batch, answer)
        try:
            FramesClient(server.client, self.frames_model).submit(done, [s.jpeg for s in batch.faces],
                                                                  with_timings=True)
        except FerInputError as exc:
            self._fail_batch(batch, str(exc))
        except FerServerError as exc:
            done(None, exc)

    def _on_frames(self, batch: _Batch, server, result: FramesResult, started: float) -> None:
        self.pool.succeeded(server)
        request_ms = (time.perf_counter() - started) * 1000
        self.stats.add_timing("request", request_ms)
        if self.metrics is not None:
            self.metrics.observe_request(server.url, request_ms)
        if result.timings_ms:
            for step, ms in result.timings_ms.items():
                self.stats.add_timing(f"server {step}", ms / max(1, len(batch.faces)))  # per frame
        for slot, send in enumerate(batch.faces):
            if not self._claim(send):  # swept after an abort: already reported
                continue
            report = result.frames[slot]
            job = send.frame
            if report.error:
                self._finish_frame(job, "bad_frame", "frames model: " + _FRAME_PREFIX.sub("", report.error))
                continue
            rows = result.faces_of(slot)
            payload = (job, rows, report, server.url)
            if self._tracking is not None:
                self._tracking.frame(job.outcome.camera, job.outcome.index, _clock(job.outcome),
                                     [r.box for r in rows], payload)
            else:
                self._start_server_faces(job, rows, report, server.url)
        self._release(batch)

    def _after_tracking(self, tracked: TrackedFrame) -> None:
        job, rows, report, url = tracked.payload
        job.outcome.ended_tracks = tracked.ended
        self._start_server_faces(job, rows, report, url, tracked.faces)

    def _start_server_faces(self, job: _FrameJob, rows, report: FrameReport, url: str, tracked=None) -> None:
        """Resolve a frame's faces with the server's results (in the frame's face order)."""
        if not rows:
            self._finish_frame(job, "no_face", tracked=tracked is not None)
            return
        outcome = job.outcome
        outcome.status, outcome.message = "faces", report.note
        outcome.faces = [FaceOutcome(row.box, score=row.score) for row in rows]
        if tracked is not None:
            for out, face in zip(outcome.faces, tracked):
                out.track, out.fresh, out.classified_frame = face.track, face.fresh, face.source.frame
        job.remaining = len(rows)
        self.stats.add(outcome.camera, faces=len(rows), faces_sent=len(rows))
        latency_ms = (time.monotonic() - job.read_t) * 1000
        for slot, row in enumerate(rows):
            source = tracked[slot].source if tracked is not None and tracked[slot].fresh else None
            self._resolve_face(_FaceJob(job, slot, None, source), probabilities=row.probabilities, label=row.label,
                               server=url, latency_ms=latency_ms)
