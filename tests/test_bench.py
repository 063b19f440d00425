"""The benchmark runs end to end on the tiny model against the real server; the INT8 export is served
and its top-1 agreement check accepts and refuses as it should."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import pytorch_probabilities
from fer_triton.benchmarks.bench import BenchConfig, BenchError, run_benchmark
from fer_triton.benchmarks.perf_analyzer import NOT_INSTALLED
from fer_triton.benchmarks.report import format_report, save_json
from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.client import FerClient
from fer_triton.export.validate import AgreementError, check_agreement
from fer_triton.model import Preprocess
from fer_triton.synthetic import draw_faces

BATCHES, CONCURRENCY = (1, 4), (1, 2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_checkpoint, tiny_repository):
    """One short benchmark run: the shared FP32 export (staged) and a fresh INT8 fused export."""
    workdir = tmp_path_factory.mktemp("bench")
    shutil.copytree(tiny_repository, workdir / "repositories" / "fp32-staged")
    cfg = BenchConfig(model_size="tiny", checkpoint=tiny_checkpoint, workdir=workdir,
                      variants=("fp32-staged", "int8-fused"), batch_sizes=BATCHES, concurrency=CONCURRENCY,
                      duration_s=0.3, min_requests=2, reuse_exports=True)
    return cfg, run_benchmark(cfg, echo=lambda _: None)


def test_bench_measures_every_point_with_consistent_numbers(bench):
    cfg, result = bench
    assert [s["variant"] for s in result["served"]] == list(cfg.variants)
    for served in result["served"]:
        points = {(p["batch_size"], p["concurrency"]): p for p in served["points"]}
        assert set(points) == {(b, c) for b in BATCHES for c in CONCURRENCY}
        for (b, c), p in points.items():
            assert p["errors"] == 0
            assert p["requests"] >= cfg.min_requests * c
            assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
            assert p["faces_per_s"] == pytest.approx(p["requests"] * b / p["seconds"], rel=0.02)
            # each of the c clients waits for one answer at a time: the run lasts at least its share
            assert p["seconds"] >= p["requests"] / c * p["p50_ms"] / 1000 * 0.5
            assert 0 < p["client_rss_mb"] < 1000  # a bare client process, not the benchmark driver
            # Triton's own counters: every request reached every composing model with its whole batch
            # (warm-up requests are counted by Triton but not timed by the client).
            triton = {t["model"]: t for t in p["triton"]}
            ensemble = triton.pop("cafe")
            assert p["requests"] <= ensemble["requests"] <= p["requests"] + c
            assert ensemble["faces"] == ensemble["requests"] * b
            for model in triton.values():
                assert model["requests"] == ensemble["requests"] and model["failures"] == 0
                assert model["compute_infer_ms"] > 0 and model["queue_ms"] >= 0
        expected = {"fp32-staged": {"cafe_preprocess", "cafe_clip_encoder", "cafe_mask_net", "cafe_head"},
                    "int8-fused": {"cafe_backbone", "cafe_head"}}[served["variant"]]
        assert {t["model"] for t in served["points"][0]["triton"]} == expected | {"cafe"}
        # tritonserver + one python stub per composing model (+ the multi-site head), all resident
        assert len(served["server_processes"]) == 1 + len(expected) + 1
        assert served["server_peak_mb"] >= served["server_idle_mb"] > 0
        assert served["served_vs_inprocess_max_abs_diff"] < 1e-5


def test_bench_baselines_targets_and_perf_analyzer(bench):
    cfg, result = bench
    inprocess = {(r["engine"], r["precision"], r["batch_size"]): r for r in result["inprocess"]}
    assert set(inprocess) == {(e, p, b) for b in BATCHES for e, p in
                              [("onnxruntime in-process", "fp32"), ("onnxruntime in-process", "int8"),
                               ("pytorch eager", "fp32")]}
    assert all(r["faces_per_s"] > 0 and r["calls"] >= cfg.min_requests for r in inprocess.values())
    assert {r["variant"] for r in result["inprocess"] if "variant" in r} == set(cfg.variants)
    targets = result["targets"]
    assert targets["batch_size"] == 4 and set(targets["served_vs_inprocess"]) == set(cfg.variants)
    for ratio in targets["served_vs_inprocess"].values():
        assert ratio["ratio"] == pytest.approx(ratio["served"] / ratio["inprocess"], rel=1e-2)
        assert ratio["served_cpu_ms_per_face"] > 0 and ratio["inprocess_cpu_ms_per_face"] > 0
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    pa = result["served"][0]["perf_analyzer"]
    if pa.get("error", "").startswith(NOT_INSTALLED):  # installed by `make install`; never downloaded here
        pytest.skip(pa["error"])
    assert "error" not in pa, pa.get("error")
    assert [r["concurrency"] for r in pa["rows"]] == list(CONCURRENCY)
    assert all(r["faces_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in pa["rows"])


def test_bench_result_saves_as_json_and_prints_a_table(bench, tmp_path):
    _, result = bench
    path = save_json(result, tmp_path / "out" / "result.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    text = format_report(result)
    for needle in ("served fp32-staged", "served int8-fused", "onnxruntime in-process int8", "pytorch eager",
                   "perf_analyzer", "cafe_backbone", "top-1 agreement", "target served fp32-staged vs in-process"):
        assert needle in text


def test_int8_export_is_quantized_served_and_close_to_pytorch(bench, server_factory, tiny_checkpoint):
    cfg, result = bench
    export = result["exports"]["int8-fused"]
    assert export["top1_agreement_vs_fp32"] >= 0.99 and export["agreement_faces"] == 128
    repo = cfg.workdir / "repositories" / "int8-fused"
    ops = {n.op_type for n in onnx.load(str(repo / "cafe_backbone" / "1" / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"} <= ops
    server = server_factory(repo)
    faces, _ = draw_faces(12, 224, seed=11)
    with FerClient(server.grpc_url) as client:
        out = client.infer(faces, with_features=True)
        meta = client.info().metadata
    assert meta["precision"] == "int8" and meta["layout"] == "fused"
    assert meta["top1_agreement_vs_fp32"] == export["top1_agreement_vs_fp32"]
    expected = pytorch_probabilities(tiny_checkpoint, faces)
    assert np.abs(out.probabilities - expected).max() < 0.02  # INT8 is close, not equal
    assert out.masked_features.shape == (12, 512)


def test_agreement_check_thresholds():
    reference = np.eye(7, dtype=np.float32)[np.arange(100) % 7]
    candidate = reference.copy()
    candidate[:2] = np.roll(candidate[:2], 1, axis=1)       # 2 of 100 faces change class
    assert check_agreement(reference, candidate, 0.98) == pytest.approx(0.98)
    with pytest.raises(AgreementError, match=r"98\.00% of 100 faces \(2 differ\), below the required 99\.00%"):
        check_agreement(reference, candidate, 0.99)
    with pytest.raises(ValueError, match="arrays of one shape"):
        check_agreement(reference, candidate[:50], 0.99)


def _centred_head_checkpoint(src, dst):
    """A head whose biases cancel the mean logit of drawn faces: classes then hinge on the small
    differences between faces, which INT8 rounding is large enough to flip."""
    ckpt = CAFECheckpoint.load(src)
    model = ckpt.build_model()
    faces, _ = draw_faces(64, 224, seed=99)
    with torch.no_grad():
        logits = model(Preprocess()(torch.from_numpy(faces))).logits
    ckpt.head = {k: v.clone() for k, v in ckpt.head.items()}
    ckpt.head["fc.bias"] -= logits.mean(dim=0)
    return ckpt.save(dst)


def test_int8_export_fails_below_the_agreement_threshold(tiny_checkpoint, tmp_path):
    from fer_triton.cli import cli

    checkpoint = _centred_head_checkpoint(tiny_checkpoint, tmp_path / "centred.pt")
    out = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", "-c", str(checkpoint), "-o", str(out), "--precision", "int8"])
    assert result.exit_code != 0
    assert "agree with FP32 on the top-1 class for" in result.output and "below the required 99.00%" in result.output
    assert not (out / "cafe").exists()  # nothing written


def test_bench_refuses_bad_settings(tmp_path):
    for bad, message in [(dict(variants=("fp16-staged",)), "unknown served variant 'fp16-staged'"),
                         (dict(batch_sizes=(0,)), "batch sizes must be 1..64"),
                         (dict(concurrency=(0,)), "concurrency levels must be >= 1"),
                         (dict(model_size="huge"), "model size must be one of"),
                         (dict(checkpoint=tmp_path / "missing.pt"), "checkpoint not found")]:
        with pytest.raises(BenchError, match=message):
            run_benchmark(BenchConfig(workdir=tmp_path, **bad), echo=lambda _: None)


def test_fused_backbone_graph_computes_what_the_staged_graphs_do(tiny_repository, tmp_path):
    import onnxruntime as ort

    from fer_triton.export.fuse import fuse_backbone

    staged = {s: tiny_repository / f"cafe_{s}" / "1" / "model.onnx" for s in ("preprocess", "clip_encoder", "mask_net")}
    fused = fuse_backbone(staged["preprocess"], staged["clip_encoder"], staged["mask_net"], tmp_path / "backbone.onnx")

    def run(path, feeds):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)

    faces, _ = draw_faces(3, 224, seed=4)
    clip_features, mask_logits = run(fused, {"faces": faces})
    (pixels,) = run(staged["preprocess"], {"faces": faces})
    np.testing.assert_allclose(clip_features, run(staged["clip_encoder"], {"pixels": pixels})[0], atol=1e-5)
    np.testing.assert_allclose(mask_logits, run(staged["mask_net"], {"pixels": pixels})[0], atol=1e-5)
    with pytest.raises(ValueError, match="expected one input named 'pixels'"):
        fuse_backbone(staged["preprocess"], staged["preprocess"], staged["mask_net"], tmp_path / "bad.onnx")


@pytest.mark.parametrize("args,message", [
    (["-b", "0"], "batch sizes must be 1..64"),
    (["-b", "a,b"], "expected comma-separated integers"),
    (["--variants", "int4-fused"], "unknown served variant 'int4-fused'"),
])
def test_bench_command_names_bad_options(args, message, tmp_path):
    from fer_triton.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--model-size", "tiny", "-w", str(tmp_path), *args])
    assert result.exit_code != 0 and message in result.output
    assert not any(tmp_path.iterdir())  # refused before building or exporting anything
