"""How many cameras at what frame rate one CPU tritonserver sustains through `fer-triton stream`.

    .venv/bin/python benchmarks/stream_capacity.py --cameras 1,2,3,4 --fps 5 --seconds 20
    .venv/bin/python benchmarks/stream_capacity.py --cameras 5,10,20 --fps 10 --reclassify-every 1s

Builds the TRUE model (open_clip ViT-B-32-quickgelu + ResNet-18 + head) with RANDOM weights,
exports it to a temporary repository, starts the real tritonserver, then for each camera count
streams that many simulated live cameras (video files paced at --fps, drop policy "oldest")
through StreamPipeline and reports faces/s, dropped frames, p50/p99 latency (frame read ->
result), and where the time goes: client read/decode and detect+crop per frame, the gRPC round
trip per request, and Triton's own per-model queue and compute times (statistics API).
A camera count is "sustained" when no frame was dropped and p99 latency stayed under 1 s.

``--reclassify-every`` tracks each camera's face (ByteTrack, client/tracking.py) and sends a track's
face to the server only that often (``1s``: once per second of video; ``0``: every face, tracked);
the other faces carry the track's last result. Each run then also reports the faces sent and the
requests per camera per second (Triton's own count of ensemble requests), against the faces
written; without the option every face is sent (today's default). ``--stagger S`` starts the cameras
spread over S seconds: without it every camera's face appears, and is classified again, at the same
instant (a burst of one face per camera every period: the worst case for latency).

Random weights: speeds are real, labels are meaningless. One face per frame ("crops" mode:
every frame is a face crop); --haar-frames also times the Haar detector on larger frames.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def build_repository(workdir: Path, clip_model: str) -> Path:
    from fer_triton.benchmarks.random_model import export_random_repository

    return export_random_repository(workdir, clip_model, source="stream_capacity")


def write_cameras(workdir: Path, count: int, frames: int, size: int, fps: float) -> list[Path]:
    """MJPG files of ``frames`` drawn faces, written at ``fps`` (what a seconds reclassify policy counts)."""
    import cv2

    from fer_triton.synthetic import draw_faces

    paths = []
    for c in range(count):
        path = workdir / f"cam{c}_{fps:g}fps_{size}px.avi"
        if not path.exists() or cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) < frames:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
            for face in draw_faces(frames, size, seed=c)[0]:
                writer.write(cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
            writer.release()
        paths.append(path)
    return paths


def server_times(client) -> dict[str, dict[str, float]]:
    """Cumulative Triton statistics per model: requests, executions, queue and compute nanoseconds."""
    stats = client.triton.get_inference_statistics(as_json=True)
    out = {}
    for model in stats.get("model_stats", []):
        inf = model.get("inference_stats", {})
        get = lambda key, field: float(inf.get(key, {}).get(field, 0))  # noqa: E731
        out[model["name"]] = {"requests": get("success", "count"), "executions": float(model.get("execution_count", 0)),
                              "queue_ns": get("queue", "ns"), "compute_ns": sum(get(k, "ns") for k in (
                                  "compute_input", "compute_infer", "compute_output"))}
    return out


def server_breakdown(before: dict, after: dict) -> dict[str, dict[str, float]]:
    rows = {}
    for name, end in after.items():
        start = before.get(name, {k: 0.0 for k in end})
        requests = end["requests"] - start["requests"]
        executions = end["executions"] - start["executions"]
        if requests <= 0:
            continue
        rows[name] = {"requests": requests, "executions": executions,
                      "queue_ms_per_request": (end["queue_ns"] - start["queue_ns"]) / requests / 1e6,
                      "compute_ms_per_execution": (end["compute_ns"] - start["compute_ns"]) / max(1, executions) / 1e6}
    return rows


def delayed_cameras(videos: list[Path], fps: float, stagger_s: float) -> list:
    """The videos as paced cameras, camera c of N starting c * stagger_s / N seconds after the first (so
    their faces do not all appear, and are not all classified again, at the same instant)."""
    from fer_triton.client import parse_sources
    from fer_triton.client.sources import FrameSource, open_source

    class DelayedCamera(FrameSource):
        def __init__(self, spec, delay_s: float):
            super().__init__(spec)
            self.delay_s, self._inner = delay_s, None

        def open(self) -> None:
            self._inner = open_source(self.spec, fps=fps)
            self.live = self._inner.live

        @property
        def read_ms(self) -> float:
            return getattr(self._inner, "read_ms", 0.0)

        def frames(self):
            time.sleep(self.delay_s)
            yield from self._inner.frames()
            self.end_reason = self._inner.end_reason

        def close(self) -> None:
            if self._inner is not None:
                self._inner.close()

    specs = parse_sources([str(v) for v in videos])
    return [DelayedCamera(spec, c * stagger_s / len(specs)) for c, spec in enumerate(specs)]


def run_cameras(url: str, videos: list[Path], fps: float, seconds: float, batch: int, in_flight: int,
                reclassify: str | None = None, stagger_s: float = 0.0, model: str = "cafe") -> dict:
    from fer_triton.client import FerClient, StreamConfig, StreamPipeline

    config = StreamConfig(detector="crops", fps=fps, live_drop="oldest", batch_size=batch, max_in_flight=in_flight,
                          queue_frames=2, detect_workers=2, reclassify=reclassify)
    pipeline = StreamPipeline(delayed_cameras(videos, fps, stagger_s), url, config=config, out=io.StringIO())
    import threading

    threading.Timer(seconds, pipeline.stop).start()
    with FerClient(url) as probe:
        before = server_times(probe)
        summary = pipeline.run()
        after = server_times(probe)
    stats = summary.stats
    total = summary.accounting
    server = server_breakdown(before, after)
    elapsed = stats.elapsed()
    requests = server.get(model, {}).get("requests", 0.0)  # what Triton itself counted for the ensemble
    return {"load_avg_1min": round(os.getloadavg()[0], 1),  # the CPU may be shared: say how busy it was
        "cameras": len(videos), "fps": fps, "reclassify_every": reclassify or "off (every face)",
        "stagger_s": stagger_s,
        "seconds": round(elapsed, 1),
        "frames_read": total.frames_read, "frames_dropped": total.frames_dropped, "results": total.results,
        "errors": total.errors, "balanced": total.balanced,
        "faces_per_s": round(total.results / elapsed, 2),
        "faces_sent": total.faces_sent,
        "requests": int(requests),
        "faces_sent_per_camera_s": round(total.faces_sent / len(videos) / elapsed, 2),
        "requests_per_camera_s": round(requests / len(videos) / elapsed, 2),
        "p50_ms": round(stats.latency(50) or float("nan"), 1), "p99_ms": round(stats.latency(99) or float("nan"), 1),
        "client_read_ms": round(stats.timing("read") or float("nan"), 2),
        "client_detect_ms": round(stats.timing("detect") or float("nan"), 2),
        "request_ms": round(stats.timing("request") or float("nan"), 1),
        "server": server,
    }


def time_haar(frames: int, size: tuple[int, int]) -> float:
    from fer_triton.client.faces import HaarDetector, crop_face
    from fer_triton.synthetic import draw_faces

    detector = HaarDetector(min_face=40)
    faces = draw_faces(frames, 160, seed=1)[0]
    start = time.perf_counter()
    for face in faces:
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        frame[100:260, 200:360] = face
        for box in detector.detect(frame):
            crop_face(frame, box, 224, 0.1)
    return (time.perf_counter() - start) / frames * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", default="1,2,3,4", help="camera counts to try, comma separated")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second per camera")
    parser.add_argument("--seconds", type=float, default=20.0, help="streaming time per camera count")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--reclassify-every", metavar="N|Ns",
                        help="track faces and classify a track every N frames or N seconds (1s); default: every face")
    parser.add_argument("--stagger", type=float, default=0.0, metavar="SECONDS",
                        help="start the cameras spread over this many seconds (0: all at once, every camera's "
                             "face then appears and is classified again at the same instant)")
    parser.add_argument("--frame-size", type=int, default=224, help="side of the (square) camera frames")
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu")
    parser.add_argument("--haar-frames", type=int, default=30, help="frames to time the Haar detector on (0: skip)")
    parser.add_argument("--workdir", type=Path, help="keep the repository and videos here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from fer_triton.server import TritonServer, free_port

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stream-capacity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    repository = workdir / "model_repository"
    if not repository.exists():
        print(f"exporting {args.clip_model} (RANDOM weights) to {repository} ...", flush=True)
        repository = build_repository(workdir, args.clip_model)
    print(f"  ready after {time.perf_counter() - t0:.0f}s", flush=True)
    counts = [int(c) for c in args.cameras.split(",")]
    frames = int(args.fps * args.seconds * 1.5) + 10  # more than a run needs: runs end by time, not by file end
    videos = write_cameras(workdir, max(counts), frames, args.frame_size, args.fps)
    report = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "model": f"{args.clip_model} + ResNet-18 + head, RANDOM weights", "runs": []}
    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        from fer_triton.client import FerClient
        from fer_triton.synthetic import draw_faces

        with FerClient(server.grpc_url) as client:  # warm up every model instance
            client.infer(draw_faces(8, 224)[0])
        for count in counts:
            run = run_cameras(server.grpc_url, videos[:count], args.fps, args.seconds, args.batch_size, args.in_flight,
                              args.reclassify_every, args.stagger)
            run["sustained"] = run["frames_dropped"] == 0 and run["p99_ms"] < 1000 and run["errors"] == 0
            report["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "server"}), flush=True)
            for name, row in run["server"].items():
                print(f"    {name:<18} {row['requests']:6.0f} req {row['executions']:6.0f} exec  "
                      f"queue {row['queue_ms_per_request']:7.1f} ms/req  compute {row['compute_ms_per_execution']:7.1f} "
                      "ms/exec", flush=True)
    if args.haar_frames:
        report["haar_ms_per_frame_480x360"] = round(time_haar(args.haar_frames, (480, 360)), 2)
        print(f"Haar detect + crop on 480x360 frames: {report['haar_ms_per_frame_480x360']} ms/frame")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
