"""Ctrl-C and SIGTERM for a long-running command: first signal stops, second gives up, third exits.

Why not Python's KeyboardInterrupt: it is raised wherever the main thread happens to be. Inside
``Thread.join`` (Python 3.11 and 3.12) it leaves the joined thread marked as finished while it still
runs, so a loop ``while t.is_alive(): t.join(0.1)`` ends at once; raised anywhere outside the one
``try`` meant for it (a second Ctrl-C during the clean-up joins), it ends the command with click's
"Aborted!" and exit code 1, without the records and summary a stop owes. And a signal handler must not
call code that takes locks (the main thread may hold them when the signal lands).

So :class:`StopSignals` installs handlers that only count the signal and wake a small watcher
thread (one byte into a pipe); the watcher, an ordinary thread, calls ``on_stop`` on the first signal
and ``on_abort`` on the second, and prints what they mean. A third signal exits at once with code 130
(a way out if giving up hangs), saying that the records and summary are not complete.

A signal whose disposition is "ignored" when the handlers are installed is left ignored (a command
started in the background by a non-interactive shell ignores SIGINT, and should keep doing so):
``ignored`` lists them. Use it from the main thread (Python installs handlers only there).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import IO, Callable

FORCE_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a command ended by Ctrl-C


class StopSignals:
    """Context manager turning SIGINT/SIGTERM into ``on_stop()`` then ``on_abort()`` calls.

    ``on_stop``/``on_abort`` run on the watcher thread, never inside a signal handler, so they may take
    locks, join threads or write files. ``out``: where the one-line notes go (stderr; None: silent).
    ``count``: signals received; ``interrupted``: at least one; ``first``: the name of the first one.
    """

    def __init__(self, on_stop: Callable[[], None], on_abort: Callable[[], None], *,
                 signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), out: IO[str] | None = sys.stderr,
                 stop_note: str = "stopping: finishing what was already read (Ctrl-C again to give up on it)",
                 abort_note: str = "giving up: what is queued or in flight is written as unfinished "
                                   "(Ctrl-C once more to exit at once)"):
        self.on_stop, self.on_abort = on_stop, on_abort
        self.signals, self.out = signals, out
        self.stop_note, self.abort_note = stop_note, abort_note
        self.count = 0
        self.first: str | None = None
        self.ignored: list[str] = []
        self._handled = 0
        self._previous: dict[int, object] = {}
        self._read_fd = self._write_fd = -1
        self._watcher: threading.Thread | None = None
        self._closing = False

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    # ---- the handler: count, wake the watcher, nothing else ---------------------------------
    def _handler(self, signum, frame) -> None:
        self.count += 1
        if self.first is None:
            self.first = signal.Signals(signum).name
        if self.count >= 3:
            os.write(2, f"\n{signal.Signals(signum).name} a third time: exiting now; the results and summary are "
                        f"NOT complete\n".encode())
            os._exit(FORCE_EXIT_CODE)
        try:
            os.write(self._write_fd, b"s")
        except OSError:  # the pipe is full or closed: the watcher still sees self.count
            pass

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data or self._closing:
                return
            while self._handled < min(self.count, 2):
                self._handled += 1
                note, action = ((self.stop_note, self.on_stop) if self._handled == 1
                                else (self.abort_note, self.on_abort))
                if self.out is not None:
                    try:
                        self.out.write(f"\n{self.first if self._handled == 1 else 'again'}: {note}\n")
                        self.out.flush()
                    except (OSError, ValueError):
                        pass
                action()

    # ---- install / restore --------------------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopSignals must be used from the main thread")
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._watcher.start()
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current == signal.SIG_IGN:
                self.ignored.append(signal.Signals(sig).name)
                continue
            self._previous[sig] = current
            signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._closing = True
        try:
            os.write(self._write_fd, b"x")
        except OSError:
            pass
        if self._watcher is not None:
            self._watcher.join(5)
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
