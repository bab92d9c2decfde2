"""The I/O seam: the only module of wfstate that touches the file system.

Everything that reads, writes, syncs, renames or removes a file goes through a
:class:`FileSystem`. :data:`OS_FS` is the real one; the crash simulator in ``tests/`` swaps in a
recording double and builds the disks a crash could leave behind (DESIGN.md §3). A test
(``tests/test_io_seam.py``) fails if any other module calls the OS directly.

Crash reasoning for callers: bytes written to a file survive a crash only once :meth:`fsync` or
:meth:`fdatasync` of that file returned; a create, rename or unlink survives only once
:meth:`fsync_dir` of the containing directory returned. A failed sync is reported as
``OSError`` and must never be retried (the kernel may have dropped the pages).
"""

from __future__ import annotations

import io
import os
import secrets
from typing import Protocol

import portalocker


class FileSystem(Protocol):
    """The operations wfstate performs on files. Paths are ``str``; descriptors are ``int``."""

    def read_file(self, path: str) -> bytes:
        """The whole content of ``path``."""
        ...

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``path`` from ``offset`` (fewer at the end of the file)."""
        ...

    def file_size(self, path: str) -> int: ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]:
        """Entry names of directory ``path``, sorted."""
        ...

    def mkdir(self, path: str) -> None:
        """Create directory ``path`` (its parent must exist); not durable until fsync_dir."""
        ...

    def create_exclusive(self, path: str) -> int:
        """Create ``path`` (it must not exist) and open it for writing; returns a descriptor."""
        ...

    def open_append(self, path: str) -> int:
        """Open existing ``path`` for appending writes; returns a descriptor."""
        ...

    def write(self, fd: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at the descriptor's position (short writes are continued)."""
        ...

    def fsync(self, fd: int) -> None: ...

    def fdatasync(self, fd: int) -> None: ...

    def truncate(self, fd: int, size: int) -> None: ...

    def close(self, fd: int) -> None: ...

    def dup(self, fd: int) -> int:
        """A second descriptor for the same open file (syncing either syncs the file)."""
        ...

    def replace(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst``; durable only after fsync_dir."""
        ...

    def unlink(self, path: str) -> None: ...

    def fsync_dir(self, path: str) -> None:
        """Make the entries of directory ``path`` (creates, renames, unlinks) durable."""
        ...

    def open_lock(self, path: str) -> object:
        """Open (creating if missing) the lock file ``path``, unlocked; returns its handle."""
        ...

    def try_lock(self, handle: object) -> bool:
        """Take the exclusive lock of ``handle`` without waiting; False if another holder has
        it. True only once the file locked is verified to still be the one at its path (a
        holder that replaced or removed it in between would otherwise leave two processes each
        holding "the" lock): on a mismatch the handle is reopened at the path and tried again."""
        ...

    def unlock(self, handle: object) -> None:
        """Release the lock of ``handle`` (the handle stays open)."""
        ...

    def close_lock(self, handle: object) -> None:
        """Close ``handle`` (releasing its lock if held)."""
        ...

    def read_lock_data(self, handle: object, size: int) -> bytes:
        """Up to ``size`` bytes from offset 0 of the lock file (never synced; see format §8.1)."""
        ...

    def write_lock_data(self, handle: object, data: bytes) -> None:
        """Write ``data`` at offset 0 of the lock file, without syncing it."""
        ...


class OsFileSystem:
    """The real file system, through ``os``. Stateless; share :data:`OS_FS`."""

    def read_file(self, path: str) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            chunks: list[bytes] = []
            remaining = size
            while True:
                chunk = os.read(fd, max(remaining, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            os.close(fd)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            while size > 0 and (chunk := os.pread(fd, size, offset)):
                chunks.append(chunk)
                offset += len(chunk)
                size -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def create_exclusive(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def write(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:  # pragma: no cover - os.write raises rather than return 0
                raise OSError("write returned 0 bytes")
            view = view[written:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_lock(self, path: str) -> object:
        return _LockFile(path, _open_lock_file(path))

    def try_lock(self, handle: object) -> bool:
        lock = _as_lock_file(handle)
        while True:
            try:
                portalocker.lock(lock.file, portalocker.LOCK_EX | portalocker.LOCK_NB)
            except portalocker.AlreadyLocked:
                return False
            try:
                st = os.stat(lock.path)
                held = os.fstat(lock.file.fileno())
                same = (st.st_ino, st.st_dev) == (held.st_ino, held.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                return True
            portalocker.unlock(lock.file)
            lock.file.close()
            lock.file = _open_lock_file(lock.path)

    def unlock(self, handle: object) -> None:
        portalocker.unlock(_as_lock_file(handle).file)

    def close_lock(self, handle: object) -> None:
        _as_lock_file(handle).file.close()

    def read_lock_data(self, handle: object, size: int) -> bytes:
        return os.pread(_as_lock_file(handle).file.fileno(), size, 0)

    def write_lock_data(self, handle: object, data: bytes) -> None:
        fd = _as_lock_file(handle).file.fileno()
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)


class _LockFile:
    """A lock file handle of :class:`OsFileSystem`; reopened in place by ``try_lock``."""

    __slots__ = ("file", "path")

    def __init__(self, path: str, file: io.FileIO) -> None:
        self.path = path
        self.file = file


def _open_lock_file(path: str) -> io.FileIO:
    # Not O_APPEND: Linux pwrite on an O_APPEND descriptor appends whatever the offset.
    return io.FileIO(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), "r+")


def _as_lock_file(handle: object) -> _LockFile:
    if not isinstance(handle, _LockFile):
        raise TypeError("not a lock handle of this file system")
    return handle


OS_FS: OsFileSystem = OsFileSystem()


def temp_name(path: str) -> str:
    """A unique temp file name beside ``path`` (same directory, so a rename is atomic)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def atomic_write(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Order: write a uniquely named temp file in the same directory, fsync it, rename it over
    ``path``, fsync the directory. When this returns the new content is durable. On any failure
    before the rename the temp file is removed and the old file is untouched; a failure of the
    directory fsync leaves the rename done but not known durable, and is raised.
    """
    tmp = temp_name(path)
    fd = fs.create_exclusive(tmp)
    try:
        try:
            fs.write(fd, data)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.replace(tmp, path)
    except BaseException as exc:
        try:
            if fs.exists(tmp):
                fs.unlink(tmp)
        except OSError as cleanup:  # the original error is the one to raise
            exc.add_note(f"also failed to remove the temp file {tmp}: {cleanup}")
        raise
    fs.fsync_dir(os.path.dirname(path) or ".")


def make_dirs(fs: FileSystem, path: str) -> None:
    """Create ``path`` and missing parents, and make the entry of ``path`` durable.

    Each directory created is made durable in its parent. The parent of ``path`` is fsynced even
    when ``path`` already exists: a crash between an earlier ``mkdir`` and its directory fsync
    leaves a directory that exists but could still vanish in a power cut, with everything
    synced inside it. A directory created concurrently by someone else counts as existing.
    """
    path = os.path.normpath(path)
    parent = os.path.dirname(path) or "."
    if not fs.is_dir(path):
        if parent != path:
            make_dirs(fs, parent)
        try:
            fs.mkdir(path)
        except FileExistsError:
            if not fs.is_dir(path):
                raise
    if parent != path:
        fs.fsync_dir(parent)
