"""Export a CAFE checkpoint to validated ONNX models and a Triton model repository.

Installed as ``fer_triton.export``. Modules: ``exporter`` (the whole export), ``onnx_export``
(per-stage ONNX + validation), ``repository`` (CPU-flavour configs), ``gpu`` / ``tensorrt`` /
``precision`` (GPU flavour), ``quantize`` (faster CPU export), ``detector`` (the face
detector's nets and the ``<prefix>_frames`` model). Nothing heavy is imported here, so
the CLI starts fast.
"""
