"""Publish the stream's records to an MQTT broker (paho-mqtt), beside the JSON Lines file.

    --mqtt mqtt://HOST[:PORT][/PREFIX]       (mqtts:// for TLS; default port 1883 / 8883, prefix fer-triton)

Each record (a face result, a frame event, a camera event, a track event: the same JSON object as the
JSON Lines line) is one message on ``PREFIX/CAMERA`` with QoS 1 (at least once), not retained. The
user name comes from the URL (``mqtt://user@host``), the password from the environment variable
``FER_TRITON_MQTT_PASSWORD`` (never on a command line).

Nothing is lost while the broker is away, up to a bound: paho keeps every QoS 1 message until the
broker acknowledges it (PUBACK), and sends it again after a reconnect (flagged DUP). Messages waiting
for that acknowledgement, sent or not, are at most ``max_buffer``; a record that finds the buffer full
is dropped and counted, and the first drop of a run of drops, and the end of that run, are logged
(warning). So drops happen only while the buffer is full, and are said. At-least-once means that a
subscriber may see a record twice after a reconnect (its PUBACK was lost): records are unique (camera,
frame, face, event, timestamp), so duplicates can be recognised.

End to end, records also survive a broker restart only when the broker keeps them for the subscriber:
a subscriber with a persistent session (clean session off, a fixed client id, QoS 1 subscription)
and a broker with ``persistence true`` (Mosquitto saves its queue on a clean shutdown; set
``autosave_interval`` for crashes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

PASSWORD_ENV = "FER_TRITON_MQTT_PASSWORD"
_TOPIC_UNSAFE = re.compile(r"[#+/\x00]")
MAX_BUFFER = 65000  # paho numbers messages with 16-bit ids: the buffer must stay below 65535


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to publish: ``host``, ``port``, ``prefix`` (topic prefix), ``tls``, ``username``."""

    host: str
    port: int = 1883
    prefix: str = "fer-triton"
    tls: bool = False
    username: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "MqttSettings":
        """``mqtt://[user@]host[:port][/prefix]`` or ``mqtts://...``; raises ValueError naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"--mqtt takes mqtt://HOST[:PORT][/PREFIX] or mqtts://..., not {url!r}")
        if parts.password is not None:
            raise ValueError(f"--mqtt: put no password in the URL; set {PASSWORD_ENV} instead")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"--mqtt {url!r}: {exc}") from None
        tls = parts.scheme == "mqtts"
        prefix = parts.path.strip("/") or "fer-triton"
        if "+" in prefix or "#" in prefix:
            raise ValueError(f"--mqtt: the topic prefix {prefix!r} must not hold '+' or '#'")
        return cls(parts.hostname, port or (8883 if tls else 1883), prefix, tls,
                   unquote(parts.username) if parts.username else None)


def topic_for(prefix: str, camera: str | None) -> str:
    """``PREFIX/CAMERA`` (characters MQTT reserves in a camera id become '_'); ``PREFIX/_stream`` without one."""
    return f"{prefix}/{_TOPIC_UNSAFE.sub('_', camera) if camera else '_stream'}"


class MqttPublisher:
    """Publishes records with QoS 1 from any thread; reconnects by itself; :meth:`close` flushes.

    ``max_buffer``: records waiting for the broker's acknowledgement at most (1..65000);
    ``max_inflight``: records sent and not yet acknowledged at most (the rest wait in the buffer);
    ``reconnect_max_s``: the longest wait between reconnect attempts (they start at 1 s... see paho);
    ``password``: default from FER_TRITON_MQTT_PASSWORD. The broker may be down at start: records
    then wait in the buffer. Raises ValueError for bad limits.
    """

    def __init__(self, settings: MqttSettings, *, qos: int = 1, max_buffer: int = 10000, max_inflight: int = 100,
                 keepalive_s: int = 30, reconnect_max_s: int = 5, client_id: str | None = None,
                 password: str | None = None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if not 1 <= max_buffer <= MAX_BUFFER:
            raise ValueError(f"max_buffer must be between 1 and {MAX_BUFFER}, not {max_buffer}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        self.settings, self.qos, self.max_buffer = settings, qos, max_buffer
        self.client_id = client_id or f"fer-triton-{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self.published = 0       # accepted into the buffer
        self.delivered = 0       # acknowledged by the broker
        self.dropped = 0         # refused: buffer full
        self.connects = 0
        self.disconnects = 0     # the broker went away (our own disconnect at close() not counted)
        self._closing = False
        self._dropping = 0       # drops in the current run of drops
        self.connected = False
        self.last_error = ""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        client.max_queued_messages_set(max_buffer)
        client.max_inflight_messages_set(max(1, min(max_inflight, max_buffer)))
        client.reconnect_delay_set(1, max(1, reconnect_max_s))
        if settings.username is not None:
            client.username_pw_set(settings.username, password if password is not None
                                   else os.environ.get(PASSWORD_ENV))
        if settings.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(settings.host, settings.port, keepalive=keepalive_s)
        client.loop_start()  # paho's network thread: connects, reconnects, resends

    # ---- paho callbacks (its network thread) ----------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            if reason_code.is_failure:
                self.last_error = f"connection refused: {reason_code}"
                log.warning("MQTT broker %s:%s refused the connection: %s", self.settings.host, self.settings.port,
                            reason_code)
                return
            self.connected = True
            self.connects += 1
            waiting = self.published - self.delivered
        log.info("MQTT connected to %s:%s (%d records waiting)", self.settings.host, self.settings.port, waiting)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self.connected and not self._closing
            self.connected = False
            if was:
                self.disconnects += 1
                self.last_error = f"disconnected: {reason_code}"
        if was:
            log.warning("MQTT broker %s:%s went away (%s): records wait in the buffer (at most %d)",
                        self.settings.host, self.settings.port, reason_code, self.max_buffer)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self.delivered += 1
            self._acked.notify_all()

    # ---- publishing -----------------------------------------------------------------------
    def topic(self, camera: str | None) -> str:
        return topic_for(self.settings.prefix, camera)

    def publish(self, record: dict) -> bool:
        """Queue one record (JSON-ready dict) for ``PREFIX/<record["camera"]>``; False if dropped (buffer full)."""
        return self._publish(self.topic(record.get("camera")), json.dumps(record))

    def publish_line(self, line: str) -> bool:
        """Queue one JSON Lines line as it is (its "camera" field picks the topic); blank lines are skipped."""
        line = line.strip()
        if not line:
            return True
        try:
            camera = json.loads(line).get("camera")
        except (ValueError, AttributeError):
            camera = None
        return self._publish(self.topic(camera), line)

    def _publish(self, topic: str, payload: str) -> bool:
        from paho.mqtt.enums import MQTTErrorCode

        info = self._client.publish(topic, payload, qos=self.qos)
        # NO_CONN: queued, sent once connected (QoS > 0). QUEUE_SIZE: the buffer is full.
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or (self.qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS):
            with self._lock:
                self.dropped += 1
                self._dropping += 1
                first = self._dropping == 1
                total = self.dropped
            if first:
                log.warning("MQTT buffer full (%d records wait for broker %s:%s): dropping records until it takes "
                            "them (%d dropped so far)", self.max_buffer, self.settings.host, self.settings.port, total)
            return False
        with self._lock:
            self.published += 1
            run, self._dropping = self._dropping, 0
        if run:
            log.warning("MQTT buffer has room again: %d records were dropped while it was full", run)
        return True

    @property
    def pending(self) -> int:
        """Records accepted and not yet acknowledged by the broker."""
        with self._lock:
            return max(0, self.published - self.delivered)

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the broker to acknowledge every record; True if it did."""
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while self.published > self.delivered:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float = 10.0) -> dict:
        """Flush (up to ``timeout_s``), disconnect, stop the network thread; returns :meth:`stats`."""
        self.flush(timeout_s)
        with self._lock:
            self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        return self.stats()

    def stats(self) -> dict:
        with self._lock:
            return {"broker": f"{self.settings.host}:{self.settings.port}", "published": self.published,
                    "delivered": self.delivered, "dropped": self.dropped,
                    "unconfirmed": max(0, self.published - self.delivered), "connects": self.connects,
                    "disconnects": self.disconnects}

    def summary(self) -> str:
        """One line for the end-of-run summary."""
        s = self.stats()
        line = (f"mqtt {s['broker']}: {s['delivered']} records delivered, {s['dropped']} dropped (buffer full), "
                f"{s['unconfirmed']} not confirmed by the broker, {s['disconnects']} disconnects")
        return line


class MqttTee:
    """A text stream (``write``/``flush``) for the JSON Lines writer that also publishes every line.

    Lets ``JsonLinesWriter`` publish without a change: ``JsonLinesWriter(MqttTee(out, publisher), classes)``.
    Lines are passed to ``out`` unchanged (``out`` may be None: MQTT only).
    """

    def __init__(self, out, publisher: MqttPublisher):
        self.out, self.publisher = out, publisher
        self._partial = ""

    def write(self, text: str) -> int:
        if self.out is not None:
            self.out.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.publisher.publish_line(line)
        return len(text)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    def isatty(self) -> bool:
        return False
