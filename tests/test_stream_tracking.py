"""Issue #14 wired into the stream client, against the real tritonserver (and a real Mosquitto): tracks
and carried results, the reclassify policy counted by the server, smoothing on noisy frames, uncertain
faces read by `retrain`, metrics scraped during a stream, MQTT across a broker restart, stops, and a slow
server with a raised request timeout."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import start_server
from fer_triton.cli import cli
from fer_triton.client import FerClient, StreamConfig, StreamPipeline, parse_sources
from fer_triton.client.smoothing import label_flips
from fer_triton.labels import CLASSES
from fer_triton.retrain.site_data import read_site
from fer_triton.server import free_port
from fer_triton.synthetic import draw_faces, draw_site
from test_stopping import child_env, sigint_ignored, with_default_sigint  # noqa: F401 (a fixture)
from test_stream import write_video
from test_sites import sites_server  # noqa: F401 (a fixture: a server with sites 'lobby' and 'door')
from test_stream_metrics import scrape

FACE = draw_faces(4, 160, seed=0)[0][3]  # the drawn face Haar finds
SLOW_S = 1.5                             # seconds the slow server's head sleeps per execution


def scene_folder(folder: Path, frames: int = 32) -> Path:
    """PNG frames: A moves right, B moves left until frame 19, C appears at frame 12 (see test_tracking.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        image = np.full((400, 720, 3), 90, np.uint8)
        spots = [(10 + 8 * f, 10)] + ([(540 - 8 * f, 225)] if f < 20 else []) + ([(545, 10)] if f >= 12 else [])
        for x, y in spots:
            image[y:y + 160, x:x + 160] = FACE
        Image.fromarray(image).save(folder / f"{f:03d}.png")
    return folder


def image_folder(folder: Path, images) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def run(sources, url, **config):
    out, events = io.StringIO(), []
    pipeline = StreamPipeline(sources, url, config=StreamConfig(**config), out=out, on_event=events.append)
    summary = pipeline.run()
    return summary, [json.loads(x) for x in out.getvalue().splitlines()], pipeline


def inference_count(server, model: str = "cafe") -> int:
    """Faces the server's ``model`` computed (Triton's statistics: a request whose deadline passed mid-way
    still counts once its model ran)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return sum(int(s.get("inference_count", 0)) for s in stats)


def settled_count(server, model: str) -> int:
    """inference_count once the server has stopped computing (unchanged for longer than one execution)."""
    count, since = inference_count(server, model), time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = inference_count(server, model)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since > SLOW_S + 0.5:
            break
    return count


@pytest.fixture(scope="module")
def slow_server(tiny_repository, tmp_path_factory):
    """A real tritonserver whose head (a python-backend model) sleeps SLOW_S seconds per execution."""
    repository = tmp_path_factory.mktemp("slow") / "model_repository"
    shutil.copytree(tiny_repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
    model = repository / "cafe_head" / "1" / "model.py"
    text = model.read_text()
    slow = text.replace("    def execute(self, requests):\n",
                        f"    def execute(self, requests):\n        import time\n        time.sleep({SLOW_S})\n", 1)
    assert slow != text
    model.write_text(slow)
    server = start_server(repository)
    yield server
    server.stop()


# ---- tracks and the reclassify policy ----------------------------------------------------------

def test_tracks_carry_results_between_classifications(triton_server, tmp_path):
    folder = scene_folder(tmp_path / "door")
    before = inference_count(triton_server)
    summary, lines, _ = run(parse_sources([f"door={folder}"]), triton_server.grpc_url, detector="haar", min_face=30,
                            reclassify="5", reclassify_min_iou=0.0, track_lost_frames=5)
    faces = [x for x in lines if "face" in x]
    total = summary.accounting
    assert total.balanced and total.faces == len(faces) == 32 + 20 + 20 and total.results == total.faces
    by_track = {}
    for x in faces:
        by_track.setdefault(x["track"], []).append(x)
    assert sorted(by_track) == [1, 2, 3]  # A and B keep theirs while they move; C, new at frame 12, gets its own
    fresh = {t: [x["frame"] for x in xs if x["fresh"]] for t, xs in by_track.items()}
    assert fresh == {1: [0, 5, 10, 15, 20, 25, 30], 2: [0, 5, 10, 15], 3: [12, 17, 22, 27]}
    # Only fresh faces went to the server: Triton itself counted 15 faces for 72 written.
    assert total.faces_sent == sum(map(len, fresh.values())) == inference_count(triton_server) - before == 15
    for xs in by_track.values():                                          # carried = the classification's result
        results = {x["frame"]: x for x in xs if x["fresh"]}
        for x in xs:
            if not x["fresh"]:
                assert x["probabilities"] == results[x["classified_frame"]]["probabilities"]
                assert x["classified_frame"] < x["frame"]
            assert x["smoothed_label"] in x["smoothed"]
    kinds = [(x["event"], x["track"]) for x in lines if x.get("event", "").startswith("track_")]
    assert kinds == [("track_start", 1), ("track_start", 2), ("track_start", 3), ("track_end", 2),
                     ("track_end", 1), ("track_end", 3)]
    end_b = next(x for x in lines if x.get("event") == "track_end" and x["track"] == 2)
    assert (end_b["reason"], end_b["first_frame"], end_b["last_frame"], end_b["frames"],
            end_b["classifications"]) == ("lost", 0, 19, 20, 4)
    assert lines[-1]["event"] == "ended"                                   # camera ended after its track ends


def test_reclassify_every_0_classifies_every_face(triton_server, tmp_path):
    folder = scene_folder(tmp_path / "door", 14)
    before = inference_count(triton_server)
    summary, lines, _ = run(parse_sources([f"door={folder}"]), triton_server.grpc_url, detector="haar", min_face=30,
                            reclassify="0")
    faces = [x for x in lines if "face" in x]
    assert all(x["fresh"] for x in faces) and summary.accounting.faces_sent == len(faces) == 30
    assert inference_count(triton_server) - before == 30
    assert sorted({x["track"] for x in faces}) == [1, 2, 3]


def test_reclassify_every_second_of_video(triton_server, tmp_path):
    video = write_video(tmp_path / "desk.avi", np.stack([draw_faces(1, 96, seed=4)[0][0]] * 35), fps=10)  # 3.5 s
    before = inference_count(triton_server)
    summary, lines, _ = run(parse_sources([str(video)]), triton_server.grpc_url, detector="crops", reclassify="1s")
    faces = [x for x in lines if "face" in x]
    assert len(faces) == 35 and len({x["track"] for x in faces}) == 1
    assert [x["frame"] for x in faces if x["fresh"]] == [0, 10, 20, 30]   # once per second of the video's clock
    assert summary.accounting.faces_sent == inference_count(triton_server) - before == 4


def test_tracked_site_cameras_carry_their_site_heads_results(tmp_path, sites_server):  # noqa: F811
    """A SITE/CAM camera, tracked: its fresh faces go to the site's head in batches shared with a base
    camera's, and its carried faces carry that head's result (and the site)."""
    from test_sites import LOBBY, outputs, random_head

    server, _ = sites_server
    face = draw_site(1, LOBBY, seed=8)[0]
    base, features = outputs(server.grpc_url, face)
    lobby = random_head(3).probabilities(features)[0]
    folders = [image_folder(tmp_path / name, [face[0]] * 7) for name in ("a", "b")]
    summary, lines, _ = run(parse_sources([f"lobby/cam1={folders[0]}", f"cam2={folders[1]}"]), server.grpc_url,
                            detector="crops", reclassify="3")
    faces = [x for x in lines if "face" in x]
    assert summary.accounting.balanced and summary.accounting.results == len(faces) == 14
    for camera, site, expected in (("lobby/cam1", "lobby", lobby), ("cam2", None, base[0])):
        mine = [x for x in faces if x["camera"] == camera]
        assert [x["frame"] for x in mine if x["fresh"]] == [0, 3, 6]
        assert all(x.get("site") == site for x in mine)
        for x in mine:  # fresh or carried, the result of the camera's own head
            assert np.abs(np.array(list(x["probabilities"].values())) - expected).max() < 1e-5
    ends = [x for x in lines if x.get("event") == "track_end"]
    assert sorted(x["camera"] for x in ends) == ["cam2", "lobby/cam1"] and all(x["frames"] == 7 for x in ends)


# ---- smoothing ---------------------------------------------------------------------------------

def noisy_frames(url: str) -> tuple[np.ndarray, str, list[np.ndarray]]:
    """A drawn face, its served label, and noisy copies of it (Gaussian noise, sigma 100) that the served
    (untrained, tiny) model labels otherwise, clearly so: of the 7 drawn faces, the one with the most."""
    best = None
    with FerClient(url) as client:
        for base in draw_faces(7, 224, seed=0)[0]:
            rng = np.random.default_rng(0)
            candidates = np.stack([np.clip(base + rng.normal(0, 100, base.shape), 0, 255).astype(np.uint8)
                                   for _ in range(24)])
            clean, served = client.infer(base[None]).labels[0], client.infer_all(candidates)
            margins = np.diff(np.sort(served.probabilities, axis=1)[:, -2:], axis=1)[:, 0]
            noisy = [face for face, label, m in zip(candidates, served.labels, margins) if label != clean and m > 0.003]
            if best is None or len(noisy) > len(best[2]):
                best = (base, clean, noisy[:4])
    return best


def test_smoothing_reduces_label_flips_on_noisy_frames(triton_server, tmp_path):
    base, clean, noisy = noisy_frames(triton_server.grpc_url)
    assert len(noisy) >= 2
    frames = [noisy[(i // 3) % len(noisy)] if i % 3 == 1 else base for i in range(48)]  # every third frame noisy
    folder = image_folder(tmp_path / "desk", frames)
    summary, lines, _ = run(parse_sources([f"desk={folder}"]), triton_server.grpc_url, detector="crops",
                            reclassify="0", smooth="ema:0.2")
    faces = [x for x in lines if "face" in x]
    assert len(faces) == 48 and all(x["fresh"] for x in faces) and len({x["track"] for x in faces}) == 1
    raw, smoothed = [x["label"] for x in faces], [x["smoothed_label"] for x in faces]
    print(f"label flips over 48 frames: raw {label_flips(raw)}, smoothed {label_flips(smoothed)}")
    assert label_flips(raw) >= 16                  # the raw labels flip on (nearly) every noisy frame
    assert label_flips(smoothed) <= 1              # the smoothed ones hardly
    assert smoothed[-1] == clean
    changes = [x for x in lines if x.get("event") == "expression_change"]
    assert len(changes) == label_flips(smoothed)   # one event per change of the smoothed label


# ---- uncertain faces -> labels -> retrain --------------------------------------------------------

def test_saved_uncertain_faces_once_labelled_are_read_by_retrain(triton_server, repository_copy, tmp_path):
    faces, truth = draw_faces(14, 224, seed=2)
    folder = image_folder(tmp_path / "desk", faces)
    pilot = tmp_path / "pilot"
    result = CliRunner().invoke(cli, ["stream", f"desk={folder}", "-u", triton_server.grpc_url, "--detector",
                                      "crops", "--save-uncertain", str(pilot), "-o", str(tmp_path / "out.jsonl"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"uncertain faces saved to {pilot / 'labels.csv'}: 14" in result.output
    with open(pilot / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and {r["reason"] for r in rows} == {"low_top"}  # the tiny model is unsure of each
    retrain = ["retrain", "--data", str(pilot / "labels.csv"), "-u", triton_server.grpc_url, "-r",
               str(repository_copy), "--no-publish", "--report", str(tmp_path / "report")]
    refused = CliRunner().invoke(cli, retrain)
    assert refused.exit_code == 1 and "line 2: empty path or label" in refused.output
    for row in rows:  # a person fills in the labels
        row["label"] = CLASSES[truth[int(row["frame"])]]
    with open(pilot / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    site = read_site(pilot / "labels.csv")
    order = [int(row["frame"]) for row in rows]  # rows come in the order the answers did
    assert list(site.labels) == list(truth[order]) and np.array_equal(site.read_faces(224).faces, faces[order])
    done = CliRunner().invoke(cli, retrain)  # read, features from the server, fitted, compared (not published)
    assert "not published (--no-publish): held-out accuracy on 7 site images" in done.output, done.output


# ---- metrics ----------------------------------------------------------------------------------

def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_scraped_during_a_stream_agree_with_the_json_lines(triton_server, tmp_path):
    folder = scene_folder(tmp_path / "door", 24)
    out, seen = io.StringIO(), []

    def on_frame(outcome):  # after the frame's lines are written: scrape over HTTP, compare after the run
        seen.append((scrape(pipeline.metrics_url), [json.loads(x) for x in out.getvalue().splitlines()]))

    pipeline = StreamPipeline(parse_sources([f"door={folder}"]), triton_server.grpc_url, out=out, on_frame=on_frame,
                              config=StreamConfig(detector="haar", min_face=30, reclassify="4"),
                              metrics_listen=("127.0.0.1", 0))
    summary = pipeline.run()
    final = samples(generate_latest(pipeline.metrics.registry).decode())
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(seen) == 24 and summary.accounting.balanced

    def agree(s, lines, final=False):
        def v(name, **labels):
            return s[("fer_stream_" + name, tuple(sorted({"camera": "door", **labels}.items())))]

        faces = [x for x in lines if "face" in x]
        results = [x for x in faces if "label" in x]
        assert v("frames_total", outcome="faces") == len({x["frame"] for x in faces})
        assert v("frames_total", outcome="no_face") == sum(x.get("event") == "no_face" for x in lines)
        assert v("face_results_total", outcome="result") == len(results) == v("face_latency_seconds_count")
        assert v("face_errors_total") == sum("error" in x for x in faces) == 0
        fresh = sum(x["fresh"] for x in results)
        if final:  # tracking runs ahead of the written lines while the stream runs
            assert v("classifications_total", kind="fresh") == fresh
            assert v("classifications_total", kind="carried") == len(results) - fresh
            assert v("frames_read_total") == 24 and v("live_tracks") == 0 and v("camera_up") == 0
        else:
            assert v("frames_read_total") >= len({x["frame"] for x in lines if "frame" in x})
            assert v("classifications_total", kind="fresh") >= fresh

    for s, written in seen:
        agree(s, written)
    agree(final, lines, final=True)
    assert seen[-1][0][("fer_stream_faces_total", (("camera", "door"),))] == summary.accounting.faces
    answered = final[("fer_stream_requests_total", (("outcome", "ok"), ("server", triton_server.grpc_url)))]
    assert answered == summary.servers[0]["answered"] >= 1


# ---- the command: MQTT, metrics, uncertain faces -----------------------------------------------

def stream_to_broker(tmp_path: Path, prefix: str, argv: list[str], side=None):
    """``fer-triton stream ARGV --mqtt ... -o out.jsonl`` with a real Mosquitto and a persistent-session
    subscriber to PREFIX/#; ``side(broker, out, finished)`` runs on a thread meanwhile. Returns the
    command's result, the JSON Lines written, and the payloads the subscriber received."""
    from test_mqtt import MOSQUITTO, NO_BROKER, Broker, Subscriber

    if MOSQUITTO is None:
        pytest.skip(NO_BROKER)
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", free_port()).start()
    sub = Subscriber(broker.port, prefix)
    out, finished = tmp_path / "out.jsonl", threading.Event()
    thread = threading.Thread(target=side, args=(broker, out, finished)) if side is not None else None
    try:
        if thread is not None:
            thread.start()
        result = CliRunner().invoke(cli, ["stream", *argv, "--mqtt", f"mqtt://127.0.0.1:{broker.port}/{prefix}",
                                          "-o", str(out), "--no-progress"])
        finished.set()
        if thread is not None:
            thread.join()
        lines = out.read_text().splitlines()
        sub.wait_for(set(lines))
        return result, lines, sub.payloads()
    finally:
        finished.set()
        sub.close()
        broker.stop()


def test_the_command_with_mqtt_metrics_and_uncertain_faces(triton_server, tmp_path):
    folder = scene_folder(tmp_path / "door", 20)
    port, scrapes = free_port(), []

    def scrape_text(broker, out, finished):
        while not finished.is_set():
            try:
                scrapes.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())
            except OSError:
                pass
            time.sleep(0.05)

    result, lines, payloads = stream_to_broker(
        tmp_path, "site", [f"door={folder}", "-u", triton_server.grpc_url, "--min-face", "30", "--reclassify-every",
                           "4", "--metrics-port", str(port), "--save-uncertain", str(tmp_path / "pilot")], scrape_text)
    assert result.exit_code == 0, result.output
    assert payloads == lines                                             # MQTT got exactly the JSON Lines records
    assert "mqtt 127.0.0.1:" in result.output and "0 dropped (buffer full)" in result.output
    assert any('fer_stream_frames_read_total{camera="door"}' in text for text in scrapes)
    assert any('fer_stream_live_tracks{camera="door"} 3.0' in text for text in scrapes)
    table = (tmp_path / "pilot" / "labels.csv").read_text().splitlines()
    assert 3 <= len(table) - 1 <= 9                                      # at most 3 per track, 3 tracks


def test_mqtt_records_equal_the_json_lines_across_a_broker_restart(triton_server, tmp_path):
    video = write_video(tmp_path / "hall.avi", draw_faces(40, 96, seed=3)[0])  # 4 s at 10 fps
    down_at = []

    def restart(broker, out, finished):  # once the stream writes: a clean broker shutdown (it saves its queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
            time.sleep(0.05)
        broker.stop()
        down_at.append(len(out.read_text().splitlines()))
        time.sleep(1.0)
        broker.start()

    result, lines, payloads = stream_to_broker(
        tmp_path, "hall", [str(video), "-u", triton_server.grpc_url, "--detector", "crops", "--fps", "10", "--drop",
                           "block", "--reclassify-every", "5"], restart)
    assert result.exit_code == 0, result.output
    assert down_at and down_at[0] < len(lines) - 10                      # the broker was away mid-stream
    assert set(payloads) == set(lines)                                    # every record (at least once)
    assert "0 dropped (buffer full), 0 not confirmed by the broker, 1 disconnects\n" in result.output


# ---- stops and deadlines ------------------------------------------------------------------------

def test_a_slow_server_with_a_raised_request_timeout_computes_the_face_once_and_returns_it(slow_server, tmp_path):
    folder = image_folder(tmp_path / "desk", draw_faces(1, 224, seed=1)[0])
    url = slow_server.grpc_url
    command = ["stream", f"desk={folder}", "-u", url, "--detector", "crops", "--no-progress"]
    before = settled_count(slow_server, "cafe_head")
    # A deadline below the server's time: the request expires while the head computes it. It is not sent
    # again to the server still computing it (it was re-sent at once, four times, before): the face is an
    # error that says what to do.
    short = CliRunner().invoke(cli, [*command, "--request-timeout", str(SLOW_S / 3), "-o", str(tmp_path / "a.jsonl")])
    assert short.exit_code == 1, short.output
    (line,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines() if '"face"' in x]
    assert "not sent again (raise --request-timeout)" in line["error"]
    assert settled_count(slow_server, "cafe_head") - before <= 1
    # Raised above the server's time: computed once, and returned.
    before = settled_count(slow_server, "cafe_head")
    t0 = time.monotonic()
    raised = CliRunner().invoke(cli, [*command, "--request-timeout", str(SLOW_S * 4), "-o", str(tmp_path / "b.jsonl")])
    assert raised.exit_code == 0, raised.output
    (line,) = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines() if '"face"' in x]
    assert line["label"] in CLASSES and line["latency_ms"] >= SLOW_S * 1000
    assert inference_count(slow_server, "cafe_head") - before == 1 and time.monotonic() - t0 >= SLOW_S


@pytest.mark.parametrize("case", ["once", "twice", "sigterm"])
def test_stopping_the_command(case, triton_server, slow_server, tmp_path, sigint_ignored):  # noqa: F811
    """Started with SIGINT ignored in this process (as under `pytest &`): the child gets the default."""
    server = slow_server if case == "twice" else triton_server  # with something in flight to give up on
    video = write_video(tmp_path / "hall.avi", draw_faces(150, 96, seed=8)[0])  # 15 s at 10 fps
    out = tmp_path / "out.jsonl"
    fer_triton = Path(sys.executable).with_name("fer-triton")
    proc = subprocess.Popen(with_default_sigint([str(fer_triton), "stream", str(video), "-u", server.grpc_url,
                                                 "--detector", "crops", "--fps", "10", "--drop", "block", "-o",
                                                 str(out), "--no-progress"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.05)  # the first result is out
    t0 = time.monotonic()
    for sig in {"once": [signal.SIGINT], "twice": [signal.SIGINT, signal.SIGINT], "sigterm": [signal.SIGTERM]}[case]:
        proc.send_signal(sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    print(f"{case}: returned {took:.2f} s after the first signal")
    assert proc.returncode == 2, err
    assert took < 4, f"took {took:.1f} s to stop"  # it took 10.1 s (a KeyboardInterrupt landing in Thread.join)
    assert "every face accounted for: yes" in err and "Aborted!" not in err
    assert f"stopped early ({'SIGTERM' if case == 'sigterm' else 'Ctrl-C'})" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[-1]["event"] == "ended" and lines[-1]["message"] == "stopped"
    frames = sorted({x["frame"] for x in lines if "frame" in x})
    assert frames == list(range(len(frames))) and 0 < len(frames) < 150   # every frame read is written
    unfinished = [x for x in lines if x.get("event") == "unfinished"]
    if case == "twice":  # given up: what was queued or in flight is written as unfinished
        assert unfinished and "giving up" in err
    else:                # what was read is finished
        assert not unfinished and all("label" in x for x in lines if "face" in x)


def test_tracking_mqtt_and_metrics_name_the_extra_when_it_is_missing(monkeypatch, tmp_path):
    from fer_triton import extras

    installed = extras.is_installed
    optional = {"supervision", "paho.mqtt", "prometheus_client"}
    monkeypatch.setattr(extras, "is_installed", lambda module: module not in optional and installed(module))
    for flag, value, module in (("--reclassify-every", "1s", "supervision"),
                                ("--mqtt", "mqtt://127.0.0.1:1", "paho.mqtt"),
                                ("--metrics-port", "0", "prometheus_client")):
        result = CliRunner().invoke(cli, ["stream", str(tmp_path), "-u", "127.0.0.1:1", flag, value],
                                    prog_name="fer-triton")
        assert result.exit_code == 1
        assert (f"Error: fer-triton stream {flag} needs the 'stream' extra: pip install 'fer-triton[stream]' "
                f"(missing: {module})") in result.output
    # The rest of the stream extra (OpenCV) is all a plain stream needs: it gets as far as the server.
    plain = CliRunner().invoke(cli, ["stream", str(tmp_path), "-u", "127.0.0.1:1", "--connect-wait", "0.2"])
    assert plain.exit_code == 1 and "needs the" not in plain.output
