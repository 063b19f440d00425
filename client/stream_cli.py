"""`fer-triton stream`: many cameras, files or folders -> faces -> Triton gRPC -> JSON Lines."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fer_triton.options import max_pixels_option, verbose_option


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("-u", "--url", "urls", multiple=True, default=["127.0.0.1:8001"], show_default=True,
              help="Triton gRPC address; repeat for several servers (round robin + failover).")
@click.option("-m", "--model", default="cafe", show_default=True, help="Ensemble name.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="JSON Lines file for results (- for stdout).")
@click.option("--detector", type=click.Choice(["crops", "haar", "mtcnn", "mtcnn-onnx"]), default="haar",
              show_default=True, help="--detect client: crops: every frame already is one face crop; haar: OpenCV; "
                                      "mtcnn: facenet-pytorch; mtcnn-onnx: the served frames model's MTCNN, here.")
@click.option("--detect", type=click.Choice(["client", "server"]), default="client", show_default=True,
              help="client: find faces here with --detector and send crops; server: send whole frames (JPEG, "
                   "--jpeg-quality) to the <model>_frames model, which finds, crops and classifies the faces.")
@click.option("--jpeg-quality", default=90, show_default=True, type=click.IntRange(1, 100),
              help="--detect server: JPEG quality of the frames sent.")
@click.option("--min-face", default=40, show_default=True, help="Smallest face to detect, in pixels.")
@click.option("--margin", default=0.1, show_default=True, help="Widen face boxes by this fraction per side.")
@click.option("-b", "--batch-size", default=16, show_default=True, help="Faces per request (across cameras).")
@click.option("--max-wait-ms", default=5.0, show_default=True, help="How long a partial batch waits for faces.")
@click.option("--in-flight", default=4, show_default=True, help="Requests on the wire at once (back-pressure).")
@click.option("--queue-frames", default=4, show_default=True, help="Frames buffered per camera.")
@click.option("--drop", "live_drop", type=click.Choice(["oldest", "newest", "block"]), default="oldest",
              show_default=True, help="Live cameras whose queue is full: drop the oldest or newest frame "
                                      "(counted), or block the reader (OpenCV/driver may then drop uncounted).")
@click.option("--fps", type=float, help="Play files at this frame rate, like live cameras (drop policy applies).")
@click.option("--detect-workers", default=2, show_default=True, help="Threads finding and cropping faces.")
@click.option("--retry-timeout", default=120.0, show_default=True,
              help="Seconds a failing request is retried (backoff, other servers) before its faces are errors.")
@click.option("--stall-timeout", default=10.0, show_default=True, help="Seconds without a frame = stalled camera.")
@click.option("--connect-wait", default=10.0, show_default=True, help="Seconds to wait for a server at start.")
@click.option("--request-timeout", default=30.0, show_default=True,
              help="Seconds a request may take. One that expires is not sent to the same server again (it may "
                   "still be computing it): another server gets it, or its faces become errors.")
@click.option("--reclassify-every", "reclassify", metavar="N|Ns",
              help="Track faces (ByteTrack) and classify a track again every N frames or N seconds (2s), or when "
                   "its box moves; other faces carry the track's last result. 0: track, classify every face.")
@click.option("--smooth", default="ema:0.3", show_default=True,
              help="Per-track smoothing with tracking: none, ema:ALPHA, ema:HALF_LIFEs (2s), window:N.")
@click.option("--save-uncertain", type=click.Path(path_type=Path, file_okay=False),
              help="Save faces the model is unsure of (and a few it is sure of) with DIR/labels.csv to label for "
                   "`fer-triton retrain --data DIR/labels.csv`.")
@click.option("--metrics-port", metavar="[HOST:]PORT",
              help="Serve Prometheus metrics per camera at http://HOST:PORT/metrics (HOST default 127.0.0.1).")
@click.option("--mqtt", metavar="URL", help="Also publish every record to an MQTT broker: "
                                            "mqtt://HOST[:PORT][/PREFIX] (topics PREFIX/CAMERA, QoS 1).")
@click.option("--progress/--no-progress", default=None, help="Live status line on stderr (default: on a terminal).")
@click.option("--stats-every", default=0.0, show_default=True,
              help="Also print the per-camera table (faces/s, p50/p99, drops) every N seconds (0: only at the end).")
@click.option("--shared-memory", type=click.Choice(["system", "cuda"]), is_flag=False, flag_value="system",
              default=None, help="Send faces through Triton's shared memory instead of the gRPC message (servers on "
                                 "this host): system (/dev/shm; the default when given alone) or cuda (GPU hosts).")
@verbose_option
@max_pixels_option
def stream(sources, urls, model, output, detector, detect, jpeg_quality, min_face, margin, batch_size, max_wait_ms, in_flight,
           queue_frames, live_drop, fps, detect_workers, retry_timeout, stall_timeout, connect_wait, request_timeout,
           reclassify, smooth, save_uncertain, metrics_port, mqtt, progress, stats_every, verbose,
           shared_memory=None):
    """Stream SOURCES through the served model and write one JSON line per face.

    A SOURCE is [ID=]LOCATION: a folder or image file, a video file, a stream URL OpenCV opens
    (rtsp://, http://...) or a camera device index (0, 1, ...). ID names the camera in the output
    (default: file stem, folder name, URL host or deviceN). SITE/ID=LOCATION (lobby/cam1=rtsp://...)
    serves that camera with the site's own head (`fer-triton sites`); the others get the base model.
    Ctrl-C stops reading and finishes what was read; a second Ctrl-C gives up on it (reported as
    unfinished).
    Exit code: 0 all good, 2 some camera, frame or face failed, 1 nothing could run.
    """
    from fer_triton.client.faces import DetectorUnavailable
    from fer_triton.client.grpc_client import FerServerError
    from fer_triton.client.pipeline import StreamConfig, StreamPipeline
    from fer_triton.client.servers import NoServerError
    from fer_triton.client.sources import parse_sources
    from fer_triton.client.stopping import StopSignals
    from fer_triton.extras import require

    try:
        specs = parse_sources(list(sources))
        config = StreamConfig(batch_size=batch_size, max_wait_ms=max_wait_ms, max_in_flight=in_flight,
                              queue_frames=queue_frames, live_drop=live_drop, detector=detector, min_face=min_face,
                              margin=margin, detect_workers=detect_workers, retry_timeout_s=retry_timeout,
                              stall_timeout_s=stall_timeout, fps=fps, connect_wait_s=connect_wait,
                              request_timeout_s=request_timeout, reclassify=reclassify, smooth=smooth,
                              detect=detect, jpeg_quality=jpeg_quality)
        config.shared_memory = shared_memory
        if shared_memory is not None:  # cuda without a usable GPU: refused here, saying why
            from fer_triton.client.shared_memory import SharedMemoryError, check_shared_memory

            try:
                check_shared_memory(shared_memory)
            except SharedMemoryError as exc:
                raise click.ClickException(str(exc)) from exc
        config.check()
        # The stream extra's optional parts: named here, before anything starts, when one is missing.
        for flag, given, module in (("--reclassify-every", reclassify, "supervision"), ("--mqtt", mqtt, "paho.mqtt"),
                                    ("--metrics-port", metrics_port, "prometheus_client")):
            if given is not None:
                require("stream", module, what=f"fer-triton stream {flag}")
        listen = None
        if metrics_port is not None:
            from fer_triton.client.stream_metrics import parse_listen

            listen = parse_listen(metrics_port)
        publisher = uncertain = None
        if mqtt is not None:
            from fer_triton.client.mqtt import MqttPublisher, MqttSettings

            publisher = MqttPublisher(MqttSettings.from_url(mqtt))
        show_progress = (sys.stderr.isatty() or stats_every > 0) if progress is None else progress
        out = sys.stdout if str(output) == "-" else open(output, "w")
        try:
            if save_uncertain is not None:
                from fer_triton.client.collect import UncertainFaces
                from fer_triton.labels import CLASSES

                uncertain = UncertainFaces(save_uncertain, CLASSES)
            if detect == "server":  # frames go to <model>_frames (client/server_detect.py)
                from fer_triton.client.server_detect import ServerDetectPipeline as StreamPipeline  # noqa: N814
            pipeline = StreamPipeline(specs, list(urls), model, config=config, out=out,
                                      progress=sys.stderr if show_progress else None, table_every_s=stats_every,
                                      uncertain=uncertain, publish=publisher.publish if publisher else None,
                                      metrics_listen=listen)
            # Ctrl-C / SIGTERM: first stops reading, second gives up, third exits (client/stopping.py).
            with StopSignals(pipeline.stop, pipeline.abort) as signals:
                summary = pipeline.run()
            summary.interrupted = summary.interrupted or signals.interrupted
            if signals.first is not None:
                summary.stopped_by = "Ctrl-C" if signals.first == "SIGINT" else signals.first
        finally:
            if out is not sys.stdout:
                out.close()
            if publisher is not None:
                publisher.close(timeout_s=10)
    except (ValueError, OSError, DetectorUnavailable, NoServerError, FerServerError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.format(), err=True)
    for extra in (publisher, uncertain):
        if extra is not None:
            click.echo(extra.summary(), err=True)
    if pipeline.info is not None and pipeline.info.random_weights:
        click.echo("WARNING: the served model uses RANDOM CLIP weights: labels are meaningless.", err=True)
    total = summary.accounting
    failed_cameras = [s for s in summary.stats.cameras.values() if s.status.startswith("failed")]
    if total.results == 0 and (failed_cameras or total.errors):
        sys.exit(1)
    if failed_cameras or total.errors or total.frames_bad or total.faces_unfinished or summary.interrupted:
        sys.exit(2)
