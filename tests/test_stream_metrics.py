"""Prometheus metrics of the stream client, scraped over HTTP from its own endpoint, agree with its counts."""

from __future__ import annotations

import io
import socket
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fer_triton.client import StreamConfig, StreamPipeline, parse_sources
from fer_triton.client.faces import Box
from fer_triton.client.results import FaceOutcome, FrameOutcome, StreamStats
from fer_triton.client.stream_metrics import MetricsServer, StreamMetrics, parse_listen
from fer_triton.synthetic import draw_face


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at ``url``: (name, sorted label pairs) -> value."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def face(latency_ms=None, error=None, unfinished=False):
    return FaceOutcome(Box(0, 0, 10, 10), None if error or unfinished else np.full(7, 1 / 7), "Neutral",
                       error, latency_ms, "s:1", unfinished)


def test_metrics_over_http_agree_with_the_counts():
    stats = StreamStats(["lobby", "door"])
    stats.add("lobby", frames_read=5, frames_dropped=1, faces=4, faces_sent=4)
    stats.add("door", frames_read=2, faces=1, faces_sent=1)
    frames = [FrameOutcome("lobby", 0, 0.0, "faces", faces=[face(20.0), face(300.0)]),
              FrameOutcome("lobby", 1, 0.0, "faces", faces=[face(error="gave up")]),
              FrameOutcome("lobby", 2, 0.0, "no_face"), FrameOutcome("lobby", 3, 0.0, "dropped"),
              FrameOutcome("lobby", 4, 0.0, "faces", faces=[face(unfinished=True)]),
              FrameOutcome("door", 0, 0.0, "faces", faces=[face(4000.0)]), FrameOutcome("door", 1, 0.0, "bad_frame")]
    servers = [SimpleNamespace(url="10.0.0.1:8001", answered=3, errors=1)]
    metrics = StreamMetrics(stats, servers=lambda: servers, tracks=lambda c: {"lobby": 2, "door": 0}[c],
                            classifications=lambda: ({"lobby": 3}, {"lobby": 7}))
    for frame in frames:
        stats.record(frame)
        for f in frame.faces:
            if f.latency_ms is not None:
                metrics.observe_face(frame.camera, f.latency_ms)
    metrics.observe_request("10.0.0.1:8001", 250.0)
    stats.set_status("door", "ended")
    stats.count_retry()
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    try:
        s = scrape(server.url)
    finally:
        server.close()
    p = "fer_stream_"
    assert value(s, p + "frames_read_total", camera="lobby") == 5 and value(s, p + "frames_read_total", camera="door") == 2
    assert value(s, p + "frames_dropped_total", camera="lobby") == 1
    lobby = {o: value(s, p + "frames_total", camera="lobby", outcome=o)
             for o in ("faces", "no_face", "bad_frame", "dropped", "unfinished")}
    assert lobby == {"faces": 3, "no_face": 1, "bad_frame": 0, "dropped": 1, "unfinished": 0}
    assert sum(lobby.values()) == 5  # every frame read is in exactly one outcome
    assert value(s, p + "frames_total", camera="door", outcome="bad_frame") == 1
    assert value(s, p + "faces_total", camera="lobby") == 4 and value(s, p + "faces_sent_total", camera="door") == 1
    assert [value(s, p + "face_results_total", camera="lobby", outcome=o) for o in ("result", "error", "unfinished")] \
        == [2, 1, 1]
    assert value(s, p + "face_errors_total", camera="lobby") == 1
    assert value(s, p + "camera_up", camera="lobby") == 1 and value(s, p + "camera_up", camera="door") == 0
    assert value(s, p + "requests_total", server="10.0.0.1:8001", outcome="ok") == 3
    assert value(s, p + "requests_total", server="10.0.0.1:8001", outcome="error") == 1
    assert value(s, p + "request_retries_total") == 1
    assert value(s, p + "live_tracks", camera="lobby") == 2
    assert value(s, p + "classifications_total", camera="lobby", kind="carried") == 7
    # Histograms in seconds: lobby 0.02 s and 0.3 s, door 4 s.
    assert value(s, p + "face_latency_seconds_count", camera="lobby") == 2
    assert value(s, p + "face_latency_seconds_sum", camera="lobby") == pytest.approx(0.32)
    assert value(s, p + "face_latency_seconds_bucket", camera="lobby", le="0.025") == 1
    assert value(s, p + "face_latency_seconds_bucket", camera="lobby", le="0.5") == 2
    assert value(s, p + "face_latency_seconds_bucket", camera="door", le="2.5") == 0
    assert value(s, p + "request_latency_seconds_count", server="10.0.0.1:8001") == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in s)


def test_a_taken_port_is_named_and_listen_addresses_parse():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stats = StreamStats(["c"])
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            MetricsServer(StreamMetrics(stats, process_metrics=False).registry, "127.0.0.1", port)
    assert parse_listen("9108") == ("127.0.0.1", 9108)
    assert parse_listen("0.0.0.0:9108") == ("0.0.0.0", 9108) and parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("x", "1:2:x", ":80", "70000"):
        with pytest.raises(ValueError, match="--metrics-port"):
            parse_listen(bad)


def test_metrics_of_a_real_stream_agree_with_its_summary(triton_server, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(draw_face(i % 7, 96)).save(folder / f"{i}.png")
    pipeline = StreamPipeline(parse_sources([f"desk={folder}", f"hall={folder}"]), triton_server.grpc_url,
                              config=StreamConfig(detector="crops", batch_size=4), out=io.StringIO(),
                              on_frame=lambda o: [metrics.observe_face(o.camera, f.latency_ms) for f in o.faces
                                                  if f.latency_ms is not None])
    metrics = StreamMetrics(pipeline.stats, servers=lambda: pipeline.pool.servers)
    server = MetricsServer(metrics.registry)
    try:
        summary = pipeline.run()
        s = scrape(server.url)
    finally:
        server.close()
    p = "fer_stream_"
    for camera, c in summary.stats.cameras.items():
        assert value(s, p + "frames_read_total", camera=camera) == c.frames_read == 6
        assert value(s, p + "face_results_total", camera=camera, outcome="result") == c.results == 6
        assert value(s, p + "face_latency_seconds_count", camera=camera) == 6
        assert value(s, p + "camera_up", camera=camera) == 0  # ended
    answered = value(s, p + "requests_total", server=triton_server.grpc_url, outcome="ok")
    assert answered == summary.servers[0]["answered"] >= 3  # 12 faces, at most 4 per request
