"""Records published to a REAL Mosquitto broker on a loopback port reach a real subscriber, also across
a broker restart; a full buffer drops (counted, logged) only what does not fit."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fer_triton.client.faces import Box
from fer_triton.client.mqtt import MqttPublisher, MqttSettings, MqttTee, topic_for
from fer_triton.client.results import FaceOutcome, FrameOutcome, JsonLinesWriter
from fer_triton.labels import CLASSES
from fer_triton.server import free_port

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                               if Path(p).is_file()), None)
NO_BROKER = ("the Mosquitto broker is not installed (Debian package 'mosquitto'; `make install` installs it where "
             "apt-get works)")


class Broker:
    """mosquitto on 127.0.0.1:port with persistence in ``folder``; stop() is a clean shutdown (SIGTERM)."""

    def __init__(self, folder: Path, port: int):
        self.port, self.folder = port, folder
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nmax_queued_messages 100000\nuser root\n"
                             f"log_dest file {folder}/mosquitto.log\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip(NO_BROKER)
    b = Broker(tmp_path, free_port())
    yield b
    b.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber to PREFIX/# that keeps every payload it receives."""

    def __init__(self, port: int, prefix: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload.decode()))

    def payloads(self) -> list[str]:
        with self._lock:
            return [p for _, p in self.received]

    def wait_for(self, wanted: set[str], timeout_s: float = 30) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not wanted <= set(self.payloads()):
            time.sleep(0.05)
        return set(self.payloads())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def records(n: int, cameras=("lobby", "door")) -> list[dict]:
    return [{"camera": cameras[i % len(cameras)], "frame": i // len(cameras), "timestamp": 1.0e9 + i, "face": 0,
             "box": [1, 2, 3, 4], "label": "Happy"} for i in range(n)]


def test_records_reach_a_subscriber_on_per_camera_topics(broker):
    broker.start()
    sub = Subscriber(broker.port, "site1")
    publisher = MqttPublisher(MqttSettings.from_url(f"mqtt://127.0.0.1:{broker.port}/site1"), reconnect_max_s=1)
    sent = records(50)
    try:
        assert all(publisher.publish(r) for r in sent)
        stats = publisher.close(timeout_s=20)
        sub.wait_for({json.dumps(r) for r in sent})
    finally:
        sub.close()
    assert stats["delivered"] == stats["published"] == 50 and stats["dropped"] == stats["unconfirmed"] == 0
    assert sub.payloads() == [json.dumps(r) for r in sent]  # no outage: each once, in order
    assert {t for t, _ in sub.received} == {"site1/lobby", "site1/door"}
    assert topic_for("p", "a/b+#") == "p/a_b__" and topic_for("p", None) == "p/_stream"


def test_a_broker_restart_mid_stream_loses_no_record(broker):
    broker.start()
    sub = Subscriber(broker.port, "fer-triton")
    publisher = MqttPublisher(MqttSettings.from_url(f"mqtt://127.0.0.1:{broker.port}"), reconnect_max_s=1)
    sent = records(600)
    restarted = threading.Event()

    def restart():
        time.sleep(0.3)
        broker.stop()        # down while records keep coming
        time.sleep(1.5)
        broker.start()
        restarted.set()

    helper = threading.Thread(target=restart)
    try:
        helper.start()
        for r in sent:       # about 3 s of records: before, during and after the outage
            assert publisher.publish(r)
            time.sleep(0.005)
        helper.join(30)
        stats = publisher.close(timeout_s=30)
        got = sub.wait_for({json.dumps(r) for r in sent})
    finally:
        sub.close()
    assert restarted.is_set() and stats["disconnects"] >= 1 and stats["connects"] >= 2  # it really went away
    assert stats["published"] == stats["delivered"] == 600 and stats["dropped"] == 0 == stats["unconfirmed"]
    assert got == {json.dumps(r) for r in sent}           # every record, at least once
    dups = len(sub.payloads()) - len(got)
    assert dups >= 0                                      # at-least-once: a resent record may come twice


def test_a_full_buffer_drops_counted_records_and_says_so(broker, caplog):
    broker.start()
    sub = Subscriber(broker.port, "fer-triton")  # its persistent session survives the outage
    broker.stop()
    publisher = MqttPublisher(MqttSettings.from_url(f"mqtt://127.0.0.1:{broker.port}"), max_buffer=20,
                              reconnect_max_s=1)
    sent = records(50)
    try:
        with caplog.at_level(logging.WARNING, logger="fer_triton.client.mqtt"):
            accepted = [publisher.publish(r) for r in sent]
            assert accepted == [True] * 20 + [False] * 30
            assert publisher.stats()["dropped"] == 30 and publisher.pending == 20
            broker.start()
            assert publisher.flush(30)
            assert publisher.publish(records(51)[50])
        stats = publisher.close(timeout_s=20)
        wanted = {json.dumps(r) for r in sent[:20]} | {json.dumps(records(51)[50])}
        got = sub.wait_for(wanted)
    finally:
        sub.close()
    assert got == wanted and stats["delivered"] == 21 and stats["dropped"] == 30
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("MQTT buffer full (20 records" in w for w in warnings) == 1          # said once, when it began
    assert any("room again: 30 records were dropped" in w for w in warnings)      # and when it ended
    assert "30 dropped (buffer full)" in publisher.summary()


def test_the_json_lines_writer_publishes_through_the_tee(broker):
    broker.start()
    sub = Subscriber(broker.port, "fer-triton")
    publisher = MqttPublisher(MqttSettings.from_url(f"mqtt://127.0.0.1:{broker.port}"), reconnect_max_s=1)
    file = io.StringIO()
    writer = JsonLinesWriter(MqttTee(file, publisher), CLASSES)
    face = FaceOutcome(Box(0, 0, 96, 96), np.full(7, 1 / 7, np.float32), "Neutral", latency_ms=12.5, server="s:1")
    writer.frame(FrameOutcome("cam0", 0, 1.0e9, "faces", 40.0, faces=[face]))
    writer.frame(FrameOutcome("cam0", 1, 1.0e9 + 0.1, "no_face"))
    writer.event("cam0", "ended", "ended")
    try:
        publisher.close(timeout_s=20)
        lines = file.getvalue().splitlines()
        sub.wait_for(set(lines))
    finally:
        sub.close()
    assert len(lines) == 3 and sub.payloads() == lines  # what the file holds, byte for byte, in order


def test_settings_from_url():
    assert MqttSettings.from_url("mqtt://broker.local") == MqttSettings("broker.local", 1883, "fer-triton")
    assert MqttSettings.from_url("mqtts://ops@10.0.0.2:9000/site/a/") == MqttSettings("10.0.0.2", 9000, "site/a",
                                                                                       True, "ops")
    for bad, why in [("http://x", "mqtt://HOST"), ("mqtt://u:pw@x", "no password"), ("mqtt://x/a+b", "'\\+'")]:
        with pytest.raises(ValueError, match=why):
            MqttSettings.from_url(bad)
