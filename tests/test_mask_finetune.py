"""retrain --fine-tune-mask through the REAL tritonserver on a SYNTHETIC site (drawn faces).

The tiny CLIP config with random weights makes the accuracies meaningless for real faces; what is
tested is the mechanics: the served mask net is checked against the checkpoint, fine-tuned with the
paper's loss, and the new mask net and head switch together (and roll back together) with no failed
request, serving exactly what the fine-tuned PyTorch model computes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from conftest import make_checkpoint, pytorch_probabilities
from fer_triton.checkpoint import CAFECheckpoint
from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.retrain.mask_finetune import (MaskFineTuneError, MaskFineTuneOptions, check_layout,
                                              recover_clip_features)
from fer_triton.retrain.pair_publish import keep_two_versions
from fer_triton.retrain.pins import PinError, check_unpinned, read_pins, write_pins
from fer_triton.retrain.pipeline import RetrainOptions, retrain
from fer_triton.retrain.publish import StageVersions
from fer_triton.synthetic import draw_site, write_site
from live_clients import SITE_SHIFT, Hammer, served


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A SYNTHETIC site: 7 classes x 8 drawn faces through a site shift, as class folders."""
    return write_site(tmp_path_factory.mktemp("mask-site") / "site", 8, SITE_SHIFT, seed=3)


def _versions(repository, model):
    return sorted(int(p.name) for p in (repository / model).iterdir() if p.is_dir())


def test_fine_tuned_mask_net_and_head_switch_together_and_roll_back_together(
        site, repository_copy, server_factory, tmp_path):
    server = server_factory(repository_copy)
    url = server.grpc_url
    probe, _ = draw_site(1, SITE_SHIFT, seed=11)
    before = served(url, probe)
    saved = tmp_path / "fine_tuned.pt"
    mask = MaskFineTuneOptions(epochs=2, batch_size=16, device="cpu", save_checkpoint=saved)

    with Hammer(url) as hammer:
        result = retrain(site, url, repository_copy, options=RetrainOptions(
            progress=False, report_dir=tmp_path / "report", mask=mask))
        publish_window = (time.monotonic() - result.timings["publish"], time.monotonic())
        after = served(url, probe)
        rolled = CliRunner().invoke(cli, ["rollback", "-u", url, "-r", str(repository_copy)])
        restored = served(url, probe)

    # Both published as version 2, switched together: the served outputs are the fine-tuned PyTorch
    # model's (CLIP from the checkpoint, new mask net, new head), end to end.
    assert (result.published_mask_version, result.published_version) == (2, 2), result.decision
    assert "published as cafe_mask_net version 2 + cafe_head version 2" in result.decision
    np.testing.assert_allclose(after.probabilities, pytorch_probabilities(saved, probe), atol=1e-4)
    assert np.abs(after.masked_features - before.masked_features).max() > 1e-3  # the mask net did change
    np.testing.assert_allclose(after.probabilities, result.head.probabilities(after.masked_features), atol=1e-4)
    losses = [epoch["loss"] for epoch in result.fine_tuned.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert result.head_only is not None  # the head fitted alone on the served features, for the report
    report = result.report.read_text()
    assert "fine-tuned from" in report and "head fitted alone" in report and str(saved) in report
    assert "| | serving head (before) | new mask net + head (after) |" in report

    # Rollback took both out together (archived, not deleted) and serves the old pair exactly.
    assert rolled.exit_code == 0, rolled.output
    assert "cafe_head: version 2 taken out of service, with cafe_mask_net version 2" in rolled.output
    assert "version 1 is served with cafe_mask_net version 1" in rolled.output
    assert np.abs(restored.probabilities - before.probabilities).max() < 1e-6
    assert np.abs(restored.masked_features - before.masked_features).max() < 1e-6
    assert _versions(repository_copy, "cafe_mask_net") == [1] and _versions(repository_copy, "cafe_head") == [1]
    archive = repository_copy.parent / "model_repository.archive"
    (mask_dir,) = (archive / "cafe_mask_net").glob("2-rolled-back-*")
    info = json.loads((mask_dir / "mask_info.json").read_text())
    assert info["checkpoint"] == str(saved.resolve()) and info["head_version"] == 2
    (head_dir,) = (archive / "cafe_head").glob("2-rolled-back-*")
    head_info = json.loads((head_dir / "head_info.json").read_text())
    assert head_info["published_with_mask_net"] and head_info["previous_mask_net_version"] == 1
    assert read_pins(repository_copy, StageVersions(repository_copy).layout) == {}  # steady state: -1 again

    # Client threads ran through the whole switch and the rollback without a single failed request.
    assert hammer.errors == []
    assert any(publish_window[0] <= t <= publish_window[1] for t in hammer.finished)


def test_cli_refuses_a_wrong_checkpoint_before_any_work_and_dry_runs_with_the_recorded_one(
        site, triton_server, tiny_repository, tiny_checkpoint, tmp_path):
    other = make_checkpoint(tmp_path / "other.pt", seed=5)
    runner = CliRunner()
    base = ["retrain", "--data", str(site), "-u", triton_server.grpc_url, "-r", str(tiny_repository),
            "--report", str(tmp_path / "report"), "--fine-tune-mask"]

    wrong = runner.invoke(cli, base + ["--checkpoint", str(other)])
    assert wrong.exit_code == 1
    assert f"the mask net in {other} is not the served one" in wrong.output
    assert "features (server)" not in wrong.output  # refused before the feature pass

    missing = runner.invoke(cli, base + ["--checkpoint", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output

    stray = runner.invoke(cli, base[:-1] + ["--checkpoint", str(other)])
    assert stray.exit_code == 2 and "--checkpoint only apply with --fine-tune-mask" in stray.output

    bad_device = runner.invoke(cli, base + ["--device", "cuda:7"])
    assert bad_device.exit_code == 1 and "torch sees no CUDA GPU" in bad_device.output

    # The checkpoint recorded at export is found by itself; --no-publish fine-tunes, saves and reports only.
    dry = runner.invoke(cli, base + ["--mask-epochs", "1", "--no-publish"])
    assert dry.exit_code == 0, dry.output
    assert "fine-tune mask net" in dry.output and "not published (--no-publish)" in dry.output
    tuned = CAFECheckpoint.load(tmp_path / "report" / "fine_tuned.pt")
    assert tuned.meta["fine_tuned_mask_net"]["from"] == str(tiny_checkpoint.resolve())
    assert _versions(tiny_repository, "cafe_mask_net") == [1] and _versions(tiny_repository, "cafe_head") == [1]


def test_only_the_staged_fp32_layout_can_publish_a_mask_net():
    check_layout({"layout": "staged", "precision": "fp32"}, "cafe")
    for meta in ({"layout": "fused", "precision": "fp32"}, {"layout": "staged", "precision": "int8"}):
        with pytest.raises(MaskFineTuneError, match="needs the staged FP32 layout.*fer-triton export"):
            check_layout(meta, "cafe")


def test_clip_features_are_recovered_from_masked_features():
    gen = torch.Generator().manual_seed(0)
    clip = torch.randn(16, 512, generator=gen)
    logits = torch.relu(torch.randn(16, 512, generator=gen) * 3)  # >= 0, as the mask net's are
    masked = (clip * torch.sigmoid(logits)).numpy()
    np.testing.assert_allclose(recover_clip_features(masked, logits.numpy()), clip.numpy(), atol=1e-6)


def test_a_pinned_ensemble_is_reported_and_unpinning_restores_it(repository_copy):
    layout = StageVersions(repository_copy).layout
    check_unpinned(repository_copy, layout)
    write_pins(repository_copy, layout, {"cafe_mask_net": 1, "cafe_head": 1})
    assert read_pins(repository_copy, layout) == {"cafe_mask_net": 1, "cafe_head": 1}
    with pytest.raises(PinError, match="pins cafe_head to version 1, cafe_mask_net to version 1"):
        check_unpinned(repository_copy, layout)
    with pytest.raises(PinError, match="no step calling cafe_nope"):
        write_pins(repository_copy, layout, {"cafe_nope": 1})
    write_pins(repository_copy, layout, {})
    check_unpinned(repository_copy, layout)


def test_an_older_mask_net_config_is_made_to_keep_two_versions(repository_copy):
    masks = StageVersions(repository_copy, stage="mask_net")
    config = masks.model_dir / "config.pbtxt"
    cfg = text_format.Parse(config.read_text(), mc.ModelConfig())
    assert cfg.version_policy.latest.num_versions == 2  # new exports keep two already
    cfg.ClearField("version_policy")
    config.write_text(text_format.MessageToString(cfg))
    assert keep_two_versions(masks) == [config]
    assert text_format.Parse(config.read_text(), mc.ModelConfig()).version_policy.latest.num_versions == 2
    assert keep_two_versions(masks) == []


def test_a_failed_pair_is_taken_out_and_rollback_follows_what_was_published(repository_copy, server_factory,
                                                                            tiny_checkpoint):
    from fer_triton.model import MaskNet
    from fer_triton.retrain.fit import LinearHead
    from fer_triton.retrain.pair_publish import publish_mask_and_head
    from fer_triton.retrain.publish import PublishError

    server = server_factory(repository_copy)
    probe, _ = draw_site(1, SITE_SHIFT, seed=4)
    before = served(server.grpc_url, probe)
    net = MaskNet()
    net.load_state_dict(CAFECheckpoint.load(tiny_checkpoint).mask_net)
    with torch.no_grad():
        net.trunk.layer4[1].bn2.bias.add_(0.5)  # a different mask net, so a mix-up would show
    head = LinearHead(np.random.default_rng(0).normal(size=(7, 512)).astype(np.float32) * 0.01, np.zeros(7))
    masks, heads = StageVersions(repository_copy, stage="mask_net"), StageVersions(repository_copy)

    def refuse(client):
        raise PublishError("refused by the test")

    with FerClient(server.grpc_url) as client, pytest.raises(PublishError) as failed:
        publish_mask_and_head(client, masks, heads, net, head, wire_size=224, mask_record={}, head_info={},
                              verify=refuse)
    message = str(failed.value)
    assert "cafe_mask_net version 2 with cafe_head version 2 failed; versions 1 and 1 are served again" in message
    assert "refused by the test" in message
    assert _versions(repository_copy, "cafe_mask_net") == [1] and _versions(repository_copy, "cafe_head") == [1]
    assert read_pins(repository_copy, heads.layout) == {}
    after = served(server.grpc_url, probe)
    assert np.abs(after.probabilities - before.probabilities).max() < 1e-6
    assert np.abs(after.masked_features - before.masked_features).max() < 1e-6
    # Version numbers are never reused: the next publish is 3, and it is served.
    with FerClient(server.grpc_url) as client:
        assert publish_mask_and_head(client, masks, heads, net, head, wire_size=224, mask_record={},
                                     head_info={}) == (3, 3)
    now = served(server.grpc_url, probe)
    np.testing.assert_allclose(now.probabilities, head.probabilities(now.masked_features), atol=1e-4)
    assert np.abs(now.masked_features - before.masked_features).max() > 1e-3

    # A head-only publish on top, then two rollbacks: first the head alone (mask net 3 stays), then
    # the pair, back to what the export served.
    from fer_triton.retrain.pair_publish import rollback
    from fer_triton.retrain.publish import publish_head

    other_head = LinearHead(head.weight[::-1].copy(), head.bias)
    with FerClient(server.grpc_url) as client:
        assert publish_head(client, heads, other_head, info={}) == 4
        head_only = rollback(client, repository_copy)
        assert (head_only.head_from, head_only.head_to, head_only.mask_from) == (4, 3, None)
        np.testing.assert_allclose(served(server.grpc_url, probe).probabilities, now.probabilities, atol=1e-6)
        pair = rollback(client, repository_copy)
        assert (pair.head_from, pair.head_to, pair.mask_from, pair.mask_to) == (3, 1, 3, 1)
    back = served(server.grpc_url, probe)
    assert np.abs(back.probabilities - before.probabilities).max() < 1e-6
    assert np.abs(back.masked_features - before.masked_features).max() < 1e-6
