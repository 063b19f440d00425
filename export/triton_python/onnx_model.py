"""Triton python-backend model that runs this version's ``model.onnx`` with onnxruntime.

Copied by ``fer-triton export`` into each CPU-flavour model version as ``model.py``. GPU hosts
serve the same ``model.onnx`` with Triton's native onnxruntime/TensorRT backends instead.

Triton's dynamic batcher hands ``execute`` several requests at once: their inputs are stacked,
run in ONE onnxruntime call, and the outputs split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

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
            feeds = {n: np.concatenate(a) if len(a) > 1 else a[0] for n, a in batches.items()}
            try:
                outputs = self.session.run(self.output_names, feeds)
            except Exception as exc:  # report to every request of the batch, keep serving
                for i in live:
                    responses[i] = self._error(f"onnxruntime failed: {exc}")
                return responses
            start = 0
            for i, size in zip(live, sizes):
                tensors = [pb_utils.Tensor(n, o[start:start + size]) for n, o in zip(self.output_names, outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def _error(self, message):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {message}"))
