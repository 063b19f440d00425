"""End to end through the real tritonserver: served probabilities equal PyTorch's; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import pytorch_probabilities
from fer_triton.client import FerClient, FerInputError
from fer_triton.synthetic import draw_faces


def test_served_probabilities_match_pytorch(triton_server, tiny_checkpoint):
    faces, _ = draw_faces(6, 224, seed=3)
    with FerClient(triton_server.grpc_url) as client:
        out = client.infer(faces, with_features=True)
    expected = pytorch_probabilities(tiny_checkpoint, faces)
    assert out.probabilities.shape == (6, 7)
    assert np.abs(out.probabilities - expected).max() < 1e-4
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert out.masked_features.shape == (6, 512)
    assert out.labels == [out.classes[i] for i in expected.argmax(axis=1)]


def test_model_info_describes_the_repository(triton_server):
    with FerClient(triton_server.grpc_url) as client:
        info = client.info()
    assert info.wire_size == 224 and info.max_batch_size == 64
    assert info.classes == ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral")
    assert info.random_weights


def _raw_infer(url, array, dtype):
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("faces", list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return client.infer("cafe", [inp])


@pytest.mark.parametrize("array,dtype,message", [
    (np.zeros((2, 224, 224, 3), np.float32), "FP32", "expects 'UINT8'"),
    (np.zeros((2, 112, 112, 3), np.uint8), "UINT8", "unexpected shape"),
    (np.zeros((0, 224, 224, 3), np.uint8), "UINT8", "faces"),
    (np.zeros((65, 224, 224, 3), np.uint8), "UINT8", "batch-size must be <= 64"),
], ids=["wrong-dtype", "wrong-shape", "empty-batch", "too-large-batch"])
def test_server_refuses_bad_input_and_keeps_serving(triton_server, array, dtype, message):
    with pytest.raises(InferenceServerException) as err:
        _raw_infer(triton_server.grpc_url, array, dtype)
    assert message in str(err.value)
    faces, _ = draw_faces(2, 224, seed=1)
    with FerClient(triton_server.grpc_url) as client:
        assert client.infer(faces).probabilities.shape == (2, 7)  # still serving


@pytest.mark.parametrize("array,message", [
    (np.zeros((2, 224, 224, 3), np.float32), "dtype float32"),
    (np.zeros((2, 112, 112, 3), np.uint8), "shape [B, 224, 224, 3]"),
    (np.zeros((224, 224, 3), np.uint8), "shape [B, 224, 224, 3]"),
    (np.zeros((0, 224, 224, 3), np.uint8), "empty batch"),
    (np.zeros((65, 224, 224, 3), np.uint8), "exceeds the model's max_batch_size 64"),
])
def test_client_names_what_is_wrong_before_sending(triton_server, array, message):
    with FerClient(triton_server.grpc_url) as client, pytest.raises(FerInputError, match=message.replace("[", r"\[")):
        client.infer(array)


def test_infer_all_splits_large_batches(triton_server, tiny_checkpoint):
    faces, _ = draw_faces(70, 224, seed=5)
    with FerClient(triton_server.grpc_url) as client:
        out = client.infer_all(faces)
    assert out.probabilities.shape == (70, 7)
    assert np.abs(out.probabilities[-3:] - pytorch_probabilities(tiny_checkpoint, faces[-3:])).max() < 1e-4


def test_client_sends_headers_model_version_and_speaks_tls(tiny_repository, tiny_checkpoint, tmp_path,
                                                           server_factory):
    """FerClient's production options against real servers: TLS, a restricted API, model versions."""
    import shutil
    import subprocess

    from fer_triton.client import FerServerError

    faces, _ = draw_faces(3, 224, seed=4)
    expected = pytorch_probabilities(tiny_checkpoint, faces)
    # Inference and config behind a header (tritonserver's --grpc-restricted-protocol; over gRPC,
    # Triton 2.51 expects the key with the prefix "triton-grpc-protocol-").
    key = {"triton-grpc-protocol-fer-key": "s3cret"}
    restricted = server_factory(tiny_repository, extra_args=[
        "--grpc-restricted-protocol=inference,model-config:fer-key=s3cret"])
    with FerClient(restricted.grpc_url) as client, pytest.raises(FerServerError, match="fer-key"):
        client.info()
    with FerClient(restricted.grpc_url, headers=key) as client:
        assert np.abs(client.infer(faces).probabilities - expected).max() < 1e-4
    with FerClient(restricted.grpc_url, model_version="1", headers=key) as client:
        assert np.abs(client.infer(faces).probabilities - expected).max() < 1e-4
    with FerClient(restricted.grpc_url, model_version="7", headers=key) as client:
        with pytest.raises(FerServerError, match="version"):
            client.info()
    # TLS with a self-signed certificate for 127.0.0.1.
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the TLS half of this test needs it to make a certificate")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    secure = server_factory(tiny_repository, extra_args=[
        "--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"])
    with FerClient(secure.grpc_url, ssl=True, root_certificates=str(cert)) as client:
        assert np.abs(client.infer(faces).probabilities - expected).max() < 1e-4
    with FerClient(secure.grpc_url, timeout_s=5) as plain, pytest.raises(FerServerError):
        plain.info()  # a plaintext client cannot talk to the TLS endpoint


def test_faces_through_system_shared_memory_equal_the_grpc_path(triton_server, tiny_checkpoint):
    """FerClient(shared_memory=True): the pixels travel in /dev/shm, the answers are the same."""
    import threading

    faces, _ = draw_faces(9, 224, seed=6)
    with FerClient(triton_server.grpc_url) as plain, \
            FerClient(triton_server.grpc_url, shared_memory=True, shm_regions=2) as shm:
        expected = plain.infer(faces).probabilities
        np.testing.assert_array_equal(shm.infer(faces).probabilities, expected)
        np.testing.assert_array_equal(shm.infer(faces[:3]).probabilities, expected[:3])  # a region reused, smaller
        assert np.abs(expected - pytorch_probabilities(tiny_checkpoint, faces)).max() < 1e-4
        regions = shm.triton.get_system_shared_memory_status(as_json=True)["regions"]
        assert len(regions) == 2 and all(int(r["byte_size"]) == 64 * 224 * 224 * 3 for r in regions.values())
        # More requests in flight than regions: each waits for a region, none is overwritten mid-request.
        answers, done = {}, threading.Event()

        def callback(i):
            def on_answer(out, error):
                answers[i] = error or out.probabilities
                if len(answers) == 6:
                    done.set()
            return on_answer

        for i in range(6):
            shm.submit(faces[i:i + 3], callback(i))
        assert done.wait(60)
        for i in range(6):
            np.testing.assert_array_equal(answers[i], expected[i:i + 3])
    with FerClient(triton_server.grpc_url) as after:  # closing unregistered the regions
        status = after.triton.get_system_shared_memory_status(as_json=True).get("regions", {})
        assert not status
