"""Export a CAFE checkpoint to validated ONNX models and a Triton model repository.

Installed as ``fer_triton.export``.
"""

from fer_triton.export.onnx_export import ExportValidationError, StageReport, export_onnx_stages
from fer_triton.export.repository import RepositoryLayout, write_repository

__all__ = ["ExportValidationError", "StageReport", "export_onnx_stages", "RepositoryLayout", "write_repository"]
