"""One writer at a time per model repository: a lock file that works on shared filesystems.

``retrain``, ``rollback`` and ``sites add`` change the repository that every replica serves. Two of
them at once would race for the same version number or switch the ensemble under each other, so each
holds ``<repository>/.fer-triton.lock`` while it writes and publishes.

Why a lock file of our own rather than ``fcntl``/``flock`` (what filelock and fasteners use): the
repository of a cluster lives on an RWX volume (NFS, CephFS, EFS...), where advisory locks are
per-client, may not reach other hosts, and vanish silently with the client that held them. Creating
a file with ``O_CREAT | O_EXCL`` is atomic on NFSv3+ and on every local filesystem, and a file can
say who holds it:

    {"owner": "user@host", "pid": 1234, "command": "retrain --site lobby", "started": ..., "heartbeat": ...}

The holder rewrites ``heartbeat`` every ``heartbeat_s`` seconds. A lock whose heartbeat is older than
``stale_after_s`` (its holder died or lost the volume) is stale, and so is one held by a process of
this host that no longer exists: both are broken (renamed aside, so that two breakers cannot both
win) and taken over, with a warning naming the old owner.
"""

from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".fer-triton.lock"


class RepositoryLockedError(RuntimeError):
    """Another process holds the repository's lock; the message names it and how old its heartbeat is."""


@dataclass(frozen=True)
class LockInfo:
    owner: str          # user@host
    pid: int
    command: str
    started: float      # Unix seconds
    heartbeat: float    # Unix seconds

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        return (f"{self.owner} (pid {self.pid}, `{self.command}`), started {now - self.started:.0f} s ago, "
                f"last heartbeat {now - self.heartbeat:.0f} s ago")


def _me() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RepositoryLock:
    """Context manager holding ``<repository>/.fer-triton.lock``.

    ``command``: what the holder does (shown to whoever waits). ``wait_s``: how long to wait for the
    lock (0: fail at once). ``stale_after_s``: a heartbeat older than this makes the lock stale.
    Raises RepositoryLockedError naming the holder when the lock cannot be had in time, and
    FileNotFoundError when the repository does not exist.
    """

    def __init__(self, repository: str | Path, command: str, *, wait_s: float = 0.0, stale_after_s: float = 120.0,
                 heartbeat_s: float = 10.0, poll_s: float = 0.5):
        self.repository = Path(repository)
        self.path = self.repository / LOCK_FILE
        self.command = command
        self.wait_s, self.stale_after_s, self.heartbeat_s, self.poll_s = wait_s, stale_after_s, heartbeat_s, poll_s
        self._info: LockInfo | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------------
    def holder(self) -> LockInfo | None:
        """Who holds the lock now (None: nobody, or the file vanished or is being written)."""
        try:
            return LockInfo(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # Half-written by its creator (or garbage): judge it by the file's age instead.
            try:
                age = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            return LockInfo("unknown", -1, "unreadable lock file", age, age)

    def _stale(self, info: LockInfo) -> str | None:
        if time.time() - info.heartbeat > self.stale_after_s:
            return f"no heartbeat for {time.time() - info.heartbeat:.0f} s (> {self.stale_after_s:.0f} s)"
        if info.owner == _me() and info.pid > 0 and not _pid_alive(info.pid):
            return f"process {info.pid} on this host has exited"
        return None

    # -- taking and giving back ----------------------------------------------------------------
    def _try_create(self) -> bool:
        now = time.time()
        info = LockInfo(_me(), os.getpid(), self.command, now, now)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(info.__dict__, fh)
        self._info = info
        return True

    def _break(self, info: LockInfo, why: str) -> None:
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{time.time():.0f}")
        try:
            os.rename(self.path, aside)  # only one breaker's rename finds the file
        except FileNotFoundError:
            return
        log.warning("broke a stale repository lock held by %s: %s", info.describe(), why)
        aside.unlink(missing_ok=True)

    def acquire(self) -> "RepositoryLock":
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._try_create():
                break
            info = self.holder()
            if info is not None:
                why = self._stale(info)
                if why:
                    self._break(info, why)
                    continue
                if time.monotonic() >= deadline:
                    raise RepositoryLockedError(
                        f"{self.repository} is being changed by {info.describe()}; wait for it "
                        f"(--lock-wait SECONDS), or, if that process is gone, remove {self.path}")
            time.sleep(self.poll_s)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="repository-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            info = self.holder()
            if info is None or info.pid != os.getpid() or info.owner != _me():
                log.error("the repository lock %s was taken from this process (%s)", self.path,
                          "removed" if info is None else f"now held by {info.describe()}")
                return
            beat = LockInfo(**{**self._info.__dict__, "heartbeat": time.time()})
            tmp = self.path.with_name(f"{LOCK_FILE}.beat-{os.getpid()}")
            tmp.write_text(json.dumps(beat.__dict__))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        info = self.holder()
        if info is not None and info.pid == os.getpid() and info.owner == _me():
            try:
                self.path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> "RepositoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
