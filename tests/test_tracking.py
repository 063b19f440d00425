"""Face tracks (ByteTrack via supervision), the reclassify policy, carried results, smoothing and track events.

No server: the detector is the real Haar cascade on drawn faces, the "server" a function of the test."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from fer_triton.client.faces import Box, HaarDetector
from fer_triton.client.smoothing import EmaSmoother, TrackEvents, WindowSmoother, label_flips, smoother_factory
from fer_triton.client.tracking import (Classification, FaceTracker, FrameSequencer, ReclassifyPolicy, Tracking,
                                        box_iou)
from fer_triton.labels import CLASSES
from fer_triton.synthetic import draw_faces

# The drawn face Haar finds (seed 0, index 3, 160 px; see docs/client.md and tests/test_stream.py).
FACE = draw_faces(4, 160, seed=0)[0][3]


def scene(frame: int) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """A 720x400 grey frame: A moves right along the top, B moves left along the bottom until frame 19
    (then it is gone), C appears at frame 12 top right and stays. Returns the frame and the faces' corners."""
    image = np.full((400, 720, 3), 90, np.uint8)
    where = {"A": (10 + 8 * frame, 10)}
    if frame < 20:
        where["B"] = (540 - 8 * frame, 225)
    if frame >= 12:
        where["C"] = (545, 10)
    for x, y in where.values():
        image[y:y + 160, x:x + 160] = FACE
    return image, where


def which(box: Box, where: dict[str, tuple[int, int]]) -> str:
    best = max(where, key=lambda k: box_iou(box, Box(*where[k], 160, 160)))
    assert box_iou(box, Box(*where[best], 160, 160)) > 0.4
    return best


def test_drawn_faces_moving_keep_their_track_and_a_new_face_gets_a_new_one():
    detector, tracker = HaarDetector(min_face=30), FaceTracker(lost_after_frames=5)
    ids: dict[str, set[int]] = {"A": set(), "B": set(), "C": set()}
    started, ended = {}, {}
    for frame in range(32):
        image, where = scene(frame)
        boxes = detector.detect(image)
        assert len(boxes) == len(where), f"frame {frame}: Haar found {len(boxes)} of {len(where)} faces"
        update = tracker.update(boxes)
        assert len(update.track_ids) == len(boxes)
        for box, track in zip(boxes, update.track_ids):
            ids[which(box, where)].add(track)
        for track in update.started:
            started[track] = frame
        for track in update.ended:
            ended[track] = frame
    assert ids == {"A": {1}, "B": {2}, "C": {3}}      # one id per face for its whole life
    assert started == {1: 0, 2: 0, 3: 12}             # C is new: a new id, from its first frame on
    assert ended == {2: 25}                           # B: last seen on 19, lost for more than 5 frames
    assert tracker.live == 2 and tracker.finish() == [1, 3] and tracker.live == 0


def test_a_face_that_comes_back_soon_keeps_its_id_and_one_gone_too_long_gets_a_new_one():
    tracker = FaceTracker(lost_after_frames=4)
    box = Box(100, 100, 80, 80)
    assert tracker.update([box]).track_ids == [1]
    for _ in range(3):                                   # hidden for 3 frames: fewer than 4
        assert tracker.update([]).ended == []
    assert tracker.update([box]).track_ids == [1]
    ended = [tracker.update([]).ended for _ in range(6)]  # hidden for 6 frames: the track ends
    assert [e for e in ended if e] == [[1]]
    update = tracker.update([box])
    assert update.track_ids == [2] and update.started == [2]


def boxes_moving(frames: int, step: int = 0) -> list[list[Box]]:
    return [[Box(50 + step * f, 40, 100, 100), Box(400, 40 + step * f, 100, 100)] for f in range(frames)]


def run_tracking(policy: ReclassifyPolicy, frames: list[list[Box]], fps: float = 10.0):
    """Feed frames in order; a fake server resolves every fresh face at once. Returns the released frames."""
    released = []

    def on_frame(tracked):
        for face in tracked.faces:
            if face.fresh:
                face.source.resolve(probabilities=np.full(7, 1 / 7), label="Neutral")
        released.append(tracked)

    tracking = Tracking(["cam"], on_frame, policy)
    for index, boxes in enumerate(frames):
        tracking.frame("cam", index, index / fps, boxes)
    return tracking, released


@pytest.mark.parametrize("every,expected_per_track", [("0", 30), ("1", 30), ("5", 6), ("7f", 5), ("1s", 3),
                                                      ("0.5s", 6), ("2.5s", 2)])
def test_the_number_of_classifications_follows_the_policy(every, expected_per_track):
    # 30 frames at 10 fps, two still faces: every N frames -> ceil(30 / N); every S seconds -> ceil(3 / S).
    tracking, released = run_tracking(ReclassifyPolicy.parse(every), boxes_moving(30))
    fresh = [f for r in released for f in r.faces if f.fresh]
    assert len(fresh) == 2 * expected_per_track == tracking.classified["cam"]
    assert tracking.carried["cam"] == 60 - len(fresh)
    for face in (f for r in released for f in r.faces):  # every face is accounted for, fresh or carried
        assert face.source.done and face.source.track == face.track
        assert face.source.frame <= [r.index for r in released if face in r.faces][0]


def test_a_box_that_moves_notably_is_classified_again():
    frames = [[Box(50, 40, 100, 100)]] * 5 + [[Box(100, 40, 100, 100)]] * 5  # a jump: IoU 0.33 with the old box
    _, released = run_tracking(ReclassifyPolicy(every=100, unit="frames", min_iou=0.5), frames)
    assert [(r.index, r.faces[0].reason) for r in released if r.faces[0].fresh] == [(0, "new"), (5, "moved")]
    assert len({r.faces[0].track for r in released}) == 1  # the same track throughout
    _, released = run_tracking(ReclassifyPolicy(every=100, unit="frames", min_iou=0.0), frames)
    assert [r.index for r in released if r.faces[0].fresh] == [0]


def test_a_failed_classification_is_retried_and_carried_faces_wait_for_theirs():
    resolved: list[tuple[int, str | None]] = []
    pending: list[Classification] = []

    def on_frame(tracked):
        face = tracked.faces[0]
        if face.fresh:
            pending.append(face.source)
        face.source.then(lambda c, i=tracked.index: resolved.append((i, c.label or c.error)))

    tracking = Tracking(["cam"], on_frame, ReclassifyPolicy(every=10))
    box = [Box(10, 10, 90, 90)]
    for index in range(3):
        tracking.frame("cam", index, index, box)
    assert resolved == [] and len(pending) == 1         # frames 1 and 2 carry frame 0's result: they wait
    pending[0].resolve(error="server gone")
    assert resolved == [(0, "server gone"), (1, "server gone"), (2, "server gone")]
    tracking.frame("cam", 3, 3, box)                    # the last classification failed: classify again
    assert len(pending) == 2 and pending[1].frame == 3
    pending[1].resolve(probabilities=np.eye(7)[3], label="Happy")
    tracking.frame("cam", 4, 4, box)
    assert resolved[-2:] == [(3, "Happy"), (4, "Happy")] and len(pending) == 2


def test_frames_from_several_threads_are_tracked_in_frame_order():
    order, skipped = [], {3, 8, 17}
    tracking = Tracking(["a", "b"], lambda t: order.append((t.camera, t.index, [f.track for f in t.faces])),
                        ReclassifyPolicy(every=5))
    items = [(c, i) for c in ("a", "b") for i in range(40)]
    random.Random(1).shuffle(items)
    chunks = [items[k::3] for k in range(3)]

    def feed(chunk):
        for camera, index in chunk:
            if index in skipped:
                tracking.skip(camera, index)
            else:
                tracking.frame(camera, index, index / 10, [Box(10 + 2 * index, 10, 80, 80)])

    threads = [threading.Thread(target=feed, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for camera in ("a", "b"):
        mine = [(i, tracks) for c, i, tracks in order if c == camera]
        assert [i for i, _ in mine] == [i for i in range(40) if i not in skipped]
        assert {tuple(tracks) for _, tracks in mine} == {(1,)}
    with pytest.raises(ValueError, match="given twice"):
        tracking.frame("a", 5, 0.5, [])


def test_sequencer_releases_in_order_and_handles_one_frame_at_a_time():
    seen = []
    sequencer = FrameSequencer(lambda i, item: seen.append((i, item)))
    sequencer.put(2, "c")
    sequencer.skip(1)
    assert seen == [] and sequencer.pending == 2
    sequencer.put(0, "a")
    assert seen == [(0, "a"), (2, "c")] and sequencer.pending == 0


def test_policy_parsing():
    assert ReclassifyPolicy.parse("0") == ReclassifyPolicy(0, "frames")
    assert ReclassifyPolicy.parse("15") == ReclassifyPolicy(15, "frames")
    assert ReclassifyPolicy.parse("2s") == ReclassifyPolicy(2, "s")
    assert ReclassifyPolicy.parse(" 0.5 S ") == ReclassifyPolicy(0.5, "s")
    for bad in ("-1", "2m", "1.5", "fast"):
        with pytest.raises(ValueError, match="reclassify-every"):
            ReclassifyPolicy.parse(bad)


# ---- smoothing and events -------------------------------------------------------------------

def noisy_sequence(n: int, switch_at: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Probabilities of a face that is Happy, then Sad from ``switch_at`` on: the true class gets 0.2 more
    than random (flat Dirichlet) probabilities, so the raw top class is often another one."""
    rng = np.random.default_rng(seed)
    probs, truth = [], []
    for i in range(n):
        c = CLASSES.index("Happy") if i < switch_at else CLASSES.index("Sad")
        p = rng.dirichlet(np.ones(7)) * 0.8
        p[c] += 0.2
        probs.append(p)
        truth.append(c)
    return probs, truth


@pytest.mark.parametrize("spec", ["ema:0.2", "window:6", "ema:0.5s"])
def test_smoothing_reduces_label_flips_on_a_noisy_sequence(spec):
    probs, _ = noisy_sequence(80, 40)
    events = TrackEvents("cam", CLASSES, smoother_factory(spec))
    raw, smooth, changes = [], [], []
    box = Box(0, 0, 10, 10)
    for i, p in enumerate(probs):
        out = events.face(i, 1000.0 + i / 10, 1, box, p, fresh=True)
        raw.append(CLASSES[int(np.argmax(p))])
        smooth.append(out.label)
        changes += [e for e in out.events if e["event"] == "expression_change"]
        assert abs(out.smoothed.sum() - 1) < 1e-9
    assert label_flips(raw) >= 40                       # the raw labels really are noisy
    assert label_flips(smooth) <= 3                     # the smoothed ones hardly (the true change is one)
    assert smooth[30:40] == ["Happy"] * 10 and smooth[-10:] == ["Sad"] * 10
    assert changes and changes[-1]["to"] == "Sad" and 40 <= changes[-1]["frame"] < 55
    assert len(changes) == label_flips(smooth)          # one event per change of the smoothed label


def test_track_events_start_change_and_end_with_a_summary():
    events = TrackEvents("door", CLASSES, lambda: EmaSmoother(alpha=1.0), min_change=0.0)
    happy, sad = np.eye(7)[3] * 0.9 + 0.1 / 7, np.eye(7)[4] * 0.9 + 0.1 / 7
    box = Box(5, 6, 50, 50)
    out = [events.face(10, 100.0, 7, box, happy, fresh=True)]
    out += [events.face(11 + k, 100.1 + k / 10, 7, box, happy, fresh=False) for k in range(3)]  # carried
    out.append(events.face(14, 100.4, 7, box, None, fresh=True))                             # a failed face
    out.append(events.face(15, 100.5, 7, box, sad, fresh=True))
    kinds = [e["event"] for o in out for e in o.events]
    assert kinds == ["track_start", "expression_change"]
    start, change = out[0].events[0], out[-1].events[0]
    assert start == {"camera": "door", "event": "track_start", "track": 7, "frame": 10, "timestamp": 100.0,
                     "box": [5, 6, 50, 50]}
    assert (change["from"], change["to"], change["frame"]) == ("Happy", "Sad", 15)
    assert out[2].label == "Happy" and np.allclose(out[2].smoothed, happy)  # carried: same smoothed value
    end = events.end(7, "lost", 200.0)
    assert end["event"] == "track_end" and end["reason"] == "lost"
    assert (end["first_frame"], end["last_frame"], end["frames"], end["classifications"]) == (10, 15, 6, 2)
    assert end["duration_s"] == pytest.approx(0.5)
    mean = (4 * happy + sad) / 5                          # frames with a result: 4 Happy (1 fresh + 3 carried), 1 Sad
    assert np.allclose([end["mean_probabilities"][c] for c in CLASSES], mean, atol=1e-6)
    assert end["dominant"] == "Happy" and end["frames_by_label"] == {"Happy": 5, "Sad": 1}
    assert events.end(7, "lost", 0) is None and events.live == []
    events.face(20, 300.0, 8, box, None, fresh=True)
    (only_failed,) = events.end_all("camera ended", 301.0)
    assert only_failed["dominant"] is None and only_failed["classifications"] == 0


def test_smoother_arguments():
    assert isinstance(smoother_factory("window:3")(), WindowSmoother)
    half = smoother_factory("ema:2s")()
    half.update(np.eye(7)[0], 0.0)
    assert np.allclose(half.update(np.eye(7)[1], 2.0)[:2], [0.5, 0.5])  # one half-life later: half weight
    for bad in ("ema", "window:2.5", "ema:0", "median:3", "window:0"):
        with pytest.raises(ValueError):
            smoother_factory(bad)()
