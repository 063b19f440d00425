"""Face tracks per camera: ByteTrack (as packaged by ``supervision``) over the detector's boxes, and the
policy that decides which faces of a track are sent to the server and which carry its last result.

    FaceTracker        one camera's ByteTrack: boxes of a frame -> one track id per box, tracks that ended
    ReclassifyPolicy   when a track is classified again: every N frames, every N seconds, when its box moved
    Classification     one fresh classification of a track (a face sent to the server), resolved later;
                       faces that carry it over are resolved with it
    FrameSequencer     releases one camera's frames in index order (detection runs on several threads)
    Tracking           all cameras: sequencer -> tracker -> policy, one call per frame or skipped frame

Track ids are this module's own: per camera 1, 2, 3 ... in the order tracks start, never reused in a
run. Every box of a frame gets a track id: a face ByteTrack has not confirmed yet (its first frame)
gets the id its track keeps once confirmed; the rare box ByteTrack leaves unmatched (an exact
duplicate of another box) gets a one-frame track of its own. So every face record carries a track id.

A track ends when ByteTrack drops it (not seen for ``lost_after_frames`` processed frames; a face
seen again before that keeps its id), when its camera ends (:meth:`Tracking.finish`), or when a
one-frame candidate is not seen again on the next frame.

Frames a camera dropped (live queue full) and bad frames are not shown to the tracker: it counts
the frames it processed, so ``lost_after_frames`` is in processed frames.

supervision's ``ByteTrack`` is deprecated there since 0.28 and removed in 0.31 (its successor, the
``trackers`` package, needs numpy 2, which this project does not take yet), hence the pin
``supervision>=0.30,<0.31``. Only this module touches supervision; :class:`FaceTracker` is the one
class to change when moving to ``trackers``' ``ByteTrackTracker``.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from fer_triton.client.faces import Box


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (frame pixels, x/y/w/h); 0.0 when either is empty."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


# ---- the tracker ------------------------------------------------------------------------------

@dataclass
class TrackUpdate:
    """What one frame did to a camera's tracks.

    ``track_ids[i]``: the track of the frame's i-th box (same order as the boxes given);
    ``started``: ids of tracks whose first frame this is; ``ended``: ids of tracks that ended with
    this frame (not seen for too long; their last frame was an earlier one).
    """

    track_ids: list[int]
    started: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)


class FaceTracker:
    """ByteTrack over one camera's face boxes; call :meth:`update` once per processed frame, in order.

    ``lost_after_frames``: a track not matched for more than this many processed frames ends (ByteTrack's
    lost-track buffer); ``match_iou``: the smallest IoU between a track's predicted box and a box for
    them to match (ByteTrack's matching threshold is ``1 - match_iou`` on its IoU cost);
    ``activation_score``: detections scoring below it do not start tracks (the detectors here give no
    scores, so every box scores 1.0 unless ``scores`` are passed).
    Raises ImportError (naming the 'stream' extra) when supervision is not installed.
    """

    def __init__(self, lost_after_frames: int = 30, match_iou: float = 0.2, activation_score: float = 0.25):
        try:
            from supervision.tracker.byte_tracker.core import ByteTrack
        except ImportError as exc:  # pragma: no cover - the stream extra installs it
            raise ImportError(f"face tracking needs supervision>=0.30,<0.31 ({exc}): "
                              "pip install 'fer-triton[stream]'") from exc
        if lost_after_frames < 1:
            raise ValueError(f"lost_after_frames must be at least 1, not {lost_after_frames}")
        if not 0.0 < match_iou < 1.0:
            raise ValueError(f"match_iou must be between 0 and 1, not {match_iou}")
        with warnings.catch_warnings():  # deprecated there (see the module docstring), not broken
            warnings.simplefilter("ignore", FutureWarning)
            # frame_rate 30 makes ByteTrack's max_time_lost exactly lost_track_buffer frames.
            self._tracker = ByteTrack(track_activation_threshold=activation_score, lost_track_buffer=lost_after_frames,
                                      minimum_matching_threshold=1.0 - match_iou, frame_rate=30,
                                      minimum_consecutive_frames=1)
        self._ids: dict[int, int] = {}      # ByteTrack's internal track id -> ours
        self._next_id = 1
        self.frames = 0                      # frames processed

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    @property
    def live(self) -> int:
        """Tracks that have not ended (seen on the last frame, or lost for less than lost_after_frames)."""
        return len(self._ids)

    def update(self, boxes: list[Box], scores: list[float] | None = None) -> TrackUpdate:
        """Match one frame's boxes (frame pixels) to tracks; returns their ids, new and ended tracks.

        ``scores``: detector confidences in 0..1, one per box (default 1.0 each).
        """
        from scipy.optimize import linear_sum_assignment

        self.frames += 1
        scores = [1.0] * len(boxes) if scores is None else [float(s) for s in scores]
        if len(scores) != len(boxes):
            raise ValueError(f"{len(scores)} scores for {len(boxes)} boxes")
        tensors = np.array([[b.x, b.y, b.x + b.w, b.y + b.h, s] for b, s in zip(boxes, scores)],
                           dtype=np.float32).reshape(-1, 5)
        bt = self._tracker
        bt.update_with_tensors(tensors)
        # Tracks that took a box this frame: matched, re-found, or started (confirmed or not yet).
        touched = [t for t in bt.tracked_tracks if t.frame_id == bt.frame_id]
        track_ids: list[int | None] = [None] * len(boxes)
        started: list[int] = []
        if boxes and touched:
            iou = np.array([[box_iou(b, _as_box(t.tlbr)) for t in touched] for b in boxes])
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] > 0:
                    internal = touched[c].internal_track_id
                    if internal not in self._ids:
                        self._ids[internal] = self._new_id()
                        started.append(self._ids[internal])
                    track_ids[r] = self._ids[internal]
        singles = []
        for r, tid in enumerate(track_ids):
            if tid is None:  # a box ByteTrack left out (duplicate, invalid): a one-frame track of its own
                track_ids[r] = self._new_id()
                singles.append(track_ids[r])
        # ByteTrack marks a track Removed a frame before it leaves its lost list: go by the state.
        alive = {t.internal_track_id for t in [*bt.tracked_tracks, *bt.lost_tracks] if t.state.name != "Removed"}
        gone = [internal for internal in self._ids if internal not in alive]
        ended = [self._ids.pop(internal) for internal in gone]
        return TrackUpdate(track_ids, sorted(started + singles), sorted(ended + singles))

    def finish(self) -> list[int]:
        """End every live track (the camera ended); returns their ids."""
        ended = sorted(self._ids.values())
        self._ids.clear()
        self._tracker.reset()
        return ended


def _as_box(tlbr) -> Box:
    x0, y0, x1, y1 = (float(v) for v in tlbr)
    return Box(int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0))))


# ---- when to classify again -------------------------------------------------------------------

_EVERY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|f|frames?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ReclassifyPolicy:
    """When a track's face is sent to the server again; otherwise it carries the track's last result.

    ``every``: 0 classifies every face (no carrying); N > 0 classifies again N ``unit`` after the
    track's last classification (``unit`` "frames": frames of the camera, by index, dropped ones
    included; "s": seconds of the frames' own clock: video position for files, wall clock for live
    cameras and images). ``min_iou``: also classify again when the box's IoU with the box at the last
    classification falls below this (the face moved or turned; 0 disables). A track is always
    classified on its first frame and after its last classification failed or was not finished.
    """

    every: float = 0.0
    unit: str = "frames"
    min_iou: float = 0.5

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"reclassify every must be >= 0, not {self.every}")
        if self.unit not in ("frames", "s"):
            raise ValueError(f"reclassify unit must be 'frames' or 's', not {self.unit!r}")
        if not 0.0 <= self.min_iou <= 1.0:
            raise ValueError(f"min_iou must be between 0 and 1, not {self.min_iou}")

    @classmethod
    def parse(cls, text: str | float, min_iou: float = 0.5) -> "ReclassifyPolicy":
        """``--reclassify-every``: "0" (every frame), "10" or "10f" (frames), "2s" or "0.5s" (seconds).

        Raises ValueError saying what is accepted.
        """
        match = _EVERY.match(str(text))
        if not match:
            raise ValueError(f"--reclassify-every takes frames (10, 10f) or seconds (2s, 0.5s), not {text!r}")
        value, unit = float(match.group(1)), (match.group(2) or "f").lower()
        unit = "s" if unit.startswith("s") else "frames"
        if unit == "frames" and value != int(value):
            raise ValueError(f"--reclassify-every {text!r}: frames must be a whole number (or add 's' for seconds)")
        return cls(value, unit, min_iou)

    def reason(self, last: "Classification | None", frame: int, t: float, box: Box) -> str | None:
        """Why this face must be classified now ("new", "every", "due", "moved", "retry"), or None to carry."""
        if last is None:
            return "new"
        if self.every == 0:
            return "every"
        if last.done and (last.error is not None or last.unfinished):
            return "retry"
        waited = frame - last.frame if self.unit == "frames" else t - last.time
        if waited >= self.every:
            return "due"
        if self.min_iou > 0 and box_iou(box, last.box) < self.min_iou:
            return "moved"
        return None


class Classification:
    """One fresh classification of a track: the face at ``frame`` sent to the server.

    Resolved once with :meth:`resolve` (probabilities FLOAT32 [7] and label, or an error, or
    unfinished); callbacks registered with :meth:`then` run once it is resolved (at once if it
    already is), on the thread that resolves it.
    """

    def __init__(self, camera: str, track: int, frame: int, time: float, box: Box):
        self.camera, self.track, self.frame, self.time, self.box = camera, track, frame, time, box
        self.probabilities: np.ndarray | None = None
        self.label: str | None = None
        self.error: str | None = None
        self.server: str | None = None
        self.unfinished = False
        self.done = False
        self._waiters: list[Callable[["Classification"], None]] = []
        self._lock = threading.Lock()

    def resolve(self, *, probabilities=None, label: str | None = None, error: str | None = None,
                unfinished: bool = False, server: str | None = None) -> None:
        """Record the outcome (only the first call counts) and run the waiting callbacks."""
        with self._lock:
            if self.done:
                return
            self.probabilities, self.label, self.error, self.unfinished = probabilities, label, error, unfinished
            self.server = server
            self.done = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(self)

    def then(self, callback: Callable[["Classification"], None]) -> None:
        with self._lock:
            if not self.done:
                self._waiters.append(callback)
                return
        callback(self)


@dataclass
class TrackedFace:
    """One box of a frame after tracking: its track, and whether to classify it (``fresh``) or carry
    ``source`` (the track's last classification; when fresh, ``source`` is the new one to resolve)."""

    box: Box
    track: int
    fresh: bool
    reason: str | None            # why it is classified ("new", "every", "due", "moved", "retry"); None: carried
    source: Classification


# ---- frame order ------------------------------------------------------------------------------

class FrameSequencer:
    """Release one camera's frames to ``handle(index, item)`` in index order, whatever order they come in.

    Every index must come exactly once, as :meth:`put` (a frame) or :meth:`skip` (a frame that will not
    come: dropped, bad). ``handle`` runs on the thread that completed the run of frames, outside the
    lock, one frame at a time (never two at once for one camera).
    """

    def __init__(self, handle: Callable[[int, Any], None]):
        self._handle = handle
        self._next = 0
        self._waiting: dict[int, tuple[bool, Any]] = {}
        self._lock = threading.Lock()
        self._draining = False

    def put(self, index: int, item: Any) -> None:
        self._add(index, True, item)

    def skip(self, index: int) -> None:
        self._add(index, False, None)

    def _add(self, index: int, real: bool, item: Any) -> None:
        with self._lock:
            if index < self._next or index in self._waiting:
                raise ValueError(f"frame {index} given twice (next expected {self._next})")
            self._waiting[index] = (real, item)
            if self._draining:  # the draining thread will get to it
                return
            self._draining = True
        while True:
            with self._lock:
                if self._next not in self._waiting:
                    self._draining = False
                    return
                index = self._next
                real, item = self._waiting.pop(index)
                self._next += 1
            if real:
                try:
                    self._handle(index, item)
                except BaseException:
                    with self._lock:
                        self._draining = False
                    raise

    @property
    def pending(self) -> int:
        """Frames that arrived but wait for an earlier one."""
        with self._lock:
            return len(self._waiting)


# ---- all cameras ------------------------------------------------------------------------------

@dataclass
class TrackedFrame:
    """A frame after tracking, released in index order per camera."""

    camera: str
    index: int
    time: float
    faces: list[TrackedFace]
    ended: list[int]              # tracks that ended with this frame (their last frame was earlier)
    payload: Any = None           # what the caller passed along (the pipeline's frame job and crops)


class Tracking:
    """Tracks of every camera, fed by any thread, released per camera in frame order to ``on_frame``.

    ``frame(camera, index, time, boxes, payload)`` for each frame whose faces were looked for (an empty
    ``boxes`` for a frame without face); ``skip(camera, index)`` for each frame that will not be
    (dropped, bad, unreadable). ``time``: seconds of the frame's clock (see ReclassifyPolicy).
    ``on_frame(TrackedFrame)`` then runs in index order per camera: fresh faces must be sent and their
    ``source`` resolved with the result; carried faces wait on ``source.then(...)``.
    """

    def __init__(self, cameras: list[str], on_frame: Callable[[TrackedFrame], None],
                 policy: ReclassifyPolicy | None = None, *, lost_after_frames: int = 30, match_iou: float = 0.2):
        self.policy = policy or ReclassifyPolicy()
        self._on_frame = on_frame
        self._trackers = {c: FaceTracker(lost_after_frames, match_iou) for c in cameras}
        self._last: dict[str, dict[int, Classification]] = {c: {} for c in cameras}
        self._sequencers = {c: FrameSequencer(lambda i, item, c=c: self._process(c, i, item)) for c in cameras}
        self._lock = threading.Lock()
        self.classified = {c: 0 for c in cameras}   # fresh faces per camera
        self.carried = {c: 0 for c in cameras}      # carried faces per camera

    def frame(self, camera: str, index: int, time: float, boxes: list[Box], payload: Any = None) -> None:
        self._sequencers[camera].put(index, (time, list(boxes), payload))

    def skip(self, camera: str, index: int) -> None:
        self._sequencers[camera].skip(index)

    def live_tracks(self, camera: str) -> int:
        """Tracks of ``camera`` that have not ended."""
        with self._lock:
            return self._trackers[camera].live

    def _process(self, camera: str, index: int, item) -> None:
        time, boxes, payload = item
        with self._lock:
            update = self._trackers[camera].update(boxes)
            last = self._last[camera]
            faces = []
            for box, track in zip(boxes, update.track_ids):
                reason = self.policy.reason(last.get(track), index, time, box)
                if reason is not None:
                    last[track] = Classification(camera, track, index, time, box)
                    self.classified[camera] += 1
                else:
                    self.carried[camera] += 1
                faces.append(TrackedFace(box, track, reason is not None, reason, last[track]))
            for track in update.ended:
                last.pop(track, None)
        self._on_frame(TrackedFrame(camera, index, time, faces, update.ended, payload))

    def finish(self, camera: str) -> list[int]:
        """The camera ended: end its live tracks and return their ids (call after its last frame's release)."""
        with self._lock:
            self._last[camera].clear()
            return self._trackers[camera].finish()
