"""A thin, typed client for the CAFE ensemble over Triton gRPC.

    client = FerClient("127.0.0.1:8001")
    out = client.infer(faces)              # faces: UINT8 [B, S, S, 3], S = client.info().wire_size
    out.probabilities, out.labels          # [B, 7], ["Happy", ...]

Inputs are checked before they are sent, so a bad batch fails with a message that names what
was wrong instead of a server round trip.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL = "cafe"


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
    ``timeout_s``: deadline of each call in seconds (None: no deadline).
    ``headers``: sent with every call (for example an admin key that model control requires, or
    the authorisation header of a proxy in front of Triton).
    TLS: ``ssl=True`` with optional PEM files ``root_certificates``, ``private_key`` and
    ``certificate_chain`` (mutual TLS), or ready-made ``creds`` (``grpc.ChannelCredentials``);
    these and ``keepalive_options`` (``tritonclient.grpc.KeepAliveOptions``) and ``channel_args``
    (gRPC channel options, replacing tritonclient's defaults) are passed to
    ``tritonclient.grpc.InferenceServerClient`` unchanged.
    Raises FerServerError from calls the server refuses or cannot be reached for.
    """

    def __init__(self, url: str = DEFAULT_URL, model: str = DEFAULT_MODEL, *, model_version: str = "",
                 verbose: bool = False, timeout_s: float | None = 60.0, headers: dict[str, str] | None = None,
                 ssl: bool = False, root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, creds=None, keepalive_options=None,
                 channel_args: list[tuple] | None = None):
        self.url = url
        self.model = model
        self.model_version = str(model_version)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._client = grpcclient.InferenceServerClient(
            url=url, verbose=verbose, ssl=ssl, root_certificates=root_certificates, private_key=private_key,
            certificate_chain=certificate_chain, creds=creds, keepalive_options=keepalive_options,
            channel_args=channel_args)
        self._info: ModelInfo | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "FerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def triton(self) -> grpcclient.InferenceServerClient:
        """The underlying tritonclient object, for health, model control and statistics calls."""
        return self._client

    def info(self, refresh: bool = False) -> ModelInfo:
        """What the served ensemble accepts: wire size S, max batch, classes, export metadata.

        Read once from the model's config (``refresh`` reads it again). Raises FerServerError when the
        server cannot be reached or does not serve the model.
        """
        if self._info is None or refresh:
            try:
                cfg = self._client.get_model_config(self.model, self.model_version, headers=self.headers,
                                                    as_json=True, client_timeout=self.timeout_s)["config"]
            except InferenceServerException as exc:
                raise _server_error(exc, f"cannot read model {self.model!r} from {self.url}") from exc
            dims = [int(d) for d in cfg["input"][0]["dims"]]
            params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
            self._info = ModelInfo(
                name=self.model,
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

    def _request(self, faces: np.ndarray, with_features: bool):
        inp = grpcclient.InferInput("faces", list(faces.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(faces))
        names = ["probabilities", "logits"] + (["masked_features"] if with_features else [])
        return [inp], [grpcclient.InferRequestedOutput(n) for n in names]

    def _output(self, result) -> InferOutput:
        return InferOutput(
            probabilities=result.as_numpy("probabilities"),
            classes=self.info().classes,
            logits=result.as_numpy("logits"),
            masked_features=result.as_numpy("masked_features"),
        )

    def infer(self, faces: np.ndarray, *, with_features: bool = False, request_id: str = "") -> InferOutput:
        """One request for a batch of faces UINT8 [B, S, S, 3] (S: ``info().wire_size``).

        Returns probabilities and logits FP32 [B, 7] (and masked_features FP32 [B, 512] with
        ``with_features``). Raises FerInputError (nothing sent) or FerServerError (refused or failed).
        """
        self.check_batch(faces)
        inputs, outputs = self._request(faces, with_features)
        try:
            result = self._client.infer(self.model, inputs, self.model_version, outputs=outputs,
                                        request_id=request_id, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"inference on {self.model!r} at {self.url} failed") from exc
        return self._output(result)

    def submit(self, faces: np.ndarray, callback, *, with_features: bool = False, request_id: str = "") -> None:
        """Send a batch without waiting (several can be in flight); ``callback(output, error)`` runs on a
        gRPC thread with an InferOutput or a FerServerError. Bad batches raise FerInputError at once."""
        self.check_batch(faces)
        inputs, outputs = self._request(faces, with_features)

        def done(result, error):
            if error is not None:
                callback(None, _server_error(error, f"inference on {self.model!r} at {self.url} failed"))
            else:
                callback(self._output(result), None)

        try:
            self._client.async_infer(self.model, inputs, done, self.model_version, outputs=outputs,
                                     request_id=request_id, headers=self.headers, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _server_error(exc, f"inference on {self.model!r} at {self.url} failed") from exc

    def infer_all(self, faces: np.ndarray, *, batch_size: int | None = None, with_features: bool = False,
                  on_batch: Callable[[int], None] | None = None) -> InferOutput:
        """Any number of faces (UINT8 [N, S, S, 3]), sent in requests of at most ``batch_size`` faces.

        ``batch_size`` defaults to the model's max_batch_size and is capped by it. ``on_batch(n)`` is
        called after each request with its number of faces (a progress bar's update). Returns the
        outputs of all N faces in order; raises FerInputError / FerServerError as :meth:`infer`.
        """
        info = self.info()
        if len(faces) == 0:
            raise FerInputError("empty batch: send at least one face")
        step = min(batch_size or info.max_batch_size or len(faces), info.max_batch_size or len(faces))
        parts = []
        for start in range(0, len(faces), max(1, step)):
            parts.append(self.infer(faces[start:start + step], with_features=with_features))
            if on_batch is not None:
                on_batch(len(parts[-1].probabilities))
        cat = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                            else np.concatenate([getattr(p, name) for p in parts]))
        return InferOutput(cat("probabilities"), info.classes, cat("logits"), cat("masked_features"))
