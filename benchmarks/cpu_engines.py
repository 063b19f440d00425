"""CPU engines in ``fer-triton bench``: OpenVINO variants beside onnxruntime's, ratios, and the CPU's peak.

Variant names: ``<precision>-<layout>`` is onnxruntime (as before); ``ov-<fp32|bf16|int8>-<layout>`` is an
``--engine openvino`` export of the same checkpoint:

    ov-fp32-<layout>   FP32 IR, runner pinned to inference precision f32
    ov-bf16-<layout>   the same FP32 IR, runner pinned to bf16 (falls back to f32 without native BF16)
    ov-int8-<layout>   NNCF INT8 IR, float layers at the runner's automatic choice (bf16 where the CPU has it)

Peak matrix throughput of the CPU (what "how far from peak" is measured against):

    peak FLOP/s = cores x clock x FLOP per cycle per core

with the FLOP per cycle of the widest multiply-add units the CPU reports (/proc/cpuinfo flags):

    FP32 FMA       2 FMA pipes x 16 FP32 lanes (512-bit) x 2 FLOP = 64 on Intel AVX-512 server cores with two
                   FMA units; 2 pipes x 8 lanes (256-bit datapaths) x 2 = 32 on AMD Zen 4, which executes
                   AVX-512 as two 256-bit halves (AMD Zen 4 software optimization guide; Agner Fog's
                   instruction tables: VFMADD 2 per cycle at 256 bits)
    BF16 dpbf16ps  2 x the FP32 FMA rate (each 32-bit lane multiplies and adds a PAIR of BF16 values)
    INT8 VNNI      4 x the FP32 FMA rate (vpdpbusd: four INT8 products per 32-bit lane)
    AMX            1024 BF16 FLOP or 2048 INT8 OP per cycle per core (Intel: 16x32 x 32x16 tile multiply
                   in 16 cycles); used only where the CPU reports amx_bf16 / amx_int8

Clock: /proc/cpuinfo's "cpu MHz" (the current clock; on a VM often the base clock). Cores: os.cpu_count()
(a logical CPU counted as a core: where two are SMT siblings of one core the true peak is half).
Model cost: 12.4 GFLOP per face (CLIP ViT-B/32 image encoder ~4.4 GMAC + ResNet-18 ~1.8 GMAC at
224x224, 2 FLOP per MAC; the preprocess and 512x7 head are negligible), so
peak faces/s = peak FLOP/s / 12.4e9.
"""

from __future__ import annotations

import os

GFLOP_PER_FACE = 12.4
ENGINE_PREFIX = "ov-"
OPENVINO_PRECISIONS = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "auto")}


def split_variant(name: str) -> tuple[str, str, str | None]:
    """("onnxruntime" | "openvino", the onnxruntime-style "<precision>-<layout>" of its files, OpenVINO's
    inference precision or None). "ov-bf16-fused" -> ("openvino", "fp32-fused", "bf16")."""
    if not name.startswith(ENGINE_PREFIX):
        return "onnxruntime", name, None
    label, _, layout = name[len(ENGINE_PREFIX):].partition("-")
    if label not in OPENVINO_PRECISIONS:
        return "openvino", f"?{label}-{layout}", None  # parse_variant rejects it with the usual message
    files, inference = OPENVINO_PRECISIONS[label]
    return "openvino", f"{files}-{layout}", inference


def precision_label(name: str) -> str:
    """What a variant computes in: fp32 | int8 (onnxruntime), openvino fp32 | bf16 | int8."""
    engine, files, inference = split_variant(name)
    if engine == "onnxruntime":
        return files.partition("-")[0]
    return f"openvino {name[len(ENGINE_PREFIX):].partition('-')[0]}"


def export_kwargs(name: str) -> dict:
    """export_checkpoint's engine keywords for a variant."""
    engine, _, inference = split_variant(name)
    # auto checks every precision the runner can choose here; pin_repository then pins the variant's
    return {} if engine == "onnxruntime" else {"engine": "openvino", "inference_precision": "auto"}


def inprocess_chain(repository, threads: int = 0):
    """The repository's graphs in this process, each on the engine (and precision) its server runs."""
    from fer_triton.export.openvino_engine import repository_chain

    return repository_chain(repository, threads=threads)


def cpu_peak(flags: set[str], cores: int | None = None, mhz: float | None = None, vendor: str | None = None) -> dict:
    """Peak multiply-add throughput of this CPU per number format (see the module docstring), in GFLOP/s
    (GOP/s for INT8), and the faces/s each would allow at GFLOP_PER_FACE."""
    cores = cores or os.cpu_count() or 1
    mhz = mhz or _cpu_mhz()
    vendor = vendor or _vendor()
    if "avx512f" in flags:
        fp32 = 32 if vendor == "AuthenticAMD" else 64
        width = "AVX-512 on 256-bit datapaths (AMD Zen 4)" if vendor == "AuthenticAMD" else "AVX-512, 2 FMA units"
    elif "avx2" in flags:
        fp32, width = 32, "AVX2 (2 x 256-bit FMA)"
    else:
        fp32, width = 8, "SSE"
    per_cycle = {"fp32": fp32}
    if "avx512_bf16" in flags:
        per_cycle["bf16"] = 2 * fp32
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        per_cycle["int8"] = 4 * fp32
    if "amx_bf16" in flags:
        per_cycle["bf16"] = 1024
    if "amx_int8" in flags:
        per_cycle["int8"] = 2048
    ghz = mhz / 1000.0
    out = {"cores": cores, "ghz": round(ghz, 3), "vector_units": width, "gflop_per_face": GFLOP_PER_FACE,
           "formula": "cores x GHz x FLOP/cycle/core", "flop_per_cycle": per_cycle}
    out["peak_gflops"] = {k: round(cores * ghz * v, 1) for k, v in per_cycle.items()}
    out["peak_faces_per_s"] = {k: round(cores * ghz * v / GFLOP_PER_FACE, 1) for k, v in per_cycle.items()}
    return out


def _cpu_mhz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return 2000.0


def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def engine_targets(result: dict) -> dict:
    """Issue #17's figures from one benchmark result: each served variant against served FP32 onnxruntime,
    served / in-process per variant, and the best variant against the CPU's peak for its number format."""
    from fer_triton.benchmarks.machine import cpu_flags

    batch = result["targets"]["batch_size"]
    best = {}
    for served in result["served"]:
        points = [p for p in served["points"] if p["batch_size"] == batch and p.get("transport", "gRPC") == "gRPC"]
        if points:
            best[served["variant"]] = max(points, key=lambda p: p["faces_per_s"])
    if not best:
        return {}
    base_name = next((v for v in ("fp32-fused", "fp32-staged") if v in best), None)
    out: dict = {"batch_size": batch, "baseline": base_name, "variants": {}}
    inprocess = {r["variant"]: r for r in result["inprocess"] if "variant" in r and r["batch_size"] == batch}
    for variant, point in best.items():
        row = {"engine": split_variant(variant)[0], "precision": precision_label(variant),
               "served_faces_per_s": point["faces_per_s"], "concurrency": point["concurrency"]}
        if base_name:
            row["vs_served_ort_fp32"] = round(point["faces_per_s"] / best[base_name]["faces_per_s"], 2)
        if variant in inprocess:
            row["inprocess_faces_per_s"] = inprocess[variant]["faces_per_s"]
            row["served_vs_inprocess"] = round(point["faces_per_s"] / inprocess[variant]["faces_per_s"], 3)
        agreement = result["exports"].get(variant, {}).get("top1_agreement_vs_fp32")
        if agreement is not None:
            row["top1_agreement"] = agreement
        out["variants"][variant] = row
    peak = cpu_peak(cpu_flags())
    out["peak"] = peak
    fastest = max(best, key=lambda v: best[v]["faces_per_s"])
    fmt = precision_label(fastest).split()[-1]      # fp32 | bf16 | int8: the units its matmuls run on
    fmt = fmt if fmt in peak["peak_faces_per_s"] else "fp32"
    if result.get("model", {}).get("size") != "vit-b-32":  # 12.4 GFLOP/face is ViT-B/32 + ResNet-18's cost
        out["best"] = {"variant": fastest, "faces_per_s": best[fastest]["faces_per_s"], "number_format": fmt}
        return out
    fp32_best = max((best[v]["faces_per_s"] for v in best if precision_label(v).split()[-1] == "fp32"), default=0.0)
    if fp32_best > peak["peak_faces_per_s"]["fp32"]:
        implied = fp32_best * GFLOP_PER_FACE / (peak["cores"] * peak["flop_per_cycle"]["fp32"])
        out["peak_note"] = (f"FP32 measured {fp32_best} faces/s, above the FP32 peak at the reported clock: the cores "
                            f"run at >= {implied:.2f} GHz (boost), so these peaks are lower bounds; at "
                            f"{implied:.2f} GHz every peak is {implied / peak['ghz']:.2f}x higher")
    out["best"] = {"variant": fastest, "faces_per_s": best[fastest]["faces_per_s"], "number_format": fmt,
                   "peak_faces_per_s": peak["peak_faces_per_s"][fmt],
                   "fraction_of_peak": round(best[fastest]["faces_per_s"] / peak["peak_faces_per_s"][fmt], 3)}
    return out


def format_engines(result: dict) -> str:
    """Plain-text table of engine_targets (empty string when there is nothing to show)."""
    from fer_triton.tables import text_table

    t = result.get("targets", {}).get("engines")
    if not t:
        return ""
    rows = [[v, r["engine"], r["precision"], r["served_faces_per_s"], r.get("inprocess_faces_per_s", "-"),
             r.get("vs_served_ort_fp32", "-"), r.get("served_vs_inprocess", "-"),
             f"{r['top1_agreement']:.2%}" if "top1_agreement" in r else "-"]
            for v, r in t["variants"].items()]
    table = text_table(["variant", "engine", "precision", "served f/s", "in-process f/s",
                        f"x served {t['baseline'] or 'ORT fp32'}", "served/in-proc", "top-1 agr."], rows)
    p, b = t["peak"], t["best"]
    if "fraction_of_peak" not in b:
        return f"CPU engines at batch {t['batch_size']}:\n{table}\n(peak comparison: only for the ViT-B/32 model)"
    peak = ", ".join(f"{k} {v} GFLOP/s = {p['peak_faces_per_s'][k]} faces/s" for k, v in p["peak_gflops"].items())
    return (f"CPU engines at batch {t['batch_size']} (best concurrency; agreement on drawn faces vs FP32 PyTorch, "
            f"random weights: agreement, not accuracy):\n{table}\n"
            f"peak assumed: {p['cores']} cores x {p['ghz']} GHz x FLOP/cycle {p['flop_per_cycle']} ({p['vector_units']}) "
            f"-> {peak} at {p['gflop_per_face']} GFLOP/face\n"
            f"best: {b['variant']} {b['faces_per_s']} faces/s = {b['fraction_of_peak']:.0%} of the {b['number_format']} "
            f"peak ({b['peak_faces_per_s']} faces/s)" + (f"\nnote: {t['peak_note']}" if "peak_note" in t else ""))


def sibling_export(variants, variant: str) -> str | None:
    """An OpenVINO variant listed before ``variant`` with the same files and layout (ov-fp32-X and ov-bf16-X
    serve the same FP32 IR): its repository is copied instead of exporting again. None otherwise."""
    engine, files, _ = split_variant(variant)
    if engine != "openvino":
        return None
    for other in variants[:list(variants).index(variant)]:
        if other != variant and split_variant(other)[:2] == (engine, files):
            return other
    return None


def derive_repository(source, target, variant: str) -> dict:
    """Copy the repository of a sibling OpenVINO export to ``target`` and pin it (pin_repository)."""
    import shutil
    from pathlib import Path

    source, target = Path(source), Path(target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return {**pin_repository(target, variant), "derived_from": source.name}


def pin_repository(repository, variant: str) -> dict:
    """Pin the OpenVINO runners of an ``--engine openvino`` export (made with inference precision auto,
    which checks f32 and, where the CPU has it, bf16) to ``variant``'s precision; returns ``variant``'s
    export record from the check of that precision."""
    import json
    from pathlib import Path

    from fer_triton.export.openvino_engine import host_precision
    from fer_triton.export.repository import parse_config, replace_config

    repository = Path(repository)
    inference = split_variant(variant)[2]
    for config in repository.glob("*/config.pbtxt"):
        cfg = parse_config(config)
        if "engine" in cfg.parameters and cfg.parameters["engine"].string_value == "openvino":
            cfg.parameters["inference_precision"].string_value = inference
            replace_config(config, cfg)
    meta = json.loads(parse_config(repository / "cafe" / "config.pbtxt").parameters["fer_triton"].string_value)
    precision = host_precision(inference)
    files = split_variant(variant)[1].partition("-")[0]
    name = ("fp32" if precision == "f32" else "bf16") if files == "fp32" else \
        ("int8" if precision == "f32" else "int8+bf16")
    check = meta.get("openvino_checks", {}).get(name)
    if check is None:
        raise RuntimeError(f"{repository}: the export made no {name} check (checks: "
                           f"{sorted(meta.get('openvino_checks', {}))})")
    return {"engine": "openvino", "served_check": name, "top1_agreement_vs_fp32": check["top1_agreement"],
            "agreement_faces": check["faces"], "max_abs_diff_vs_fp32": check["max_prob_diff"],
            "openvino_checks": meta.get("openvino_checks", {}),
            **({"quantization": meta["quantization"]} if "quantization" in meta else {})}
