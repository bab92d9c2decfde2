"""Small real-disk file system doubles for unit tests: count, order, slow down or fail calls.

The crash simulator (``tests/simfs.py``) models what a crash leaves on disk; these wrappers
only observe or perturb calls to the real file system, for contracts about *when* things happen
(acknowledgement after fdatasync, shared syncs, poisoning).
"""

from __future__ import annotations

import errno
import threading
import time

from wfstate.fs import OsFileSystem


class RecordingFS(OsFileSystem):
    """The real file system, recording ``(operation, detail)`` for writes and syncs."""

    def __init__(self, *, sync_delay: float = 0.0) -> None:
        self.ops: list[tuple[str, int]] = []
        self.whole_reads: list[str] = []  # paths read with read_file
        self._lock = threading.Lock()
        self._sync_delay = sync_delay

    def _note(self, op: str, detail: int = 0) -> None:
        with self._lock:
            self.ops.append((op, detail))

    def count(self, op: str) -> int:
        with self._lock:
            return sum(1 for name, _ in self.ops if name == op)

    def read_file(self, path: str) -> bytes:
        with self._lock:
            self.whole_reads.append(path)
        return super().read_file(path)

    def write(self, fd: int, data: bytes | memoryview) -> None:
        super().write(fd, data)
        self._note("write", len(data))

    def fdatasync(self, fd: int) -> None:
        if self._sync_delay:
            time.sleep(self._sync_delay)
        super().fdatasync(fd)
        self._note("fdatasync")

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self._note("fsync")


class FailingFS(RecordingFS):
    """Fails the ``nth`` call (1-based) of ``op`` with EIO, and every later one if
    ``persistent``."""

    def __init__(self, op: str, nth: int, *, persistent: bool = False) -> None:
        super().__init__()
        self._op = op
        self._nth = nth
        self._persistent = persistent
        self.calls = 0
        self.failures = 0

    def _maybe_fail(self, op: str) -> None:
        if op != self._op:
            return
        self.calls += 1
        if self.calls == self._nth or (self._persistent and self.calls > self._nth):
            self.failures += 1
            raise OSError(errno.EIO, f"injected {op} failure #{self.calls}")

    def write(self, fd: int, data: bytes | memoryview) -> None:
        self._maybe_fail("write")
        super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync")
        super().fdatasync(fd)
