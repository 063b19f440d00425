"""Triton python-backend model that runs this version's OpenVINO IR (``model.xml``/``model.bin``) on the CPU.

Copied by ``fer-triton export --engine openvino`` into the version folders of the heavy models (CLIP
encoder and mask net, or the fused backbone) as ``model.py``. NVIDIA's containers serve the same
files with Triton's own ``openvino`` backend instead (``configs/openvino.pbtxt``).

Inference precision, chosen at load (config parameter ``inference_precision``):

    auto  BF16 when OpenVINO reports BF16 in the CPU's OPTIMIZATION_CAPABILITIES (AVX-512 BF16 or
          AMX), FP32 elsewhere (the default)
    bf16  BF16 (FP32, with a warning, where the CPU cannot)
    f32   FP32

What was chosen is logged at load (``pb_utils.Logger``, INFO: one line starting ``fer-triton openvino:``
naming the model, version, file, precision and why) in the server's log, where tests read it.

An INT8 IR (NNCF post-training quantization) runs its quantized layers as INT8 whatever the choice;
the choice applies to the layers left in floating point.

Triton's dynamic batcher hands ``execute`` several requests at once: their inputs are stacked, run
in ONE OpenVINO inference, and the outputs split back per request (as onnx_model.py does).
If the version folder has no ``model.xml`` (e.g. a mask-net version published by ``retrain``, which
writes ``model.onnx``), OpenVINO reads ``model.onnx`` directly.
"""

import json
import os

import numpy as np

try:  # absent outside Triton: choose_inference_precision stays importable for the export and tests
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only outside Triton
    pb_utils = None

PRECISION_CHOICES = ("auto", "bf16", "f32")


def choose_inference_precision(capabilities, requested="auto"):
    """The floating-point precision to compile for: ``"bf16"`` or ``"f32"``, and why (a sentence).

    ``capabilities``: OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (e.g. ["FP32", "BF16", "INT8"]);
    BF16 is listed where the CPU has native BF16 arithmetic (AVX-512 BF16 or AMX, OpenVINO's CPU plugin
    documentation, "Inference precision"). ``requested``: one of PRECISION_CHOICES.
    Raises ValueError for another ``requested``.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"inference_precision must be one of {PRECISION_CHOICES}, not {requested!r}")
    native = "BF16" in {str(c).upper() for c in capabilities}
    if requested == "f32":
        return "f32", "FP32 requested by the config"
    if requested == "bf16":
        if native:
            return "bf16", "BF16 requested by the config; the CPU has native BF16"
        return "f32", "BF16 requested but the CPU has no native BF16 (no AVX-512 BF16 / AMX): FP32"
    if native:
        return "bf16", "auto: the CPU reports BF16 in OPTIMIZATION_CAPABILITIES"
    return "f32", "auto: the CPU reports no BF16 in OPTIMIZATION_CAPABILITIES"


def model_path(version_dir, filename="model.xml"):
    """``filename`` in ``version_dir``, else its ``model.onnx`` (OpenVINO reads ONNX directly)."""
    path = os.path.join(version_dir, filename)
    if os.path.isfile(path):
        return path
    fallback = os.path.join(version_dir, "model.onnx")
    if os.path.isfile(fallback):
        return fallback
    raise FileNotFoundError(f"{version_dir} holds neither {filename} nor model.onnx")


def compile_config(precision, threads=0):
    """OpenVINO CPU compile properties: one latency stream using ``threads`` threads (0 = OpenVINO's
    default, one per core), inference precision ``precision`` ("bf16" | "f32")."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class TritonPythonModel:
    def initialize(self, args):
        import openvino as ov

        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = model_path(version_dir, params.get("openvino_file", "model.xml"))
        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision, why = choose_inference_precision(capabilities, params.get("inference_precision", "auto"))
        threads = int(params.get("inference_threads", "0"))
        self.compiled = core.compile_model(core.read_model(path), "CPU", compile_config(self.precision, threads))
        self.request = self.compiled.create_infer_request()
        pb_utils.Logger.log_info(
            f"fer-triton openvino: {self.model_name} version {args['model_version']} runs {os.path.basename(path)} "
            f"at inference precision {self.precision} ({why}); OpenVINO {ov.__version__}, "
            f"{core.get_property('CPU', 'FULL_DEVICE_NAME')}")

    def execute(self, requests):
        responses = [None] * len(requests)
        batches, sizes, live = {n: [] for n in self.input_names}, [], []
        for i, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names]
            size = arrays[0].shape[0]
            if size == 0:
                responses[i] = self._error("empty batch: send at least one face")
                continue
            for name, array in zip(self.input_names, arrays):
                batches[name].append(array)
            sizes.append(size)
            live.append(i)
        if live:
            feeds = {n: np.ascontiguousarray(np.concatenate(a) if len(a) > 1 else a[0]) for n, a in batches.items()}
            try:
                self.request.infer(feeds)
                # copies: the request's output buffers are reused by the next inference
                outputs = [np.array(self.request.get_tensor(n).data) for n in self.output_names]
            except Exception as exc:  # report to every request of the batch, keep serving
                for i in live:
                    responses[i] = self._error(f"OpenVINO failed: {exc}")
                return responses
            start = 0
            for i, size in zip(live, sizes):
                tensors = [pb_utils.Tensor(n, o[start:start + size]) for n, o in zip(self.output_names, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def _error(self, message):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {message}"))
