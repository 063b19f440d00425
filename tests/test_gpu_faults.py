"""The four faults of issue #16, each checked on the CPU (no GPU, TensorRT or onnxruntime Triton backend here):

1. gpu_trt served stale TensorRT engines: ONNX Runtime's engine cache key ignores the weights, so every
   model.onnx now carries a weights hash in its graph name (which the engine's file name includes).
2. build-trt built a plan for the latest version only while the mask net keeps two loaded; retrain
   --fine-tune-mask must refuse a server running TensorRT plans.
3. publish verification used an FP32 bound (1e-4) whatever the server ran; it now uses the served
   precision's bound plus top-1 agreement, and says what it compared.
4. cuDNN exhaustive search (config), a nested TensorRT cache folder, and build-trt's TensorRT version check.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from fer_triton.client.grpc_client import FerClient
from fer_triton.export import gpu, precision, tensorrt
from fer_triton.export.precision_names import verify_tolerance
from fer_triton.export.repository import RepositoryLayout
from fer_triton.retrain.mask_finetune import MaskFineTuneError, check_layout

LAYOUT = RepositoryLayout()
STAGES = LAYOUT.stages


def _config_dict(path: Path) -> dict:
    """A config as the server reports it over gRPC (tritonclient's as_json: proto field names)."""
    cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)


def _ort_engine_key(path: Path) -> tuple:
    """What ONNX Runtime's TensorRT EP derives a cached engine's file name from: TRTGenerateId hashes the
    model's file name, graph inputs and node output names, and the engine file name adds the graph name
    (``..._TRTKernel_graph_<graph name>_<id>_...``). ORT, CUDA and TensorRT versions are the same for
    every model of one server, so they are left out."""
    model = onnx.load(str(path))
    graph = model.graph
    outputs = tuple(o for node in graph.node for o in node.output if o)
    return path.name, tuple(i.name for i in graph.input), outputs, graph.name


def _new_mask_version(repository: Path, version: int = 2, scale: float = 1.5) -> Path:
    """Mask-net version ``version``: version 1's graph with other weights (as a fine-tune writes)."""
    src = repository / STAGES["mask_net"] / "1"
    dst = repository / STAGES["mask_net"] / str(version)
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            init.CopyFrom(numpy_helper.from_array(array * scale, init.name))
    onnx.save(model, str(dst / "model.onnx"))
    return dst


# -- 1. stale TensorRT engines ----------------------------------------------------------------------

def test_versions_with_other_weights_get_other_engine_names(repository_copy):
    v2 = _new_mask_version(repository_copy)
    v1 = repository_copy / STAGES["mask_net"] / "1"
    # The fault: everything ORT hashes is the same for both versions (only the weights differ).
    before1, before2 = _ort_engine_key(v1 / "model.onnx"), _ort_engine_key(v2 / "model.onnx")
    assert before1[:3] == before2[:3]

    # gpu-configs on an existing (unstamped) repository stamps every TensorRT stage's versions.
    gpu.add_gpu_configs(repository_copy)
    key1, key2 = _ort_engine_key(v1 / "model.onnx"), _ort_engine_key(v2 / "model.onnx")
    assert key1[3] != key2[3], "two mask-net versions with different weights would share one engine"
    base = re.sub(r"_w[0-9a-f]{16}$", "", before1[3])  # exports are stamped already; copies keep the old stamp
    for key in (key1, key2):
        assert key[3].startswith(base + "_w") and len(key[3]) == len(base) + 18
    clip = repository_copy / STAGES["clip_encoder"] / "1" / "model.onnx"
    assert "_w" in onnx.load(str(clip)).graph.name

    # Idempotent (the hash leaves the name out), and the same weights give the same name.
    assert gpu.stamp_weights_hash(v1 / "model.onnx") == key1[3]
    copy = repository_copy / "v1_copy.onnx"
    shutil.copy(v1 / "model.onnx", copy)
    model = onnx.load(str(copy))
    model.graph.name = "main_graph"
    onnx.save(model, str(copy))
    assert gpu.stamp_weights_hash(copy) == key1[3]


def test_stamping_leaves_the_computation_unchanged(tiny_repository, tmp_path):
    src = tiny_repository / STAGES["mask_net"] / "1" / "model.onnx"
    stamped = tmp_path / "model.onnx"
    shutil.copy(src, stamped)
    gpu.stamp_weights_hash(stamped)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
           for p in (src, stamped)]
    np.testing.assert_array_equal(run[0], run[1])


def test_gpu_trt_cache_is_one_folder_level_below_an_existing_parent(repository_copy):
    gpu.add_gpu_configs(repository_copy)
    gpu.add_gpu_configs(repository_copy, name="t4")
    for stage in gpu.TRT_STAGES:
        for variant, expected in (("gpu_trt", "/tmp/fer-triton-trt-cache"),
                                  ("gpu_trt_t4", "/tmp/fer-triton-trt-cache_t4")):
            path = repository_copy / STAGES[stage] / "configs" / f"{variant}.pbtxt"
            cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
            (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
            # ORT creates the folder with create_directory: the parent (/tmp) must exist without the volume.
            assert trt.parameters["trt_engine_cache_path"] == expected
            assert str(Path(expected).parent) == "/tmp"
    with pytest.raises(ValueError, match="absolute folder"):
        gpu.GPUOptions(trt_cache_path="trt-cache").validate(64)


# -- 2. plans for every loaded version ----------------------------------------------------------------

@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A TensorRT 'builder' that writes the ONNX file's name into the plan (no GPU here)."""
    built = []

    def build(onnx_path, plan_path, inputs, profile, precision_name):
        Path(plan_path).write_text(f"plan of {onnx_path} ({precision_name})")
        built.append(Path(plan_path))

    monkeypatch.setattr(tensorrt, "find_builder", lambda preference="auto": tensorrt.Builder("python"))
    monkeypatch.setattr(tensorrt, "builder_version", lambda builder: tensorrt.SERVING_TENSORRT)
    monkeypatch.setattr(tensorrt, "_build_with_python_api", build)
    return built


def test_build_trt_builds_every_version_the_policy_keeps(repository_copy, fake_tensorrt):
    gpu.add_gpu_configs(repository_copy)
    _new_mask_version(repository_copy, 2)
    _new_mask_version(repository_copy, 3)  # latest 2: versions 2 and 3 load, 1 does not
    plans = tensorrt.build_plans(repository_copy, precision="fp32")
    mask = repository_copy / STAGES["mask_net"]
    clip = repository_copy / STAGES["clip_encoder"]
    assert sorted(plans) == sorted([clip / "1" / "model.plan", mask / "2" / "model.plan", mask / "3" / "model.plan"])
    assert not (mask / "1" / "model.plan").exists()
    assert "mask_net/2/model.onnx" in (mask / "2" / "model.plan").read_text()
    # The plan's precision is recorded in its config (what the publish check reads from the server).
    cfg = text_format.Parse((mask / "configs" / "tensorrt.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.parameters[gpu.PLAN_PRECISION_PARAMETER].string_value == "fp32"
    assert cfg.version_policy.latest.num_versions == 2


def test_build_trt_refuses_another_tensorrt_than_the_serving_containers(repository_copy, fake_tensorrt, monkeypatch):
    gpu.add_gpu_configs(repository_copy)
    monkeypatch.setattr(tensorrt, "builder_version", lambda builder: "10.3")
    with pytest.raises(tensorrt.TensorRTVersionError, match="TensorRT 10.3.*TensorRT 10.5"):
        tensorrt.build_plans(repository_copy)
    assert fake_tensorrt == [] and not list(repository_copy.glob("*/*/model.plan"))
    tensorrt.build_plans(repository_copy, serving_tensorrt="10.3")  # the operator names the serving release
    assert len(fake_tensorrt) == 2
    with pytest.raises(tensorrt.TensorRTVersionError, match="cannot tell"):
        tensorrt.check_tensorrt_version(None)


@pytest.mark.parametrize("banner,version", [("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec", "10.5"),
                                            ("[TensorRT v8601] # trtexec --help", "8.6"), ("no banner", None)])
def test_trtexec_banner_gives_the_tensorrt_version(banner, version):
    assert tensorrt.parse_trtexec_version(banner) == version


def test_fine_tune_mask_refuses_a_server_running_tensorrt_plans(repository_copy):
    gpu.add_gpu_configs(repository_copy)
    configs = repository_copy / STAGES["mask_net"] / "configs"
    meta = {"layout": "staged", "precision": "fp32"}
    plan = gpu.ServedEngine.from_config(_config_dict(configs / "tensorrt.pbtxt"))
    assert plan.engine == "tensorrt_plan"
    with pytest.raises(MaskFineTuneError, match="TensorRT plan.*build-trt"):
        check_layout(meta, "cafe", plan)
    for variant in ("gpu", "gpu_trt"):  # a new model.onnx loads by itself there
        check_layout(meta, "cafe", gpu.ServedEngine.from_config(_config_dict(configs / f"{variant}.pbtxt")))
    check_layout(meta, "cafe")  # engine unknown: the layout checks alone


# -- 3. publish verification at the served precision ------------------------------------------------

def test_served_precision_is_read_from_the_loaded_variant(repository_copy, fake_tensorrt):
    gpu.add_gpu_configs(repository_copy)
    meta = {"precision": "fp32", "layout": "staged"}

    def served(variant: str) -> precision.ServedPrecision:
        paths = [repository_copy / STAGES[s] / "configs" / f"{variant}.pbtxt" for s in gpu.TRT_STAGES]
        engines = [gpu.ServedEngine.from_config(_config_dict(path)) for path in paths]
        return precision.combine_served(engines, meta)

    assert (served("gpu_trt").precision, served("gpu_trt").on_gpu) == ("fp16", True)
    assert served("gpu").precision == "fp32" and served("gpu").tolerance == verify_tolerance("fp32", on_gpu=True)
    assert served("tensorrt").precision == "fp16" and "not recorded" in served("tensorrt").source
    tensorrt.build_plans(repository_copy, precision="fp32")
    assert served("tensorrt").precision == "fp32"
    cpu = [gpu.ServedEngine.from_config(_config_dict(repository_copy / STAGES[s] / "config.pbtxt"))
           for s in gpu.TRT_STAGES]
    on_cpu = precision.combine_served(cpu, meta)
    assert (on_cpu.precision, on_cpu.on_gpu, on_cpu.tolerance) == ("fp32", False, 1e-4)
    assert precision.combine_served(cpu, {"precision": "int8"}).precision == "int8"
    assert precision.combine_served([], {}) == precision.STRICT_FP32


def test_publish_check_uses_the_served_precisions_bound():
    rng = np.random.default_rng(3)
    expected = rng.dirichlet(np.ones(7), size=8).astype(np.float32)
    fp16_like = expected + np.float32(1.5e-4) * np.sign(rng.standard_normal(expected.shape)).astype(np.float32)
    fp16 = precision.ServedPrecision("fp16", True, "cafe_mask_net: onnxruntime-tensorrt FP16")
    # The fault: the old fixed 1e-4 bound refused a correct FP16 publish.
    strict = precision.check_published(fp16_like, expected, precision.STRICT_FP32, "mask net + head")
    assert not strict.passed
    ok = precision.check_published(fp16_like, expected, fp16, "mask net + head")
    assert ok.passed
    assert "FP16 on GPU" in ok.summary() and "allowed 5e-03" in ok.summary() and "mask net + head" in ok.summary()
    # A different top-1 class fails whatever the bound.
    flipped = expected.copy()
    flipped[0] = flipped[0][::-1]
    if flipped[0].argmax() == expected[0].argmax():
        flipped[0] = np.roll(expected[0], 1)
    assert not precision.check_published(flipped, expected, fp16, "head").passed
    assert not precision.check_published(np.full_like(expected, np.nan), expected, fp16, "head").passed


def test_served_precision_of_the_cpu_server_is_strict_fp32(triton_server):
    with FerClient(triton_server.grpc_url) as client:
        served = precision.served_precision(client)
    assert served.precision == "fp32" and not served.on_gpu and served.tolerance == 1e-4
    assert "python" in served.source
