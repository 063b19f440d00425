"""Per-track smoothed probabilities and track events: start, expression change, end with a summary.

    Smoother          "ema:0.3" (weight of each new classification), "ema:2s" (half-life in seconds of
                      the frames' clock), "window:5" (mean of the last 5 classifications), "none"
    TrackEvents       fed one camera's faces in frame order (tracked, with raw probabilities); returns
                      each face's smoothed probabilities and label, and the events to write

Only fresh classifications move the smoothed value: a face that carries its track's last result
(see tracking.py) gets the same smoothed value as the face it carries from, so how often a track is
reclassified does not weigh one classification more than another.

Events are JSON-ready dicts (what the JSON Lines writer and the MQTT publisher send as they are):

    {"camera", "event": "track_start", "track", "frame", "timestamp", "box"}
    {"camera", "event": "expression_change", "track", "frame", "timestamp", "from", "to", "smoothed"}
    {"camera", "event": "track_end", "track", "reason", "first_frame", "last_frame", "frames",
     "duration_s", "classifications", "dominant", "mean_probabilities", "frames_by_label", "timestamp"}

``duration_s``: from the track's first to its last frame, on the frames' clock (seconds);
``frames``: frames the track was seen on; ``classifications``: its fresh classifications (results,
not errors); ``mean_probabilities``: the mean over its frames with a result of the (raw) probabilities
they carry (so each frame counts once: a time-weighted mean); ``dominant``: its class with the highest
mean probability; ``frames_by_label``: frames per smoothed label. A track whose faces all failed has
``dominant`` and ``mean_probabilities`` null.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fer_triton.client.faces import Box


class Smoother:
    """Smooths one track's classifications; ``update(p, t)`` -> smoothed FLOAT64 [C] (sums to 1)."""

    def update(self, probabilities: np.ndarray, t: float) -> np.ndarray:
        raise NotImplementedError


class NoSmoothing(Smoother):
    def update(self, probabilities: np.ndarray, t: float) -> np.ndarray:
        return np.asarray(probabilities, np.float64)


class EmaSmoother(Smoother):
    """Exponential moving average: ``s = w p + (1 - w) s``, the first classification taken as it is.

    ``alpha``: a fixed weight w of each new classification (0 < alpha <= 1); or ``half_life_s``: w from
    the time since the previous classification, ``w = 1 - 0.5 ** (dt / half_life_s)`` (so a result
    counts half after half_life_s seconds, whatever the reclassify rate). Give exactly one.
    """

    def __init__(self, alpha: float | None = None, half_life_s: float | None = None):
        if (alpha is None) == (half_life_s is None):
            raise ValueError("give exactly one of alpha and half_life_s")
        if alpha is not None and not 0 < alpha <= 1:
            raise ValueError(f"ema alpha must be in (0, 1], not {alpha}")
        if half_life_s is not None and half_life_s <= 0:
            raise ValueError(f"ema half-life must be > 0 seconds, not {half_life_s}")
        self.alpha, self.half_life_s = alpha, half_life_s
        self._value: np.ndarray | None = None
        self._t: float | None = None

    def update(self, probabilities: np.ndarray, t: float) -> np.ndarray:
        p = np.asarray(probabilities, np.float64)
        if self._value is None:
            self._value = p.copy()
        else:
            w = self.alpha if self.alpha is not None else 1.0 - 0.5 ** (max(0.0, t - self._t) / self.half_life_s)
            self._value = w * p + (1.0 - w) * self._value
        self._t = t
        return self._value.copy()


class WindowSmoother(Smoother):
    """Mean of the last ``size`` classifications."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be at least 1, not {size}")
        self._window: deque[np.ndarray] = deque(maxlen=size)

    def update(self, probabilities: np.ndarray, t: float) -> np.ndarray:
        self._window.append(np.asarray(probabilities, np.float64))
        return np.mean(self._window, axis=0)


_SPEC = re.compile(r"^(none|ema|window)(?::\s*(\d+(?:\.\d*)?|\.\d+)\s*(s)?)?$", re.IGNORECASE)


def smoother_factory(spec: str):
    """``--smooth`` value -> a function making one fresh Smoother per track.

    "none"; "ema:0.3" (alpha); "ema:2s" (half-life, seconds); "window:5" (classifications).
    Raises ValueError saying what is accepted.
    """
    match = _SPEC.match(spec.strip())
    kind = match.group(1).lower() if match else None
    value, seconds = (float(match.group(2)) if match and match.group(2) else None), bool(match and match.group(3))
    if kind == "none" and value is None:
        return NoSmoothing
    if kind == "ema" and value is not None:
        return (lambda: EmaSmoother(half_life_s=value)) if seconds else (lambda: EmaSmoother(alpha=value))
    if kind == "window" and value is not None and not seconds and value == int(value):
        return lambda: WindowSmoother(int(value))
    raise ValueError(f"--smooth takes none, ema:ALPHA (0.3), ema:HALF_LIFEs (2s) or window:N (5), not {spec!r}")


@dataclass
class _Track:
    track: int
    smoother: Smoother
    first_frame: int
    first_time: float
    last_frame: int
    last_time: float
    frames: int = 0
    classifications: int = 0
    prob_sum: np.ndarray | None = None
    prob_frames: int = 0
    smoothed: np.ndarray | None = None
    label: str | None = None            # the current smoothed label
    frames_by_label: dict[str, int] = field(default_factory=dict)


@dataclass
class SmoothedFace:
    """What TrackEvents adds to one face: smoothed probabilities FLOAT64 [C] and label (None until the
    track has a result), and the events this face caused (track start, expression change)."""

    smoothed: np.ndarray | None
    label: str | None
    events: list[dict]


class TrackEvents:
    """Smoothing and events for the tracks of one camera; feed it faces in frame order.

    ``classes``: the class names (the served model's, RAF-DB order). ``smoother``: a factory from
    :func:`smoother_factory`. ``min_change``: an expression change is reported when the smoothed
    probability of a new top class exceeds the current label's by more than this (hysteresis: small
    back-and-forth wobbles of two close classes are not reported as changes).
    """

    def __init__(self, camera: str, classes: tuple[str, ...], smoother=None, *, min_change: float = 0.05):
        if not 0 <= min_change < 1:
            raise ValueError(f"min_change must be in [0, 1), not {min_change}")
        self.camera, self.classes = camera, tuple(classes)
        self._make = smoother or (lambda: EmaSmoother(alpha=0.3))
        self.min_change = min_change
        self._tracks: dict[int, _Track] = {}

    @property
    def live(self) -> list[int]:
        return sorted(self._tracks)

    def face(self, frame: int, timestamp: float, track: int, box: Box, probabilities: np.ndarray | None,
             fresh: bool, t: float | None = None) -> SmoothedFace:
        """One face of ``track`` on ``frame`` (frames in order).

        ``probabilities``: FLOAT [C] the face's result (fresh, or carried from the track's last
        classification), None for a face that failed or was not finished (it then changes nothing but
        the track's frame count and times). ``fresh``: a new classification (only these move the
        smoothed value). ``timestamp``: Unix seconds written in events; ``t``: the frames' clock in
        seconds for durations and half-lives (default: ``timestamp``).
        """
        t = timestamp if t is None else t
        events = []
        state = self._tracks.get(track)
        if state is None:
            state = self._tracks[track] = _Track(track, self._make(), frame, t, frame, t)
            events.append({"camera": self.camera, "event": "track_start", "track": track, "frame": frame,
                           "timestamp": round(timestamp, 6), "box": box.as_list()})
        state.last_frame, state.last_time = frame, t
        state.frames += 1
        if probabilities is not None:
            p = np.asarray(probabilities, np.float64)
            state.prob_sum = p.copy() if state.prob_sum is None else state.prob_sum + p
            state.prob_frames += 1
            if fresh or state.smoothed is None:
                state.classifications += int(fresh)
                state.smoothed = state.smoother.update(p, t)
                new = self._label(state)
                if new != state.label:
                    if state.label is not None:
                        events.append({"camera": self.camera, "event": "expression_change", "track": track,
                                       "frame": frame, "timestamp": round(timestamp, 6), "from": state.label,
                                       "to": new, "smoothed": self._probs(state.smoothed)})
                    state.label = new
        if state.label is not None:
            state.frames_by_label[state.label] = state.frames_by_label.get(state.label, 0) + 1
        return SmoothedFace(None if state.smoothed is None else state.smoothed.copy(), state.label, events)

    def _label(self, state: _Track) -> str:
        s = state.smoothed
        top = int(np.argmax(s))
        if state.label is None:
            return self.classes[top]
        current = s[self.classes.index(state.label)]
        return self.classes[top] if s[top] - current > self.min_change else state.label

    def _probs(self, p: np.ndarray) -> dict[str, float]:
        return {c: round(float(v), 7) for c, v in zip(self.classes, p)}

    def end(self, track: int, reason: str, timestamp: float) -> dict | None:
        """The ``track_end`` event of ``track`` (None if this camera never saw it); forgets the track.

        ``reason``: "lost" (not seen for too long), "camera ended", "stopped"...; ``timestamp``: Unix
        seconds written in the event.
        """
        state = self._tracks.pop(track, None)
        if state is None:
            return None
        mean = None if state.prob_sum is None else state.prob_sum / state.prob_frames
        return {"camera": self.camera, "event": "track_end", "track": track, "reason": reason,
                "first_frame": state.first_frame, "last_frame": state.last_frame, "frames": state.frames,
                "duration_s": round(max(0.0, state.last_time - state.first_time), 6),
                "classifications": state.classifications,
                "dominant": None if mean is None else self.classes[int(np.argmax(mean))],
                "mean_probabilities": None if mean is None else self._probs(mean),
                "frames_by_label": dict(state.frames_by_label), "timestamp": round(timestamp, 6)}

    def end_all(self, reason: str, timestamp: float) -> list[dict]:
        """End every live track (camera ended or stopped), in track order."""
        return [e for e in (self.end(t, reason, timestamp) for t in self.live) if e is not None]


def label_flips(labels: list[str]) -> int:
    """How many times a sequence of labels changes from one element to the next."""
    return sum(a != b for a, b in zip(labels, labels[1:]))
