"""--save-uncertain: which faces are kept, the limits, and the CSV that `fer-triton retrain --data` reads
once a person has filled in the labels."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

from fer_triton.client.collect import COLUMNS, UncertainFaces, labelled_csv
from fer_triton.labels import CLASSES
from fer_triton.retrain.site_data import SiteDataError, read_site
from fer_triton.synthetic import draw_faces

SURE = np.array([0.01, 0.01, 0.01, 0.94, 0.01, 0.01, 0.01])        # Happy, sure
LOW_TOP = np.array([0.15, 0.15, 0.1, 0.2, 0.15, 0.15, 0.1])        # top 0.2
CLOSE = np.array([0.0, 0.0, 0.0, 0.52, 0.46, 0.01, 0.01])          # Happy vs Sad, margin 0.06


def rows(folder):
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_uncertain_faces_are_kept_with_limits_per_track(tmp_path):
    faces, _ = draw_faces(12, 224, seed=1)
    keep = UncertainFaces(tmp_path, CLASSES, confident_share=0.0, per_track=2, min_gap_s=1.0, run="r1")
    offers = [  # (track, time, probabilities) -> kept?
        (1, 0.0, SURE), (1, 0.5, LOW_TOP), (1, 1.0, LOW_TOP), (1, 1.2, CLOSE), (1, 2.0, CLOSE), (1, 3.0, CLOSE),
        (2, 0.0, CLOSE), (2, 0.1, LOW_TOP), (None, 5.0, LOW_TOP), (None, 5.0, LOW_TOP)]
    kept = [keep.offer(faces[i], p, camera="hall/1", frame=i, track=track, timestamp=1.7e9 + t, t=t)
            for i, (track, t, p) in enumerate(offers)]
    # Track 1: sure -> no (no confident share); 0.5 s kept; 1.0 s and 1.2 s under 1 s after it; 2.0 s kept, the
    # second and last; 3.0 s: the track is full. Track 2: 0.1 s too soon. Faces without a track count alone.
    assert [k is not None for k in kept] == [False, True, False, False, True, False, True, False, True, True]
    assert [k.reason for k in kept if k] == ["low_top", "low_margin", "low_margin", "low_top", "low_top"]
    saved = rows(tmp_path)
    assert list(saved[0]) == list(COLUMNS) and len(saved) == 5 == keep.saved
    first = saved[0]
    assert first["path"] == "images/hall_1/r1_f00000001_t1.png" and first["label"] == ""
    assert (first["predicted"], first["reason"], first["camera"], first["track"]) == ("Happy", "low_top", "hall/1", "1")
    assert float(first["top_probability"]) == pytest.approx(0.2) and float(first["margin"]) == pytest.approx(0.05)
    assert saved[-1]["track"] == "" and saved[-1]["frame"] == "9"   # faces without a track: one each
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(tmp_path / first["path"])), faces[1])  # the crop, lossless


def test_a_small_share_of_confident_faces_is_kept_too(tmp_path):
    keep = UncertainFaces(tmp_path, CLASSES, confident_share=0.1, per_track=1, min_gap_s=0, seed=3, run="r")
    face = np.zeros((8, 8, 3), np.uint8)
    kept = [keep.offer(face, SURE, camera="c", frame=i, track=i, t=float(i)) for i in range(2000)]
    share = sum(k is not None for k in kept) / 2000
    assert 0.07 < share < 0.13 and {k.reason for k in kept if k} == {"confident_sample"}
    assert "confident samples" in keep.summary() and keep.counts["confident_sample"] == keep.saved


def test_the_csv_is_read_by_retrain_once_the_labels_are_filled_in(tmp_path):
    faces, truth = draw_faces(14, 224, seed=2)
    keep = UncertainFaces(tmp_path / "pilot", CLASSES, confident_share=0.0, min_gap_s=0, run="r")
    for i, face in enumerate(faces):
        assert keep.offer(face, LOW_TOP, camera="lobby", frame=i, track=i) is not None
    csv_path = keep.csv_path
    with pytest.raises(SiteDataError, match="line 2: empty path or label"):  # as saved: labels still empty
        read_site(csv_path)
    # A person fills in part of the labels (names as people write them) ...
    table = rows(csv_path.parent)
    names = {3: "happiness", 5: "ANGRY"}
    for i, row in enumerate(table[:10]):
        row["label"] = names.get(int(truth[i]), CLASSES[truth[i]])
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    with pytest.raises(SiteDataError, match="line 12: empty path or label"):
        read_site(csv_path)
    out, kept, left = labelled_csv(csv_path)  # ... and uses the labelled rows now
    assert (out.name, kept, left) == ("labelled.csv", 10, 4)
    site = read_site(out)
    assert list(site.labels) == list(truth[:10]) and len(site) == 10
    assert np.array_equal(site.read_faces(224).faces, faces[:10])
    for row in table[10:]:  # ... then finishes labelling: the whole CSV is read
        row["label"] = CLASSES[truth[int(row["frame"])]]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    assert list(read_site(csv_path).labels) == list(truth)


def test_runs_append_to_one_csv_and_offers_from_many_threads_are_all_written(tmp_path):
    face = np.zeros((16, 16, 3), np.uint8)
    first = UncertainFaces(tmp_path, CLASSES, min_gap_s=0, per_track=100, run="a")
    threads = [threading.Thread(target=lambda c=c: [first.offer(face, LOW_TOP, camera=f"c{c}", frame=i, track=1)
                                                      for i in range(50)]) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    second = UncertainFaces(tmp_path, CLASSES, min_gap_s=0, run="b")
    second.offer(face, LOW_TOP, camera="c0", frame=0, track=1)
    saved = rows(tmp_path)
    assert len(saved) == 201 and len({r["path"] for r in saved}) == 201
    assert all((tmp_path / r["path"]).is_file() for r in saved)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "labels.csv").write_text("file,class\n")
    with pytest.raises(ValueError, match="other columns"):
        UncertainFaces(tmp_path / "other", CLASSES)


def test_the_global_cap(tmp_path):
    keep = UncertainFaces(tmp_path, CLASSES, max_faces=3, min_gap_s=0)
    kept = [keep.offer(np.zeros((4, 4, 3), np.uint8), LOW_TOP, camera="c", frame=i, track=i) for i in range(6)]
    assert sum(k is not None for k in kept) == 3 and len(rows(tmp_path)) == 3
