"""gRPC client library for the served CAFE ensemble (installed as ``fer_triton.client``)."""

from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError, InferOutput, ModelInfo

__all__ = ["FerClient", "FerInputError", "FerServerError", "InferOutput", "ModelInfo"]
