"""Several Triton servers behind one client: round robin, failover, backoff and reconnect.

A server whose request fails with a retryable status (UNAVAILABLE and friends: it is down,
restarting, or overloaded) is benched for a backoff time that doubles with each failure in a row;
requests go round robin to the servers that are not benched. After a few failures in a row the
gRPC channel is rebuilt, so a server that comes back on the same address is found even when the
old channel is stuck in its own (long) reconnect backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from fer_triton.client.grpc_client import FerClient, FerServerError, ModelInfo

log = logging.getLogger(__name__)

# Statuses after which the same request may succeed later: a killed server cuts the stream
# ("Stream removed", UNAVAILABLE), a down one refuses connections (UNAVAILABLE), a busy one times out.
# Others (INVALID_ARGUMENT, NOT_FOUND for a wrong model name, INTERNAL) fail the faces at once.
RETRYABLE = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
             "StatusCode.ABORTED"}

# Keep gRPC's own reconnect attempts frequent (its default backoff grows to 120 s) and allow big batches.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2 ** 31 - 1),
    ("grpc.max_receive_message_length", 2 ** 31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
]


def _close_quietly(client: FerClient) -> None:
    try:
        client.close()
    except Exception:  # closing a broken channel may itself fail; the new one is what matters
        log.debug("closing the old channel to %s failed", client.url, exc_info=True)


class NoServerError(RuntimeError):
    """No server URL answered; the message lists each URL and its error."""


def is_retryable(error: Exception) -> bool:
    return isinstance(error, FerServerError) and error.status in RETRYABLE


@dataclass
class Backoff:
    initial_s: float = 0.1
    max_s: float = 2.0     # a failed try costs one refused connection: keep looking often

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.initial_s * 2 ** max(0, failures - 1))


@dataclass
class Server:
    url: str
    client: FerClient
    failures: int = 0              # failed requests in a row
    benched_until: float = 0.0     # time.monotonic() before which no request goes here
    answered: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ServerPool:
    """Round robin over healthy servers; ``pick()`` returns None while every server is benched."""

    def __init__(self, urls: list[str], model: str = "cafe", *, timeout_s: float = 30.0,
                 backoff: Backoff | None = None, reconnect_after: int = 3, shared_memory: str | None = None,
                 shm_regions: int = 4):
        if not urls:
            raise ValueError("give at least one server URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"server URLs repeat: {', '.join(urls)}")
        self.model, self.timeout_s = model, timeout_s
        # FerClient(shared_memory=...): None, "system" or "cuda"; each server's client keeps its own regions
        self.shared_memory, self.shm_regions = shared_memory, shm_regions
        self.backoff = backoff or Backoff()
        self.reconnect_after = reconnect_after
        self.servers = [Server(u, self._client(u)) for u in urls]
        self._next = 0
        self._lock = threading.Lock()
        self._info: ModelInfo | None = None

    def _client(self, url: str) -> FerClient:
        return FerClient(url, self.model, timeout_s=self.timeout_s, channel_args=CHANNEL_ARGS,
                         shared_memory=self.shared_memory or False, shm_regions=self.shm_regions)

    def info(self, wait_s: float = 0.0) -> ModelInfo:
        """The served model's description, from every server that answers (they must agree).

        Retries for up to ``wait_s`` seconds while no server answers; servers that do not answer
        are benched (and tried again later), servers that disagree are an error.
        """
        deadline = time.monotonic() + wait_s
        while True:
            infos, errors, retryable = {}, {}, False
            for server in self.servers:
                try:
                    infos[server.url] = server.client.info(refresh=True)
                except FerServerError as exc:
                    errors[server.url] = str(exc)
                    retryable |= is_retryable(exc)
                    self.failed(server, exc)
            if infos:
                break
            if time.monotonic() >= deadline or not retryable:  # e.g. a wrong model name: waiting won't help
                raise NoServerError("no Triton server answered:\n" + "\n".join(f"  {u}: {e}" for u, e in errors.items()))
            time.sleep(0.5)
        first_url, first = next(iter(infos.items()))
        for url, info in infos.items():
            if (info.wire_size, info.classes, info.max_batch_size) != (first.wire_size, first.classes,
                                                                       first.max_batch_size):
                raise NoServerError(f"servers serve different models: {first_url} has wire size {first.wire_size}, "
                                    f"classes {first.classes}; {url} has {info.wire_size}, {info.classes}")
        for url, error in errors.items():
            log.warning("server %s does not answer yet (will retry): %s", url, error)
        self._info = first
        return first

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Server | None:
        """The next server in turn that is not benched and whose URL is not in ``exclude``; None if none is."""
        now = time.monotonic()
        with self._lock:
            for step in range(len(self.servers)):
                server = self.servers[(self._next + step) % len(self.servers)]
                if server.benched_until <= now and server.url not in exclude:
                    self._next = (self._next + step + 1) % len(self.servers)
                    return server
        return None

    def has_other(self, exclude: set[str] | frozenset[str]) -> bool:
        """Whether some server's URL is not in ``exclude`` (benched or not)."""
        return any(s.url not in exclude for s in self.servers)

    def next_ready_in(self, exclude: set[str] | frozenset[str] = frozenset()) -> float:
        """Seconds until some server not in ``exclude`` comes off the bench (0 if one is usable now)."""
        now = time.monotonic()
        return max(0.0, min((s.benched_until for s in self.servers if s.url not in exclude), default=now) - now)

    def succeeded(self, server: Server) -> None:
        with server.lock:
            server.failures = 0
            server.answered += 1

    def failed(self, server: Server, error: Exception) -> None:
        with server.lock:
            server.failures += 1
            server.errors += 1
            server.last_error = str(error)
            server.benched_until = time.monotonic() + self.backoff.delay(server.failures)
            rebuild = server.failures % self.reconnect_after == 0
        if rebuild:
            self._reconnect(server)

    def _reconnect(self, server: Server) -> None:
        log.info("reconnecting to %s after %d failures", server.url, server.failures)
        old = server.client
        server.client = self._client(server.url)
        server.reconnects += 1
        # Not inline: we may be on one of the old channel's callback threads, which close() waits for.
        threading.Thread(target=_close_quietly, args=(old,), name="close-channel", daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.client.close()
