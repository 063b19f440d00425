"""Train a few steps on drawn faces (tiny CLIP), evaluate in PyTorch and through the real Triton, explain.

Drawn faces and random CLIP weights: these tests prove the mechanics (recipe, checkpoints, resume,
export round trip, reports, pictures), not accuracy on real faces.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fer_triton.checkpoint import CAFECheckpoint, build_untrained
from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.clip_loader import TINY_CLIP_MODEL
from fer_triton.labels import CLASSES
from fer_triton.synthetic import draw_faces
from fer_triton.train.datasets import read_folder
from fer_triton.train.evaluate import predict_pytorch, predict_served
from fer_triton.train.explain import explain_face
from fer_triton.train.feature_cache import cached_clip_features
from fer_triton.train.trainer import TrainConfig, TrainingError, train

TINY = ["--clip-model", TINY_CLIP_MODEL, "--clip-weights", "random", "--workers", "0", "--no-progress"]


def _draw_folder(root, n, seed):
    faces, labels = draw_faces(n, 64, seed=seed)
    for i, (face, label) in enumerate(zip(faces, labels)):
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(root / CLASSES[label] / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def drawn_folder(tmp_path_factory):
    """28 drawn faces of 64x64 pixels (small crops, like RAF-DB's), one folder per class."""
    return _draw_folder(tmp_path_factory.mktemp("drawn") / "faces", 28, seed=5)


@pytest.fixture(scope="module")
def trained_run(drawn_folder, tmp_path_factory):
    """`fer-triton train` for 2 epochs of 2 steps, validating on 7 other drawn faces."""
    out = tmp_path_factory.mktemp("run") / "cafe"
    val = _draw_folder(tmp_path_factory.mktemp("drawn_val") / "faces", 7, seed=6)
    result = CliRunner().invoke(cli, ["train", "-d", f"Drawn=folder:{drawn_folder}", "--val", str(val),
                                      "-o", str(out), "--epochs", "2", "-b", "4", "--max-steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_checkpoints_with_the_recipe(trained_run):
    out, output = trained_run
    assert "epoch 2/2" in output and "computed on every augmented image at every step" in output
    assert "RANDOM CLIP weights" in output
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(2e-4 * 0.9)  # ExponentialLR 0.9 per epoch
    for h in history:
        assert np.isfinite(h["loss"]) and h["loss"] == pytest.approx(h["ce"] + 5 * h["div"] + 1.5 * h["sep"], rel=1e-5)
    final = CAFECheckpoint.load(out / "final.pt")
    best = CAFECheckpoint.load(out / "best.pt")
    assert final.meta["trained"] is True and final.meta["epochs"] == 2 and final.meta["role"] == "final"
    recipe = final.meta["recipe"]
    assert (recipe["lr"], recipe["weight_decay"], recipe["seed"], recipe["div_weight"], recipe["sep_weight"],
            recipe["group_size"], recipe["drop_per_block"], recipe["augment"]) == (
        2e-4, 1e-4, 3407, 5.0, 1.5, 73, 10, "paper")
    assert final.meta["dataset"]["name"] == "Drawn" and final.meta["dataset"]["images"] == 28
    assert final.meta["validation"]["images"] == 7
    best_epoch = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    assert best.meta["epochs"] == best_epoch and best.meta["role"] == "best"
    # Training changed the mask network and the head, never CLIP (same seed -> same starting weights).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start, _ = build_untrained(TINY_CLIP_MODEL, None, seed=3407)
    for key, value in start.clip.visual.state_dict().items():
        assert torch.equal(final.clip_state_dict[key], value), key
    assert not torch.equal(final.head["fc.weight"], start.head.fc.weight)
    assert not torch.equal(final.mask_net["trunk.layer4.1.conv2.weight"], start.mask_net.trunk.layer4[1].conv2.weight)
    assert torch.load(out / "state.pt", weights_only=False)["epoch"] == 2


def test_resume_continues_exactly_and_refuses_a_changed_recipe(drawn_folder, tmp_path):
    ds = read_folder(drawn_folder)
    config = dict(batch_size=4, clip_model=TINY_CLIP_MODEL, clip_weights=None, workers=0, max_steps_per_epoch=1,
                  cache_clip_features=True)  # also covers the cached (clean + flipped) CLIP-feature path
    straight = train(TrainConfig(epochs=2, **config), ds, tmp_path / "straight", progress=False)
    train(TrainConfig(epochs=1, **config), ds, tmp_path / "split", progress=False)
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(TrainConfig(epochs=2, **config), ds, tmp_path / "split", progress=False)
    with pytest.raises(TrainingError, match="lr was 0.0002, now 0.001"):
        train(TrainConfig(epochs=2, **{**config, "lr": 1e-3}), ds, tmp_path / "split", resume=True, progress=False)
    resumed = train(TrainConfig(epochs=2, **config), ds, tmp_path / "split", resume=True, progress=False)
    assert [r.epoch for r in resumed.history] == [1, 2]
    a, b = CAFECheckpoint.load(straight.final), CAFECheckpoint.load(resumed.final)
    for key in a.head:
        torch.testing.assert_close(a.head[key], b.head[key], rtol=0, atol=0)
    for key in a.mask_net:
        torch.testing.assert_close(a.mask_net[key], b.mask_net[key], rtol=0, atol=0)
    assert straight.history[-1].loss == pytest.approx(resumed.history[-1].loss, abs=0)
    assert straight.best is None  # no validation set: no best.pt


def test_cached_clip_features_are_exact_and_reused(trained_run, drawn_folder, tmp_path):
    out, _ = trained_run
    model = CAFECheckpoint.load(out / "final.pt").build_model()
    ds = read_folder(drawn_folder)
    direct = predict_pytorch(model, ds, progress=False)
    cache = cached_clip_features(model.clip, ds, tmp_path / "cache", progress=False)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    again = cached_clip_features(model.clip, ds, tmp_path / "cache", progress=False)
    assert torch.equal(cache.features, again.features)
    np.testing.assert_allclose(predict_pytorch(model, ds, clip_cache=again, progress=False), direct, atol=1e-6)


def test_evaluate_in_pytorch_and_through_served_export(trained_run, drawn_folder, tmp_path, server_factory):
    """The trained checkpoint exports (format round trip) and the served model scores the same."""
    from fer_triton.export.exporter import export_checkpoint

    out, _ = trained_run
    repository = export_checkpoint(out / "final.pt", tmp_path / "repo").repository
    server = server_factory(repository)
    report_dir = tmp_path / "eval"
    result = CliRunner().invoke(cli, ["evaluate", "-c", str(out / "final.pt"), "-d", f"Drawn={drawn_folder}",
                                      "-u", server.grpc_url, "--row-name", "Drawn (PyTorch)",
                                      "--row-name", "Drawn (served)", "-o", str(report_dir),
                                      "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "RANDOM CLIP weights" in result.output

    ds = read_folder(drawn_folder)
    model = CAFECheckpoint.load(out / "final.pt").build_model()
    expected = predict_pytorch(model, ds, progress=False)
    with FerClient(server.grpc_url) as client:
        served = predict_served(client, ds, progress=False)
    assert np.abs(served - expected).max() < 1e-4
    accuracy = 100 * float((expected.argmax(1) == ds.labels).mean())

    with (report_dir / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["trained_on"] for r in rows] == ["Drawn (PyTorch)", "Drawn (served)"]
    for row in rows:
        assert float(row["Drawn"]) == pytest.approx(accuracy, abs=1e-3)
        assert float(row["mean"]) == pytest.approx(accuracy, abs=1e-3)
    table_md = (report_dir / "table.md").read_text()
    assert table_md.startswith("| Trained on | Drawn | Mean |")
    with (report_dir / "confusion" / "Drawn__PyTorch___Drawn.csv").open() as fh:
        cm = np.array([[int(v) for v in r[1:]] for r in list(csv.reader(fh))[1:]])
    assert cm.sum() == 28 and cm.sum(axis=1).tolist() == [4] * 7  # rows: true classes
    assert np.trace(cm) == round(accuracy * 28 / 100)
    with (report_dir / "per_class_recall.csv").open() as fh:
        recall = next(csv.DictReader(fh))
    assert float(recall["Happy"]) == pytest.approx(100 * cm[3, 3] / 4)


def test_explain_writes_pictures_and_channel_statistics(trained_run, drawn_folder, tmp_path):
    out, _ = trained_run
    image = sorted((drawn_folder / "Happy").iterdir())[0]
    result = CliRunner().invoke(cli, ["explain", "-c", str(out / "final.pt"), str(image), "-d", str(drawn_folder),
                                      "--top-k", "5", "-o", str(tmp_path / "explain")])
    assert result.exit_code == 0, result.output
    picture = Image.open(tmp_path / "explain" / f"{image.stem}.png")
    assert picture.size == (3 * 224, 224 + 16)
    assert Image.open(tmp_path / "explain" / "channels.png").size == (70 + 512, 14 + 7 * 24)
    with (tmp_path / "explain" / "top_channels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 * 5 and {r["class"] for r in rows} == set(CLASSES)
    assert all(0.5 <= float(r["keep"]) < 1.0 for r in rows)  # sigmoid of a ReLU-pooled output
    assert all(r["group"] == "" if int(r["channel"]) == 511 else int(r["group"]) == int(r["channel"]) // 73
               for r in rows)

    model = CAFECheckpoint.load(out / "final.pt").build_model()
    face = np.asarray(Image.open(image).convert("RGB").resize((224, 224), Image.BILINEAR))
    e = explain_face(model, face, target=CLASSES.index("Happy"))
    for heat in (e.gradcam, e.clip_saliency):
        assert heat.shape == (224, 224) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        assert heat.std() > 0  # a map, not a constant
    assert e.target == 3 and e.mask_keep.shape == (512,)

    bad = CliRunner().invoke(cli, ["explain", "-c", str(out / "final.pt"), str(image), "--class", "Bored",
                                   "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "unknown expression class 'Bored'" in bad.output


def test_table1_layout_with_several_sources_and_test_sets(tmp_path):
    """Rows = training sources, columns = test sets, Mean over a row's columns; recall per class."""
    from fer_triton.train.evaluate import EvalResult, table1_markdown, write_report

    def result(name, labels, predictions):
        return EvalResult(name, np.array(labels), np.array(predictions))

    table = {
        "RAF-DB": {"RAF-DB": result("RAF-DB", [0, 1, 2, 3], [0, 1, 2, 0]),      # 75 %
                   "SFEW": result("SFEW", [3, 3, 4, 4, 5], [3, 4, 4, 4, 6])},     # 60 %
        "AffectNet": {"SFEW": result("SFEW", [3, 3, 4, 4, 5], [3, 3, 4, 4, 5])},  # 100 %, no RAF-DB column
    }
    md = table1_markdown(table).splitlines()
    assert md[0] == "| Trained on | RAF-DB | SFEW | Mean |"
    assert md[2] == "| RAF-DB | 75.00 | 60.00 | 67.50 |"
    assert md[3] == "| AffectNet |  | 100.00 | 100.00 |"
    assert md[5] == "Test images: RAF-DB 4, SFEW 5."
    sfew = table["RAF-DB"]["SFEW"]
    assert sfew.per_class_recall == [None, None, None, 0.5, 1.0, 0.0, None]
    assert sfew.confusion[5, 6] == 1 and sfew.confusion.sum() == 5
    paths = write_report(table, tmp_path, note="synthetic numbers")
    with paths["recall_csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["trained_on"], r["test_set"]) for r in rows] == [("RAF-DB", "RAF-DB"), ("RAF-DB", "SFEW"),
                                                               ("AffectNet", "SFEW")]
    assert rows[1]["Surprise"] == "" and float(rows[1]["Happy"]) == 50.0
    report = paths["report"].read_text()
    assert "synthetic numbers" in report and "## RAF-DB on SFEW: accuracy 60.00% (5 images)" in report
    assert "| Angry | 0 | 0 | 0 | 0 | 0 | 0 | 1 | 0.00 |" in report
    assert len(list((tmp_path / "confusion").iterdir())) == 3
