"""A thin, typed client for the CAFE ensemble over Triton gRPC.

    client = FerClient("127.0.0.1:8001")
    out = client.infer(faces)              # faces: UINT8 [B, S, S, 3], S = client.info().wire_size
    out.probabilities, out.labels          # [B, 7], ["Happy", ...]

    FerClient("127.0.0.1:8001", site="lobby").infer(faces)   # the site's own head (base head if it has none)
    client.infer(faces, sites=["lobby", "door", ""])          # a site per face; "" = the base model

Inputs are checked before they are sent, so a bad batch fails with a message that names what
was wrong instead of a server round trip.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL = "cafe"
SITES_SUFFIX = "_sites"          # <model>_sites: the ensemble with a site per face (retrain/sites.py)
SITE_HEAD_SUFFIX = "_site_head"  # its last step: every site's head
# What a site may be called (retrain/sites.py creates them; file and folder names are made from them).
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SITE_NAME_RULE = ("1 to 63 characters among lower-case letters a-z, digits, '_' and '-', starting with a letter "
                  "or digit")


class FerInputError(ValueError):
    """A batch that the model cannot accept (wrong dtype, shape, size); nothing was sent."""


class FerServerError(RuntimeError):
    """The server refused or failed a request; ``status`` is the gRPC status name when known."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelInfo:
    """What the served ensemble accepts and returns (read from its config)."""

    name: str
    wire_size: int
    max_batch_size: int
    classes: tuple[str, ...]
    metadata: dict = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return self.metadata.get("clip_weights") == "random"


@dataclass
class InferOutput:
    probabilities: np.ndarray                 # [B, 7]
    classes: tuple[str, ...]
    logits: np.ndarray | None = None          # [B, 7]
    masked_features: np.ndarray | None = None  # [B, 512]

    @property
    def indices(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.indices]


def _server_error(exc: InferenceServerException, what: str) -> FerServerError:
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return FerServerError(f"{what}: {exc.message() if callable(getattr(exc, 'message', None)) else exc}", status)


class FerClient:
    """Synchronous gRPC client for one server URL. Thread-safe for concurrent ``infer`` calls.

    ``url``: "host:port" of Triton's gRPC endpoint. ``model``: the ensemble's name;
    ``model_version``: "" for the version Triton's policy serves, or a version number as text.
    ``site``: a site's name: every request goes to the ``<model>_sites`` ensemble with that site for
    each face, and gets that site's own head (the base head's outputs for a site without one); None
    (default): requests go to ``model``. ``infer(..., sites=[...])`` chooses a site per face.
    ``timeout_s``: deadline of each call in seconds (None: no deadline).
    ``headers``: sent with every call (for example an admin key that model control requires, or
    the authorisation header of a proxy in front of Triton).
    TLS: ``ssl=True`` with optional PEM files ``root_certificates``, ``private_key`` and
    ``certificate_chain`` (mutual TLS), or ready-made ``creds`` (``grpc.ChannelCredentials``);
    these and ``keepalive_options`` (``tritonclient.grpc.KeepAliveOptions``) and ``channel_args``
    (gRPC channel options, replacing tritonclient's defaults) are passed to
    ``tritonclient.grpc.InferenceServerClient`` unchanged.
    ``shared_memory=True``: faces go through Triton's system shared memory instead of the gRPC message
    (a server on this host only; ``shm_regions`` requests in flight at once; client/shared_memory.py);
    ``shared_memory="cuda"``: through CUDA shared memory on GPU 0 (a GPU host; SharedMemoryError at once,
    saying why, where it cannot work here).
    Raises FerServerError from calls the server refuses or cannot be reached for.
    """

    def __init__(self, url: str = DEFAULT_URL, model: str = DEFAULT_MODEL, *, model_version: str = "",
                 verbose: bool = False, timeout_s: float | None = 60.0, headers: dict[str, str] | None = None,
                 ssl: bool = False, root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, creds=None, keepalive_options=None,
                 channel_args: list[tuple] | None = None, site: str | None = None, shared_memory: bool | str = False,
                 shm_regions: int = 4):
        from fer_triton.client.shared_memory import check_shared_memory, shared_memory_kind

        shm_kind = shared_memory_kind(shared_memory)
        check_shared_memory(shm_kind)  # "cuda" without a usable GPU: refused now (SharedMemoryError), saying why
        self.url = url
        self.model = model
        self.site = site
        self.model_version = str(model_version)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._client = grpcclient.InferenceServerClient(
            url=url, verbose=verbose, ssl=ssl, root_certificates=root_certificates, private_key=private_key,
            certificate_chain=certificate_chain, creds=creds, keepalive_options=keepalive_options,
            channel_args=channel_args)
        self._info: ModelInfo | None = None
        self._shm_wanted, self._shm_regions, self._shm = shm_kind, shm_regions, None

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self._client.close()

    def _shm_pool(self):
        """The shared-memory regions (created at the first request; sized for max_batch_size faces)."""
        if self._shm is None:
            from fer_triton.client.shared_memory import SharedMemoryError, make_pool

            info = self.info()
            size = max(1, info.max_batch_size) * info.wire_size * info.wire_size * 3
            try:
                self._shm = make_pool(self._shm_wanted, self._client, size, self._shm_regions, headers=self.headers)
            except SharedMemoryError as exc:
                raise FerServerError(f"{self.url}: {exc}") from exc
        return self._shm

    def __enter__(self) -> "FerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def sites_model(self) -> str:
        """The ensemble that takes a site per face: ``<model>_sites``."""
        return self.model + SITES_SUFFIX

    @property
    def served_model(self) -> str:
        """Where requests without per-face sites go: ``sites_model`` with a client site, else ``model``."""
        return self.sites_model if self.site is not None else self.model

    @property
    def triton(self) -> grpcclient.InferenceServerClient:
        """The underlying tritonclient object, for health, model control and statistics calls."""
        return self._client

    def info(self, refresh: bool = False) -> ModelInfo:
        """What the served ensemble accepts: wire size S, max batch, classes, export metadata.

        Read once from the config of ``served_model`` (``refresh`` reads it again). Raises
        FerServerError when the server cannot be reached or does not serve the model.
        """
        if self._info is None or refresh:
            model = self.served_model
            try:
                cfg = self._client.get_model_config(model, self.model_version, headers=self.headers,
                                                    as_json=True, client_timeout=self.timeout_s)["config"]
            except InferenceServerException as exc:
                raise _server_error(exc, f"cannot read model {model!r} from {self.url}"
                                    + (self._no_sites_hint() if self.site is not None else "")) from exc
            dims = [int(d) for d in cfg["input"][0]["dims"]]
            params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
            self._info = ModelInfo(
                name=model,
                wire_size=dims[0],
                max_batch_size=int(cfg.get("max_batch_size", 0)),
                classes=tuple(json.loads(params["classes"])) if "classes" in params else (),
                metadata=json.loads(params.get("fer_triton", "{}")),
            )
        return self._info

    def check_batch(self, faces: np.ndarray) -> None:
        """Raise FerInputError naming the problem if ``faces`` is not a batch the model accepts."""
        info = self.info()
        if not isinstance(faces, np.ndarray):
            raise FerInputError(f"faces must be a numpy array, not {type(faces).__name__}")
        if faces.dtype != np.uint8:
            raise FerInputError(f"faces must be UINT8 RGB pixels, got dtype {faces.dtype}")
        expected = (info.wire_size, info.wire_size, 3)
        if faces.ndim != 4 or faces.shape[1:] != expected:
            raise FerInputError(f"faces must have shape [B, {', '.join(map(str, expected))}], got {list(faces.shape)}")
        if faces.shape[0] == 0:
            raise FerInputError("empty batch: send at least one face")
        if info.max_batch_size and faces.shape[0] > info.max_batch_size:
            raise FerInputError(
                f"batch of {faces.shape[0]} faces exceeds the model's max_batch_size {info.max_batch_size}; "
                "split it (infer_all does)"
            )

    def _no_sites_hint(self) -> str:
        return (f" (a repository exported before sites existed has no '{self.sites_model}': "
                f"`fer-triton sites add NAME` adds it, or export the repository again)")

    def _sites(self, faces: np.ndarray, sites) -> list[str] | None:
        """One site name per face (None: no site input, the base ensemble); FerInputError for a bad list."""
        if sites is None:
            return None if self.site is None else [self.site] * len(faces)
        if isinstance(sites, str):
            return [sites] * len(faces)
        sites = list(sites)
        if len(sites) != len(faces):
            raise FerInputError(f"{len(sites)} site names for {len(faces)} faces: give one per face ('' = base model)")
        bad = [s for s in sites if not isinstance(s, str)]
        if bad:
            raise FerInputError(f"site names must be strings ('' = the base model), got {bad[:3]!r}")
        return sites

    def _request(self, faces: np.ndarray, with_features: bool, sites: list[str] | None = None):
        """(inputs, outputs, shared-memory region to release after the answer, or None)."""
        inp = grpcclient.InferInput("faces", list(faces.shape), "UINT8")
        region = None
        if self._shm_wanted:
            region = self._shm_pool().acquire(faces, self.timeout_s)
            inp.set_shared_memory(region.name, faces.nbytes)
        else:
            inp.set_data_from_numpy(np.ascontiguousarray(faces))
        inputs = [inp]
        if sites is not None:
            site = grpcclient.InferInput("site", [len(sites), 1], "BYTES")
            site.set_data_from_numpy(np.array([s.encode("utf-8") for s in sites], dtype=np.object_).reshape(-1, 1))
            inputs.append(site)
        names = ["probabilities", "logits"] + (["masked_features"] if with_features else [])
        return inputs, [grpcclient.InferRequestedOutput(n) for n in names], region

    def _release(self, region) -> None:
        if region is not None and self._shm is not None:
            self._shm.release(region)

    def _target(self, sites: list[str] | None) -> str:
        return self.model if sites is None else self.sites_model

    def _output(self, result) -> InferOutput:
        return InferOutput(
            probabilities=result.as_numpy("probabilities"),
            classes=self.info().classes,
            logits=result.as_numpy("logits"),
            masked_features=result.as_numpy("masked_features"),
        )

    def infer(self, faces: np.ndarray, *, with_features: bool = False, request_id: str = "",
              sites: str | list[str] | None = None) -> InferOutput:
        """One request for a batch of faces UINT8 [B, S, S, 3] (S: ``info().wire_size``).

        ``sites``: one site name per face (or one name for all; "" = the base model) sent to the
        ``<model>_sites`` ensemble; default: the client's ``site``. Returns probabilities and logits
        FP32 [B, 7] (and masked_features FP32 [B, 512] with ``with_features``). Raises FerInputError
        (nothing sent) or FerServerError (refused or failed, e.g. an unknown site, named).
        """
        self.check_batch(faces)
        sites = self._sites(faces, sites)
        inputs, outputs, region = self._request(faces, with_features, sites)
        model = self._target(sites)
        try:
            result = self._client.infer(model, inputs, self.model_version, outputs=outputs,
                                        request_id=request_id, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"inference on {model!r} at {self.url} failed") from exc
        finally:
            self._release(region)
        return self._output(result)

    def submit(self, faces: np.ndarray, callback, *, with_features: bool = False, request_id: str = "",
               sites: str | list[str] | None = None) -> None:
        """Send a batch without waiting (several can be in flight); ``callback(output, error)`` runs on a
        gRPC thread with an InferOutput or a FerServerError. ``sites`` as in :meth:`infer`. Bad batches
        raise FerInputError at once."""
        self.check_batch(faces)
        sites = self._sites(faces, sites)
        inputs, outputs, region = self._request(faces, with_features, sites)
        model = self._target(sites)

        def done(result, error):
            self._release(region)
            if error is not None:
                callback(None, _server_error(error, f"inference on {model!r} at {self.url} failed"))
            else:
                callback(self._output(result), None)

        try:
            self._client.async_infer(model, inputs, done, self.model_version, outputs=outputs,
                                     request_id=request_id, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            self._release(region)
            raise _server_error(exc, f"inference on {model!r} at {self.url} failed") from exc

    def frames(self, model: str | None = None):
        """A FramesClient (client/frames.py) on this connection: whole frames to ``<model>_frames``, which
        detects, crops and classifies every face on the server. ``model``: the frames model's name."""
        from fer_triton.client.frames import FramesClient

        return FramesClient(self, model)

    def check_sites(self, sites: list[str]) -> None:
        """Ask the server whether it knows every site in ``sites`` ("" is the base model), with one small
        request to ``<model>_site_head`` (no face goes through the backbone).

        Raises FerInputError naming bad or unknown sites, FerServerError when the server has no site
        models (a repository exported before sites existed) or cannot be reached.
        """
        names = sorted(set(sites))
        if not names:
            return
        n, classes = len(names), len(self.info().classes) or 7
        arrays = {"masked_features": np.zeros((n, 512), np.float32), "base_logits": np.zeros((n, classes), np.float32),
                  "base_probabilities": np.full((n, classes), 1.0 / classes, np.float32)}
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        site = grpcclient.InferInput("site", [n, 1], "BYTES")
        site.set_data_from_numpy(np.array([s.encode("utf-8") for s in names], dtype=np.object_).reshape(-1, 1))
        model = self.model + SITE_HEAD_SUFFIX
        try:
            self._client.get_model_config(model, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"the server at {self.url} cannot serve sites" + self._no_sites_hint()) from exc
        try:
            self._client.infer(model, [*inputs, site], headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            error = _server_error(exc, f"{self.url}")
            if "unknown site" in str(error):
                raise FerInputError(str(error)) from exc
            raise error from exc

    def infer_all(self, faces: np.ndarray, *, batch_size: int | None = None, with_features: bool = False,
                  on_batch: Callable[[int], None] | None = None, sites: str | list[str] | None = None) -> InferOutput:
        """Any number of faces (UINT8 [N, S, S, 3]), sent in requests of at most ``batch_size`` faces.

        ``batch_size`` defaults to the model's max_batch_size and is capped by it. ``on_batch(n)`` is
        called after each request with its number of faces (a progress bar's update). ``sites``: as in
        :meth:`infer` (a list gives one name per face of ``faces``). Returns the outputs of all N faces
        in order; raises FerInputError / FerServerError as :meth:`infer`.
        """
        info = self.info()
        if len(faces) == 0:
            raise FerInputError("empty batch: send at least one face")
        step = min(batch_size or info.max_batch_size or len(faces), info.max_batch_size or len(faces))
        sites = self._sites(faces, sites)
        parts = []
        for start in range(0, len(faces), max(1, step)):
            part = None if sites is None else sites[start:start + step]
            parts.append(self.infer(faces[start:start + step], with_features=with_features, sites=part))
            if on_batch is not None:
                on_batch(len(parts[-1].probabilities))
        cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                            else np.concatenate([getattr(p, name) for p in parts]))
        return InferOutput(cat("probabilities"), info.classes, cat("logits"), cat("masked_features"))
