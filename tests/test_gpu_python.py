"""The pip-only GPU server variant (gpu_python) and the one-shot GPU check, on this CPU-only machine.

This tritonserver (nvidia-pytriton's GPU build, no GPU here) refuses KIND_GPU instances ("has kind
KIND_GPU but no GPUs are available"), so the served test writes the variant with KIND_CPU instances
through the option a user of a CPU host would give (`gpu-configs --gpu-python-device cpu`); the
runner, its PyTorch graphs, DLPack hand-over and the ensemble are otherwise the ones a GPU host runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.export import gpu
from fer_triton.export.repository import parse_config
from fer_triton.export.torch_graphs import write_torch_graphs
from fer_triton.server import TritonServerError
from fer_triton.synthetic import draw_faces

STAGES = ("cafe_preprocess", "cafe_clip_encoder", "cafe_mask_net", "cafe_head")


@pytest.fixture(scope="module")
def python_gpu_repository(tmp_path_factory, tiny_repository, tiny_checkpoint):
    """The tiny export + gpu_python configs on KIND_CPU (FP32), PyTorch graphs for all stages but the head
    (whose runner then takes the onnxruntime fallback), and a KIND_GPU set named 'kindgpu'."""
    repo = tmp_path_factory.mktemp("gpu_python") / "model_repository"
    shutil.copytree(tiny_repository, repo)
    for args in (["--gpu-python-device", "cpu", "--gpu-python-precision", "fp32"], ["--name", "kindgpu"]):
        result = CliRunner().invoke(cli, ["gpu-configs", "-r", str(repo), *args])
        assert result.exit_code == 0, result.output
    graphs = write_torch_graphs(CAFECheckpoint.load(tiny_checkpoint).build_model(), repo)
    graphs["cafe_head"].unlink()
    return repo


def test_gpu_python_configs(python_gpu_repository):
    for stage in STAGES:
        cpu = parse_config(python_gpu_repository / stage / "configs" / "gpu_python.pbtxt")
        kind_gpu = parse_config(python_gpu_repository / stage / "configs" / "gpu_python_kindgpu.pbtxt")
        assert cpu.backend == kind_gpu.backend == "python"
        assert cpu.default_model_filename == gpu.CUDA_RUNNER_FILENAME
        assert (python_gpu_repository / stage / "1" / gpu.CUDA_RUNNER_FILENAME).is_file()
        assert kind_gpu.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"  # DLPack between stages
        assert [g.kind for g in kind_gpu.instance_group] == [gpu.mc.ModelInstanceGroup.KIND_GPU]
        assert [g.kind for g in cpu.instance_group] == [gpu.mc.ModelInstanceGroup.KIND_CPU]
        assert cpu.parameters["device"].string_value == "cpu" and kind_gpu.parameters["device"].string_value == "auto"
        reduced = stage in ("cafe_clip_encoder", "cafe_mask_net")
        assert kind_gpu.parameters["precision"].string_value == ("fp16" if reduced else "fp32")
        assert cpu.parameters["precision"].string_value == "fp32"
    engine = gpu.ServedEngine.from_config({"name": "m", "backend": "python", "instance_group": [{"kind": "KIND_GPU"}],
                                           "parameters": {"precision": {"string_value": "bf16"}}})
    assert (engine.engine, engine.precision, engine.on_gpu) == ("python-cuda", "bf16", True)


def test_gpu_python_serves_what_the_cpu_variant_serves(python_gpu_repository, triton_server, server_factory):
    with pytest.raises(TritonServerError, match="KIND_GPU but no GPUs are available"):
        server_factory(python_gpu_repository, extra_args=["--model-config-name=gpu_python_kindgpu"])
    server = server_factory(python_gpu_repository, extra_args=["--model-config-name=gpu_python"])
    faces, _ = draw_faces(5, 224, seed=21)
    with FerClient(server.grpc_url) as served, FerClient(triton_server.grpc_url) as cpu:
        got, expected = served.infer(faces, with_features=True), cpu.infer(faces, with_features=True)
        assert np.abs(got.probabilities - expected.probabilities).max() < 1e-4
        assert np.abs(got.masked_features - expected.masked_features).max() < 1e-4
        assert np.abs(served.infer(faces[:2]).probabilities - expected.probabilities[:2]).max() < 1e-4
        config = served.triton.get_model_config("cafe_clip_encoder", as_json=True)["config"]
    assert config["backend"] == "python" and config["default_model_filename"] == gpu.CUDA_RUNNER_FILENAME
    log = server.log_file.read_text()
    assert "cafe_clip_encoder version 1: torch cpu fp32 (instance kind CPU)" in log
    assert "cafe_head version 1: no model.pt2 and no onnxruntime-gpu" in log  # the logged fallback


# The dry run in a child process where the ONNX stack cannot be imported, as on a host without it (a None in
# sys.modules makes `import onnx` fail and importlib.util.find_spec answer None): the check must need none of it
# (issue #16: PyTorch plus wheels under ~60 MB). The last stdout line says whether anything replaced the Nones,
# and whether pytriton's Python package (and its client stack) was imported.
ONNX_STACK = ("onnx", "onnxruntime", "onnxscript", "onnx_ir")
_NO_ONNX_CHILD = f"""
import json, sys
BLOCKED = {ONNX_STACK!r}
sys.modules.update(dict.fromkeys(BLOCKED))
from fer_triton.cli import cli
cli.main(sys.argv[1:], prog_name="fer-triton", standalone_mode=False)
print(json.dumps({{"loaded": sorted(m for m, v in sys.modules.items() if m.split(".")[0] in BLOCKED and v),
                  "pytriton": "pytriton" in sys.modules}}))
"""


def test_gpu_check_dry_run_end_to_end(tmp_path):
    json_path = tmp_path / "check.json"
    done = subprocess.run([sys.executable, "-c", _NO_ONNX_CHILD, "gpu-check", "--dry-run", "-w", str(tmp_path / "w"),
                           "--json", str(json_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    imports = json.loads(done.stdout.strip().splitlines()[-1])
    assert imports == {"loaded": [], "pytriton": False}  # the server binary is found without importing pytriton
    table = done.stdout
    result = json.loads(json_path.read_text())
    assert "DRY RUN" in table and "took" in table
    inprocess = [r for r in result["rows"] if r["path"] == "pytorch in-process"]
    expected = {(p, b) for p in ("fp32", "fp16", "bf16") for b in (1, 4)}
    assert {(r["precision"], r["batch"]) for r in inprocess} == expected
    assert all(r["faces_per_s"] for r in inprocess if r["precision"] != "fp16")
    served = [r for r in result["rows"] if r["path"].startswith("served")]
    assert [r["path"] for r in served] == ["served gpu_python, gRPC", "served gpu_python, system shm"]
    assert all(r["faces_per_s"] > 0 and r["errors"] == 0 for r in served)
    assert {a["precision"] for a in result["agreement"]} == {"fp16", "bf16"}
    assert "bf16 vs fp32 on 16 drawn faces: top-1 agreement" in table
    assert "of the goal (20,000 faces/s on one H200)" in table and "CUDA shared memory not measured" in table
    close = [n for n in result["notes"] if n.startswith("served (fp32) vs PyTorch FP32 on 16 drawn faces")]
    assert close and close[0].endswith(": PASS")
    assert float(re.search(r"max \|dp\| (\S+) ", close[0]).group(1)) < 1e-4
    # every stage ran its PyTorch graph (no onnxruntime fallback), from a repository holding no ONNX file
    engines = [n for n in result["notes"] if n.startswith("stage engines")]
    assert engines and all(f"{stage} version 1: torch cpu fp32" in engines[0] for stage in STAGES), engines
    repository = tmp_path / "w" / "model_repository"
    assert sorted(p.name for p in repository.iterdir()) == sorted(["cafe", *STAGES])
    assert not list(repository.rglob("*.onnx")) and len(list(repository.rglob("model.pt2"))) == 4
    metadata = json.loads(parse_config(repository / "cafe" / "config.pbtxt").parameters["fer_triton"].string_value)
    assert metadata["export_max_abs_diff"] < 1e-4 and set(metadata["graph_sha256"]) == set(STAGES)


def test_published_versions_get_the_gpu_python_runner(tmp_path, tiny_checkpoint):
    model = tmp_path / "cafe_head"
    (model / "3").mkdir(parents=True)
    assert not gpu.add_cuda_runner(model / "3")  # no gpu_python config: nothing written
    assert not (model / "3" / gpu.CUDA_RUNNER_FILENAME).exists()
    (model / "configs").mkdir()
    (model / "configs" / "gpu_python.pbtxt").write_text("")
    assert gpu.add_cuda_runner(model / "3") and (model / "3" / gpu.CUDA_RUNNER_FILENAME).is_file()
    # a fine-tuned mask net (retrain/pair_publish.py) gets its PyTorch graph too, checked like the export's
    import torch

    from fer_triton.export.onnx_export import mask_net_spec
    from fer_triton.export.torch_graphs import write_spec_graph

    net = CAFECheckpoint.load(tiny_checkpoint).build_model().mask_net
    path = write_spec_graph(mask_net_spec(net, "cafe_mask_net"), model / "3")
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(torch.export.load(str(path)).module()(pixels), net.eval()(pixels))
