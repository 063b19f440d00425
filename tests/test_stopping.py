"""Ctrl-C and SIGTERM through client/stopping.py: the first signal stops (and what is running finishes),
the second gives up (and the process still writes its accounting and exits 2), the third exits at once.

Each test runs a child process. A child inherits an ignored SIGINT (pytest started in the background by
a non-interactive shell, CI): `with_default_sigint` gives it the default disposition, as a person's
terminal would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fer_triton.synthetic import draw_faces

# A child that runs like StreamPipeline.run(): a worker thread, and the main thread looping on
# `while worker.is_alive(): worker.join(0.1)` (the join a KeyboardInterrupt used to break).
CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from fer_triton.client.stopping import StopSignals

    stop, abort, drained = threading.Event(), threading.Event(), threading.Event()
    state = {"outcome": "running"}

    def work():  # until stopped; then 1.5 s to finish what was "read", unless given up
        stop.wait()
        state["stop_seen"] = time.monotonic()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if abort.is_set():
                state["outcome"] = "aborted"
                return
            time.sleep(0.01)
        state["outcome"] = "finished"

    worker = threading.Thread(target=work, daemon=True)
    with StopSignals(stop.set, abort.set) as signals:
        worker.start()
        print(json.dumps({"ready": True, "ignored": signals.ignored}), flush=True)
        while worker.is_alive():
            worker.join(0.1)
        ended = time.monotonic()
    print(json.dumps({"outcome": state["outcome"], "signals": signals.count, "first": signals.first,
                      "loop_ended_after_s": ended - state.get("stop_seen", ended)}), flush=True)
    sys.exit(2 if signals.interrupted else 0)
""")


def with_default_sigint(cmd: list[str]) -> list[str]:
    """``cmd`` run with SIGINT at its default disposition, even when this process ignores it."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *cmd]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    return env


def start(tmp_path: Path, default_sigint: bool = True) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = [sys.executable, str(script)]
    proc = subprocess.Popen(with_default_sigint(cmd) if default_sigint else cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    assert json.loads(proc.stdout.readline())["ready"]
    return proc


def finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=30)
    return json.loads(out.splitlines()[-1]), err


@pytest.fixture
def sigint_ignored():
    """This process ignores SIGINT while the test runs (as under `pytest &` in a script)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_stops_and_lets_running_work_finish(tmp_path, sig, sigint_ignored):
    proc = start(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(sig)
    result, err = finish(proc)
    took = time.monotonic() - t0
    assert proc.returncode == 2, err
    assert result["outcome"] == "finished" and result["signals"] == 1 and result["first"] == sig.name
    assert 1.4 < result["loop_ended_after_s"] < 3.0  # the loop waited for the work (no early exit) ...
    assert took < 6                                   # ... and no more
    assert f"{sig.name}: stopping: finishing what was already read" in err


def test_a_second_signal_gives_up_and_the_process_still_ends_cleanly(tmp_path, sigint_ignored):
    proc = start(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    result, err = finish(proc)
    assert proc.returncode == 2 and result["outcome"] == "aborted" and result["signals"] == 2, err
    assert "again: giving up" in err and "Aborted!" not in err and "Traceback" not in err


def test_a_third_signal_exits_at_once(tmp_path):
    script = tmp_path / "stuck.py"  # giving up hangs: the third Ctrl-C is the way out
    script.write_text(textwrap.dedent("""
        import time
        from fer_triton.client.stopping import StopSignals
        with StopSignals(lambda: None, lambda: time.sleep(60)):
            print("ready", flush=True)
            time.sleep(60)
    """))
    proc = subprocess.Popen(with_default_sigint([sys.executable, str(script)]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "SIGINT a third time: exiting now" in err


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path, sigint_ignored):
    proc = start(tmp_path, default_sigint=False)  # inherits SIG_IGN: a background job keeps ignoring Ctrl-C
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)              # SIGTERM still stops it
    result, _ = finish(proc)
    assert result["first"] == "SIGTERM" and result["outcome"] == "finished"


STREAM_CHILD = textwrap.dedent("""
    import io, json, sys
    from fer_triton.client import StreamConfig, StreamPipeline, parse_sources
    from fer_triton.client.stopping import StopSignals

    video, url, out = sys.argv[1:4]
    with open(out, "w") as f:
        pipeline = StreamPipeline(parse_sources([video]), url, out=f,
                                  config=StreamConfig(detector="crops", fps=10, live_drop="block"))
        with StopSignals(pipeline.stop, pipeline.abort) as signals:
            summary = pipeline.run()
    summary.interrupted = signals.interrupted
    total = summary.accounting
    print(json.dumps({"balanced": total.balanced, "results": total.results, "unfinished": total.faces_unfinished,
                      "frames_unfinished": total.frames_unfinished, "read": total.frames_read}), flush=True)
    print(summary.format(), file=sys.stderr)
    sys.exit(2 if summary.interrupted else 0)
""")


@pytest.mark.parametrize("signals", [1, 2])
def test_the_real_pipeline_stops_promptly_under_stop_signals(triton_server, tmp_path, signals, sigint_ignored):
    import cv2

    video = tmp_path / "hall.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for frame in draw_faces(150, 96, seed=8)[0]:  # 15 s at 10 fps
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    script, out = tmp_path / "stream_child.py", tmp_path / "out.jsonl"
    script.write_text(STREAM_CHILD)
    proc = subprocess.Popen(with_default_sigint([sys.executable, str(script), str(video), triton_server.grpc_url,
                                                 str(out)]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.1)  # the first result is out
    t0 = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    stdout, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 2, err
    result = json.loads(stdout.splitlines()[-1])
    assert result["balanced"] and 0 < result["read"] < 150 and "every face accounted for: yes" in err
    assert took < 6, f"took {took:.1f} s to stop"  # `fer-triton stream` took 10.1 s (KeyboardInterrupt in join)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[-1]["event"] == "ended" and lines[-1]["message"] == "stopped"
    if signals == 1:  # what was read is finished
        assert result["unfinished"] == result["frames_unfinished"] == 0 and result["results"] == result["read"]
    else:             # given up: every frame read is still written, as a result or as unfinished
        frames = [x for x in lines if "frame" in x]
        assert len({x["frame"] for x in frames}) == result["read"]
