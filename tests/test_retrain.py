"""Retrain through the REAL tritonserver on SYNTHETIC sites (drawn faces), plus the bad-input errors.

The tiny CLIP config with random weights makes the accuracies here meaningless for real faces; they
only show that a head fitted on a site's features beats the untrained serving head on that site.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner

from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.labels import CLASSES
from fer_triton.retrain.compare import score
from fer_triton.retrain.fit import LinearHead, class_weights, fit_head
from fer_triton.retrain.pipeline import RetrainOptions, retrain
from fer_triton.retrain.publish import export_head, read_head
from fer_triton.retrain.site_data import SiteDataError, holdout_split, read_site
from fer_triton.synthetic import draw_site, write_site
from live_clients import SITE_SHIFT, Hammer, served



@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A SYNTHETIC site: 7 classes x 16 drawn faces through a site shift, as class folders."""
    return write_site(tmp_path_factory.mktemp("site") / "site", 16, SITE_SHIFT, seed=1)


def test_retrain_publishes_next_version_with_no_failed_request_and_rollback_restores(
        site, repository_copy, server_factory, tmp_path):
    server = server_factory(repository_copy)
    url = server.grpc_url
    probe, _ = draw_site(2, SITE_SHIFT, seed=11)
    before = served(url, probe)

    with Hammer(url) as hammer:
        result = retrain(site, url, repository_copy,
                         options=RetrainOptions(progress=False, report_dir=tmp_path / "report"))
        publish_window = (time.monotonic() - result.timings["publish"], time.monotonic())
        after = served(url, probe)
        published_files = {p.name for p in (repository_copy / "cafe_head" / "2").iterdir()}
        runner = CliRunner()
        rolled = runner.invoke(cli, ["rollback", "-u", url, "-r", str(repository_copy)])
        restored = served(url, probe)

    # Published as version 2 and served by the ensemble: probabilities are the new head's.
    assert result.published_version == 2 and result.serving_version == 1
    version_dir = repository_copy / "cafe_head" / "2"
    assert {"model.onnx", "model.py", "head_info.json", "drift_reference.npz"} <= published_files
    np.testing.assert_allclose(after.probabilities, result.head.probabilities(after.masked_features), atol=1e-4)
    assert np.abs(after.probabilities - before.probabilities).max() > 1e-2
    np.testing.assert_allclose(after.masked_features, before.masked_features, atol=1e-5)  # only the head changed
    assert result.comparison.new.accuracy > result.comparison.serving.accuracy
    report = result.report.read_text()
    assert "published as cafe_head version 2" in report
    assert (result.report.parent / "confusion_serving.png").is_file()
    assert (result.report.parent / "confusion_new.png").is_file()

    # Rollback serves version 1 again, with the old outputs; version 2 is archived, not deleted.
    assert rolled.exit_code == 0, rolled.output
    assert "version 2 taken out of service" in rolled.output and "version 1 is served" in rolled.output
    assert np.abs(restored.probabilities - before.probabilities).max() < 1e-6
    assert not version_dir.exists()
    archived = list((repository_copy.parent / "model_repository.archive" / "cafe_head").glob("2-rolled-back-*"))
    assert len(archived) == 1 and (archived[0] / "model.onnx").is_file()

    # Requests ran all through the swap (some finished while publishing) and none failed.
    assert hammer.errors == []
    assert any(publish_window[0] <= t <= publish_window[1] for t in hammer.finished)


def test_worse_head_is_refused_unless_forced(site, repository_copy, server_factory, tmp_path):
    server = server_factory(repository_copy)
    url = server.grpc_url
    runner = CliRunner()
    base = ["retrain", "--data", str(site), "-u", url, "-r", str(repository_copy)]
    good = runner.invoke(cli, base + ["--report", str(tmp_path / "good")])
    assert good.exit_code == 0, good.output
    assert "published as cafe_head version 2" in good.output
    probe, _ = draw_site(1, SITE_SHIFT, seed=5)
    serving = served(url, probe).probabilities

    # A huge L2 pull to zeros gives a head that cannot tell the classes apart: worse than version 2.
    worse = runner.invoke(cli, base + ["--l2", "1e4", "--report", str(tmp_path / "worse")])
    assert worse.exit_code == 1
    assert "REFUSED: the new head is worse than serving version 2" in worse.output
    assert "--force" in worse.output
    assert sorted(p.name for p in (repository_copy / "cafe_head").iterdir() if p.is_dir()) == ["1", "2"]
    assert np.abs(served(url, probe).probabilities - serving).max() < 1e-6
    assert "REFUSED" in (tmp_path / "worse" / "report.md").read_text()

    forced = runner.invoke(cli, base + ["--l2", "1e4", "--force", "--report", str(tmp_path / "forced")])
    assert forced.exit_code == 0, forced.output
    assert "published as cafe_head version 3 (forced: it is worse)" in forced.output
    assert np.abs(served(url, probe).probabilities - serving).max() > 1e-3

    # A zero-shot start (the served tiny CLIP's text tower, random weights) with --no-publish changes nothing.
    dry = runner.invoke(cli, base + ["--init", "zero-shot", "--no-publish", "--report", str(tmp_path / "dry")])
    assert dry.exit_code == 0, dry.output
    assert "not published (--no-publish)" in dry.output
    assert sorted(p.name for p in (repository_copy / "cafe_head").iterdir() if p.is_dir()) == ["1", "2", "3"]
    assert "starting head: zero-shot" in (tmp_path / "dry" / "report.md").read_text()


# -- errors before anything changes: through the CLI against the shared server ------------------------

def _head_versions(repository):
    return sorted(p.name for p in (repository / "cafe_head").iterdir() if p.is_dir())


@pytest.mark.parametrize("problem,message", [
    ("unreadable", "none of the 21 site image(s) can be read"),
    ("wrong-model", "has no ready ensemble 'nope'"),
    ("not-the-repository", "serves cafe_head version 1 but"),
    ("no-repository", "is not a model folder"),
    ("no-server", "cannot reach the Triton server"),
])
def test_retrain_errors_leave_the_serving_head_untouched(problem, message, triton_server, repository_copy, tmp_path):
    data = write_site(tmp_path / "site", 3, seed=2)
    repository, url, model = repository_copy, triton_server.grpc_url, "cafe"
    if problem == "unreadable":
        for image in data.rglob("*.png"):
            image.write_bytes(b"not a png")
    elif problem == "wrong-model":
        model = "nope"
    elif problem == "not-the-repository":
        (repository / "cafe_head" / "2").mkdir()
    elif problem == "no-repository":
        repository = tmp_path / "elsewhere"
    elif problem == "no-server":
        url = "127.0.0.1:1"
    before = served(triton_server.grpc_url, draw_site(1, seed=3)[0]).probabilities
    result = CliRunner().invoke(cli, ["retrain", "--data", str(data), "-u", url, "-m", model,
                                      "-r", str(repository), "--report", str(tmp_path / "report")])
    assert result.exit_code == 1
    assert message in result.output
    assert "the serving head is unchanged" in result.output
    if problem == "unreadable":
        assert "Happy/" in result.output and "not a readable image" in result.output
    assert _head_versions(repository_copy) in (["1"], ["1", "2"])
    np.testing.assert_array_equal(served(triton_server.grpc_url, draw_site(1, seed=3)[0]).probabilities, before)


def test_unreadable_site_images_are_named_and_the_others_used(triton_server, repository_copy, tmp_path, caplog):
    """A decompression bomb and a broken file among good images: both named, the retrain goes on."""
    from PIL import Image

    data = write_site(tmp_path / "site", 3, seed=2)
    Image.new("1", (14000, 14000)).save(data / "Happy" / "bomb.png")
    (data / "Sad" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level("WARNING"):
        result = retrain(data, triton_server.grpc_url, repository_copy,
                         options=RetrainOptions(progress=False, publish=False, report_dir=tmp_path / "report"))
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(skipped) == 2 and any("bomb.png" in m and "--max-pixels" in m for m in skipped)
    assert any("broken.png" in m for m in skipped)
    # The 21 good images were used: the held-out comparison counts their held-out share.
    assert int(result.comparison.serving.confusion.sum()) == len(holdout_split(np.repeat(np.arange(7), 3), 0.25, 0)[1])
    assert _head_versions(repository_copy) == ["1"]


# -- site data rules (no server) ---------------------------------------------------------------------

def test_class_folders_and_csv_read_the_same_site(tmp_path):
    folders = read_site(write_site(tmp_path / "a", 2, seed=4))
    table = read_site(write_site(tmp_path / "b", 2, seed=4, layout="csv"))
    assert len(folders) == len(table) == 14
    assert folders.counts() == table.counts() == {c: 2 for c in CLASSES}
    order = lambda data: np.argsort([p.name for p in data.paths])  # noqa: E731  same file names, other folders
    np.testing.assert_array_equal(folders.read_faces(224).faces[order(folders)],
                                  table.read_faces(224).faces[order(table)])
    np.testing.assert_array_equal(folders.labels[order(folders)], table.labels[order(table)])


def test_synonyms_and_missing_classes_are_accepted_and_reported(tmp_path):
    for folder in ("happiness", "SAD"):
        (tmp_path / folder).mkdir()
    faces, _ = draw_site(1)
    from PIL import Image
    Image.fromarray(faces[3]).save(tmp_path / "happiness" / "a.png")
    Image.fromarray(faces[4]).save(tmp_path / "SAD" / "b.jpg")
    data = read_site(tmp_path)
    assert data.counts()["Happy"] == 1 and data.counts()["Sad"] == 1
    assert data.missing_classes == ["Surprise", "Fear", "Disgust", "Angry", "Neutral"]


def _site_with(tmp_path, change):
    root = write_site(tmp_path / "site", 2, seed=1)
    change(root)
    return root


@pytest.mark.parametrize("change,message", [
    (lambda r: (r / "Smirk").mkdir(), r"unknown class folder\(s\) 'Smirk'"),
    (lambda r: [p.unlink() for p in (r / "Fear").iterdir()], "class folder .*Fear is empty"),
    (lambda r: (r / "Fear" / "notes.txt").write_text("x"), "not image files .*notes.txt"),
    (lambda r: (r / "angry").mkdir(), "both mean Angry"),
], ids=["unknown-class", "empty-class", "non-image-file", "duplicate-class"])
def test_bad_class_folders_are_named(tmp_path, change, message):
    with pytest.raises(SiteDataError, match=message):
        read_site(_site_with(tmp_path, change))


def test_csv_errors_name_the_line(tmp_path):
    csv = write_site(tmp_path / "site", 1, seed=1, layout="csv")
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",Smirk"] + lines[4:]))
    with pytest.raises(SiteDataError, match=r"line 4: unknown expression class 'Smirk'"):
        read_site(csv)
    csv.write_text("\n".join(lines + ["images/gone.png,Sad"]))
    with pytest.raises(SiteDataError, match=r"do not exist:\n  line 9: .*gone.png"):
        read_site(csv)
    csv.write_text("file,class\nx.png,Sad\n")
    with pytest.raises(SiteDataError, match="must name the columns path,label"):
        read_site(csv)
    with pytest.raises(SiteDataError, match="site data not found"):
        read_site(tmp_path / "nowhere")


def test_holdout_split_keeps_each_class_on_both_sides_and_refuses_tiny_classes():
    labels = np.repeat(np.arange(7), [2, 3, 4, 5, 8, 10, 20])
    train, held = holdout_split(labels, 0.25, seed=0)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(labels)
    for c in range(7):
        assert (labels[train] == c).sum() >= 1 and (labels[held] == c).sum() >= 1
    with pytest.raises(SiteDataError, match=r"each class needs at least 2 .* Fear \(1\)"):
        holdout_split(np.array([0, 0, 1, 2, 2]))


# -- fit, compare, export (no server) ----------------------------------------------------------------

def test_fit_head_learns_separable_features_with_class_balance():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (7, 512)) * 3 + 10  # offset + scale like unnormalised CLIP features
    labels = np.repeat(np.arange(7), [40, 5, 5, 5, 5, 5, 5])
    x = centres[labels] + rng.normal(0, 1, (len(labels), 512))
    head = fit_head(x.astype(np.float32), labels)
    test_labels = np.repeat(np.arange(7), 10)
    test = centres[test_labels] + rng.normal(0, 1, (70, 512))
    assert (head.predict(test) == test_labels).mean() > 0.95
    np.testing.assert_allclose(class_weights(labels)[[0, 1]], [70 / (7 * 40), 70 / (7 * 5)])


def test_strong_l2_keeps_the_starting_head():
    rng = np.random.default_rng(1)
    x, y = rng.normal(5, 2, (50, 512)).astype(np.float32), np.arange(50) % 7
    start = LinearHead(rng.normal(0, 0.01, (7, 512)), rng.normal(0, 0.1, 7))
    head = fit_head(x, y, l2=1e6, init=start)
    np.testing.assert_allclose(head.weight, start.weight, atol=1e-4)


def test_scores_and_confusion():
    s = score(np.array([0, 0, 1, 3]), np.array([0, 1, 1, 3]))
    assert s.accuracy == 0.75 and s.confusion[0, 1] == 1 and s.confusion.sum() == 4
    assert s.recall[0] == 0.5 and s.recall[1] == 1.0 and np.isnan(s.recall[2])


def test_exported_head_graph_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    head = LinearHead(rng.normal(0, 0.1, (7, 512)), rng.normal(0, 0.1, 7))
    assert export_head(head, tmp_path / "model.onnx", "cafe_head") < 1e-4
    back = read_head(tmp_path / "model.onnx")
    np.testing.assert_array_equal(back.weight, head.weight)
    np.testing.assert_array_equal(back.bias, head.bias)


def test_zero_shot_head_from_tiny_clip_text_tower_with_random_weights():
    """Random weights here (no OpenAI weights offline): checks the build, not zero-shot accuracy."""
    import warnings

    from fer_triton.clip_loader import TINY_CLIP_MODEL
    from fer_triton.retrain.zero_shot import class_prompts, zero_shot_head

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = zero_shot_head(TINY_CLIP_MODEL, None, feature_norm=4.0, logit_scale=100.0)
    assert head.weight.shape == (7, 512) and not head.bias.any()
    np.testing.assert_allclose(np.linalg.norm(head.weight, axis=1), 25.0, rtol=1e-5)
    assert len({tuple(r) for r in np.round(head.weight, 4)}) == 7  # one distinct direction per class
    assert "a photo of a happy face." in class_prompts()["Happy"]


def test_a_head_triton_cannot_load_or_that_fails_verification_is_taken_out_again(repository_copy, server_factory):
    from fer_triton.retrain.publish import StageVersions, PublishError, publish_head

    server = server_factory(repository_copy)
    url = server.grpc_url
    probe, _ = draw_site(1, seed=4)
    before = served(url, probe).probabilities
    heads = StageVersions(repository_copy)
    head = LinearHead(np.random.default_rng(0).normal(0, 0.1, (7, 512)), np.zeros(7))
    broken_onnx = {"model.onnx": lambda path: path.write_bytes(b"not an onnx graph")}  # real load failure
    with FerClient(url) as client:
        with pytest.raises(PublishError, match="Triton could not load cafe_head") as err:
            publish_head(client, heads, head, info={}, extra_files=broken_onnx)
        assert "version 1 is served again" in str(err.value)

        def refuse(client):
            raise PublishError("outputs differ")

        with pytest.raises(PublishError, match="outputs differ"):
            publish_head(client, heads, head, info={}, verify=refuse)
    assert heads.on_disk() == [1]
    archived = sorted(p.name.split("-")[:2] for p in heads.archive_dir.iterdir())
    assert archived == [["2", "failed"], ["3", "failed"]]  # kept for inspection; numbers never reused
    np.testing.assert_array_equal(served(url, probe).probabilities, before)

    only_one = CliRunner().invoke(cli, ["rollback", "-u", url, "-r", str(repository_copy)])
    assert only_one.exit_code == 1 and "no previous version to roll back to" in only_one.output
