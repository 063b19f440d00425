"""Drift check: statistics on known arrays, JSON Lines reading, and `fer-triton drift` on SYNTHETIC
sites through the REAL tritonserver (the tiny model with random weights: the values say nothing about
real cameras, only that a site shift is seen and a same-site sample is not flagged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.labels import CLASSES
from fer_triton.retrain.drift import DriftError, DriftReference, SiteSample, check_drift, js_divergence, read_jsonl
from fer_triton.synthetic import SiteShift, draw_site, write_site

BACKDROP = (110, 120, 130)  # one room: the reference and the recent samples share it


def _sample(rng, n=200, shift=0.0, probs=None):
    features = rng.normal(1.0 + shift, 0.5, (n, 512))
    if probs is None:
        probs = rng.dirichlet(np.ones(7) * 0.3, n)
    return SiteSample(probs, features)


def test_same_distribution_is_not_flagged_and_each_statistic_catches_its_shift():
    rng = np.random.default_rng(0)
    reference = DriftReference.from_sample(_sample(rng))
    same = check_drift(reference, _sample(rng))
    assert not same.retrain_advised and same.reasons == []

    moved = check_drift(reference, _sample(rng, shift=0.5))   # 1 reference std on every channel
    assert moved.retrain_advised
    assert moved.statistics[0].name == "feature_shift" and moved.statistics[0].value == pytest.approx(1.0, abs=0.15)
    assert moved.reasons[0].startswith("feature_shift 1.0") and "> limit 0.5 (2.0x)" in moved.reasons[0]

    one_class = np.full((200, 7), 0.01)
    one_class[:, 3] = 0.94
    labels = check_drift(reference, _sample(rng, probs=one_class))
    assert [s.name for s in labels.statistics if s.exceeded] == ["label_js"]

    unsure = check_drift(reference, _sample(rng, probs=np.full((200, 7), 1 / 7)))
    assert "confidence_drop" in [s.name for s in unsure.statistics if s.exceeded]


def test_statistics_without_features_and_limits():
    rng = np.random.default_rng(1)
    reference = DriftReference.from_sample(_sample(rng))
    report = check_drift(reference, SiteSample(rng.dirichlet(np.ones(7) * 0.3, 50)), {"label_js": 0.5})
    assert report.statistics[0].value is None and not report.statistics[0].exceeded
    assert report.statistics[1].limit == 0.5 and report.features_compared == 0
    with pytest.raises(DriftError, match="unknown drift statistic"):
        check_drift(reference, _sample(rng), {"kl": 1.0})
    with pytest.raises(DriftError, match="only 3 recent result"):
        check_drift(reference, _sample(rng, n=3))
    assert js_divergence(np.array([1.0, 1e-12]), np.array([1e-12, 1.0])) == pytest.approx(1.0, abs=1e-6)


def test_reference_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    ref = DriftReference.from_sample(_sample(rng), source="test")
    back = DriftReference.load(ref.save(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(back.feature_mean, ref.feature_mean)
    assert back.count == 200 and back.meta["source"] == "test"
    with pytest.raises(DriftError, match="no drift reference at"):
        DriftReference.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(DriftError, match="is not a drift reference"):
        DriftReference.load(tmp_path / "bad.npz")


def test_jsonl_results_with_class_names_or_lists_errors_skipped(tmp_path):
    p = np.full(7, 1 / 7)
    rows = [{"camera": "a", "probabilities": dict(zip(CLASSES, p))},
            {"camera": "a", "error": "timeout"},
            {"event": "no_face"},
            {"probabilities": list(p), "masked_features": [0.5] * 512}]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    sample = read_jsonl(path)
    assert sample.probabilities.shape == (2, 7) and sample.skipped == 2
    assert sample.masked_features.shape == (1, 512)

    path.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(DriftError, match="line 2: not JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"probabilities": {"Happy": 1.0}}) + "\n")
    with pytest.raises(DriftError, match=r"line 1: probabilities lack class\(es\)"):
        read_jsonl(path)
    path.write_text(json.dumps({"event": "start"}) + "\n")
    with pytest.raises(DriftError, match="holds no result lines"):
        read_jsonl(path)


def test_drift_command_flags_a_shifted_site_not_the_same_site(triton_server, tmp_path):
    url = triton_server.grpc_url
    runner = CliRunner()
    ref = tmp_path / "drift_reference.npz"
    base = write_site(tmp_path / "base", 6, seed=1, background=BACKDROP)
    wrote = runner.invoke(cli, ["drift", "--images", str(base), "-u", url, "--reference", str(ref), "--write-reference"])
    assert wrote.exit_code == 0, wrote.output
    assert "wrote drift reference of 42 faces" in wrote.output

    same = write_site(tmp_path / "same", 3, seed=2, background=BACKDROP)
    ok = runner.invoke(cli, ["drift", "--images", str(same), "-u", url, "--reference", str(ref), "--json",
                             "--exit-code"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["retrain_advised"] is False

    dark = write_site(tmp_path / "dark", 3, SiteShift(brightness=0.5, colour_cast=(1.4, 1.0, 0.6), blur=2, noise=10),
                      seed=2, background=BACKDROP)
    flagged = runner.invoke(cli, ["drift", "--images", str(dark), "-u", url, "--reference", str(ref), "--exit-code"])
    assert flagged.exit_code == 3, flagged.output
    assert "RETRAIN ADVISED: feature_shift" in flagged.output and "EXCEEDED" in flagged.output

    # The same shifted faces as JSON Lines carrying the served outputs give the same verdict.
    faces, _ = draw_site(3, SiteShift(brightness=0.5, colour_cast=(1.4, 1.0, 0.6), blur=2, noise=10), seed=2,
                         background=BACKDROP)
    with FerClient(url) as client:
        out = client.infer(faces, with_features=True)
    jsonl = tmp_path / "recent.jsonl"
    jsonl.write_text("".join(json.dumps({"probabilities": p.tolist(), "masked_features": f.tolist()}) + "\n"
                             for p, f in zip(out.probabilities, out.masked_features)))
    from_lines = runner.invoke(cli, ["drift", "--jsonl", str(jsonl), "--reference", str(ref), "--json"])
    assert from_lines.exit_code == 0, from_lines.output
    result = json.loads(from_lines.output)
    assert result["retrain_advised"] and result["features_compared"] == 21
    assert result["reasons"][0].startswith("feature_shift")


def test_drift_uses_the_served_head_versions_reference_and_names_bad_input(triton_server, repository_copy, tmp_path,
                                                                          caplog):
    runner = CliRunner()
    url = triton_server.grpc_url
    images = write_site(tmp_path / "site", 2, seed=3, background=BACKDROP)
    base = ["drift", "-u", url, "-r", str(repository_copy)]
    missing = runner.invoke(cli, base + ["--images", str(images)])
    assert missing.exit_code == 1 and "no drift reference at" in missing.output
    assert "cafe_head/1/drift_reference.npz" in missing.output

    wrote = runner.invoke(cli, base + ["--images", str(images), "--write-reference"])
    assert wrote.exit_code == 0, wrote.output
    assert (repository_copy / "cafe_head" / "1" / "drift_reference.npz").is_file()
    checked = runner.invoke(cli, base + ["--images", str(images)])
    assert checked.exit_code == 0 and "no retrain advised" in checked.output

    assert "either --images or --jsonl" in runner.invoke(cli, base).output
    bad_limit = runner.invoke(cli, base + ["--images", str(images), "--limit", "feature_shift"])
    assert bad_limit.exit_code == 2 and "expected NAME=NUMBER" in bad_limit.output
    # An unreadable image is named and skipped; the other images are still checked.
    (images / "Happy" / "broken.png").write_bytes(b"junk")
    with caplog.at_level("WARNING"):
        broken = runner.invoke(cli, base + ["--images", str(images)])
    assert broken.exit_code == 0, broken.output
    assert "recent sample 14 faces, 1 image(s) unreadable skipped" in broken.output
    assert any("broken.png" in r.getMessage() and r.getMessage().startswith("skipped ") for r in caplog.records)
    for image in images.rglob("*.png"):
        image.write_bytes(b"junk")
    none = runner.invoke(cli, base + ["--images", str(images)])
    assert none.exit_code == 1 and "none of the 15 image(s) can be read" in none.output
