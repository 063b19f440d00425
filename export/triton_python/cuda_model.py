"""Triton python-backend runner of the ``gpu_python`` variant: one stage on CUDA, from pip alone.

Copied by ``fer-triton export --target both|gpu`` (and ``gpu-configs``) beside each stage's
``model.py`` as ``cuda_model.py``; ``configs/gpu_python.pbtxt`` names it (``default_model_filename``),
so the tritonserver of the nvidia-pytriton wheel runs the repository on a GPU without NVIDIA's
container or its native onnxruntime/TensorRT backends (docs/gpu.md, "A GPU server from pip alone").

Engines, in this order (config parameter ``engine``: auto | onnxruntime | torch):
    onnxruntime  the version's ``model.onnx`` with onnxruntime-gpu's CUDAExecutionProvider and IO
                 binding (inputs and outputs stay in CUDA memory), when onnxruntime-gpu is installed
                 and the device is CUDA. Runs the FP32 graph (``precision`` is not applied).
    torch        the version's ``model.pt2`` (a ``torch.export`` program written at export) with
                 PyTorch on the device, under ``torch.autocast`` in FP16 or BF16 when ``precision``
                 says so (inputs and outputs stay FP32/UINT8 at the model's interface).
    fallback     a version without ``model.pt2`` (e.g. a head published by ``fer-triton retrain``)
                 runs its ``model.onnx`` with onnxruntime on the CPU; logged as a warning.

Device (parameter ``device``: auto | cuda | cpu): ``auto`` follows the instance kind (KIND_GPU:
``cuda:<instance device id>``; KIND_CPU: the CPU). Where CUDA is asked for and PyTorch sees no GPU,
the runner falls back to the CPU and logs it, so the same repository serves on a CPU host (tests).

Tensors between ensemble stages: with ``FORCE_CPU_ONLY_INPUT_TENSORS`` "no" the python backend
hands over inputs where the previous stage left them (GPU memory); they enter PyTorch and leave it
by DLPack (``pb_utils.Tensor.to_dlpack`` / ``from_dlpack``), never through host memory. As in
model.py, the requests of one dynamic batch are concatenated, run once and split back.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


def _log(level, message):
    """Triton's own log (pb_utils.Logger, python backend >= 23.04); stdout where it is missing."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        getattr(logger, "log_warn" if level == "warn" else "log_info")(message)
    else:
        print(message, flush=True)


def choose_device(torch, want, instance_kind, device_id):
    """(device, note): ``want`` auto|cuda|cpu resolved against the instance kind and the GPUs PyTorch sees."""
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"parameter device must be auto, cuda or cpu, not {want!r}")
    gpu_asked = want == "cuda" or (want == "auto" and instance_kind == "GPU")
    if not gpu_asked:
        return torch.device("cpu"), ""
    if torch.cuda.is_available():
        return torch.device("cuda", device_id), ""
    return torch.device("cpu"), (f"CUDA was asked for (device {want}, instance kind {instance_kind}) but PyTorch "
                                 f"sees no GPU (torch {torch.__version__}, CUDA build {torch.version.cuda}): "
                                 "running on the CPU")


class TritonPythonModel:
    def initialize(self, args):
        import torch

        self.torch = torch
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dims = {o["name"]: [int(d) for d in o["dims"]] for o in config["output"]}
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.device, note = choose_device(torch, params.get("device", "auto"), kind, device_id)
        if note:
            _log("warn", f"{self.model_name}: {note}")
        self.precision = params.get("precision", "fp32")
        if self.precision not in ("fp32", *AUTOCAST):
            raise ValueError(f"{self.model_name}: parameter precision must be fp32, fp16 or bf16, "
                             f"not {self.precision!r}")
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        onnx_path = os.path.join(folder, params.get("onnx_file", "model.onnx"))
        graph_path = os.path.join(folder, params.get("torch_graph", "model.pt2"))
        engine = params.get("engine", "auto")
        if engine not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"{self.model_name}: parameter engine must be auto, onnxruntime or torch, not {engine!r}")
        self.session = self.module = None
        if engine != "torch" and self.device.type == "cuda" and self._cuda_onnxruntime():
            import onnxruntime as ort

            provider = ("CUDAExecutionProvider", {"device_id": self.device.index or 0,
                                                  "cudnn_conv_algo_search": "HEURISTIC"})
            self.session = ort.InferenceSession(onnx_path, providers=[provider])
            self.engine = "onnxruntime-cuda (IO binding, fp32)"
        elif engine != "onnxruntime" and os.path.isfile(graph_path):
            program = torch.export.load(graph_path)
            try:  # every tensor the graph holds, constants included, onto the device (torch >= 2.6)
                from torch.export.passes import move_to_device_pass

                self.module = move_to_device_pass(program, self.device).module()
            except ImportError:
                self.module = program.module().to(self.device)
            self.engine = f"torch {self.device} {self.precision}"
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            self.device = torch.device("cpu")
            self.engine = "onnxruntime-cpu (fallback)"
            _log("warn", f"{self.model_name} version {args['model_version']}: no {os.path.basename(graph_path)} and "
                         "no onnxruntime-gpu: running model.onnx with onnxruntime on the CPU (re-export with --target "
                         "both to get the PyTorch graph)")
        _log("info", f"{self.model_name} version {args['model_version']}: {self.engine} (instance kind {kind})")

    @staticmethod
    def _cuda_onnxruntime():
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        return "CUDAExecutionProvider" in ort.get_available_providers()

    def _tensor_in(self, tensor):
        """A pb_utils input as a torch tensor on this model's device (DLPack for GPU memory, no copy)."""
        torch = self.torch
        if tensor.is_cpu():
            out = torch.from_numpy(tensor.as_numpy())
        else:
            out = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        return out.to(self.device, non_blocking=True)

    def _tensor_out(self, name, value):
        value = value.contiguous()
        if value.device.type == "cpu":
            return pb_utils.Tensor(name, value.numpy())
        return pb_utils.Tensor.from_dlpack(name, self.torch.utils.dlpack.to_dlpack(value))

    def _run_torch(self, feeds):
        torch = self.torch
        with torch.inference_mode():
            if self.precision in AUTOCAST:
                with torch.autocast(self.device.type, dtype=getattr(torch, AUTOCAST[self.precision])):
                    outputs = self.module(*feeds)
            else:
                outputs = self.module(*feeds)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return [o.float() if o.is_floating_point() else o for o in outputs]

    def _run_onnxruntime(self, feeds):
        torch = self.torch
        if self.device.type == "cpu":
            results = self.session.run(self.output_names, {n: f.numpy() for n, f in zip(self.input_names, feeds)})
            return [torch.from_numpy(r) for r in results]
        binding = self.session.io_binding()
        index = self.device.index or 0
        for name, feed in zip(self.input_names, feeds):
            feed = feed.contiguous()
            binding.bind_input(name, "cuda", index, _torch_np(feed), list(feed.shape), feed.data_ptr())
        batch = feeds[0].shape[0]
        outputs = [torch.empty([batch, *self.output_dims[n]], dtype=torch.float32, device=self.device)
                   for n in self.output_names]
        for name, out in zip(self.output_names, outputs):
            binding.bind_output(name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outputs

    def execute(self, requests):
        torch = self.torch
        responses = [None] * len(requests)
        batches, sizes, live = {n: [] for n in self.input_names}, [], []
        for i, request in enumerate(requests):
            tensors = [self._tensor_in(pb_utils.get_input_tensor_by_name(request, n)) for n in self.input_names]
            if tensors[0].shape[0] == 0:
                responses[i] = self._error("empty batch: send at least one face")
                continue
            for name, tensor in zip(self.input_names, tensors):
                batches[name].append(tensor)
            sizes.append(tensors[0].shape[0])
            live.append(i)
        if not live:
            return responses
        feeds = [torch.cat(batches[n]) if len(batches[n]) > 1 else batches[n][0] for n in self.input_names]
        try:
            outputs = self._run_torch(feeds) if self.module is not None else self._run_onnxruntime(feeds)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # outputs complete before Triton reads them
        except Exception as exc:  # report to every request of the batch, keep serving
            for i in live:
                responses[i] = self._error(f"{self.engine} failed: {exc}")
            return responses
        start = 0
        for i, size in zip(live, sizes):
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                self._tensor_out(n, o[start:start + size]) for n, o in zip(self.output_names, outputs)])
            start += size
        return responses

    def _error(self, message):
        error = pb_utils.TritonError(f"{self.model_name}: {message}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _torch_np(tensor):
    """The numpy dtype of a torch tensor's elements (for onnxruntime's IO binding)."""
    return {"torch.uint8": np.uint8, "torch.float32": np.float32, "torch.float16": np.float16}[str(tensor.dtype)]
