"""NVIDIA's perf_analyzer against the served ensemble.

The binary ships inside the ``tritonclient==2.51.0`` wheel (``tritonclient-2.51.0.data/data/bin/``);
newer perf-analyzer wheels need glibc 2.38. It links ``libb64.so.0d`` and ``libcudart.so.12``, which
nvidia-pytriton already carries (under hashed names) in ``site-packages/nvidia_pytriton.libs``.
``install_perf_analyzer`` fetches the wheel with pip (no install, no dependencies), extracts the
binary into a folder and links those two libraries beside it.

Where it lives: ``make install`` puts it in the venv (``<venv>/share/fer-triton/perf_analyzer-2.51.0``,
by running ``python -m fer_triton.benchmarks.perf_analyzer``), so tests and benchmarks need no
network; otherwise the first ``fer-triton bench`` fetches it into ``~/.cache/fer-triton/``.
``FER_TRITON_PERF_ANALYZER_DOWNLOAD=0`` (set by the tests) forbids fetching at run time: a missing
binary is then an error that says how to install it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL_VERSION = "2.51.0"
MEMBER = f"tritonclient-{WHEEL_VERSION}.data/data/bin/perf_analyzer"
# soname the binary asks for -> file-name pattern in nvidia_pytriton.libs
LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not be installed or did not produce a measurement."""


class PerfAnalyzerNotInstalled(PerfAnalyzerError):
    """perf_analyzer is not installed and fetching it at run time is off."""


NOT_INSTALLED = "perf_analyzer is not installed"
DOWNLOAD_ENV = "FER_TRITON_PERF_ANALYZER_DOWNLOAD"


def venv_dir() -> Path:
    """Where `make install` puts perf_analyzer: inside this Python's environment."""
    return Path(sys.prefix) / "share" / "fer-triton" / f"perf_analyzer-{WHEEL_VERSION}"


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fer-triton" / f"perf_analyzer-{WHEEL_VERSION}"


def find_perf_analyzer() -> Path | None:
    """The installed perf_analyzer binary (venv first, then the user cache), or None."""
    for folder in (venv_dir(), default_cache()):
        if (folder / "perf_analyzer").is_file():
            return folder / "perf_analyzer"
    return None


def download_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _pytriton_libs() -> Path:
    from fer_triton.server import TritonInstall

    return TritonInstall.find().libs


def _fetch(binary: Path) -> None:
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fer-triton-pa-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
               f"tritonclient=={WHEEL_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("tritonclient-*.whl"))
        if done.returncode != 0 or not wheels:
            raise PerfAnalyzerError(f"could not download tritonclient=={WHEEL_VERSION} with pip "
                                    f"({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if MEMBER not in wheel.namelist():
                raise PerfAnalyzerError(f"{wheels[0].name} holds no {MEMBER}")
            partial = binary.with_suffix(".partial")
            partial.write_bytes(wheel.read(MEMBER))
    partial.chmod(0o755)
    partial.replace(binary)


def install_perf_analyzer(cache_dir: Path | None = None, *, download: bool | None = None) -> Path:
    """Return perf_analyzer, fetching the tritonclient 2.51.0 wheel once if it is not installed.

    Without ``cache_dir``: the venv's copy (``make install``), else the user cache, else fetched into
    the user cache. ``download`` (default: unless ``FER_TRITON_PERF_ANALYZER_DOWNLOAD=0``) allows the
    fetch; when it is off, a missing binary raises ``PerfAnalyzerNotInstalled``.
    """
    download = download_allowed() if download is None else download
    if cache_dir is not None:
        binary = Path(cache_dir) / "perf_analyzer"
    else:
        binary = find_perf_analyzer() or default_cache() / "perf_analyzer"
    if not binary.is_file():
        if not download:
            looked = [binary] if cache_dir is not None else [venv_dir() / "perf_analyzer",
                                                              default_cache() / "perf_analyzer"]
            raise PerfAnalyzerNotInstalled(
                f"{NOT_INSTALLED} (looked for {' and '.join(map(str, looked))}) and fetching it at run time is off "
                f"({DOWNLOAD_ENV}=0): `make install`, or `python -m fer_triton.benchmarks.perf_analyzer`, "
                "installs it into the venv")
        _fetch(binary)
    libdir = binary.parent / "lib"
    libdir.mkdir(exist_ok=True)
    source_dir = _pytriton_libs()
    for soname, pattern in LIBRARIES.items():
        link = libdir / soname
        if link.exists():
            continue
        found = sorted(source_dir.glob(pattern))
        if not found:
            raise PerfAnalyzerError(f"{source_dir} has no {pattern} (needed by perf_analyzer as {soname}); "
                                    "is nvidia-pytriton==0.7.0 installed?")
        link.unlink(missing_ok=True)
        link.symlink_to(found[0])
    return binary


@dataclass
class PerfAnalyzerRow:
    batch_size: int
    concurrency: int
    faces_per_s: float          # perf_analyzer's "Inferences/Second" (counts every face of a batch)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_ms: float
    server_compute_ms: float


def parse_csv(text: str, batch_size: int) -> list[PerfAnalyzerRow]:
    rows = []
    for rec in csv.DictReader(text.splitlines()):
        ms = lambda key: float(rec.get(key) or "nan") / 1000.0  # noqa: E731  perf_analyzer writes microseconds
        compute = sum(ms(k) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
        rows.append(PerfAnalyzerRow(batch_size, int(rec["Concurrency"]), float(rec["Inferences/Second"]),
                                    ms("p50 latency"), ms("p95 latency"), ms("p99 latency"),
                                    ms("Server Queue"), compute))
    return rows


def run_perf_analyzer(binary: Path, url: str, model: str, *, batch_size: int, concurrency: list[int],
                      wire_size: int, requests_per_window: int = 5, max_trials: int = 3,
                      stability_percentage: int = 1000, timeout_s: float = 600.0) -> list[PerfAnalyzerRow]:
    """One perf_analyzer run (gRPC, random UINT8 faces) over the given concurrency levels.

    perf_analyzer repeats windows of ``requests_per_window`` requests (count windows: a slow model
    still fills each one) until three agree within ``stability_percentage``;
    on a shared machine they rarely do, so by default any three windows are accepted (and the
    caller reports the machine's load beside the numbers).
    """
    if not concurrency or min(concurrency) < 1:
        raise ValueError(f"concurrency levels must be >= 1, not {concurrency}")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(Path(binary).parent / "lib"), env.get("LD_LIBRARY_PATH")) if p)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fer-triton-pa-") as tmp:
        for level in concurrency:
            report = Path(tmp) / f"c{level}.csv"
            cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", str(batch_size),
                   "--concurrency-range", f"{level}:{level}", "--shape", f"faces:{wire_size},{wire_size},3",
                   "--input-data", "random", "--measurement-mode", "count_windows",
                   "--measurement-request-count", str(requests_per_window), "--max-trials", str(max_trials),
                   "--stability-percentage", str(stability_percentage), "-f", str(report)]
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise PerfAnalyzerError(f"perf_analyzer ran longer than {timeout_s:.0f}s") from exc
            if done.returncode != 0 or not report.is_file():
                tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
                raise PerfAnalyzerError(f"perf_analyzer exited with {done.returncode}: " + " | ".join(tail))
            rows += parse_csv(report.read_text(), batch_size)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m fer_triton.benchmarks.perf_analyzer [DIR]`: install perf_analyzer (default: into this venv)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fer_triton.benchmarks.perf_analyzer",
                                     description=main.__doc__)
    parser.add_argument("dir", nargs="?", type=Path, default=None,
                        help=f"install here (default: {venv_dir()})")
    args = parser.parse_args(argv)
    try:
        binary = install_perf_analyzer(args.dir or venv_dir(), download=True)
    except PerfAnalyzerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
