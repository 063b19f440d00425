"""Resource use of the tritonserver process tree (the server plus one python stub per model instance):
resident memory, and CPU time (which, unlike wall time, a busy shared machine barely changes)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass
class ProcessMemory:
    pid: int
    name: str          # "tritonserver" or the model a python-backend stub serves
    rss_mb: float


def _describe(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    # The stub's first argument is the model's path, <repo>/<model>/<version>/model.py
    if cmdline and cmdline[0].endswith("triton_python_backend_stub") and len(cmdline) > 1:
        parts = cmdline[1].rstrip("/").split("/")
        return f"stub {parts[-3]}" if len(parts) >= 3 else "stub"
    return proc.name()


def server_tree(pid: int) -> list[ProcessMemory]:
    """RSS of ``pid`` and all its descendants (processes that vanish meanwhile are skipped)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for proc in procs:
        try:
            out.append(ProcessMemory(proc.pid, _describe(proc), proc.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its living descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
