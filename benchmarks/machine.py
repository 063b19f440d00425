"""Which machine a benchmark ran on (so a table is never read without it)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openvino() -> dict:
    """OpenVINO's version and what it reports for this CPU (absent without the openvino extra)."""
    try:
        import openvino as ov

        core = ov.Core()
        return {"openvino": ov.__version__.split("-")[0],
                "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
    except Exception:  # not installed, or no CPU plugin: the benchmark runs without OpenVINO variants
        return {}


def describe() -> dict:
    import onnxruntime
    import psutil
    import torch

    flags = cpu_flags()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                if f in flags],
        **_openvino(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0, python backend, CPU only)",
        "gpu": None,
    }
