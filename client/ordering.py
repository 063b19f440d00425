"""The two queues that keep the stream client fair and ordered.

FrameQueues: a bounded queue per camera, read round robin, with the live-camera drop policy.
InOrder: releases each camera's frames in index order, whatever order they finish in.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from fer_triton.client.results import FrameOutcome


class FrameQueues:
    """Bounded frame queue per camera; workers take frames round robin so no camera starves."""

    def __init__(self, cameras: list[str], capacity: int):
        self._queues = {c: deque() for c in cameras}
        self._order = list(cameras)
        self._next = 0
        self._capacity = capacity
        self._cond = threading.Condition()
        self.closed = False

    def put(self, camera: str, item, drop: str | None) -> tuple[bool, list]:
        """Queue ``item``; returns (queued, dropped items). ``drop`` None or "block" waits for room."""
        with self._cond:
            q = self._queues[camera]
            while len(q) >= self._capacity and not self.closed:
                if drop == "oldest":
                    dropped = [q.popleft()]
                    q.append(item)
                    self._cond.notify_all()
                    return True, dropped
                if drop == "newest":
                    return False, [item]
                self._cond.wait(0.1)
            if self.closed:
                return False, []
            q.append(item)
            self._cond.notify_all()
            return True, []

    def get(self, timeout: float):
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                for step in range(len(self._order)):
                    camera = self._order[(self._next + step) % len(self._order)]
                    if self._queues[camera]:
                        self._next = (self._next + step + 1) % len(self._order)
                        item = self._queues[camera].popleft()
                        self._cond.notify_all()
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def full(self, camera: str) -> bool:
        with self._cond:
            return len(self._queues[camera]) >= self._capacity

    def empty(self) -> bool:
        with self._cond:
            return not any(self._queues.values())

    def close(self) -> list:
        """Stop accepting; return everything still queued."""
        with self._cond:
            self.closed = True
            items = [item for q in self._queues.values() for item in q]
            for q in self._queues.values():
                q.clear()
            self._cond.notify_all()
            return items


class InOrder:
    """Releases each camera's frames in index order, whatever order they finish in."""

    def __init__(self, cameras: list[str], emit: Callable[[FrameOutcome], None]):
        self._waiting = {c: {} for c in cameras}
        self._next = {c: 0 for c in cameras}
        self._closing: dict[str, tuple[int, Callable[[], None]]] = {}
        self._emit = emit
        self._lock = threading.Lock()

    def done(self, outcome: FrameOutcome) -> None:
        with self._lock:
            waiting = self._waiting[outcome.camera]
            waiting[outcome.index] = outcome
            while self._next[outcome.camera] in waiting:
                self._emit(waiting.pop(self._next[outcome.camera]))
                self._next[outcome.camera] += 1
            frames, on_closed = self._closing.get(outcome.camera, (None, None))
            if frames is not None and self._next[outcome.camera] >= frames:
                del self._closing[outcome.camera]
                on_closed()

    def close(self, camera: str, frames: int, on_closed: Callable[[], None]) -> None:
        """Call ``on_closed`` once all ``frames`` of ``camera`` have been released (now, or later)."""
        with self._lock:
            if self._next[camera] >= frames:
                on_closed()
            else:
                self._closing[camera] = (frames, on_closed)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiting.values())
