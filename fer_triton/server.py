"""Start and stop the real Triton Inference Server shipped in the nvidia-pytriton wheel.

The wheel carries a full ``tritonserver`` (a GPU build that runs in CPU-only mode) plus the
python backend; this module runs that binary directly on a model repository (with the python
backend's files linked into a private backend directory, and the library path set so the backend
stub loads this interpreter's libpython) and turns its failure modes into clear errors.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fer_triton.admin_key import http_headers, redact, restriction_args

log = logging.getLogger(__name__)


class TritonServerError(RuntimeError):
    """The server could not be started, or a model failed to load (message carries Triton's reason)."""


@dataclass(frozen=True)
class TritonInstall:
    server: Path
    backend_files: Path       # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path                # python-backend stub for the running Python version
    caches: Path
    libs: Path                # the wheel's bundled shared libraries

    @classmethod
    def find(cls) -> "TritonInstall":
        # Located, not imported: `import pytriton` would load its own client stack (aiohttp, gevent, zmq, ...),
        # which running the binary never needs (`pip install --no-deps nvidia-pytriton` is enough, docs/gpu.md).
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise TritonServerError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0")
        package = Path(spec.origin).parent
        root = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            server=root / "bin" / "tritonserver",
            backend_files=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            caches=root / "caches",
            libs=package.parent / "nvidia_pytriton.libs",
        )
        for path in (install.server, install.backend_files, install.stub):
            if not path.exists():
                raise TritonServerError(f"nvidia-pytriton install is incomplete (missing {path}) "
                                        f"or has no python-backend stub for Python {version}")
        return install


def check_repository(repository: Path) -> list[str]:
    """Validate a model repository before starting; return its model names."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repository = Path(repository)
    if not repository.is_dir():
        raise TritonServerError(f"model repository not found: {repository} (run `fer-triton export` first)")
    models = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    configs = [m / "config.pbtxt" for m in models if (m / "config.pbtxt").is_file()]
    if not configs:
        raise TritonServerError(f"{repository} holds no model (no <model>/config.pbtxt): is this a model repository?")
    for config in configs:
        try:
            text_format.Parse(config.read_text(), mc.ModelConfig())
        except text_format.ParseError as exc:
            raise TritonServerError(f"invalid model config {config}: {exc}") from exc
    return [c.parent.name for c in configs]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TritonServerError(
                f"{what} port {port} on {host} is in use ({exc.strerror}); "
                f"stop the other server or choose another port"
            ) from exc


def _check_distinct_ports(ports: dict[str, int]) -> None:
    """Refuse two endpoints on one port before starting (tritonserver would bury it under its usage text)."""
    by_port: dict[int, list[str]] = {}
    for what, port in ports.items():
        if not 0 < port < 65536:
            raise TritonServerError(f"{what} port {port} is not a TCP port (1..65535)")
        by_port.setdefault(port, []).append(what)
    clashes = [f"{' and '.join(names)} both on port {port}" for port, names in by_port.items() if len(names) > 1]
    if clashes:
        raise TritonServerError(f"{'; '.join(clashes)}: give each endpoint its own port "
                                "(--grpc-port, --http-port, --metrics-port)")


def _without_traceback(reason: str) -> str:
    """Triton appends the python stub's traceback ("At: ...") to a load failure: keep the message."""
    return reason.split("\n\nAt:")[0].strip()


@dataclass
class TritonServer:
    """A tritonserver process on one model repository. Use as a context manager or start()/stop()."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    # "explicit" + load all at start: every model loads, and retrain/rollback can (re)load by API.
    model_control: str = "explicit"
    log_verbose: int = 0
    log_file: Path | None = None
    exit_timeout_s: int = 5
    extra_args: list[str] = field(default_factory=list)
    # Model control (and with restrict_config, model config) answers only requests carrying this key
    # (fer_triton.admin_key); None leaves them open. Kept out of repr and of every message we write.
    admin_key: str | None = field(default=None, repr=False)
    restrict_config: bool = False
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _workdir: Path | None = field(default=None, init=False, repr=False)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        cmd = [
            str(install.server),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backends}",
            f"--cache-directory={install.caches}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control}",
            "--exit-on-error=false",          # stay up so we can ask which model failed and why
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.model_control == "explicit":
            cmd.append("--load-model=*")
        if self.admin_key:
            cmd += restriction_args(self.admin_key, restrict_config=self.restrict_config)
        return cmd + list(self.extra_args)

    def environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        # The stub must load the same libpython as this interpreter, and find its packages via PATH.
        libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libdirs if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def start(self, timeout_s: float = 300.0) -> "TritonServer":
        """Start tritonserver and wait until every model is loaded and the server is ready.

        ``timeout_s``: seconds to wait for readiness. Returns self (the server keeps running until
        :meth:`stop`). Raises TritonServerError, naming the cause, for: a missing or invalid model
        repository, two endpoints given the same port, a port in use, the server binary not installed,
        a model that fails to load (Triton's own reason), or no readiness within ``timeout_s``.
        """
        check_repository(self.repository)
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        _check_distinct_ports(ports)
        for what, port in ports.items():
            _check_port(self.host, port, what)
        install = TritonInstall.find()
        self._workdir = Path(tempfile.mkdtemp(prefix="fer-triton-server-"))
        backends = self._workdir / "backends" / "python"
        backends.mkdir(parents=True)
        for source in (install.backend_files / "libtriton_python.so",
                       install.backend_files / "triton_python_backend_utils.py", install.stub):
            (backends / source.name).symlink_to(source)
        if self.log_file is None:
            self.log_file = self._workdir / "tritonserver.log"
        log_handle = open(self.log_file, "ab")
        self._proc = subprocess.Popen(self.command(install, backends.parent), env=self.environment(install),
                                      stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        log_handle.close()
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://{self.http_url}{path}", method=method,
                                     data=b"{}" if method == "POST" else None, headers=http_headers(self.admin_key))
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def model_states(self) -> list[dict]:
        """Triton's repository index: name, version, state and reason of every model."""
        status, body = self._get("/v2/repository/index", method="POST")
        return json.loads(body) if status == 200 else []

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TritonServerError(f"tritonserver exited with code {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if self._get("/v2/health/ready")[0] == 200:
                    return
                states = self.model_states()
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.2)
                continue
            failed = [m for m in states if m.get("state") == "UNAVAILABLE" and m.get("reason")]
            # Models that depend on a failed one (the ensemble) stay without a state: not loading.
            loading = [m for m in states if m.get("state") == "LOADING"]
            if failed and not loading:
                reasons = "\n".join(f"  {m['name']} (version {m.get('version', '?')}): {_without_traceback(m['reason'])}"
                                     for m in failed)
                raise TritonServerError(f"model(s) failed to load:\n{reasons}")
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_file and Path(self.log_file).exists():
            tail = "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-lines:])
            return redact(tail, self.admin_key)
        return "(no log)"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait for Triton's graceful exit, then SIGKILL. Returns the exit code."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s or self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            code = proc.returncode
            try:  # python-backend stubs are children: make sure none outlive the server
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._workdir is not None:
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return code

    def kill(self) -> None:
        """Hard kill (for failure tests): no graceful shutdown."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self) -> "TritonServer":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
