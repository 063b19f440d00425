"""Prometheus metrics of the stream client, per camera: ``--metrics-port [HOST:]PORT``.

Counters are read from the pipeline's own ``StreamStats`` at each scrape, so they always agree with
the summary the run prints; histograms are fed as results arrive. All names start with
``fer_stream_``:

    frames_read_total{camera}                frames read (every frame the camera gave)
    frames_total{camera, outcome}            frames that left the pipeline, by outcome: faces, no_face,
                                             bad_frame, dropped, unfinished (summing to frames read once
                                             every frame is through)
    frames_dropped_total{camera}             frames dropped by the live-camera policy
    faces_total{camera}                      faces found
    faces_sent_total{camera}                 faces sent to a server at least once
    face_results_total{camera, outcome}      faces resolved: result, error, unfinished
    classifications_total{camera, kind}      face results that are fresh classifications or carried
                                             over from their track (tracking on)
    face_errors_total{camera}                faces that failed for good
    live_tracks{camera}                      tracks that have not ended (tracking on)
    camera_up{camera}                        1 while the camera is running, 0 once it ended, stalled or failed
    requests_total{server, outcome}          requests answered ("ok") or failed ("error")
    request_retries_total                    requests sent again after a retryable failure
    face_latency_seconds{camera}             histogram: frame read -> result received
    request_latency_seconds{server}          histogram: one gRPC round trip

Latencies are in seconds (Prometheus' convention; the summary prints milliseconds). The metrics use
their own registry, so several pipelines in one process do not collide, and
``prometheus_client``'s process metrics are added for the served process.
"""

from __future__ import annotations

import threading
from typing import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "fer_stream_"
# Seconds: a face on a GPU server takes tens of ms, on a loaded CPU server seconds (docs/client.md).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

_FRAME_OUTCOMES = {"faces": "frames_with_faces", "no_face": "frames_no_face", "bad_frame": "frames_bad",
                   "dropped": "frames_dropped", "unfinished": "frames_unfinished"}
_FACE_OUTCOMES = {"result": "results", "error": "errors", "unfinished": "faces_unfinished"}


def parse_listen(text: str | int, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``--metrics-port``: "9108" -> (default_host, 9108); "0.0.0.0:9108" -> ("0.0.0.0", 9108); "[::1]:9108".

    Port 0 picks a free port (see MetricsServer.port). Raises ValueError for anything else.
    """
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (sep and not host):
        raise ValueError(f"--metrics-port takes PORT or HOST:PORT (e.g. 9108 or 0.0.0.0:9108), not {text!r}")
    return host, int(port)


class StreamMetrics:
    """The stream client's metrics over ``stats`` (a ``results.StreamStats``).

    ``servers``: a function returning the server pool's servers (objects with ``url``, ``answered``,
    ``errors``); ``tracks``: a function camera -> live tracks; ``classifications``: a function returning
    ({camera: fresh}, {camera: carried}). Each is optional (its metrics are then left out).
    ``observe_face`` / ``observe_request`` feed the histograms; call them where results arrive.
    """

    def __init__(self, stats, *, servers: Callable[[], list] | None = None,
                 tracks: Callable[[str], int] | None = None,
                 classifications: Callable[[], tuple[dict[str, int], dict[str, int]]] | None = None,
                 registry: CollectorRegistry | None = None, process_metrics: bool = True):
        self.stats, self._servers, self._tracks, self._classifications = stats, servers, tracks, classifications
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.face_latency = Histogram(PREFIX + "face_latency_seconds", "Frame read to face result received, seconds.",
                                      ["camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.request_latency = Histogram(PREFIX + "request_latency_seconds", "One inference request round trip, "
                                         "seconds.", ["server"], buckets=LATENCY_BUCKETS, registry=self.registry)
        for camera in stats.cameras:  # every camera shows from the first scrape on, with zero counts
            self.face_latency.labels(camera)
        self.registry.register(self)
        if process_metrics:
            from prometheus_client.process_collector import ProcessCollector

            ProcessCollector(registry=self.registry)

    def observe_face(self, camera: str, latency_ms: float) -> None:
        """One face result of ``camera``: its latency in milliseconds (frame read -> result)."""
        self.face_latency.labels(camera).observe(latency_ms / 1000.0)

    def observe_request(self, server: str, latency_ms: float) -> None:
        """One answered request to ``server``: its round trip in milliseconds."""
        self.request_latency.labels(server).observe(latency_ms / 1000.0)

    def describe(self):
        return []  # names are only known from collect(): the registry checks no clashes for them

    def collect(self):
        """Read the counters from the pipeline's statistics (one consistent snapshot per camera)."""
        with self.stats._lock:  # one snapshot: a scrape never sees a frame counted in one metric only
            cams = {name: (dict(vars(s)), s.status) for name, s in self.stats.cameras.items()}
            retries = self.stats.retries
        counter = lambda name, doc, labels: CounterMetricFamily(PREFIX + name, doc, labels=labels)  # noqa: E731
        read = counter("frames_read", "Frames read.", ["camera"])
        frames = counter("frames", "Frames that left the pipeline, by outcome.", ["camera", "outcome"])
        dropped = counter("frames_dropped", "Frames dropped by the live-camera policy.", ["camera"])
        faces = counter("faces", "Faces found.", ["camera"])
        sent = counter("faces_sent", "Faces sent to a server at least once.", ["camera"])
        results = counter("face_results", "Faces resolved, by outcome.", ["camera", "outcome"])
        errors = counter("face_errors", "Faces that failed for good.", ["camera"])
        up = GaugeMetricFamily(PREFIX + "camera_up", "1 while the camera is running.", labels=["camera"])
        for camera, (c, status) in cams.items():
            read.add_metric([camera], c["frames_read"])
            for outcome, name in _FRAME_OUTCOMES.items():
                frames.add_metric([camera, outcome], c[name])
            dropped.add_metric([camera], c["frames_dropped"])
            faces.add_metric([camera], c["faces"])
            sent.add_metric([camera], c["faces_sent"])
            for outcome, name in _FACE_OUTCOMES.items():
                results.add_metric([camera, outcome], c[name])
            errors.add_metric([camera], c["errors"])
            up.add_metric([camera], 1.0 if status == "running" else 0.0)
        yield from (read, frames, dropped, faces, sent, results, errors, up)
        retried = counter("request_retries", "Requests sent again after a retryable failure.", [])
        retried.add_metric([], retries)
        yield retried
        if self._servers is not None:
            requests = counter("requests", "Inference requests, by server and outcome.", ["server", "outcome"])
            for server in self._servers():
                requests.add_metric([server.url, "ok"], server.answered)
                requests.add_metric([server.url, "error"], server.errors)
            yield requests
        if self._tracks is not None:
            live = GaugeMetricFamily(PREFIX + "live_tracks", "Face tracks that have not ended.", labels=["camera"])
            for camera in cams:
                live.add_metric([camera], self._tracks(camera))
            yield live
        if self._classifications is not None:
            fresh, carried = self._classifications()
            kinds = counter("classifications", "Face results: fresh classifications or carried over from the "
                                               "track.", ["camera", "kind"])
            for camera in cams:
                kinds.add_metric([camera, "fresh"], fresh.get(camera, 0))
                kinds.add_metric([camera, "carried"], carried.get(camera, 0))
            yield kinds


class MetricsServer:
    """Serves a registry at http://HOST:PORT/metrics on a daemon thread until :meth:`close`.

    Raises OSError (naming the address) when the port is taken.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self.host, self.port = host, self._server.server_port
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._server.shutdown()
            self._server.server_close()
