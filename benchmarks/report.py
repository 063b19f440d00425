"""Plain-text tables of a benchmark result (the dict ``run_benchmark`` returns) and its JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from fer_triton.tables import text_table


def format_report(result: dict) -> str:
    m, model = result["machine"], result["model"]
    parts = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, ISA {' '.join(m['isa'])}; "
             f"load average at start {m['load_average_1m']}; {m['date']}",
             f"model: {model['clip_model']} + ResNet-18, {model['weights']}"]
    rows = []
    for served in result["served"]:
        for p in served["points"]:
            cpu = p.get("server_cpu_ms_per_face")
            cpu = "-" if cpu is None else f"{cpu:.0f}+{p.get('client_cpu_ms_per_face') or 0:.0f}"
            shm = f" ({p['transport']})" if p.get("transport", "gRPC") != "gRPC" else ""
            rows.append([f"served {served['variant']}{shm}", p["batch_size"], p["concurrency"], p["faces_per_s"],
                         p["p50_ms"], p["p95_ms"], p["p99_ms"], cpu, p["errors"]])
    for r in result["inprocess"]:
        name = f"{r['engine']} {r['variant']}" if "variant" in r else f"{r['engine']} {r['precision']}"
        rows.append([name, r["batch_size"], "-", r["faces_per_s"], r["p50_ms"],
                     r["p95_ms"], r["p99_ms"], r.get("cpu_ms_per_face", "-"), "-"])
    parts.append(text_table(["path", "batch", "conc", "faces/s", "p50 ms", "p95 ms", "p99 ms", "cpu ms/face", "errors"],
                        rows)
                 + "\n(cpu ms/face: CPU time per face, served = server tree + client; wall-clock figures move "
                   "with the machine's load, CPU time much less)")

    pa = [(s["variant"], r) for s in result["served"] for r in s.get("perf_analyzer", {}).get("rows", [])]
    if pa:
        parts.append("perf_analyzer (gRPC, random uint8 faces):\n" + text_table(
            ["variant", "batch", "conc", "faces/s", "p50 ms", "p95 ms", "p99 ms", "queue ms", "compute ms"],
            [[v, r["batch_size"], r["concurrency"], round(r["faces_per_s"], 2), round(r["p50_ms"], 1),
              round(r["p95_ms"], 1), round(r["p99_ms"], 1), round(r["server_queue_ms"], 1),
              round(r["server_compute_ms"], 1)] for v, r in pa]))
    for s in result["served"]:
        if "error" in s.get("perf_analyzer", {}):
            parts.append(f"perf_analyzer on {s['variant']} failed: {s['perf_analyzer']['error']}")

    triton = []
    busiest = (max(result["settings"]["batch_sizes"]), max(result["settings"]["concurrency"]))
    for s in result["served"]:
        for p in s["points"]:
            if (p["batch_size"], p["concurrency"]) == busiest:
                for t in p["triton"]:
                    shm = f" ({p['transport']})" if p.get("transport", "gRPC") != "gRPC" else ""
                    triton.append([s["variant"] + shm, t["model"], t["version"], t["requests"],
                                   round(t["faces"] / max(t["executions"], 1), 1),
                                   t["queue_ms"], t["compute_infer_ms"],
                                   round(t["compute_input_ms"] + t["compute_output_ms"], 2)])
    if triton:
        parts.append("Triton's view (per request, busiest point):\n" + text_table(
            ["variant", "model", "ver", "requests", "faces/exec", "queue ms", "infer ms", "in+out ms"], triton))
    parts.append("memory (resident MB): " + "; ".join(
        f"{s['variant']}: server {s['server_peak_mb']} (idle {s['server_idle_mb']}, "
        f"{len(s['server_processes'])} processes), client {max(p['client_rss_mb'] for p in s['points'])}"
        for s in result["served"]))
    parts.append("served vs in-process max |dp|: " + ", ".join(
        f"{s['variant']} {s['served_vs_inprocess_max_abs_diff']:.1e}" for s in result["served"]))
    for variant, e in result["exports"].items():
        if "top1_agreement_vs_fp32" in e:
            diff = f", max |dp| {e['max_abs_diff_vs_fp32']:.1e}" if "max_abs_diff_vs_fp32" in e else ""
            parts.append(f"{variant}: top-1 agreement with fp32 {e['top1_agreement_vs_fp32']:.2%} on "
                         f"{e['agreement_faces']} drawn faces (random weights){diff}")
    t = result["targets"]
    goals = [(f"served {v} vs in-process (batch {t['batch_size']})", g) for v, g in t["served_vs_inprocess"].items()]
    if "served_int8_vs_fp32" in t:
        goals.append((f"served int8 vs fp32 (batch {t['batch_size']})", t["served_int8_vs_fp32"]))
    for name, goal in goals:
        parts.append(f"target {name}: {goal['ratio']:.2f}x (goal {goal['goal']}) " + json.dumps(
            {k: v for k, v in goal.items() if k not in ("ratio", "goal")}))
    from fer_triton.benchmarks.cpu_engines import format_engines

    engines = format_engines(result)
    if engines:
        parts.append(engines)
    parts.append(f"took {result['seconds']:.0f}s")
    return "\n\n".join(parts)


def save_json(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
