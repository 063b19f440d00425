"""Faces through Triton's system shared memory instead of the gRPC message, for a server on this host.

A batch of 16 faces at 224x224 is 2.4 MB that gRPC would serialise, copy into the request, and the
server would copy out again. With a registered shared-memory region the client writes the pixels
into ``/dev/shm`` and the request carries only the region's name, offset and size
(tritonclient.utils.shared_memory + ``register_system_shared_memory``). It only works when client
and server share ``/dev/shm``: the same host, or containers sharing the IPC namespace.

``ShmPool`` keeps a few regions (one per request in flight), each sized for ``max_batch_size`` faces;
a request takes one and gives it back when its answer arrived, so asynchronous requests never write
into a region the server is still reading.
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

    def __init__(self, triton, byte_size: int, count: int = 4, headers: dict[str, str] | None = None):
        import tritonclient.utils.shared_memory as shm
        from tritonclient.utils import InferenceServerException

        self._shm, self._triton, self._headers = shm, triton, dict(headers or {})
        self.byte_size = int(byte_size)
        self._free: queue.Queue[Region] = queue.Queue()
        self._all: list[Region] = []
        self._lock = threading.Lock()
        prefix = f"fer_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            for i in range(count):
                name = f"{prefix}_{i}"
                handle = shm.create_shared_memory_region(name, f"/{name}", self.byte_size)
                region = Region(name, f"/{name}", self.byte_size, handle)
                self._all.append(region)
                triton.register_system_shared_memory(name, region.key, self.byte_size, headers=self._headers)
                self._free.put(region)
        except (InferenceServerException, shm.SharedMemoryException) as exc:
            self.close()
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise SharedMemoryError(f"cannot use system shared memory with the server: {message} (it works only "
                                    "with a server on this host, sharing /dev/shm)") from exc

    def acquire(self, faces: np.ndarray, timeout_s: float | None = None) -> Region:
        """A free region holding ``faces`` (UINT8, at most ``byte_size`` bytes); waits for one to be released."""
        if faces.nbytes > self.byte_size:
            raise ValueError(f"{faces.nbytes} bytes of faces do not fit a {self.byte_size}-byte region")
        try:
            region = self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise SharedMemoryError(f"no shared-memory region came free within {timeout_s} s") from None
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
                self._triton.unregister_system_shared_memory(region.name, headers=self._headers)
            except Exception:  # noqa: BLE001 - the server may be gone; the region is destroyed anyway
                pass
            try:
                self._shm.destroy_shared_memory_region(region.handle)
            except Exception:  # noqa: BLE001 - already destroyed
                pass
