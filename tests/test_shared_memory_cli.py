"""`fer-triton stream` and `fer-triton bench` with --shared-memory against the real tritonserver, and the
refusal of CUDA shared memory where it cannot work (this machine has no GPU)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.client.shared_memory import (CudaShmPool, SharedMemoryError, check_shared_memory, cuda_unavailable,
                                             shared_memory_kind)
from fer_triton.synthetic import draw_face


def _stream(folder, url, out, *extra):
    result = CliRunner().invoke(cli, ["stream", f"desk={folder}", "-u", url, "--detector", "crops", "-o", str(out),
                                      "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines() if '"label"' in line]


def test_stream_through_shared_memory_equals_the_grpc_path(triton_server, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(draw_face(i, 96)).save(folder / f"{i}.png")
    grpc = _stream(folder, triton_server.grpc_url, tmp_path / "grpc.jsonl")
    shm = _stream(folder, triton_server.grpc_url, tmp_path / "shm.jsonl", "--shared-memory", "-b", "4")
    assert len(shm) == len(grpc) == 6
    for a, b in zip(grpc, shm):
        assert (a["frame"], a["label"]) == (b["frame"], b["label"])
        assert a["probabilities"] == b["probabilities"]  # the same pixels reached the model: identical answers
    with FerClient(triton_server.grpc_url) as client:  # the stream's regions were unregistered at its end
        assert not client.triton.get_system_shared_memory_status(as_json=True).get("regions")


def test_bench_with_shared_memory_prints_both_transports(tiny_checkpoint, tiny_repository, tmp_path):
    shutil.copytree(tiny_repository, tmp_path / "repositories" / "fp32-staged")
    out = tmp_path / "result.json"
    result = CliRunner().invoke(cli, ["bench", "--model-size", "tiny", "-c", str(tiny_checkpoint), "-w", str(tmp_path),
                                      "--variants", "fp32-staged", "-b", "4", "--concurrency", "1", "--duration", "0.3",
                                      "--min-requests", "2", "--no-baselines", "--no-perf-analyzer", "--reuse-exports",
                                      "--shared-memory", "--json", str(out)])
    assert result.exit_code == 0, result.output
    points = json.loads(out.read_text())["served"][0]["points"]
    assert [p["transport"] for p in points] == ["gRPC", "system shm"]
    assert all(p["faces_per_s"] > 0 and p["errors"] == 0 and p["requests"] >= 2 for p in points)
    assert "served fp32-staged (system shm)" in result.output and "(system shm): " in result.output


@pytest.mark.skipif(cuda_unavailable() is None, reason="a usable GPU is here: the refusal cannot be seen")
def test_cuda_shared_memory_is_refused_saying_why(triton_server, tmp_path):
    reason = cuda_unavailable()
    with pytest.raises(SharedMemoryError, match="CUDA shared memory is not available") as err:
        check_shared_memory("cuda")
    assert reason in str(err.value) and "system" in str(err.value)
    with pytest.raises(SharedMemoryError, match="not available"):
        FerClient(triton_server.grpc_url, shared_memory="cuda")
    with pytest.raises(SharedMemoryError, match="not available"):  # the pool itself refuses before any CUDA call
        CudaShmPool(None, 1024)
    for args in (["stream", f"cam={tmp_path}", "-u", triton_server.grpc_url, "--shared-memory", "cuda"],
                 ["bench", "--model-size", "tiny", "-w", str(tmp_path), "--shared-memory", "cuda"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and "CUDA shared memory is not available" in result.output, result.output
    assert shared_memory_kind(True) == "system" and shared_memory_kind(False) is None
    with pytest.raises(ValueError, match="'system' or 'cuda'"):
        shared_memory_kind("gpu")
