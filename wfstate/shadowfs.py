"""A copy-on-write view of a directory tree: every change stays in memory, nothing reaches disk.

:class:`ShadowFileSystem` implements the I/O seam (:class:`wfstate.fs.FileSystem`) over another
file system (the real one by default). Reads see the base's files as changed by the writes,
truncations, renames and deletions done through the shadow; the base itself is never written,
renamed, unlinked or created in. Syncs do nothing (there is nothing to make durable).

This is what makes ``python -m wfstate recover`` (without ``--apply``), ``verify`` and
``inspect`` read-only while running the store's *real* recovery: the plan they print is what
recovery did to the shadow, so it cannot differ from what ``--apply`` does to the disk (the
same code runs, on the same bytes).

Contract details:

* A base file is read from the base until the shadow first changes it; then it is copied into
  memory whole (a log segment, a checkpoint: what recovery touches is bounded by the segment
  size). Appending to a base file does not copy it until the first write.
* Descriptors follow the file, not the name (a rename keeps writes going to the same file), as
  on POSIX.
* Locks: a lock file that exists in the base is locked for real (``flock`` on an existing file
  changes no byte), so a shadow open waits for, and sees, other processes' locks (a live
  session is not mistaken for a crashed one); data written into a lock file stays in memory. A
  lock file that does not exist in the base is a private in-memory lock.
* Errors are the OS's: ``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError`` with
  the errno and path.

Not thread-safe across threads changing the same tree at once beyond what a single store
handle does (the store serialises its writers); the base is assumed not to change meanwhile
(another process writing during a plan makes the plan stale, never the disk wrong).
"""

from __future__ import annotations

import errno
import os
import threading

from wfstate.fs import OS_FS, FileSystem

__all__ = ["ShadowFileSystem"]


class _Node:
    """A file of the shadow: its bytes once copied or created, else the base path they are at."""

    __slots__ = ("data", "source")

    def __init__(self, data: bytearray | None, source: str | None) -> None:
        self.data = data
        self.source = source


class _Open:
    __slots__ = ("append", "node", "path", "position")

    def __init__(self, node: _Node, path: str, *, append: bool) -> None:
        self.node = node
        self.path = path
        self.append = append
        self.position = 0


class _ShadowLock:
    """A lock of the shadow: the base's lock file locked for real, or a private one."""

    __slots__ = ("base", "data", "held")

    def __init__(self, base: object | None) -> None:
        self.base = base
        self.data = bytearray()
        self.held = False


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


class ShadowFileSystem:
    """A :class:`~wfstate.fs.FileSystem` that reads ``base`` and keeps every change in memory."""

    def __init__(self, base: FileSystem = OS_FS) -> None:
        self._fs = base
        self._view: dict[str, _Node | None] = {}  # path -> shadow file, or None: removed
        self._dirs: set[str] = set()  # directories created in the shadow
        self._fds: dict[int, _Open] = {}
        self._next_fd = 1 << 20  # far from real descriptors, so a mix-up fails loudly
        self._mutex = threading.Lock()

    # -- what the shadow changed ----------------------------------------------------------------
    def changed_paths(self) -> list[str]:
        """Paths whose content or existence differs from the base's (created directories
        included), sorted."""
        with self._mutex:
            return sorted({*self._view, *self._dirs})

    # -- reading --------------------------------------------------------------------------------
    def _node(self, path: str) -> _Node | None:
        """The shadow file at ``path``; None when the base has it unchanged; raises
        ``FileNotFoundError`` when the shadow removed it."""
        if path in self._view:
            node = self._view[path]
            if node is None:
                raise _error(errno.ENOENT, path)
            return node
        return None

    def _bytes(self, node: _Node) -> bytes | bytearray:
        if node.data is not None:
            return node.data
        assert node.source is not None
        return self._fs.read_file(node.source)

    def read_file(self, path: str) -> bytes:
        path = os.path.normpath(path)
        with self._mutex:
            node = self._node(path)
            if node is None:
                if path in self._dirs:
                    raise _error(errno.EISDIR, path)
                return self._fs.read_file(path)
            return bytes(self._bytes(node))

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        path = os.path.normpath(path)
        with self._mutex:
            node = self._node(path)
            if node is None:
                return self._fs.read_range(path, offset, size)
            if node.data is None:
                assert node.source is not None
                return self._fs.read_range(node.source, offset, size)
            return bytes(node.data[offset : offset + size])

    def file_size(self, path: str) -> int:
        path = os.path.normpath(path)
        with self._mutex:
            node = self._node(path)
            if node is None:
                return self._fs.file_size(path)
            if node.data is None:
                assert node.source is not None
                return self._fs.file_size(node.source)
            return len(node.data)

    def exists(self, path: str) -> bool:
        path = os.path.normpath(path)
        with self._mutex:
            return self._exists(path)

    def _exists(self, path: str) -> bool:
        if path in self._view:
            return self._view[path] is not None
        return path in self._dirs or self._fs.exists(path)

    def is_dir(self, path: str) -> bool:
        path = os.path.normpath(path)
        with self._mutex:
            return self._is_dir(path)

    def _is_dir(self, path: str) -> bool:
        if path in self._view:
            return False
        return path in self._dirs or self._fs.is_dir(path)

    def listdir(self, path: str) -> list[str]:
        path = os.path.normpath(path)
        with self._mutex:
            if path in self._dirs:
                names: set[str] = set()
            elif self._fs.is_dir(path) and path not in self._view:
                names = set(self._fs.listdir(path))
            else:
                raise _error(errno.ENOENT, path)
            for changed, node in self._view.items():
                head, tail = os.path.split(changed)
                if head == path:
                    if node is None:
                        names.discard(tail)
                    else:
                        names.add(tail)
            names.update(os.path.basename(d) for d in self._dirs if os.path.dirname(d) == path)
            return sorted(names)

    # -- changing (in memory only) ----------------------------------------------------------------
    def _check_parent(self, path: str) -> None:
        parent = os.path.dirname(path) or "."
        if not self._is_dir(parent):
            raise _error(errno.ENOENT, path)

    def mkdir(self, path: str) -> None:
        path = os.path.normpath(path)
        with self._mutex:
            if self._exists(path):
                raise _error(errno.EEXIST, path)
            self._check_parent(path)
            self._dirs.add(path)

    def _new_fd(self, entry: _Open) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = entry
        return fd

    def create_exclusive(self, path: str) -> int:
        path = os.path.normpath(path)
        with self._mutex:
            if self._exists(path):
                raise _error(errno.EEXIST, path)
            self._check_parent(path)
            node = _Node(bytearray(), None)
            self._view[path] = node
            return self._new_fd(_Open(node, path, append=False))

    def open_append(self, path: str) -> int:
        path = os.path.normpath(path)
        with self._mutex:
            node = self._node(path)
            if node is None:
                if self._is_dir(path):
                    raise _error(errno.EISDIR, path)
                if not self._fs.exists(path):
                    raise _error(errno.ENOENT, path)
                node = _Node(None, path)
                self._view[path] = node
            return self._new_fd(_Open(node, path, append=True))

    def _open(self, fd: int) -> _Open:
        try:
            return self._fds[fd]
        except KeyError:
            raise _error(errno.EBADF, f"<descriptor {fd}>") from None

    def _copied(self, node: _Node) -> bytearray:
        if node.data is None:
            assert node.source is not None
            node.data = bytearray(self._fs.read_file(node.source))
        return node.data

    def write(self, fd: int, data: bytes | memoryview) -> None:
        with self._mutex:
            entry = self._open(fd)
            buf = self._copied(entry.node)
            if entry.append:
                buf += data
                return
            end = entry.position + len(data)
            if len(buf) < entry.position:
                buf.extend(bytes(entry.position - len(buf)))
            buf[entry.position : end] = data
            entry.position = end

    def truncate(self, fd: int, size: int) -> None:
        with self._mutex:
            buf = self._copied(self._open(fd).node)
            if size < len(buf):
                del buf[size:]
            else:
                buf.extend(bytes(size - len(buf)))

    def fsync(self, fd: int) -> None:
        with self._mutex:
            self._open(fd)

    def fdatasync(self, fd: int) -> None:
        with self._mutex:
            self._open(fd)

    def close(self, fd: int) -> None:
        with self._mutex:
            self._open(fd)
            del self._fds[fd]

    def dup(self, fd: int) -> int:
        with self._mutex:
            entry = self._open(fd)
            copy = _Open(entry.node, entry.path, append=entry.append)
            copy.position = entry.position
            return self._new_fd(copy)

    def replace(self, src: str, dst: str) -> None:
        src, dst = os.path.normpath(src), os.path.normpath(dst)
        with self._mutex:
            node = self._node(src)
            if node is None:
                if self._is_dir(src):
                    raise _error(errno.EISDIR, src)  # directories are never renamed by the store
                if not self._fs.exists(src):
                    raise _error(errno.ENOENT, src)
                node = _Node(None, src)
            if self._is_dir(dst):
                raise _error(errno.EISDIR, dst)
            self._check_parent(dst)
            if src == dst:  # POSIX: renaming a file to itself does nothing
                return
            self._view[dst] = node
            self._view[src] = None

    def unlink(self, path: str) -> None:
        path = os.path.normpath(path)
        with self._mutex:
            if self._node(path) is None:
                if self._is_dir(path):
                    raise _error(errno.EISDIR, path)
                if not self._fs.exists(path):
                    raise _error(errno.ENOENT, path)
            self._view[path] = None

    def fsync_dir(self, path: str) -> None:
        path = os.path.normpath(path)
        with self._mutex:
            if not self._is_dir(path):
                raise _error(errno.ENOENT, path)

    # -- locks --------------------------------------------------------------------------------
    def open_lock(self, path: str) -> object:
        path = os.path.normpath(path)
        with self._mutex:
            real = path not in self._view and self._fs.exists(path)
        return _ShadowLock(self._fs.open_lock(path) if real else None)

    def try_lock(self, handle: object) -> bool:
        lock = _as_shadow_lock(handle)
        if lock.base is not None:
            return self._fs.try_lock(lock.base)
        if lock.held:
            return False
        lock.held = True
        return True

    def unlock(self, handle: object) -> None:
        lock = _as_shadow_lock(handle)
        if lock.base is not None:
            self._fs.unlock(lock.base)
        lock.held = False

    def close_lock(self, handle: object) -> None:
        lock = _as_shadow_lock(handle)
        if lock.base is not None:
            self._fs.close_lock(lock.base)

    def read_lock_data(self, handle: object, size: int) -> bytes:
        lock = _as_shadow_lock(handle)
        if lock.base is not None and not lock.data:
            return self._fs.read_lock_data(lock.base, size)
        return bytes(lock.data[:size])

    def write_lock_data(self, handle: object, data: bytes) -> None:
        lock = _as_shadow_lock(handle)
        if lock.base is not None and not lock.data:
            lock.data = bytearray(self._fs.read_lock_data(lock.base, 1 << 16))
        end = len(data)
        if len(lock.data) < end:
            lock.data.extend(bytes(end - len(lock.data)))
        lock.data[:end] = data


def _as_shadow_lock(handle: object) -> _ShadowLock:
    if not isinstance(handle, _ShadowLock):
        raise TypeError("not a lock handle of this file system")
    return handle
