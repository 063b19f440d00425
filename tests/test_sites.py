"""Sites through the REAL tritonserver: each site is served its own head, the base model and the other
sites return exactly what they returned before, rollback, bad input, mixed requests, the stream client,
old repositories, the fused layout, GPU configs, and what 100 sites cost in server memory.

SYNTHETIC sites (drawn faces through a site shift) and the tiny CLIP with random weights: the
accuracies here say nothing about real faces; they only drive the publish paths.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer_triton.cli import cli
from fer_triton.client import FerClient, FerInputError, FerServerError, StreamConfig, StreamPipeline, parse_sources
from fer_triton.export.repository import parse_config
from fer_triton.retrain.fit import LinearHead
from fer_triton.retrain.pipeline import RetrainOptions, retrain
from fer_triton.retrain.sites import SiteError, Sites, SiteTable
from fer_triton.synthetic import SiteShift, draw_site, write_site
from live_clients import Hammer

LOBBY = SiteShift(brightness=0.7, colour_cast=(1.15, 1.0, 0.8), noise=2.0)   # a dim, warm room
DOOR = SiteShift(brightness=1.2, colour_cast=(0.85, 1.0, 1.2), blur=0.8)     # a bright, blue-ish entrance


class SiteHammer(Hammer):
    """Hammer's client threads, asking for a site (served by its own head or the base head meanwhile)."""

    def __init__(self, url, site):
        super().__init__(url, threads=1)
        self.site = site

    def _run(self, url):
        with FerClient(url, site=self.site) as client:
            while not self._stop.is_set():
                try:
                    client.infer(self.faces[:4])
                except Exception as exc:  # any failure during a site publish is what this test looks for
                    self.errors.append(repr(exc))


def outputs(url, faces, sites=None, site=None):
    """(probabilities, masked features) the server returns for ``faces`` now (``cafe``, or ``cafe_sites``)."""
    with FerClient(url, site=site) as client:
        out = client.infer(faces, with_features=True, sites=sites)
    return out.probabilities, out.masked_features


def site_versions(repository):
    """Every version folder of the head and the site head, in the repository and its archive."""
    archive = repository.parent / f"{repository.name}.archive"
    return {name: sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            for name, folder in [("head", repository / "cafe_head"), ("site_head", repository / "cafe_site_head"),
                                 ("archived head", archive / "cafe_head"),
                                 ("archived site_head", archive / "cafe_site_head")] if folder.is_dir()}


def random_head(seed):
    rng = np.random.default_rng(seed)
    return LinearHead(rng.normal(0, 0.05, (7, 512)), rng.normal(0, 0.1, 7))


def test_two_sites_are_served_their_own_heads_and_nothing_else_changes(repository_copy, server_factory, tmp_path):
    server = server_factory(repository_copy)
    url, runner = server.grpc_url, CliRunner()
    base_args = ["-u", url, "-r", str(repository_copy)]
    for name in ("lobby", "door"):
        added = runner.invoke(cli, ["sites", "add", name, *base_args])
        assert added.exit_code == 0, added.output
        assert f"site '{name}' created" in added.output and "served by the base head" in added.output
    probe = np.concatenate([draw_site(1, LOBBY, seed=21)[0], draw_site(1, DOOR, seed=22)[0]])  # 14 faces
    base_before, features = outputs(url, probe)
    # A site without a head of its own is served by the base model: exactly the base outputs.
    for name in ("lobby", "door"):
        np.testing.assert_array_equal(outputs(url, probe, site=name)[0], base_before)

    lobby_data = write_site(tmp_path / "lobby", 12, LOBBY, seed=1)
    door_data = write_site(tmp_path / "door", 12, DOOR, seed=2)
    options = dict(progress=False, force=True)
    # base and site clients keep sending requests through every site publish
    with Hammer(url) as hammer, SiteHammer(url, "door") as site_hammer:
        lobby = retrain(lobby_data, url, repository_copy, site="lobby",
                        options=RetrainOptions(report_dir=tmp_path / "r-lobby", **options))
        lobby_after = outputs(url, probe, site="lobby")[0]
        door_between = outputs(url, probe, site="door")[0]
        base_between = outputs(url, probe)[0]
        door = retrain(door_data, url, repository_copy, site="door",
                       options=RetrainOptions(report_dir=tmp_path / "r-door", **options))
    assert hammer.errors == [] and site_hammer.errors == []

    # Each site is served its own head; the base model and the other site are untouched.
    assert lobby.published_version == 1 and lobby.serving_version == 0 and lobby.site == "lobby"
    assert door.published_version == 1 and door.site_model_version == lobby.site_model_version + 1
    np.testing.assert_allclose(lobby_after, lobby.head.probabilities(features), atol=1e-4)
    assert np.abs(lobby_after - base_before).max() > 1e-2
    assert np.abs(door_between - base_before).max() < 1e-6 and np.abs(base_between - base_before).max() < 1e-6
    door_after = outputs(url, probe, site="door")[0]
    np.testing.assert_allclose(door_after, door.head.probabilities(features), atol=1e-4)
    assert np.abs(outputs(url, probe, site="lobby")[0] - lobby_after).max() < 1e-6
    assert np.abs(outputs(url, probe)[0] - base_before).max() < 1e-6
    assert np.abs(door.head.weight - lobby.head.weight).max() > 1e-3  # different data, different heads
    assert "published as site 'lobby' head version 1" in lobby.decision and "replacing the base head" in lobby.decision
    assert "site: lobby" in lobby.report.read_text()

    # One request mixing faces of both sites and the base model: each face gets its own outputs.
    mixed = ["lobby", "door", ""] * 4 + ["door", "lobby"]
    served = outputs(url, probe, sites=mixed)[0]
    expected = {"lobby": lobby_after, "door": door_after, "": base_before}
    for row, name in enumerate(mixed):
        assert np.abs(served[row] - expected[name][row]).max() < 1e-6, (row, name)

    # The table: site versions, who published them and when, held-out accuracy; served version on disk.
    listed = runner.invoke(cli, ["sites", "list", "-r", str(repository_copy), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["site"]: r for r in map(json.loads, listed.output.splitlines())}
    assert rows["lobby"]["site_version"] == 1 and rows["lobby"]["accuracy"] == lobby.comparison.new.accuracy
    assert rows["door"]["model_version"] == door.site_model_version and "@" in rows["door"]["published_by"]
    table = runner.invoke(cli, ["sites", "list", "-r", str(repository_copy)])
    assert "lobby" in table.output and "held-out acc" in table.output

    # Drift per site: the reference the site's publish wrote, the site's own outputs.
    drift = runner.invoke(cli, ["drift", "--site", "lobby", "--images", str(lobby_data), *base_args, "--json"])
    assert drift.exit_code == 0, drift.output
    assert json.loads(drift.output)["reference"].endswith("drift/lobby-1.npz")
    assert json.loads(drift.output)["retrain_advised"] is False

    # Rollback of one site: its previous outputs (the base head's) come back; the other site keeps its head.
    rolled = runner.invoke(cli, ["rollback", "--site", "lobby", *base_args])
    assert rolled.exit_code == 0, rolled.output
    assert "site 'lobby': head version 1 taken out of service; the base head serves it again" in rolled.output
    assert np.abs(outputs(url, probe, site="lobby")[0] - base_before).max() < 1e-6
    assert np.abs(outputs(url, probe, site="door")[0] - door_after).max() < 1e-6
    assert np.abs(outputs(url, probe)[0] - base_before).max() < 1e-6
    # Only the two newest site-head versions stay in the repository; version numbers are never reused.
    versions = site_versions(repository_copy)
    assert versions["site_head"] == ["5", "6"] and versions["head"] == ["1"]
    assert [v.split("-")[:2] for v in versions["archived site_head"]] == [[str(v), "superseded"] for v in (1, 2, 3, 4)]
    table = SiteTable.load(repository_copy / "cafe_site_head" / "6")
    assert table.sites["lobby"]["heads"] == [] and table.sites["lobby"]["rolled_back"][0]["version"] == 1
    assert table.sites["lobby"]["next_version"] == 2


@pytest.fixture(scope="module")
def sites_server(tmp_path_factory, tiny_repository):
    """A server whose repository has site 'lobby' with a head of its own (shared by the read-only tests)."""
    from conftest import start_server

    repository = tmp_path_factory.mktemp("sites") / "model_repository"
    shutil.copytree(tiny_repository, repository)
    server = start_server(repository)
    with FerClient(server.grpc_url) as client:
        sites = Sites(repository)
        sites.add(client, "lobby")
        sites.add(client, "door")
        sites.publish_head(client, "lobby", random_head(3), {"accuracy": 0.5})
    yield server, repository
    server.stop()


@pytest.mark.parametrize("args,message", [
    (["sites", "add", "Lobby!"], "'Lobby!' is not a valid site name: use 1 to 63 characters"),
    (["sites", "add", "lobby"], "site 'lobby' already exists"),
    (["retrain", "--site", "nope", "--data", "{data}"], "unknown site 'nope' (sites: door, lobby): create it with "
                                                        "`fer-triton sites add nope`"),
    (["retrain", "--site", "lobby", "--fine-tune-mask", "--data", "{data}"],
     "--fine-tune-mask cannot be used with --site: the mask net is shared by every site"),
    (["retrain", "--site", "a/b", "--data", "{data}"], "'a/b' is not a valid site name"),
    (["rollback", "--site", "door"], "site 'door' has no head of its own"),
    (["rollback", "--site", "nope"], "unknown site 'nope'"),
    (["drift", "--site", "nope", "--images", "{data}"], "unknown site 'nope'"),
    (["infer", "--site", "nope", "{image}"], "unknown site(s) 'nope'"),
], ids=["bad-name", "exists", "unknown-retrain", "fine-tune-mask", "slash", "no-head", "unknown-rollback",
        "unknown-drift", "unknown-infer"])
def test_bad_site_input_is_named_and_changes_nothing(sites_server, tmp_path, args, message):
    server, repository = sites_server
    data = write_site(tmp_path / "data", 2, LOBBY, seed=5)
    image = next(data.rglob("*.png"))
    probe = draw_site(1, LOBBY, seed=6)[0]
    before = {n: outputs(server.grpc_url, probe, site=n)[0] for n in ("lobby", "door")}
    on_disk = site_versions(repository)
    args = [a.format(data=data, image=image) for a in args]
    extra = ["-u", server.grpc_url] + (["-r", str(repository)] if args[0] != "infer" else [])
    result = CliRunner().invoke(cli, args + extra)
    assert result.exit_code in (1, 2), result.output
    assert message in " ".join(result.output.split()), result.output
    assert site_versions(repository) == on_disk
    for name, probabilities in before.items():
        np.testing.assert_array_equal(outputs(server.grpc_url, probe, site=name)[0], probabilities)


def test_unknown_site_in_the_library_and_the_client(sites_server):
    server, repository = sites_server
    with pytest.raises(SiteError, match="unknown site 'nope'"):
        retrain("unused", server.grpc_url, repository, site="nope")
    with FerClient(server.grpc_url) as client:
        client.check_sites(["lobby", "door", ""])
        with pytest.raises(FerInputError, match="unknown site.*'ghost'"):
            client.check_sites(["lobby", "ghost"])
        with pytest.raises(FerInputError, match="2 site names for 1 faces"):
            client.infer(draw_site(1, seed=1)[0][:1], sites=["lobby", "door"])


def test_stream_maps_cameras_to_sites(sites_server, tmp_path):
    server, _ = sites_server
    faces = draw_site(1, LOBBY, seed=8)[0]
    for camera in ("a", "b"):
        (tmp_path / camera).mkdir()
        for i, face in enumerate(faces):
            Image.fromarray(face).save(tmp_path / camera / f"{i:02d}.png")
    base, features = outputs(server.grpc_url, faces)
    lobby = random_head(3).probabilities(features)
    out = io.StringIO()
    sources = parse_sources([f"lobby/cam1={tmp_path / 'a'}", f"cam2={tmp_path / 'b'}"])
    assert [(s.camera, s.site) for s in sources] == [("lobby/cam1", "lobby"), ("cam2", None)]
    summary = StreamPipeline(sources, server.grpc_url, config=StreamConfig(detector="crops", batch_size=5),
                             out=out).run()
    assert summary.accounting.results == 2 * len(faces) and summary.accounting.balanced
    lines = [json.loads(line) for line in out.getvalue().splitlines() if '"label"' in line]
    for line in lines:
        got = np.array(list(line["probabilities"].values()))
        if line["camera"] == "lobby/cam1":
            assert line["site"] == "lobby" and np.abs(got - lobby[line["frame"]]).max() < 1e-5
        else:
            assert "site" not in line and np.abs(got - base[line["frame"]]).max() < 1e-5

    # A camera mapped to a site the server does not know stops the run before any frame is read.
    unknown = StreamPipeline(parse_sources([f"ghost/cam1={tmp_path / 'a'}"]), server.grpc_url,
                             config=StreamConfig(detector="crops"), out=io.StringIO())
    with pytest.raises(FerInputError, match="unknown site.*'ghost'"):
        unknown.run()
    bad = CliRunner().invoke(cli, ["stream", f"Lobby/cam1={tmp_path / 'a'}", "-u", server.grpc_url,
                                   "--detector", "crops"])
    assert bad.exit_code == 1 and "'Lobby' is not a valid site name" in bad.output


def test_repository_exported_before_sites_gets_them_with_sites_add(repository_copy, server_factory):
    for model in ("cafe_site_head", "cafe_sites"):
        shutil.rmtree(repository_copy / model)
    server = server_factory(repository_copy)
    runner, args = CliRunner(), ["-u", server.grpc_url, "-r", str(repository_copy)]
    refused = runner.invoke(cli, ["rollback", "--site", "lobby", *args])
    assert refused.exit_code == 1 and "has no site models" in refused.output and "sites add" in refused.output
    probe = draw_site(1, seed=9)[0]
    with FerClient(server.grpc_url, site="lobby") as client, pytest.raises(FerServerError, match="sites add"):
        client.info()
    added = runner.invoke(cli, ["sites", "add", "lobby", *args])
    assert added.exit_code == 0, added.output
    assert "added cafe_site_head, cafe_sites" in added.output
    np.testing.assert_array_equal(outputs(server.grpc_url, probe, site="lobby")[0], outputs(server.grpc_url, probe)[0])


def test_fused_layout_serves_sites(tiny_checkpoint, tmp_path, server_factory):
    from fer_triton.export.exporter import export_checkpoint

    repository = export_checkpoint(tiny_checkpoint, tmp_path / "fused", fused=True).repository
    steps = [s.model_name for s in parse_config(repository / "cafe_sites" / "config.pbtxt").ensemble_scheduling.step]
    assert steps == ["cafe_backbone", "cafe_head", "cafe_site_head"]
    server = server_factory(repository)
    probe, features = draw_site(1, DOOR, seed=4)[0], None
    base, features = outputs(server.grpc_url, probe)
    with FerClient(server.grpc_url) as client:
        Sites(repository).add(client, "door")
        model_version, site_version = Sites(repository).publish_head(client, "door", random_head(4), {})
    assert (model_version, site_version) == (3, 1)
    np.testing.assert_allclose(outputs(server.grpc_url, probe, site="door")[0],
                               random_head(4).probabilities(features), atol=1e-4)
    assert np.abs(outputs(server.grpc_url, probe)[0] - base).max() < 1e-6


def test_gpu_configs_keep_the_site_head_on_the_python_backend(repository_copy):
    from tritonclient.grpc import model_config_pb2 as mc

    from fer_triton.export import gpu

    gpu.write_gpu_configs(repository_copy, wire_size=224, num_classes=7, ensemble_max_batch_size=64,
                          opts=gpu.GPUOptions(), gpu_only=True)
    for name in [*gpu.VARIANTS, "../config"]:
        cfg = parse_config(repository_copy / "cafe_site_head" / "configs" / f"{name}.pbtxt")
        assert cfg.backend == "python" and cfg.max_batch_size == 256
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert cfg.version_policy.latest.num_versions == 2
    assert (repository_copy / "cafe_site_head" / "1" / "model.py").is_file()  # its runner stays


def test_a_hundred_sites_cost_little_server_memory(repository_copy, server_factory):
    """Sites with heads of their own: the server's resident memory grows by far less than 200 MB from none
    to 100 (one more site-head process while the previous version stays loaded, then 14 KB per site and
    loaded version), and each of the 100 is served its own head."""
    import time

    psutil = pytest.importorskip("psutil")
    server = server_factory(repository_copy)
    probe = draw_site(2, seed=12)[0]
    heads = {f"site-{i:03d}": random_head(100 + i) for i in range(100)}

    def rss_mb():
        time.sleep(1.0)  # the previous site-head version's process leaves once idle
        for _ in range(2):  # the same requests as after: allocations of a first run are not the sites'
            outputs(server.grpc_url, probe)
            outputs(server.grpc_url, probe, sites=[""] * len(probe))
        root = psutil.Process(server.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def add(names):
        def change(table, _files):
            for name in names:
                table.add(name, "test")
                table.push(name, heads[name], {})
            return f"{len(names)} sites"

        with FerClient(server.grpc_url) as client:
            return Sites(repository_copy).publish(client, change)

    base, features = outputs(server.grpc_url, probe)
    none = rss_mb()
    assert add(list(heads)[:1]) == 2
    one = rss_mb()
    assert add(list(heads)[1:]) == 3
    hundred = rss_mb()
    names = [f"site-{i:03d}" for i in (0, 7, 42, 99, 13, 58, 71)] + [""] * 7
    served = outputs(server.grpc_url, probe, sites=names)[0]
    for row, name in enumerate(names):
        expected = heads[name].probabilities(features[row:row + 1])[0] if name else base[row]
        assert np.abs(served[row] - expected).max() < 1e-4
    print(f"server RSS: no site {none:.0f} MB, 1 site {one:.0f} MB ({one - none:+.1f}), "
          f"100 sites {hundred:.0f} MB ({hundred - one:+.1f} from 1 site, {hundred - none:+.1f} in all)")
    assert hundred - none < 200
