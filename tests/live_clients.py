"""Helpers for tests that change a running server: a SYNTHETIC site shift and client threads that
keep sending requests through a publish or a rollback."""

from __future__ import annotations

import threading
import time

from fer_triton.client import FerClient
from fer_triton.synthetic import SiteShift, draw_site

SITE_SHIFT = SiteShift(brightness=0.8, colour_cast=(1.1, 1.0, 0.85), noise=2.0)


def served(url: str, faces):
    """What the server at ``url`` returns for ``faces`` now (probabilities and masked features)."""
    with FerClient(url) as client:
        return client.infer(faces, with_features=True)


class Hammer:
    """Client threads sending requests until stopped; records every error and when each request ended."""

    def __init__(self, url: str, threads: int = 2):
        self.faces, _ = draw_site(1, SITE_SHIFT, seed=7)
        self.errors: list[str] = []
        self.finished: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url,)) for _ in range(threads)]

    def _run(self, url):
        with FerClient(url) as client:
            while not self._stop.is_set():
                try:
                    client.infer(self.faces[:4])
                    self.finished.append(time.monotonic())
                except Exception as exc:  # any failure during the swap is what this test looks for
                    self.errors.append(repr(exc))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()
