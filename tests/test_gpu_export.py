"""GPU export: configs parse against Triton's schema, the real server reads the variants, the FP16
check runs on the CPU, served engines are compared with FP32, and TensorRT's absence is explained.

No GPU, TensorRT or onnxruntime Triton backend exists here: GPU configs are checked against Triton's
own protobuf schema and read (not run) by the real tritonserver.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from conftest import pytorch_probabilities
from fer_triton.cli import cli
from fer_triton.client.grpc_client import FerClient
from fer_triton.export import gpu, onnx_chain, precision, tensorrt
from fer_triton.export.repository import RepositoryLayout
from fer_triton.server import TritonServerError
from fer_triton.synthetic import draw_faces

LAYOUT = RepositoryLayout()
STAGES = LAYOUT.stages


@pytest.fixture(scope="module")
def both_repository(tmp_path_factory, tiny_checkpoint):
    """`fer-triton export --target both` as a user runs it: CPU config.pbtxt + GPU configs/<variant>.pbtxt."""
    out = tmp_path_factory.mktemp("gpu") / "model_repository"
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(out), "--target", "both"])
    assert result.exit_code == 0, result.output
    assert "FP16 ONNX" in result.output and "PASS" in result.output  # the precision check ran and printed
    assert "--model-config-name" in result.output
    return out


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _config(repo: Path, stage: str, variant: str) -> mc.ModelConfig:
    return _parse(repo / STAGES[stage] / "configs" / f"{variant}.pbtxt")


def test_every_config_of_both_flavours_parses_against_tritons_schema(both_repository):
    configs = sorted(both_repository.glob("*/config.pbtxt")) + sorted(both_repository.glob("*/configs/*.pbtxt"))
    # 5 models + the site head and the sites ensemble, + the detector nets (3) and cafe_frames (export/detector.py)
    assert len(configs) == 7 + 4 + (5 + 4) * len(gpu.VARIANTS)
    for path in configs:
        cfg = _parse(path)  # raises ParseError on any field Triton's schema does not have
        model_dir = path.parent if path.name == "config.pbtxt" else path.parent.parent
        assert cfg.name == model_dir.name
    cpu = _parse(both_repository / STAGES["clip_encoder"] / "config.pbtxt")
    assert cpu.backend == "python"  # the CPU flavour stays the default config


def test_gpu_variants_use_the_expected_engines(both_repository):
    ensemble = _parse(both_repository / "cafe" / "config.pbtxt")
    for variant in gpu.NATIVE_VARIANTS:  # gpu_python: tests/test_gpu_python.py
        for stage, name in STAGES.items():
            cfg = _config(both_repository, stage, variant)
            trt_plan = variant == "tensorrt" and stage in gpu.TRT_STAGES
            assert cfg.platform == ("tensorrt_plan" if trt_plan else "onnxruntime_onnx")
            assert cfg.default_model_filename == ("model.plan" if trt_plan else "model.onnx")
            assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
            assert cfg.max_batch_size == 256 >= ensemble.max_batch_size
            assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 64, 128, 256]
            # Warm-up feeds exactly the model's inputs, at batch 1 and the TensorRT opt batch.
            assert [w.batch_size for w in cfg.model_warmup] == [1, 32]
            for warmup in cfg.model_warmup:
                assert {k: list(v.dims) for k, v in warmup.inputs.items()} == {i.name: list(i.dims) for i in cfg.input}
            accelerators = cfg.optimization.execution_accelerators.gpu_execution_accelerator
            if variant == "gpu_trt" and stage in gpu.TRT_STAGES:
                (trt,) = accelerators
                assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
                assert trt.parameters["trt_engine_cache_enable"] == "true"
                # One folder level (ONNX Runtime creates only the last one); engines differ by graph name.
                assert trt.parameters["trt_engine_cache_path"] == gpu.GPUOptions.trt_cache_path
                assert trt.parameters["trt_profile_max_shapes"] == "pixels:256x3x224x224"
            else:
                assert len(accelerators) == 0
            # The CUDA EP picks cuDNN algorithms by heuristic, not an exhaustive search per batch shape.
            assert cfg.parameters["cudnn_conv_algo_search"].string_value == ("" if trt_plan else "1")
            if stage in ("head", "mask_net"):  # retrain's versions: the previous stays loaded in every flavour
                assert cfg.version_policy.latest.num_versions == 2


def test_cpu_flavour_of_a_both_export_still_serves(both_repository, server_factory, tiny_checkpoint):
    server = server_factory(both_repository)
    faces, _ = draw_faces(4, 224, seed=2)
    with FerClient(server.grpc_url) as client:
        served = client.infer(faces).probabilities
    assert np.abs(served - pytorch_probabilities(tiny_checkpoint, faces)).max() < 1e-4


def test_model_config_name_makes_real_triton_load_the_gpu_variant(both_repository, server_factory):
    # This CPU build of tritonserver has neither the onnxruntime nor the tensorrt backend: its refusal
    # proves it read configs/tensorrt.pbtxt (both platforms) instead of the python-backend config.pbtxt.
    with pytest.raises(TritonServerError) as err:
        server_factory(both_repository, extra_args=["--model-config-name=tensorrt"])
    message = str(err.value)
    assert "backend 'onnxruntime'" in message and "backend 'tensorrt'" in message
    assert all(name in message for name in STAGES.values())


def test_gpu_only_target_makes_the_gpu_config_the_default(repository_copy):
    ensemble_before = (repository_copy / "cafe" / "config.pbtxt").read_text()
    opts = gpu.GPUOptions(default_variant="gpu_trt", instances=2, gpus=(0, 1))
    gpu.write_gpu_configs(repository_copy, wire_size=224, num_classes=7, ensemble_max_batch_size=64,
                          opts=opts, gpu_only=True)
    for stage, name in STAGES.items():
        default = _parse(repository_copy / name / "config.pbtxt")
        assert default == _config(repository_copy, stage, "gpu_trt")
        assert default.platform == "onnxruntime_onnx"
        assert [(g.count, list(g.gpus)) for g in default.instance_group] == [(2, [0, 1])]
        assert not list((repository_copy / name).glob("*/model.py"))  # no python backend left
        assert (repository_copy / name / "1" / "model.onnx").is_file()
    assert (repository_copy / "cafe" / "config.pbtxt").read_text() == ensemble_before


@pytest.mark.parametrize("options,message", [
    (dict(max_batch_size=32, opt_batch_size=16), "below the ensemble's max batch size 64"),
    (dict(precision="int4"), "GPU precision must be one of"),
    (dict(opt_batch_size=512), "1 <= opt (512) <= max (256)"),
    (dict(default_variant="cuda"), "default GPU variant must be one of"),
])
def test_bad_gpu_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gpu.GPUOptions(**options).validate(64)


def test_export_refuses_an_unknown_target(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "r"),
                                      "--target", "tpu"])
    assert result.exit_code != 0 and "'tpu' is not one of" in result.output
    assert not (tmp_path / "r").exists()


# -- precision ------------------------------------------------------------------------------------

def test_fp16_check_runs_the_fp16_graphs_on_cpu(tiny_repository, tmp_path):
    paths = onnx_chain.repository_graphs(tiny_repository)
    faces, _ = draw_faces(12, 224, seed=4)
    report = precision.check_fp16_onnx(paths, faces, tmp_path)
    print(report.summary())
    assert report.faces == 12 and report.passed
    assert report.top1_agreement == 1.0
    # Really a different engine: FP16 moves the probabilities, a little.
    assert 0 < report.max_prob_diff < 1e-2
    converted = onnx.load(str(tmp_path / "clip_encoder.fp16.onnx"))
    assert {i.data_type for i in converted.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stay FP32

    strict = dataclasses.replace(report, max_prob_diff_allowed=0.0)  # the same numbers, a zero tolerance
    assert not strict.passed
    with pytest.raises(precision.PrecisionCheckError, match="FAIL"):
        strict.raise_if_failed()


def test_compare_counts_top1_flips_and_fails_on_nan():
    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    candidate = reference.copy()
    candidate[3] = [0.4, 0.5, 0.1]  # one face's top class flips
    report = precision.compare(reference, candidate, "test", min_top1_agreement=0.9)
    assert report.top1_agreement == 0.75 and report.max_prob_diff == pytest.approx(0.1)
    assert not report.passed
    candidate[0, 0] = np.nan
    assert not precision.compare(reference, candidate, "nan").passed
    with pytest.raises(ValueError, match="one shape"):
        precision.compare(reference, reference[:2], "short")


def test_check_served_compares_the_server_with_fp32_onnx(triton_server, tiny_repository, tmp_path):
    faces, _ = draw_faces(10, 224, seed=6)
    same = precision.check_served(triton_server.grpc_url, tiny_repository, faces)
    assert same.passed and same.top1_agreement == 1.0 and same.max_prob_diff < 1e-5

    # A reference whose head is negated disagrees with what is served: the check must fail.
    other = tmp_path / "repo"
    shutil.copytree(tiny_repository, other)
    head = other / STAGES["head"] / "1" / "model.onnx"
    graph = onnx.load(str(head))
    for init in graph.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(graph, str(head))
    differs = precision.check_served(triton_server.grpc_url, other, faces)
    assert not differs.passed and differs.top1_agreement < 0.5

    # A reduced-precision export cannot be the FP32 reference.
    ensemble = other / "cafe" / "config.pbtxt"
    cfg = text_format.Parse(ensemble.read_text(), mc.ModelConfig())
    cfg.parameters["fer_triton"].string_value = '{"precision": "int8"}'
    ensemble.write_text(text_format.MessageToString(cfg))
    with pytest.raises(ValueError, match="exported in int8: the reference must be an FP32 export"):
        precision.check_served(triton_server.grpc_url, other, faces)


def test_check_precision_command(triton_server, tiny_repository):
    result = CliRunner().invoke(cli, ["check-precision", "-u", triton_server.grpc_url, "-r", str(tiny_repository),
                                      "-n", "6"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%" in result.output and "PASS" in result.output
    missing = CliRunner().invoke(cli, ["check-precision", "-u", triton_server.grpc_url, "-r", "/nonexistent"])
    assert missing.exit_code == 1 and "/nonexistent/cafe/config.pbtxt is missing" in missing.output


# -- TensorRT -------------------------------------------------------------------------------------

def _tensorrt_present() -> bool:
    try:
        tensorrt.find_builder()
    except tensorrt.TensorRTUnavailableError:
        return False
    return True


@pytest.mark.skipif(_tensorrt_present(), reason="TensorRT and a GPU are present: plans can really be built")
def test_build_trt_says_tensorrt_and_gpu_are_missing(both_repository):
    result = CliRunner().invoke(cli, ["build-trt", "-r", str(both_repository)])
    assert result.exit_code == 1
    assert "TensorRT is not installed here" in result.output and "GPU" in result.output
    assert "nvcr.io/nvidia/tensorrt:" in result.output  # says where to run it instead
    assert not list(both_repository.glob("*/*/model.plan"))


def test_build_trt_checks_the_repository_first(repository_copy):
    # A CPU-only export has no GPU configs: the message says how to get them.
    with pytest.raises(FileNotFoundError, match="--target both"):
        tensorrt.build_plans(repository_copy)
    with pytest.raises(ValueError, match="below the ensemble's max_batch_size 64"):
        tensorrt.build_plans(repository_copy, profile=tensorrt.Profile(1, 8, 32))


@pytest.mark.parametrize("text,message", [("1/32", "MIN/OPT/MAX"), ("8/4/256", "1 <= min <= opt <= max"),
                                          ("0/1/2", "1 <= min"), ("a/b/c", "MIN/OPT/MAX")])
def test_profile_parse_refuses_bad_profiles(text, message):
    with pytest.raises(ValueError, match=message):
        tensorrt.Profile.parse(text)


def test_trtexec_command_carries_the_profile_and_precision():
    cmd = tensorrt.trtexec_command("trtexec", Path("m.onnx"), Path("m.plan"), [("pixels", [3, 224, 224])],
                                   tensorrt.Profile.parse("1/32/256"), "fp16")
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan"]
    assert "--minShapes=pixels:1x3x224x224" in cmd and "--optShapes=pixels:32x3x224x224" in cmd
    assert "--maxShapes=pixels:256x3x224x224" in cmd and "--fp16" in cmd
    assert "--fp16" not in tensorrt.trtexec_command("trtexec", Path("m.onnx"), Path("m.plan"),
                                                    [("pixels", [3, 224, 224])], tensorrt.Profile(), "fp32")


def test_plan_config_is_refitted_to_the_profile(both_repository):
    path = both_repository / STAGES["clip_encoder"] / "configs" / "tensorrt.pbtxt"
    cfg = tensorrt._plan_config(path, tensorrt.Profile(1, 16, 128))
    assert cfg.max_batch_size == 128 and cfg.platform == "tensorrt_plan"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [32, 64, 128]
    assert [w.batch_size for w in cfg.model_warmup] == [1, 32]
    with pytest.raises(ValueError, match="not a tensorrt_plan config"):
        tensorrt._plan_config(both_repository / STAGES["head"] / "configs" / "tensorrt.pbtxt", tensorrt.Profile())


@pytest.mark.slow
def test_full_size_vit_b32_exports_for_gpu_with_a_passing_fp16_check(tmp_path):
    """The true ViT-B-32-quickgelu (random weights: numerics only, not accuracy) through --target both."""
    import warnings

    from fer_triton.checkpoint import CAFECheckpoint, build_untrained
    from fer_triton.clip_loader import DEFAULT_CLIP_MODEL
    from fer_triton.export.exporter import export_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, init = build_untrained(DEFAULT_CLIP_MODEL, None, seed=0)
    checkpoint = CAFECheckpoint.from_model(model, clip_model=DEFAULT_CLIP_MODEL, clip_pretrained=None,
                                           mask_net_init=init).save(tmp_path / "cafe_vit_b32.pt")
    result = export_checkpoint(checkpoint, tmp_path / "repo", target="both")
    report = result.gpu_precision
    print(report.summary())
    assert report.passed and report.faces == 32 and 0 < report.max_prob_diff < 1e-2
    assert len(result.gpu_configs) == (5 + 4) * len(gpu.VARIANTS)  # + the 3 detector nets and cafe_frames


def test_gpu_configs_command_adds_a_set_sized_for_one_gpu_type(repository_copy, server_factory):
    runner = CliRunner()
    # A CPU-only export gets the default GPU configs, then a smaller set named "t4".
    default = runner.invoke(cli, ["gpu-configs", "-r", str(repository_copy)])
    assert default.exit_code == 0, default.output
    small = runner.invoke(cli, ["gpu-configs", "-r", str(repository_copy), "--name", "t4",
                                "--gpu-max-batch-size", "64", "--gpu-opt-batch-size", "16", "--gpu-instances", "2"])
    assert small.exit_code == 0, small.output
    assert "gpu_t4, gpu_trt_t4, tensorrt_t4" in small.output
    for stage in STAGES:
        assert _config(repository_copy, stage, "gpu").max_batch_size == 256
        for variant in ("gpu_t4", "gpu_trt_t4", "tensorrt_t4"):
            cfg = _config(repository_copy, stage, variant)
            assert cfg.max_batch_size == 64 and list(cfg.dynamic_batching.preferred_batch_size) == [16, 32, 64]
            assert [w.batch_size for w in cfg.model_warmup] == [1, 16]
            assert [g.count for g in cfg.instance_group] == [2]
    assert _config(repository_copy, "mask_net", "tensorrt_t4").default_model_filename == "model_t4.plan"
    trt = _config(repository_copy, "clip_encoder", "gpu_trt_t4").optimization.execution_accelerators
    assert trt.gpu_execution_accelerator[0].parameters["trt_engine_cache_path"] == "/tmp/fer-triton-trt-cache_t4"
    # The real server reads the named set too (and stops at the missing onnxruntime backend).
    with pytest.raises(TritonServerError, match="backend 'onnxruntime'"):
        server_factory(repository_copy, extra_args=["--model-config-name=gpu_t4"])


@pytest.mark.parametrize("args,message", [
    (["--name", "T 4"], "lower-case letters, digits"),
    (["--gpu-max-batch-size", "32", "--gpu-opt-batch-size", "8"], "below the ensemble's max batch size 64"),
])
def test_gpu_configs_command_refuses_bad_input(repository_copy, args, message):
    result = CliRunner().invoke(cli, ["gpu-configs", "-r", str(repository_copy), *args])
    assert result.exit_code == 1 and message in result.output
    assert not list(repository_copy.glob("*/configs/*.pbtxt"))  # nothing half-written


def test_build_trt_for_a_named_set_needs_that_set(repository_copy):
    with pytest.raises(FileNotFoundError, match="gpu-configs --name a10"):
        tensorrt.build_plans(repository_copy, name="a10")
