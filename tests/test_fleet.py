"""Fleets: model control behind an admin key, several replicas on one repository, the repository lock.

Every server here is a real tritonserver on a loopback port; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from conftest import pytorch_probabilities
from fer_triton.admin_key import AdminKeyError, grpc_headers, load_admin_key, new_key
from fer_triton.cli import cli
from fer_triton.client import FerClient
from fer_triton.retrain.lock import LOCK_FILE, RepositoryLock, RepositoryLockedError
from fer_triton.retrain.replicas import FleetError, expand_urls
from fer_triton.synthetic import draw_faces


# -- the admin key ---------------------------------------------------------------------------------

def test_model_control_is_refused_without_the_key_while_inference_works(repository_copy, tiny_checkpoint,
                                                                         server_factory, caplog):
    key = new_key()
    with caplog.at_level(logging.DEBUG):
        server = server_factory(repository_copy, admin_key=key)
    url = server.grpc_url
    triton = grpcclient.InferenceServerClient(url)
    faces, _ = draw_faces(2, 224, seed=8)
    with FerClient(url) as client:  # inference, metadata and config stay open
        assert np.abs(client.infer(faces).probabilities - pytorch_probabilities(tiny_checkpoint, faces)).max() < 1e-4
    assert triton.is_server_ready() and triton.get_model_metadata("cafe")
    for call in (lambda h: triton.load_model("cafe_head", headers=h), lambda h: triton.unload_model("cafe", headers=h),
                 lambda h: triton.get_model_repository_index(headers=h)):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
        with pytest.raises(InferenceServerException, match="restricted"):
            call(grpc_headers("not-the-key-but-long-enough"))
    triton.load_model("cafe_head", headers=grpc_headers(key))  # with the key: allowed
    assert {m["name"] for m in triton.get_model_repository_index(headers=grpc_headers(key), as_json=True)["models"]}
    with FerClient(url) as client:
        assert client.infer(faces).probabilities.shape == (2, 7)  # the ensemble was not unloaded
    assert key not in repr(server)
    assert all(key not in r.getMessage() for r in caplog.records)


def test_serve_reads_the_key_from_the_environment_only_and_says_so(repository_copy, tmp_path):
    from fer_triton.server import free_port

    key = new_key()
    ports = [str(free_port()) for _ in range(3)]
    env = dict(os.environ, FER_TRITON_ADMIN_KEY_FILE=str(tmp_path / "missing.key"))
    import subprocess
    import sys

    base = [sys.executable, "-m", "fer_triton", "serve", "-r", str(repository_copy), "--grpc-port", ports[0],
            "--http-port", ports[1], "--metrics-port", ports[2]]
    missing = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "cannot read the admin key file" in missing.stderr
    (tmp_path / "short.key").write_text("short\n")
    env["FER_TRITON_ADMIN_KEY_FILE"] = str(tmp_path / "short.key")
    short = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and "use at least 16" in short.stderr and "short" not in short.stderr.split("key")[0]
    both = subprocess.run(base, env=dict(env, FER_TRITON_ADMIN_KEY=key), capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "keep one" in both.stderr and key not in both.stderr
    (tmp_path / "good.key").write_text(key + "\n")
    env["FER_TRITON_ADMIN_KEY_FILE"] = str(tmp_path / "good.key")
    proc = subprocess.Popen(base + ["--log-file", str(tmp_path / "triton.log")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any("model control" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert "model control: behind the admin key" in lines[-1]
        triton = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        with pytest.raises(InferenceServerException, match="restricted"):
            triton.load_model("cafe_head")
        triton.load_model("cafe_head", headers=grpc_headers(key))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    written = "".join(lines) + out + (tmp_path / "triton.log").read_text()
    assert key not in written  # neither our output nor Triton's log carries the key


def test_load_admin_key_rules(tmp_path):
    assert load_admin_key({}) is None
    key = new_key()
    assert load_admin_key({"FER_TRITON_ADMIN_KEY": f" {key}\n"}) == key
    (tmp_path / "k").write_text("")
    with pytest.raises(AdminKeyError, match="is empty"):
        load_admin_key({"FER_TRITON_ADMIN_KEY_FILE": str(tmp_path / "k")})
    with pytest.raises(AdminKeyError, match="cannot carry"):
        load_admin_key({"FER_TRITON_ADMIN_KEY": "x" * 20 + ":=" + "y"})


def test_binding_beyond_loopback_without_a_key_warns(repository_copy):
    result = CliRunner().invoke(cli, ["serve", "-r", str(repository_copy), "--host", "0.0.0.0", "--grpc-port", "1",
                                      "--http-port", "1"])
    assert "WARNING: listening on 0.0.0.0 without an admin key" in result.output
    assert "both on port 1" in result.output  # then refused for the clash, before anything started


# -- replicas ---------------------------------------------------------------------------------------

def test_expand_urls_gives_one_address_per_replica():
    records = {"triton-headless": ["10.1.0.4", "fd00::4", "10.1.0.5", "fd00::5"], "one": ["10.2.0.1"],
               "v6-only": ["fd00::7", "fd00::8"], "localhost": ["::1", "127.0.0.1"]}
    resolver = lambda host, port: records[host]  # noqa: E731  (a stand-in for DNS, which this sandbox lacks)
    assert expand_urls(["triton-headless:8001", "127.0.0.1:9001", "one:8001", "10.1.0.5:8001"], resolver) == [
        "10.1.0.4:8001", "10.1.0.5:8001", "127.0.0.1:9001", "one:8001"]  # dual-stack pods counted once
    assert expand_urls(["v6-only:8001"], resolver) == ["[fd00::7]:8001", "[fd00::8]:8001"]
    assert expand_urls(["localhost:8001"], resolver) == ["localhost:8001"]  # this machine: one server
    assert expand_urls(["localhost:8001"]) == ["localhost:8001"]  # the real resolver agrees
    with pytest.raises(FleetError, match="is not HOST:PORT"):
        expand_urls(["triton-headless"], resolver)
    with pytest.raises(FleetError, match="cannot resolve"):
        expand_urls(["no-such-host.invalid:8001"])


def test_status_shows_each_replica_and_flags_one_that_differs(repository_copy, tmp_path, server_factory):
    key = new_key()
    servers = [server_factory(repository_copy, admin_key=key) for _ in range(2)]
    other = tmp_path / "other"
    shutil.copytree(repository_copy, other)
    shutil.copytree(other / "cafe_head" / "1", other / "cafe_head" / "2")
    servers.append(server_factory(other, admin_key=key))
    args = ["status", *sum((["-u", s.grpc_url] for s in servers), []), "-r", str(repository_copy), "--json"]
    refused = CliRunner().invoke(cli, args)  # no key: the repository index is refused, and said so
    assert refused.exit_code == 2 and "restricted" in refused.output
    result = CliRunner(env={"FER_TRITON_ADMIN_KEY": key}).invoke(cli, args)
    assert result.exit_code == 2, result.output
    by_url = {s["url"]: s for s in json.loads(result.output)}
    assert [by_url[s.grpc_url]["versions"]["cafe_head"] for s in servers] == [[1], [1], [1, 2]]
    assert not by_url[servers[0].grpc_url]["differs"] and not by_url[servers[1].grpc_url]["differs"]
    assert "cafe_head serves [1, 2], the others [1]" in by_url[servers[2].grpc_url]["differs"][0]
    same = CliRunner(env={"FER_TRITON_ADMIN_KEY": key}).invoke(
        cli, ["status", "-u", servers[0].grpc_url, "-u", servers[1].grpc_url, "-r", str(repository_copy)])
    assert same.exit_code == 0 and same.output.count(" ok\n") == 2


# -- the repository lock ----------------------------------------------------------------------------

def _hold(repository, seconds, ready):
    with RepositoryLock(repository, "test holder"):
        ready.set()
        time.sleep(seconds)


def test_the_repository_lock_refuses_waits_and_recovers_a_stale_lock(tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(repository, 3.0, ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RepositoryLockedError, match=r"being changed by .*pid \d+, `test holder`"):
            RepositoryLock(repository, "second").acquire()
        started = time.monotonic()
        with RepositoryLock(repository, "third", wait_s=60):  # waits until the holder lets go
            assert time.monotonic() - started > 0.5
            assert json.loads((repository / LOCK_FILE).read_text())["command"] == "third"
    finally:
        holder.join(30)
    assert not (repository / LOCK_FILE).exists()
    # A holder killed without letting go: its process is gone (same host) -> broken at once.
    killed = ctx.Process(target=_hold, args=(repository, 60.0, ctx.Event()))
    killed.start()
    deadline = time.monotonic() + 60
    while not (repository / LOCK_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.kill()
    killed.join()
    with RepositoryLock(repository, "after a crash"):
        assert json.loads((repository / LOCK_FILE).read_text())["command"] == "after a crash"
    # A lock from another host whose heartbeat stopped long ago is stale.
    old = time.time() - 3600
    (repository / LOCK_FILE).write_text(json.dumps({"owner": "ops@elsewhere", "pid": 1, "command": "retrain",
                                                    "started": old, "heartbeat": old}))
    with RepositoryLock(repository, "taker", stale_after_s=120):
        assert json.loads((repository / LOCK_FILE).read_text())["owner"] != "ops@elsewhere"
    fresh = time.time()
    (repository / LOCK_FILE).write_text(json.dumps({"owner": "ops@elsewhere", "pid": 1, "command": "retrain",
                                                    "started": fresh, "heartbeat": fresh}))
    with pytest.raises(RepositoryLockedError, match="ops@elsewhere"):
        RepositoryLock(repository, "polite").acquire()


# -- publishing to every replica, all or nothing ------------------------------------------------------

def _retrain(data, servers, repository, key=None, **options):
    from fer_triton.retrain.pipeline import RetrainOptions, retrain

    return retrain(data, [s.grpc_url for s in servers], repository, admin_key=key,
                   options=RetrainOptions(progress=False, **options))


def _head_dirs(repository):
    return sorted(int(p.name) for p in (repository / "cafe_head").iterdir() if p.is_dir())


def test_retrain_and_rollback_reach_every_replica_with_no_failed_request(repository_copy, server_factory, tmp_path):
    from fer_triton.synthetic import draw_site, write_site
    from live_clients import SITE_SHIFT, Hammer, served

    key = new_key()
    servers = [server_factory(repository_copy, admin_key=key) for _ in range(3)]
    data = write_site(tmp_path / "site", 4, SITE_SHIFT, seed=1)
    probe, _ = draw_site(1, SITE_SHIFT, seed=11)
    before = [served(s.grpc_url, probe).probabilities for s in servers]
    hammers = [Hammer(s.grpc_url, threads=1) for s in servers]
    for hammer in hammers:
        hammer.__enter__()
    try:
        result = _retrain(data, servers, repository_copy, key, force=True, report_dir=tmp_path / "report")
        after = [served(s.grpc_url, probe) for s in servers]
        rolled = CliRunner(env={"FER_TRITON_ADMIN_KEY": key}).invoke(
            cli, ["rollback", *sum((["-u", s.grpc_url] for s in servers), []), "-r", str(repository_copy)])
        restored = [served(s.grpc_url, probe).probabilities for s in servers]
    finally:
        for hammer in hammers:
            hammer.__exit__(None, None, None)
    assert result.published_version == 2
    for out in after:  # every replica serves the new head: its probabilities are the fitted head's
        np.testing.assert_allclose(out.probabilities, result.head.probabilities(out.masked_features), atol=1e-4)
    assert rolled.exit_code == 0, rolled.output
    assert "the 3 replicas" in rolled.output
    for old, now in zip(before, restored):
        assert np.abs(old - now).max() < 1e-6
    assert all(h.errors == [] and h.finished for h in hammers), [h.errors for h in hammers]


def test_one_replica_refusing_leaves_every_replica_on_the_previous_version(repository_copy, server_factory, tmp_path):
    from fer_triton.retrain.publish import PublishError
    from fer_triton.synthetic import draw_site, write_site
    from live_clients import SITE_SHIFT, served

    key = new_key()
    servers = [server_factory(repository_copy, admin_key=key) for _ in range(2)]
    data = write_site(tmp_path / "site", 4, SITE_SHIFT, seed=2)
    probe, _ = draw_site(1, SITE_SHIFT, seed=12)
    # A replica with another key refuses model control: found before anything is written.
    stranger = server_factory(repository_copy, admin_key=new_key())
    with pytest.raises(PublishError, match=stranger.grpc_url):
        _retrain(data, [*servers, stranger], repository_copy, key, force=True)
    assert _head_dirs(repository_copy) == [1]
    # A replica on a stale copy of the volume cannot load the new version: every replica goes back.
    stale_copy = tmp_path / "stale"
    shutil.copytree(repository_copy, stale_copy)
    stale = server_factory(stale_copy, admin_key=key)
    replicas = [*servers, stale]
    before = [served(s.grpc_url, probe).probabilities for s in replicas]
    with pytest.raises(PublishError) as err:
        _retrain(data, replicas, repository_copy, key, force=True)
    message = str(err.value)
    assert "publishing cafe_head version 2 failed, version 1 is served again by the 3 replicas" in message
    assert stale.grpc_url in message  # the replica that did not follow is named
    now = [served(s.grpc_url, probe).probabilities for s in replicas]
    for old, new in zip(before, now):
        assert np.array_equal(old, new)  # all three serve the previous head exactly
    assert _head_dirs(repository_copy) == [1]  # nothing half published: the new version is archived
    archived = [p.name for p in (repository_copy.parent / "model_repository.archive" / "cafe_head").iterdir()]
    assert [name.split("-")[:2] for name in archived] == [["2", "failed"]]
    for replica in replicas:
        with FerClient(replica.grpc_url, headers=grpc_headers(key)) as client:
            index = client.triton.get_model_repository_index(headers=grpc_headers(key), as_json=True)["models"]
        assert sorted(int(m["version"]) for m in index if m["name"] == "cafe_head" and m["state"] == "READY") == [1]


def test_a_replica_started_later_serves_the_same_versions_and_two_retrains_do_not_collide(
        repository_copy, server_factory, tmp_path):
    import subprocess
    import sys

    from fer_triton.synthetic import draw_site, write_site
    from live_clients import SITE_SHIFT, served

    key = new_key()
    first = server_factory(repository_copy, admin_key=key)
    data = write_site(tmp_path / "site", 4, SITE_SHIFT, seed=3)
    env = dict(os.environ, FER_TRITON_ADMIN_KEY=key)
    runs = [subprocess.Popen([sys.executable, "-m", "fer_triton", "retrain", "-d", str(data), "-u", first.grpc_url,
                              "-r", str(repository_copy), "--force", "--seed", str(seed), "--lock-wait", "600",
                              "--report", str(tmp_path / f"report{seed}")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for seed in (0, 1)]  # two retrains of one repository at once
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    published = sorted(int(line.split("cafe_head version ")[1].split()[0].rstrip(","))
                       for out in outputs for line in out.splitlines() if line.startswith("published as"))
    assert published == [2, 3]  # one waited for the other: unique versions, both served in turn
    assert _head_dirs(repository_copy) == [1, 2, 3]
    later = server_factory(repository_copy, admin_key=key)
    status = CliRunner(env={"FER_TRITON_ADMIN_KEY": key}).invoke(
        cli, ["status", "-u", first.grpc_url, "-u", later.grpc_url, "-r", str(repository_copy), "--json"])
    assert status.exit_code == 0, status.output
    probe, _ = draw_site(1, SITE_SHIFT, seed=13)
    assert np.array_equal(served(first.grpc_url, probe).probabilities, served(later.grpc_url, probe).probabilities)
    assert not (repository_copy / LOCK_FILE).exists()  # both let go of the lock


def test_retrain_without_the_key_is_refused_clearly_and_changes_nothing(repository_copy, server_factory, tmp_path):
    from fer_triton.synthetic import write_site

    server = server_factory(repository_copy, admin_key=new_key())
    data = write_site(tmp_path / "site", 3, seed=4)
    result = CliRunner().invoke(cli, ["retrain", "-d", str(data), "-u", server.grpc_url, "-r", str(repository_copy)])
    assert result.exit_code == 1
    assert "restricted" in result.output and "the serving head is unchanged" in result.output
    assert _head_dirs(repository_copy) == [1]
