"""The CLI as a user runs it: export (224 and 112 wire sizes), serve (start, errors, SIGTERM), infer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import pytorch_probabilities
from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.images import read_face
from fer_triton.server import TritonServer, TritonServerError, free_port
from fer_triton.synthetic import draw_faces

FER_TRITON = [sys.executable, "-m", "fer_triton"]


def test_export_112_wire_size_serves_resized_faces(tiny_checkpoint, tmp_path, server_factory):
    out = tmp_path / "repo112"
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(out), "--wire-size", "112"])
    assert result.exit_code == 0, result.output
    assert "cafe_clip_encoder" in result.output and "max |diff|" in result.output
    server = server_factory(out)
    faces, _ = draw_faces(3, 112, seed=7)
    with FerClient(server.grpc_url) as client:
        assert client.info().wire_size == 112
        served = client.infer(faces).probabilities
    assert np.abs(served - pytorch_probabilities(tiny_checkpoint, faces)).max() < 1e-4


def test_export_fails_loudly_above_tolerance_and_writes_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(out), "--atol", "1e-12"])
    assert result.exit_code != 0
    assert "differs from PyTorch" in result.output
    assert not (out / "cafe").exists()


def test_export_refuses_files_that_are_not_cafe_checkpoints(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, ["export", "-c", str(bogus), "-o", str(tmp_path / "r")])
    assert result.exit_code != 0 and "not a readable torch checkpoint" in result.output
    result = CliRunner().invoke(cli, ["export", "-c", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "r")])
    assert result.exit_code != 0 and "checkpoint not found" in result.output


def test_export_refuses_to_overwrite_without_flag(tiny_checkpoint, tiny_repository):
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(tiny_repository)])
    assert result.exit_code != 0 and "--overwrite" in result.output


def test_server_errors_name_the_problem(tmp_path, repository_copy):
    with pytest.raises(TritonServerError, match="model repository not found"):
        TritonServer(tmp_path / "nowhere").start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TritonServerError, match="holds no model"):
        TritonServer(tmp_path / "empty").start()
    bad = tmp_path / "bad"
    shutil.copytree(repository_copy, bad)
    (bad / "cafe_head" / "config.pbtxt").write_text("name: 'cafe_head'\nmax_batch_size: lots\n")
    with pytest.raises(TritonServerError, match=r"invalid model config .*cafe_head/config.pbtxt"):
        TritonServer(bad).start()


def test_port_in_use_is_reported(repository_copy):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TritonServerError, match=f"gRPC port {port} on 127.0.0.1 is in use"):
            TritonServer(repository_copy, grpc_port=port, http_port=free_port(), metrics_port=free_port()).start()


def test_serve_refuses_one_port_for_two_endpoints_before_starting(repository_copy):
    port = str(free_port())
    result = CliRunner().invoke(cli, ["serve", "-r", str(repository_copy), "--grpc-port", port,
                                      "--http-port", port])
    assert result.exit_code == 1
    assert f"gRPC and HTTP both on port {port}: give each endpoint its own port" in result.output
    assert "Usage" not in result.output  # not tritonserver's usage text


def test_model_that_fails_to_load_reports_tritons_reason(repository_copy):
    (repository_copy / "cafe_mask_net" / "1" / "model.onnx").write_bytes(b"corrupt")
    server = TritonServer(repository_copy, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with pytest.raises(TritonServerError) as err:
        server.start(timeout_s=120)
    message = str(err.value)
    assert "failed to load" in message and "cafe_mask_net" in message
    assert not server.is_running()


def _wait_for_line(proc, needle, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got:\n{''.join(lines)}")


def test_serve_infer_and_sigterm_through_the_cli(tiny_repository, tiny_checkpoint, tmp_path):
    ports = [free_port() for _ in range(3)]
    serve = subprocess.Popen(
        FER_TRITON + ["serve", "-r", str(tiny_repository), "--grpc-port", str(ports[0]),
                      "--http-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(serve, "ready")
        # Images of other sizes and modes, plus one file that is not an image.
        faces, _ = draw_faces(3, 160, seed=11)
        Image.fromarray(faces[0]).save(tmp_path / "rgb.png")
        Image.fromarray(faces[1]).convert("L").save(tmp_path / "gray.jpg")
        Image.fromarray(faces[2]).convert("RGBA").save(tmp_path / "rgba.png")
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # 24 KB, Pillow's decompression-bomb guard
        images = [tmp_path / n for n in ("rgb.png", "gray.jpg", "broken.jpg", "bomb.png", "rgba.png")]
        run = subprocess.run(FER_TRITON + ["infer", "-u", f"127.0.0.1:{ports[0]}", "--json", *map(str, images)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr  # partial success: one unreadable image
        records = [json.loads(line) for line in run.stdout.splitlines()]
        by_name = {Path(r["image"]).name: r for r in records}
        assert "broken.jpg" in by_name["broken.jpg"]["error"]
        assert "bomb.png" in by_name["bomb.png"]["error"] and "--max-pixels" in by_name["bomb.png"]["error"]
        ok = [n for n in ("rgb.png", "gray.jpg", "rgba.png")]
        wire = np.stack([read_face(tmp_path / n, 224) for n in ok])
        expected = pytorch_probabilities(tiny_checkpoint, wire)
        served = np.array([[by_name[n]["probabilities"][c] for c in by_name[n]["probabilities"]] for n in ok])
        assert np.abs(served - expected).max() < 1e-4
    finally:
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert "stopped (exit code 0)" in out


SHORT_FLAGS = {"-u": {"--url"}, "-m": {"--model"}, "-x": {"--model-version"}, "-r": {"--repository"},
               "-c": {"--checkpoint"}, "-d": {"--data"}, "-o": {"--output"}, "-w": {"--workdir"},
               "-b": {"--batch-size", "--batch-sizes"}, "-v": {"--verbose"}, "-n": {"--faces"}, "-h": {"--help"}}


def test_each_short_flag_means_one_thing_in_every_command():
    """tritonclient's and optimum-cli's conventions, once: see fer_triton/options.py."""
    import click

    seen = {}
    for name, command in cli.commands.items():
        for param in command.get_params(click.Context(command)):
            if not isinstance(param, click.Option):
                continue
            shorts = [o for o in param.opts + param.secondary_opts if len(o) == 2]
            longs = {o for o in param.opts if o.startswith("--")}
            for short in shorts:
                assert short in SHORT_FLAGS, f"{name}: {short} is not one of the project's short flags"
                assert longs & SHORT_FLAGS[short], f"{name}: {short} means {longs}, elsewhere {SHORT_FLAGS[short]}"
                seen.setdefault(short, set()).add(name)
    assert {"infer", "stream", "retrain", "rollback", "drift", "evaluate"} <= seen["-u"]
    assert {"infer", "stream", "retrain", "serve", "demo", "train", "evaluate", "explain"} <= seen["-v"]
