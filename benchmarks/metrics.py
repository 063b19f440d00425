"""Triton's own view of a run: per-model queue vs compute time from its Prometheus metrics endpoint.

Counters are cumulative, so a run is measured as the difference of two scrapes.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

# nv_<name>{model="cafe_head",version="1"} 1234
_LINE = re.compile(r'^(nv_inference_\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')

COUNTERS = (
    "nv_inference_request_success",         # requests
    "nv_inference_request_failure",
    "nv_inference_count",                   # faces (batch items)
    "nv_inference_exec_count",              # model executions (after dynamic batching)
    "nv_inference_request_duration_us",     # end to end inside the server
    "nv_inference_queue_duration_us",       # waiting in the scheduler queue
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)

Scrape = dict[tuple[str, str], dict[str, float]]   # (model, version) -> counter -> value


class MetricsError(RuntimeError):
    """The metrics endpoint could not be read."""


def parse_metrics(text: str) -> Scrape:
    out: Scrape = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        key = (labels.get("model", "?"), labels.get("version", "?"))
        out.setdefault(key, {})[m.group(1)] = float(m.group(3))
    return out


def scrape(metrics_url: str, timeout_s: float = 5.0) -> Scrape:
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as resp:
            return parse_metrics(resp.read().decode())
    except OSError as exc:
        raise MetricsError(f"cannot read Triton metrics at {metrics_url}: {exc}") from exc


@dataclass
class ModelTimes:
    """Averages over one run for one model version (times in ms per request)."""

    model: str
    version: str
    requests: int
    failures: int
    executions: int
    faces: int
    request_ms: float
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @property
    def faces_per_execution(self) -> float:
        """Average batch the model actually ran (dynamic batching merges requests)."""
        return self.faces / self.executions if self.executions else 0.0


def difference(before: Scrape, after: Scrape) -> list[ModelTimes]:
    """Per model version that served requests between the two scrapes."""
    rows = []
    for key, now in sorted(after.items()):
        then = before.get(key, {})
        d = {name: now.get(name, 0.0) - then.get(name, 0.0) for name in COUNTERS}
        requests = int(d["nv_inference_request_success"])
        if requests <= 0:
            continue
        per = lambda name: d[name] / requests / 1000.0  # noqa: E731  us total -> ms per request
        rows.append(ModelTimes(
            model=key[0], version=key[1], requests=requests,
            failures=int(d["nv_inference_request_failure"]),
            executions=int(d["nv_inference_exec_count"]), faces=int(d["nv_inference_count"]),
            request_ms=per("nv_inference_request_duration_us"), queue_ms=per("nv_inference_queue_duration_us"),
            compute_input_ms=per("nv_inference_compute_input_duration_us"),
            compute_infer_ms=per("nv_inference_compute_infer_duration_us"),
            compute_output_ms=per("nv_inference_compute_output_duration_us"),
        ))
    return rows
