"""Faces through Triton's system shared memory instead of the gRPC message, for a server on this host.

A batch of 16 faces at 224x224 is 2.4 MB that gRPC would serialise, copy into the request, and the
server would copy out again. With a registered shared-memory region the client writes the pixels
into ``/dev/shm`` and the request carries only the region's name, offset and size
(tritonclient.utils.shared_memory + ``register_system_shared_memory``). It only works when client
and server share ``/dev/shm``: the same host, or containers sharing the IPC namespace.

``ShmPool`` keeps a few regions (one per request in flight), each sized for ``max_batch_size`` faces;
a request takes one and gives it back when its answer arrived, so asynchronous requests never write
into a region the server is still reading.

``CudaShmPool`` is the same pool in GPU memory (Triton's CUDA shared memory: a ``cudaMalloc`` buffer
whose CUDA IPC handle the server opens, tritonclient.utils.cuda_shared_memory + ``register_cuda_shared_memory``):
the faces are copied host-to-device once by the client (or device-to-device from any DLPack tensor
already on the GPU) and the server's first stage reads them where they are. It needs a GPU on this
host that the server shares, and tritonclient's CUDA extra (``cuda-python``): :func:`cuda_unavailable`
says why not. :func:`make_pool` picks the pool for ``FerClient(shared_memory="system"|"cuda")``.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from dataclasses import dataclass

import numpy as np


class SharedMemoryError(RuntimeError):
    """A region could not be created or registered (the message says what to do)."""


@dataclass
class Region:
    name: str        # the name Triton knows the region by
    key: str         # the /dev/shm key
    byte_size: int
    handle: object   # tritonclient's SharedMemoryRegion


class ShmPool:
    """``count`` system shared-memory regions of ``byte_size`` bytes, registered with one Triton server.

    ``triton``: a ``tritonclient.grpc.InferenceServerClient``; ``headers``: sent with the
    (un)registration calls (the shared-memory API can be restricted like model control). Raises
    SharedMemoryError when a region cannot be created or the server refuses to register it.
    """

    kind = "system"  # the words in its messages: "system shared memory", "no system shared-memory region ..."

    def __init__(self, triton, byte_size: int, count: int = 4, headers: dict[str, str] | None = None):
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        self._fill(triton, byte_size, count, headers, prefix="fer", errors=(shm.SharedMemoryException,),
                   where="a server on this host, sharing /dev/shm")

    def _fill(self, triton, byte_size: int, count: int, headers, *, prefix: str, errors: tuple, where: str) -> None:
        """Create and register ``count`` regions (``_create`` / ``_register``); on a failure unregister and
        destroy what was made and raise SharedMemoryError saying it works only with ``where``."""
        from tritonclient.utils import InferenceServerException

        self._triton, self._headers = triton, dict(headers or {})
        self.byte_size = int(byte_size)
        self._free: queue.Queue[Region] = queue.Queue()
        self._all: list[Region] = []
        self._lock = threading.Lock()
        prefix = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            for i in range(count):
                region = self._create(f"{prefix}_{i}")
                self._all.append(region)
                self._register(region)
                self._free.put(region)
        except (InferenceServerException, *errors) as exc:
            self.close()
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise SharedMemoryError(f"cannot use {self.kind} shared memory with the server: {message} (it works "
                                    f"only with {where})") from exc

    def _create(self, name: str) -> Region:
        return Region(name, f"/{name}", self.byte_size,
                      self._shm.create_shared_memory_region(name, f"/{name}", self.byte_size))

    def _register(self, region: Region) -> None:
        self._triton.register_system_shared_memory(region.name, region.key, self.byte_size, headers=self._headers)

    def _unregister(self, region: Region) -> None:
        self._triton.unregister_system_shared_memory(region.name, headers=self._headers)

    def _take(self, nbytes: int, timeout_s: float | None) -> Region:
        """A free region for ``nbytes`` bytes; waits up to ``timeout_s`` for one to be released."""
        if nbytes > self.byte_size:
            raise ValueError(f"{nbytes} bytes of faces do not fit a {self.byte_size}-byte region")
        try:
            return self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise SharedMemoryError(f"no {self.kind} shared-memory region came free within {timeout_s} s") from None

    def acquire(self, faces: np.ndarray, timeout_s: float | None = None) -> Region:
        """A free region holding ``faces`` (UINT8, at most ``byte_size`` bytes); waits for one to be released."""
        region = self._take(faces.nbytes, timeout_s)
        self._shm.set_shared_memory_region(region.handle, [np.ascontiguousarray(faces)])
        return region

    def release(self, region: Region) -> None:
        """Give a region back once its request was answered (or failed)."""
        self._free.put(region)

    def close(self) -> None:
        """Unregister and destroy every region (a server that is gone is ignored)."""
        with self._lock:
            regions, self._all = self._all, []
        for region in regions:
            try:
                self._unregister(region)
            except Exception:  # noqa: BLE001 - the server may be gone; the region is destroyed anyway
                pass
            try:
                self._shm.destroy_shared_memory_region(region.handle)
            except Exception:  # noqa: BLE001 - already destroyed
                pass


SHARED_MEMORY_KINDS = ("system", "cuda")


def shared_memory_kind(value) -> str | None:
    """``FerClient(shared_memory=...)`` as a kind: False/None -> None, True -> "system", or "system"/"cuda".
    Raises ValueError naming the accepted values otherwise."""
    if value is None or value is False:
        return None
    if value is True:
        return "system"
    if value in SHARED_MEMORY_KINDS:
        return value
    raise ValueError(f"shared_memory must be True, False, 'system' or 'cuda', not {value!r}")


def cuda_unavailable(device_id: int = 0) -> str | None:
    """Why CUDA shared memory cannot be used from this process (None when it can): tritonclient's
    cuda_shared_memory module does not import (it needs ``cuda-python``: ``pip install 'tritonclient[cuda]'``),
    or the CUDA runtime finds no GPU ``device_id`` (no driver, no device)."""
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401 - the import is the check
        from cuda.bindings import runtime as cudart
    except (ImportError, RuntimeError) as exc:
        return (f"tritonclient's CUDA shared memory module cannot be imported ({exc}); install "
                "'tritonclient[cuda]' (cuda-python) on a host with an NVIDIA GPU")
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        return f"the CUDA runtime finds no usable GPU ({name.decode() if isinstance(name, bytes) else name})"
    if device_id >= count:
        return f"GPU {device_id} does not exist (this host has {count})"
    return None


def check_shared_memory(kind: str | None, device_id: int = 0) -> None:
    """Raise SharedMemoryError (saying why) when ``kind`` is "cuda" and CUDA shared memory is unusable here;
    ValueError for an unknown kind. "system" and None need nothing to check before a server is reached."""
    kind = shared_memory_kind(kind)
    if kind == "cuda":
        reason = cuda_unavailable(device_id)
        if reason is not None:
            raise SharedMemoryError(f"CUDA shared memory is not available: {reason}. Use system shared memory "
                                    "instead (--shared-memory system, FerClient(shared_memory=True)): any host that "
                                    "shares /dev/shm with the server")


class CudaShmPool(ShmPool):
    """``count`` CUDA shared-memory regions of ``byte_size`` bytes on GPU ``device_id``, registered with one
    Triton server (on the same host, with access to that GPU); the interface of :class:`ShmPool`.

    ``acquire`` takes a numpy array (copied host-to-device) or any DLPack tensor (a torch or CuPy array,
    copied device-to-device when it already is on the GPU). Raises SharedMemoryError when CUDA shared
    memory is unusable here (:func:`cuda_unavailable`) or the server refuses a region.
    """

    kind = "CUDA"

    def __init__(self, triton, byte_size: int, count: int = 4, headers: dict[str, str] | None = None,
                 device_id: int = 0):
        check_shared_memory("cuda", device_id)
        import tritonclient.utils.cuda_shared_memory as cudashm

        self._shm, self.device_id = cudashm, device_id
        self._fill(triton, byte_size, count, headers, prefix="fer_cuda", errors=(cudashm.CudaSharedMemoryException,),
                   where=f"a server on this host that sees GPU {device_id}")

    def _create(self, name: str) -> Region:
        return Region(name, name, self.byte_size,
                      self._shm.create_shared_memory_region(name, self.byte_size, self.device_id))

    def _register(self, region: Region) -> None:
        self._triton.register_cuda_shared_memory(region.name, self._shm.get_raw_handle(region.handle), self.device_id,
                                                 self.byte_size, headers=self._headers)

    def _unregister(self, region: Region) -> None:
        self._triton.unregister_cuda_shared_memory(region.name, headers=self._headers)

    def acquire(self, faces, timeout_s: float | None = None) -> Region:
        """A free region holding ``faces`` (numpy UINT8 or a DLPack tensor, at most ``byte_size`` bytes)."""
        nbytes = faces.nbytes if isinstance(faces, np.ndarray) else faces.numel() * faces.element_size()
        region = self._take(nbytes, timeout_s)
        if isinstance(faces, np.ndarray):
            self._shm.set_shared_memory_region(region.handle, [np.ascontiguousarray(faces)])
        else:
            self._shm.set_shared_memory_region_from_dlpack(region.handle, [faces])
        return region


def make_pool(kind, triton, byte_size: int, count: int = 4, headers: dict[str, str] | None = None) -> ShmPool:
    """The pool for ``kind`` ("system", True, or "cuda"): ShmPool or CudaShmPool (raises as they do)."""
    kind = shared_memory_kind(kind)
    if kind is None:
        raise ValueError("no shared memory asked for")
    pool = CudaShmPool if kind == "cuda" else ShmPool
    return pool(triton, byte_size, count, headers=headers)
