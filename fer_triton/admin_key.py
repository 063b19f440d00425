"""The admin key that guards Triton's model control (load, unload, repository index) on a fer-triton server.

Inference, health and metadata stay open to every client; the model-repository API (and, with
``restrict_config``, the model-config API) answers only requests that carry the key in a header.
tritonserver 2.51 does this itself (``--grpc-restricted-protocol`` / ``--http-restricted-api``):

    gRPC  header ``triton-grpc-protocol-triton-admin-key: <key>`` (Triton adds the prefix on gRPC)
    HTTP  header ``triton-admin-key: <key>``

The key is read from the environment variable ``FER_TRITON_ADMIN_KEY`` or from the file named by
``FER_TRITON_ADMIN_KEY_FILE`` (a Kubernetes Secret mounted as a file, say), never from a command
line, so it is not left in shell history. It does reach tritonserver's own arguments (2.51 has no
file option for it): anyone who can list the server's processes can read it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_ENV = "FER_TRITON_ADMIN_KEY"
KEY_FILE_ENV = "FER_TRITON_ADMIN_KEY_FILE"
HEADER = "triton-admin-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"
MIN_LENGTH = 16
# Triton splits the restriction argument at ':' and '=', and gRPC header values must be printable.
_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/")


class AdminKeyError(ValueError):
    """The admin key is missing where required, unreadable, or not usable; the message never holds the key."""


def check_key(key: str, source: str) -> str:
    """Return ``key`` if it is at least 16 characters of letters, digits and ``-_.~+/``; else AdminKeyError."""
    if len(key) < MIN_LENGTH:
        raise AdminKeyError(f"the admin key from {source} is {len(key)} characters long: use at least {MIN_LENGTH} "
                            f"(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    bad = sorted(set(key) - _ALLOWED)
    if bad:
        raise AdminKeyError(f"the admin key from {source} holds {len(bad)} character(s) Triton cannot carry in a "
                            "header argument (allowed: letters, digits and -_.~+/)")
    return key


def load_admin_key(environ: dict[str, str] | None = None) -> str | None:
    """The admin key from ``FER_TRITON_ADMIN_KEY`` or the file ``FER_TRITON_ADMIN_KEY_FILE`` names; None if neither is set.

    Raises AdminKeyError when both are set, the file cannot be read or is empty, or the key is unusable.
    """
    environ = os.environ if environ is None else environ
    value, path = environ.get(KEY_ENV), environ.get(KEY_FILE_ENV)
    if value and path:
        raise AdminKeyError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set: keep one")
    if value:
        return check_key(value.strip(), KEY_ENV)
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise AdminKeyError(f"cannot read the admin key file {path} ({KEY_FILE_ENV}): {exc.strerror}") from exc
        if not text:
            raise AdminKeyError(f"the admin key file {path} ({KEY_FILE_ENV}) is empty")
        return check_key(text, path)
    return None


def new_key() -> str:
    """A fresh random key (32 bytes, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def grpc_headers(key: str | None) -> dict[str, str]:
    """Headers for tritonclient.grpc calls ({} without a key)."""
    return {GRPC_HEADER: key} if key else {}


def http_headers(key: str | None) -> dict[str, str]:
    """Headers for Triton's HTTP API ({} without a key)."""
    return {HEADER: key} if key else {}


def restriction_args(key: str, *, restrict_config: bool = False) -> list[str]:
    """tritonserver 2.51 arguments that put model control (and optionally model config) behind the key."""
    grpc_apis = "model-repository,model-config" if restrict_config else "model-repository"
    return [f"--grpc-restricted-protocol={grpc_apis}:{HEADER}={key}",
            f"--http-restricted-api={grpc_apis}:{HEADER}={key}"]


def redact(text: str, key: str | None) -> str:
    """``text`` with every occurrence of the key replaced by ``***`` (for anything written to a log)."""
    return text.replace(key, "***") if key else text
