"""Every Triton replica that serves one model repository, addressed as one fleet.

Replicas are given as repeated ``-u HOST:PORT`` or as one DNS name that resolves to all of them (a
Kubernetes headless Service), or both: :func:`expand_urls` turns each name into one address per
A/AAAA record. What is on disk is what every replica must serve: a replica started later loads the
same versions, and :func:`fleet_status` shows, per replica, the versions each model serves and flags
a replica that differs from the others or from the repository.

Model control (load, repository index) carries the admin key (``fer_triton.admin_key``) when one is
set, so it works on servers started with their model control behind the key.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tritonclient.utils import InferenceServerException

from fer_triton.admin_key import grpc_headers
from fer_triton.client import FerClient

Resolver = Callable[[str, int], list[str]]


class FleetError(RuntimeError):
    """A replica cannot be reached, named, or made to serve what the repository holds; the message names it."""


def _why(exc: InferenceServerException) -> str:
    """Triton's message, with what to do when model control is behind a key the call did not carry."""
    message = exc.message() or str(exc)
    if "restricted" in message:
        message += " (model control is behind an admin key here: set FER_TRITON_ADMIN_KEY or FER_TRITON_ADMIN_KEY_FILE)"
    return message


def _split(url: str) -> tuple[str, int]:
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit():
        raise FleetError(f"{url!r} is not HOST:PORT (a Triton gRPC address, e.g. 127.0.0.1:8001)")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FleetError(f"cannot resolve {host}: {exc.strerror}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def _replica_addresses(addresses: list[str]) -> list[str]:
    """One address per replica: a dual-stack pod has an A and an AAAA record (IPv4 kept), and a name
    that only means this machine (localhost: 127.0.0.1 and ::1) is one server, not a fleet ([])."""
    parsed = [ipaddress.ip_address(a) for a in addresses]
    if all(ip.is_loopback for ip in parsed):
        return []
    v4 = [a for a, ip in zip(addresses, parsed) if ip.version == 4]
    return v4 or addresses


def expand_urls(urls: Iterable[str], resolver: Resolver = system_resolver) -> list[str]:
    """HOST:PORT addresses, one per replica: a name resolving to several addresses gives each of them.

    IP addresses, names with one address and names of this machine (localhost) stay as given; a name
    with IPv4 and IPv6 records counts its IPv4 ones (dual-stack pods have both). Repeats are dropped.
    Raises FleetError for a malformed address, a name that does not resolve, or no address at all.
    """
    out: list[str] = []
    for url in urls:
        host, port = _split(url)
        try:
            ipaddress.ip_address(host)
            expanded = [url]
        except ValueError:
            addresses = _replica_addresses(resolver(host, port))
            expanded = [url] if len(addresses) <= 1 else [_join(a, port) for a in addresses]
        out += [u for u in expanded if u not in out]
    if not out:
        raise FleetError("no Triton address given (-u HOST:PORT)")
    return out


@dataclass
class ReplicaStatus:
    url: str
    reachable: bool
    versions: dict[str, list[int]] = field(default_factory=dict)   # model -> READY versions
    error: str = ""
    differs: list[str] = field(default_factory=list)               # why this replica is flagged


class Fleet:
    """One FerClient per replica of one ensemble, with the admin key in every call's headers.

    ``urls``: gRPC addresses (expanded with :func:`expand_urls`); ``model``: the ensemble;
    ``admin_key``: the key model control needs (None: none sent). Use as a context manager.
    """

    def __init__(self, urls: Iterable[str], model: str = "cafe", *, admin_key: str | None = None,
                 resolver: Resolver = system_resolver, timeout_s: float = 60.0, site: str | None = None):
        self.urls = expand_urls(urls, resolver)
        self.headers = grpc_headers(admin_key)
        self.clients = [FerClient(u, model, headers=self.headers, timeout_s=timeout_s, site=site) for u in self.urls]

    @classmethod
    def wrap(cls, clients: Iterable[FerClient]) -> "Fleet":
        """A fleet over clients already open (their own headers are used for model control too)."""
        fleet = cls.__new__(cls)
        fleet.clients = list(clients)
        fleet.urls = [c.url for c in fleet.clients]
        fleet.headers = dict(fleet.clients[0].headers) if fleet.clients else {}
        return fleet

    @property
    def model(self) -> str:
        return self.first.model

    def describe(self) -> str:
        """"the server at URL" or "the 3 replicas (URL, URL, URL)", for messages."""
        if len(self.urls) == 1:
            return f"the server at {self.urls[0]}"
        return f"the {len(self.urls)} replicas ({', '.join(self.urls)})"

    @property
    def first(self) -> FerClient:
        """The client that reads features and verifies outputs for the fleet (all serve the same)."""
        return self.clients[0]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready_versions(self, client: FerClient, model: str) -> list[int]:
        """READY versions of ``model`` on one replica; raises FleetError naming the replica."""
        try:
            index = client.triton.get_model_repository_index(headers=self.headers, as_json=True).get("models", [])
        except InferenceServerException as exc:
            raise FleetError(f"cannot read the model index of the replica at {client.url}: {_why(exc)}") from exc
        return sorted(int(m["version"]) for m in index if m.get("name") == model and m.get("state") == "READY")

    def _on_each(self, call: Callable[[FerClient], object]) -> dict[str, str]:
        """``call(client)`` on every replica at once (a load takes as long on one as on ten); returns
        {url: Triton's reason} for the replicas that refused."""
        def attempt(client: FerClient) -> str | None:
            try:
                call(client)
            except InferenceServerException as exc:
                return _why(exc)
            return None

        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            answers = list(pool.map(attempt, self.clients))
        return {client.url: why for client, why in zip(self.clients, answers) if why is not None}

    def load(self, model: str) -> dict[str, str]:
        """``load_model(model)`` on every replica, in parallel; returns {url: error} for those that refused."""
        return self._on_each(lambda client: client.triton.load_model(model, headers=self.headers))

    def unload(self, model: str) -> dict[str, str]:
        """``unload_model(model)`` on every replica, in parallel; returns {url: error} for those that refused."""
        return self._on_each(lambda client: client.triton.unload_model(model, headers=self.headers))

    def status(self, models: Iterable[str]) -> list[ReplicaStatus]:
        """Per replica: the READY versions of each of ``models`` (an unreachable replica is reported, not raised)."""
        out = []
        for client in self.clients:
            try:
                out.append(ReplicaStatus(client.url, True, {m: self.ready_versions(client, m) for m in models}))
            except FleetError as exc:
                out.append(ReplicaStatus(client.url, False, error=str(exc)))
        return out


def as_fleet(target: "Fleet | FerClient") -> "Fleet":
    """A Fleet as it is, or one FerClient as a fleet of one replica."""
    return target if isinstance(target, Fleet) else Fleet.wrap([target])


def flag_differences(statuses: list[ReplicaStatus], on_disk: dict[str, list[int]] | None = None) -> None:
    """Fill ``differs`` of each replica that serves other versions than the majority (or than the newest on disk)."""
    reachable = [s for s in statuses if s.reachable]
    for s in statuses:
        if not s.reachable:
            s.differs.append("unreachable")
    if not reachable:
        return
    for model in reachable[0].versions:
        served = [tuple(s.versions.get(model, [])) for s in reachable]
        majority = max(set(served), key=served.count)
        newest_on_disk = (on_disk or {}).get(model)
        for s, versions in zip(reachable, served):
            if versions != majority:
                s.differs.append(f"{model} serves {list(versions) or 'nothing'}, the others {list(majority)}")
            if newest_on_disk and (not versions or versions[-1] != newest_on_disk[-1]):
                s.differs.append(f"{model} newest served {versions[-1] if versions else 'none'}, "
                                 f"on disk {newest_on_disk[-1]}")
