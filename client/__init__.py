"""gRPC client library for the served CAFE ensemble (installed as ``fer_triton.client``).

``FerClient`` sends batches of face crops; ``StreamPipeline`` streams many cameras, files and
folders through one or several servers (see docs/client.md).
"""

from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError, InferOutput, ModelInfo
from fer_triton.client.pipeline import StreamConfig, StreamPipeline, StreamSummary
from fer_triton.client.results import Accounting, FaceOutcome, FrameOutcome
from fer_triton.client.sources import SourceOpenError, SourceSpec, parse_source, parse_sources

__all__ = ["FerClient", "FerInputError", "FerServerError", "InferOutput", "ModelInfo",
           "StreamConfig", "StreamPipeline", "StreamSummary", "Accounting", "FaceOutcome", "FrameOutcome",
           "SourceOpenError", "SourceSpec", "parse_source", "parse_sources"]
