"""OpenVINO as a CPU engine (issue #17): export --engine openvino|auto, served through a REAL tritonserver.

One module-scoped repository holds two OpenVINO exports of the tiny model under two prefixes (FP32
staged, INT8 fused) and one server serves both. Outputs must equal the same files run in this process
with OpenVINO at the same precision; the export must refuse what fails the agreement bar.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from fer_triton.export.repository import RepositoryLayout, parse_config
from fer_triton.export.triton_python.openvino_model import choose_inference_precision

openvino = pytest.importorskip("openvino")
pytest.importorskip("nncf")

EXPORTS = {"ovf": dict(precision="fp32", fused=False), "ovi": dict(precision="int8", fused=True)}


def test_inference_precision_follows_the_cpu_capabilities():
    assert choose_inference_precision(["FP32", "BF16", "INT8"])[0] == "bf16"
    assert choose_inference_precision(["FP32", "INT8", "BIN"])[0] == "f32"
    assert choose_inference_precision(["FP32", "BF16"], "f32")[0] == "f32"
    precision, why = choose_inference_precision(["FP32"], "bf16")
    assert precision == "f32" and "no native BF16" in why
    with pytest.raises(ValueError, match="inference_precision"):
        choose_inference_precision(["FP32"], "fp16")


@pytest.fixture(scope="module")
def ov_repository(tmp_path_factory, tiny_checkpoint):
    from fer_triton.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("openvino") / "model_repository"
    results = {prefix: export_checkpoint(tiny_checkpoint, out, layout=RepositoryLayout(prefix), engine="openvino",
                                         **kwargs)
               for prefix, kwargs in EXPORTS.items()}
    return out, results


@pytest.fixture(scope="module")
def ov_server(ov_repository):
    from conftest import start_server

    server = start_server(ov_repository[0])
    yield server
    server.stop()


def test_export_validates_every_variant_against_pytorch(ov_repository):
    from fer_triton.export.openvino_engine import host_precision

    _, results = ov_repository
    for prefix, result in results.items():
        checks = {c.name: c for c in result.openvino.checks}
        files = EXPORTS[prefix]["precision"]
        expected = {files} | ({"bf16" if files == "fp32" else "int8+bf16"} if host_precision() == "bf16" else set())
        assert set(checks) == expected
        assert all(c.top1_agreement >= 0.99 and c.faces == 128 for c in checks.values())
        if files == "fp32":
            assert checks["fp32"].max_prob_diff < 1e-4
        meta = json.loads(parse_config(result.repository / prefix / "config.pbtxt").parameters["fer_triton"]
                          .string_value)
        assert meta["engine"] == "openvino" and meta["layout"] == ("fused" if EXPORTS[prefix]["fused"] else "staged")
        assert "agreement, not accuracy" in meta["agreement_note"]


def test_served_outputs_equal_openvino_in_process(ov_repository, ov_server):
    from fer_triton.client import FerClient
    from fer_triton.export.openvino_engine import host_precision, repository_chain
    from fer_triton.synthetic import draw_faces

    repo, _ = ov_repository
    faces = draw_faces(6, 224, seed=5)[0]
    for prefix in EXPORTS:
        layout = RepositoryLayout(prefix)
        with FerClient(ov_server.grpc_url, model=prefix) as client:
            served = client.infer(faces).probabilities
        local = repository_chain(repo, layout)(faces)
        np.testing.assert_allclose(served, local, rtol=0, atol=1e-5)
    log = ov_server.log_file.read_text(errors="replace")
    precision = host_precision()
    for model in ("ovf_clip_encoder", "ovf_mask_net", "ovi_backbone"):
        assert re.search(rf"fer-triton openvino: {model} version 1 runs model\.xml at inference precision "
                         rf"{precision} ", log), f"no load line for {model} in the server log"


def test_openvino_backend_config_variant_serves_the_same_files(ov_repository):
    repo, _ = ov_repository
    for prefix, kwargs in EXPORTS.items():
        layout = RepositoryLayout(prefix)
        for model in layout.served_models(kwargs["fused"]):
            cfg = parse_config(repo / model / "configs" / "openvino.pbtxt")  # Triton's ModelConfig schema
            python = parse_config(repo / model / "config.pbtxt")
            assert [i.name for i in cfg.input] == [i.name for i in python.input]
            assert cfg.max_batch_size == python.max_batch_size
            if model.endswith(("_head", "_preprocess")):
                assert cfg.platform == "onnxruntime_onnx" and (repo / model / "1" / cfg.default_model_filename).is_file()
                continue
            assert cfg.backend == "openvino" and cfg.default_model_filename == "model.xml"
            assert (repo / model / "1" / "model.xml").is_file() and (repo / model / "1" / "model.bin").is_file()
            assert cfg.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
            assert python.backend == "python" and python.parameters["engine"].string_value == "openvino"
        assert (repo / layout.site_head / "configs" / "openvino.pbtxt").is_file()


def test_export_fails_below_the_bar_and_writes_nothing(tiny_checkpoint, tmp_path):
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.openvino_engine import host_precision

    if host_precision() != "bf16":
        pytest.skip("needs a CPU with native BF16: the BF16 check is the reduced precision of an FP32 export")
    out = tmp_path / "repo"
    with pytest.raises(ExportValidationError, match=r"OpenVINO bf16: .*move a probability by"):
        export_checkpoint(tiny_checkpoint, out, engine="openvino", max_prob_diff=1e-9)
    assert not out.exists()


def test_auto_engine_records_and_writes_a_variant_that_passed(tiny_checkpoint, tmp_path):
    """--engine auto measures, rejects what fails the bar (here: an impossible probability tolerance makes
    the BF16 candidate fail), records why, and writes the fastest that passed."""
    from fer_triton.cli import cli
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.export.openvino_engine import host_precision

    out = tmp_path / "repo"
    # two candidates keep this under a minute on 2 cores (all six: `fer-triton export --engine auto`)
    result = export_checkpoint(tiny_checkpoint, out, engine="auto", max_prob_diff=1e-9,
                               auto_candidates=("onnxruntime fp32", "openvino bf16"))
    record = json.loads((out / "cafe" / "engine_choice.json").read_text())
    measured = {c["name"]: c for c in record["candidates"]}
    if host_precision() == "bf16":
        assert not measured["openvino bf16"]["passed"]
        assert "move a probability by" in measured["openvino bf16"]["reason"]
        assert measured["openvino bf16"]["faces_per_s"] is None  # never timed, never chosen
    chosen = record["chosen"]
    assert chosen["name"] == "onnxruntime fp32" and chosen["passed"] and chosen["faces_per_s"] > 0
    assert "fastest of 1 candidates that passed" in record["why"] and record["cpu"]
    meta = json.loads(parse_config(out / "cafe" / "config.pbtxt").parameters["fer_triton"].string_value)
    assert meta["engine_choice"]["chosen"] == "onnxruntime fp32" and meta["engine_choice"]["record"] == "engine_choice.json"
    assert "engine" not in parse_config(out / "cafe_clip_encoder" / "config.pbtxt").parameters
    assert result.engine_choice.chosen.name == "onnxruntime fp32"
    bad = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "x"),
                                   "--engine", "tensorflow"])
    assert bad.exit_code != 0 and "--engine" in bad.output


def test_bench_variant_names_and_peak_arithmetic():
    from fer_triton.benchmarks.bench import BenchError, parse_variant
    from fer_triton.benchmarks.cpu_engines import cpu_peak, export_kwargs, split_variant

    assert split_variant("ov-bf16-fused") == ("openvino", "fp32-fused", "bf16")
    assert split_variant("ov-int8-staged") == ("openvino", "int8-staged", "auto")
    assert split_variant("int8-fused") == ("onnxruntime", "int8-fused", None)
    assert parse_variant("ov-int8-fused") == ("int8", "fused") and export_kwargs("fp32-fused") == {}
    with pytest.raises(BenchError, match="ov-<fp32"):
        parse_variant("ov-fp16-fused")
    # AMD Zen 4: AVX-512 on 256-bit datapaths -> 2 FMA x 8 lanes x 2 FLOP; BF16 2x, INT8 VNNI 4x
    peak = cpu_peak({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, cores=2, mhz=2600.0, vendor="AuthenticAMD")
    assert peak["flop_per_cycle"] == {"fp32": 32, "bf16": 64, "int8": 128}
    assert peak["peak_gflops"]["bf16"] == pytest.approx(2 * 2.6 * 64)
    assert peak["peak_faces_per_s"]["fp32"] == pytest.approx(2 * 2.6 * 32 / 12.4, abs=0.05)
    amx = cpu_peak({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}, cores=1, mhz=2000.0, vendor="GenuineIntel")
    assert amx["flop_per_cycle"] == {"fp32": 64, "bf16": 1024, "int8": 2048}


def test_published_versions_keep_the_engine_they_were_exported_with(ov_repository, tmp_path):
    """retrain publishes a mask net (or head) version with the runner its model was exported with; the OpenVINO
    runner reads that version's model.onnx when the version has no IR (publishing writes ONNX only)."""
    from fer_triton.export.repository import OPENVINO_RUNNER_SOURCE, RUNNER_SOURCE, runner_source
    from fer_triton.export.triton_python.openvino_model import model_path

    repo, _ = ov_repository
    assert runner_source(repo / "ovf_mask_net") == OPENVINO_RUNNER_SOURCE
    assert runner_source(repo / "ovf_clip_encoder") == OPENVINO_RUNNER_SOURCE
    assert runner_source(repo / "ovf_head") == RUNNER_SOURCE  # the 512x7 head stays on onnxruntime
    (tmp_path / "model.onnx").write_bytes(b"")
    assert model_path(str(tmp_path)) == str(tmp_path / "model.onnx")
    with pytest.raises(FileNotFoundError, match="neither model.xml nor model.onnx"):
        model_path(str(tmp_path / "empty"))
