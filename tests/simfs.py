"""An in-memory :class:`wfstate.fs.FileSystem` that records every mutation and builds crash states.

:class:`SimFileSystem` behaves like the OS for every operation of the I/O seam (same errors, same
descriptor semantics) and keeps a *trace* of the mutating operations it performed. From any
prefix of that trace it builds the disks a crash could leave behind under the crash model of
DESIGN.md §3 (ALICE / SQLite crash-VFS style), so a test can run the real recovery on each of
them.

Crash model, as this simulator applies it to the first ``at`` operations of a trace:

* A write or truncate of a file is *persisted* when an fsync or fdatasync of the same inode
  (through any descriptor) follows it within the prefix. A create, mkdir, rename or unlink is
  persisted when an ``fsync_dir`` of its directory follows it within the prefix; a rename
  across directories needs both directories synced. Persisted operations are on every crash
  state.
* Every other operation of the prefix is *pending*: a crash state may lack it (the state kinds
  below say which combinations are tried). A write whose inode has no directory entry on the
  crash disk is simply not visible there. Operations are replayed by inode: a rename or
  unlink whose source name names another file on the crash disk (because an earlier
  operation was left out) leaves that name alone, and a write follows its file wherever it was
  renamed.
* A pending write may also be *torn* at 512 B and 4 KiB boundaries of the file offset: a prefix
  of its pieces written and the rest zeros or never written, a file grown to full size with
  zeros, or a piece in the middle replaced by garbage or zeros while later pieces are intact.
* A failed fsync/fdatasync (injected, see :class:`Fault`) persists nothing, and the writes it
  should have covered stay pending forever: a later successful sync does not persist them
  (fsyncgate: the kernel may have dropped those pages while reporting later syncs as
  successful). A failed ``fsync_dir`` does the same for the directory operations it covered.

Not modelled: partial directory-entry states (an entry is there or not), reordering of more
than one pending operation at a time, symlinks, permissions, open-file reads, disk-full.
"""

from __future__ import annotations

import errno as _errno
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import xxhash

__all__ = [
    "ROOT_INODE",
    "Create",
    "Fault",
    "FaultOp",
    "Fsync",
    "FsyncDir",
    "Mkdir",
    "Op",
    "Replace",
    "SimFileSystem",
    "Truncate",
    "Unlink",
    "Write",
]

ROOT_INODE = 1
"""Inode number of the root directory ``/`` of every simulated disk."""

TORN_BLOCK_SIZES = (512, 4096)
"""Boundaries (in file offsets) at which a pending write may be split when torn."""


# --------------------------------------------------------------------------------------------
# Trace operations. ``path`` fields are informational (the path used by the call); replay uses
# inode numbers only, so a renamed or unlinked file keeps receiving its own writes.


@dataclass(frozen=True, slots=True)
class Write:
    """``data`` written to file ``inode`` at byte ``offset``."""

    inode: int
    offset: int
    data: bytes
    path: str


@dataclass(frozen=True, slots=True)
class Truncate:
    """File ``inode`` cut or extended (with zeros) to ``size`` bytes."""

    inode: int
    size: int
    path: str


@dataclass(frozen=True, slots=True)
class Fsync:
    """A completed fsync (``kind="fsync"``) or fdatasync of file ``inode``."""

    inode: int
    kind: Literal["fsync", "fdatasync"]
    path: str


@dataclass(frozen=True, slots=True)
class Create:
    """A new empty file ``inode`` entered as ``name`` in directory ``dir``."""

    dir: int
    name: str
    inode: int
    path: str


@dataclass(frozen=True, slots=True)
class Mkdir:
    """A new empty directory ``inode`` entered as ``name`` in directory ``dir``."""

    dir: int
    name: str
    inode: int
    path: str


@dataclass(frozen=True, slots=True)
class Replace:
    """Entry ``src_name`` of ``src_dir`` (naming ``inode``) moved over ``dst_name`` of ``dst_dir``.

    ``is_dir`` tells whether ``inode`` is a directory; ``path`` reads ``"src -> dst"``.
    """

    src_dir: int
    src_name: str
    dst_dir: int
    dst_name: str
    inode: int
    is_dir: bool
    path: str


@dataclass(frozen=True, slots=True)
class Unlink:
    """Entry ``name`` (naming ``inode``) removed from directory ``dir``."""

    dir: int
    name: str
    inode: int
    path: str


@dataclass(frozen=True, slots=True)
class FsyncDir:
    """A completed fsync of directory ``dir``."""

    dir: int
    path: str


Op: TypeAlias = Write | Truncate | Fsync | Create | Mkdir | Replace | Unlink | FsyncDir
"""One recorded mutating operation."""

_DirOp: TypeAlias = Create | Mkdir | Replace | Unlink
_OpPredicate: TypeAlias = Callable[[Op], bool]

FaultOp: TypeAlias = Literal[
    "write", "fsync", "fdatasync", "replace", "unlink", "fsync_dir", "truncate", "create", "mkdir"
]
"""Operations that can be made to fail. ``"create"`` is :meth:`SimFileSystem.create_exclusive`."""


@dataclass(frozen=True, slots=True)
class Fault:
    """Make the ``nth`` call (1-based, counting calls of ``op`` only) raise ``OSError(errno)``.

    With ``persistent`` every later call of ``op`` fails too. A failed call changes nothing and
    records nothing: a failed write writes no byte (and does not move the descriptor's
    position), a failed sync persists nothing (and see the module docstring for what it does to
    the writes it covered), a failed rename/unlink/create/mkdir/truncate leaves the tree as it was.
    """

    op: FaultOp
    nth: int
    persistent: bool = False
    errno: int = _errno.EIO

    def __post_init__(self) -> None:
        if self.nth < 1:
            raise ValueError(f"Fault.nth is 1-based, got {self.nth}")


# --------------------------------------------------------------------------------------------
# Disk contents: inode -> bytes for files, inode -> {name: inode} for directories. Inodes that
# no path reaches (unlinked, or created by an operation whose directory entry was lost) may be
# present; they are invisible.


_EMPTY_HASH = xxhash.xxh3_128_digest(b"")


class _Disk:
    __slots__ = ("dirs", "files")

    def __init__(self, files: dict[int, bytearray], dirs: dict[int, dict[str, int]]) -> None:
        self.files = files
        self.dirs = dirs

    @classmethod
    def empty(cls) -> _Disk:
        return cls({}, {ROOT_INODE: {}})

    def copy(self) -> _Disk:
        return _Disk(
            {i: bytearray(b) for i, b in self.files.items()},
            {i: dict(d) for i, d in self.dirs.items()},
        )

    def file(self, inode: int) -> bytearray:
        data = self.files.get(inode)
        if data is None:
            data = self.files[inode] = bytearray()
        return data

    def dir(self, inode: int) -> dict[str, int]:
        entries = self.dirs.get(inode)
        if entries is None:
            entries = self.dirs[inode] = {}
        return entries

    def write_at(self, inode: int, offset: int, data: bytes) -> None:
        buf = self.file(inode)
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data

    def extend_to(self, inode: int, size: int) -> None:
        buf = self.file(inode)
        if len(buf) < size:
            buf.extend(bytes(size - len(buf)))

    def apply(self, op: Op) -> None:
        """Apply ``op``. Entry operations only touch an entry that still names their inode."""
        if isinstance(op, Write):
            self.write_at(op.inode, op.offset, op.data)
        elif isinstance(op, Truncate):
            buf = self.file(op.inode)
            if op.size < len(buf):
                del buf[op.size :]
            else:
                buf.extend(bytes(op.size - len(buf)))
        elif isinstance(op, Create):
            self.file(op.inode)
            self.dir(op.dir)[op.name] = op.inode
        elif isinstance(op, Mkdir):
            self.dir(op.inode)
            self.dir(op.dir)[op.name] = op.inode
        elif isinstance(op, Replace):
            if op.is_dir:
                self.dir(op.inode)
            else:
                self.file(op.inode)
            src = self.dir(op.src_dir)
            if src.get(op.src_name) == op.inode:
                del src[op.src_name]
            self.dir(op.dst_dir)[op.dst_name] = op.inode
        elif isinstance(op, Unlink):
            entries = self.dir(op.dir)
            if entries.get(op.name) == op.inode:
                del entries[op.name]
        # Fsync / FsyncDir change no content.

    def walk(self) -> Iterator[tuple[str, int]]:
        """``(path, inode)`` of every reachable entry, root first, depth-first in name order."""
        seen = {ROOT_INODE}
        stack: list[tuple[str, int]] = [("/", ROOT_INODE)]
        while stack:
            path, inode = stack.pop()
            yield path, inode
            if inode in self.dirs:
                for name in sorted(self.dirs[inode], reverse=True):
                    child = self.dirs[inode][name]
                    if child in self.dirs and child in seen:
                        continue  # a directory cycle left by dropped renames
                    if child in self.dirs:
                        seen.add(child)
                    stack.append((os.path.join(path, name), child))

    def digest(self, memo: dict[int, tuple[bytearray, bytes]] | None = None) -> bytes:
        """A hash of the visible tree (paths, kinds, file contents).

        ``memo`` maps ``id(buffer)`` to ``(buffer, hash of its content)`` for buffers known not
        to change, so disks sharing them are hashed without rereading them.
        """
        h = xxhash.xxh3_128()
        for path, inode in self.walk():
            encoded = path.encode("utf-8", "surrogateescape")
            if inode in self.dirs:
                h.update(b"D%d:" % len(encoded) + encoded)
            else:
                h.update(b"F%d:" % len(encoded) + encoded)
                h.update(self._content_hash(inode, memo))
        return h.digest()

    def _content_hash(self, inode: int, memo: dict[int, tuple[bytearray, bytes]] | None) -> bytes:
        content = self.files.get(inode)
        if content is None:
            return _EMPTY_HASH
        if memo is not None:
            known = memo.get(id(content))
            if known is not None and known[0] is content:
                return known[1]
        return xxhash.xxh3_128_digest(content)

    def content_memo(self) -> dict[int, tuple[bytearray, bytes]]:
        """A ``memo`` for :meth:`digest` covering this disk's files (which must not change)."""
        return {id(buf): (buf, xxhash.xxh3_128_digest(buf)) for buf in self.files.values()}

    def reachable(self) -> _Disk:
        """A copy holding only the reachable inodes (hard links stay shared)."""
        files: dict[int, bytearray] = {}
        dirs: dict[int, dict[str, int]] = {}
        for _path, inode in self.walk():
            if inode in self.dirs:
                dirs[inode] = dict(self.dirs[inode])
            else:
                files[inode] = bytearray(self.files.get(inode, b""))
        return _Disk(files, dirs)


# --------------------------------------------------------------------------------------------
# Torn writes.


@dataclass(frozen=True, slots=True)
class _Torn:
    """How a torn write lands: optionally grow the file to full size, then write ``chunks``."""

    grow: bool
    chunks: tuple[tuple[int, bytes], ...]


class SimLock:
    """A lock handle of :class:`SimFS`: one per opener, like an open file description."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def _as_sim_lock(handle: object) -> SimLock:
    if not isinstance(handle, SimLock):
        raise TypeError("not a lock handle of this file system")
    return handle


def _pieces(offset: int, data: bytes, block: int) -> list[tuple[int, bytes]]:
    """``data`` (to be written at ``offset``) split at multiples of ``block`` of the file offset."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        file_off = offset + pos
        end = min(len(data), (file_off // block + 1) * block - offset)
        out.append((file_off, data[pos:end]))
        pos = end
    return out


def _torn_variants(index: int, op: Write, seed: int) -> list[tuple[str, _Torn]]:
    """At most six ways a pending write can persist in part (see SimFileSystem.crash_states)."""
    if not op.data:
        return []
    variants: list[tuple[str, _Torn]] = [("zeros", _Torn(grow=True, chunks=()))]
    p = _pieces(op.offset, op.data, 512)
    n = len(p)
    if n >= 2:
        keep = n // 2
        variants.append((f"512:keep{keep}-zeros", _Torn(grow=True, chunks=tuple(p[:keep]))))
        variants.append(("512:short1", _Torn(grow=False, chunks=tuple(p[:1]))))
        mid = (n - 1) // 2
        rng = random.Random(f"simfs:{seed}:{index}:{mid}")
        garbage = rng.randbytes(len(p[mid][1]))
        with_garbage = (*p[:mid], (p[mid][0], garbage), *p[mid + 1 :])
        variants.append((f"512:garbage{mid}", _Torn(grow=True, chunks=with_garbage)))
        variants.append((f"512:hole{mid}", _Torn(grow=True, chunks=(*p[:mid], *p[mid + 1 :]))))
    p4 = _pieces(op.offset, op.data, 4096)
    if len(p4) >= 2:
        keep = len(p4) - 1
        variants.append((f"4096:short{keep}", _Torn(grow=False, chunks=tuple(p4[:keep]))))
    return variants


def _apply_torn(disk: _Disk, op: Write, torn: _Torn) -> None:
    if torn.grow:
        disk.extend_to(op.inode, op.offset + len(op.data))
    else:
        disk.file(op.inode)  # the inode exists even if no piece landed
    for file_off, chunk in torn.chunks:
        disk.write_at(op.inode, file_off, chunk)


# --------------------------------------------------------------------------------------------


class _OpenFile:
    """An open file description, shared by a descriptor and its dups."""

    __slots__ = ("append", "inode", "path", "pos")

    def __init__(self, inode: int, path: str, *, append: bool) -> None:
        self.inode = inode
        self.path = path
        self.append = append
        self.pos = 0


def _oserror(code: int, path: str | None = None) -> OSError:
    if path is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), path)


class SimFileSystem:
    """In-memory :class:`wfstate.fs.FileSystem` with a trace of mutations and crash states.

    Behaves like the OS for a single process: ``FileNotFoundError`` for missing paths,
    ``FileExistsError`` from :meth:`create_exclusive` and :meth:`mkdir`, ``IsADirectoryError`` /
    ``NotADirectoryError`` / ``ENOTEMPTY`` where the OS raises them, ``EBADF`` for closed
    descriptors. Paths must be absolute; they are normalised with ``os.path.normpath``. A new
    instance holds only the root directory ``/``, durable.

    A new instance, and every instance :meth:`crash_states` yields, starts fully durable: its
    current content is what every one of its own crash states starts from. The calls that
    change content (write, truncate, create, mkdir, replace, unlink) and completed syncs
    (fsync, fdatasync, fsync_dir) are recorded in order; :attr:`op_count` is how many, so a
    workload can note "acknowledged after op N" and check that every crash state with
    ``at >= N`` kept what the acknowledgement promised. Reads, ``open_append``, ``close`` and
    ``dup`` are not recorded. Calls are serialised by a lock, so threads may share an instance.

    ``seed`` makes the garbage of torn writes reproducible; ``faults`` are injected as by
    :meth:`inject`.
    """

    def __init__(self, *, faults: Sequence[Fault] = (), seed: int = 0) -> None:
        self._init(_Disk.empty(), seed)
        for fault in faults:
            self._faults.append(fault)

    def _init(self, disk: _Disk, seed: int) -> None:
        self._lock = threading.RLock()
        self._seed = seed
        self._base = disk.copy()
        self._disk = disk
        self._trace: list[Op] = []
        self._lost: set[int] = set()  # trace indexes a failed sync left pending forever
        self._fds: dict[int, _OpenFile] = {}
        self._next_fd = 3
        self._next_inode = max([ROOT_INODE, *disk.files, *disk.dirs]) + 1
        self._faults: list[Fault] = []
        self._lock_holders: dict[str, SimLock] = {}
        self._lock_data: dict[str, bytes] = {}
        self._calls: dict[str, int] = {}

    @classmethod
    def _from_disk(cls, disk: _Disk, seed: int) -> SimFileSystem:
        fs = cls.__new__(cls)
        fs._init(disk, seed)
        return fs

    # ---------------------------------------------------------------- trace and crash states

    @property
    def op_count(self) -> int:
        """Number of operations recorded so far (the largest valid ``at`` of crash_states)."""
        return len(self._trace)

    @property
    def trace(self) -> tuple[Op, ...]:
        """The recorded operations, oldest first; label indexes of crash states point in here."""
        with self._lock:
            return tuple(self._trace)

    def crash_points(self) -> range:
        """Every valid ``at`` for :meth:`crash_states`: ``0 .. op_count``."""
        return range(self.op_count + 1)

    def snapshot(self) -> dict[str, bytes | None]:
        """Every visible path (``/`` included) mapped to its content; ``None`` for directories."""
        with self._lock:
            return {
                path: None if inode in self._disk.dirs else bytes(self._disk.files.get(inode, b""))
                for path, inode in self._disk.walk()
            }

    def crash_states(self, at: int) -> Iterator[tuple[str, SimFileSystem]]:
        """Disks a crash right after the first ``at`` recorded operations could leave.

        Every state holds every operation persisted within the prefix (module docstring). Pending
        operations are applied or not according to the kind, named by the label's prefix:

        * ``"prefix"``: every pending operation applied (what a process crash leaves; equal to
          this file system's content right after operation ``at``);
        * ``"synced-only"``: no pending operation applied;
        * ``"drop-one:<i>"``: every pending operation applied except data operation ``i``
          (a write or truncate), one state per pending data operation;
        * ``"lost-entry:<i>"``: every pending operation applied except directory operation ``i``
          (create, mkdir, rename, unlink), reverted; one state per pending directory operation;
        * ``"torn:<i>:<variant>"``: every pending operation applied, pending write ``i`` only in
          part. Up to six variants per write: ``zeros`` (file grown to cover the write, new bytes
          zero; bytes the write overwrote keep their old value), and, when the write spans
          several 512 B pieces of the file offset, ``512:keep<k>-zeros`` (first half of the
          pieces, rest as in ``zeros``), ``512:short1`` (first piece only, nothing after it
          written), ``512:garbage<m>`` and ``512:hole<m>`` (middle piece ``m`` garbage, resp.
          never written, every other piece written); when it spans several 4 KiB pieces,
          ``4096:short<k>`` (all but the last 4 KiB piece written).

        States are yielded in that order and deduplicated by visible content: a disk equal to
        one already yielded for this ``at`` is skipped, so the label names its first derivation.
        ``i`` indexes :attr:`trace`. Each yielded instance is a fresh, fully durable disk with
        no open descriptors, no faults and the same seed; it supports every operation,
        including its own crash states. States are built lazily, from the trace as it was at
        the call. Raises ValueError (at the call) unless ``0 <= at <= op_count``.
        """
        with self._lock:
            if not 0 <= at <= len(self._trace):
                raise ValueError(f"at must be in 0..{len(self._trace)}, got {at}")
            return _crash_states(self._base, self._trace[:at], frozenset(self._lost), self._seed)

    # ---------------------------------------------------------------- fault injection

    def inject(
        self,
        op: FaultOp,
        nth: int,
        *,
        persistent: bool = False,
        errno: int = _errno.EIO,
    ) -> None:
        """Make the ``nth`` call of ``op`` from now on fail (see :class:`Fault`).

        ``nth`` counts calls of ``op`` made after this call, starting at 1 (constructor faults
        count from construction). Calls are counted whether or not they fail.
        """
        with self._lock:
            done = self._calls.get(op, 0)
            self._faults.append(Fault(op, done + nth, persistent, errno))

    def _check_fault(self, op: FaultOp, path: str | None) -> None:
        count = self._calls[op] = self._calls.get(op, 0) + 1
        for fault in self._faults:
            if fault.op == op and (count == fault.nth or (fault.persistent and count > fault.nth)):
                raise _oserror(fault.errno, path)

    # ---------------------------------------------------------------- path resolution

    def _resolve(self, path: str) -> tuple[int | None, str, int | None, list[int]]:
        """``(parent inode, last name, inode or None, inodes of the directories on the way)``.

        Raises FileNotFoundError / NotADirectoryError if a directory on the way is missing or
        is a file.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"SimFileSystem paths must be absolute str, got {path!r}")
        norm = os.path.normpath(path)
        parts = [p for p in norm.split("/") if p]
        if not parts:
            return None, "", ROOT_INODE, []
        chain = [ROOT_INODE]
        cur = ROOT_INODE
        for part in parts[:-1]:
            nxt = self._disk.dirs[cur].get(part)
            if nxt is None:
                raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)
            if nxt not in self._disk.dirs:
                raise NotADirectoryError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR), path)
            cur = nxt
            chain.append(cur)
        return cur, parts[-1], self._disk.dirs[cur].get(parts[-1]), chain

    def _existing(self, path: str) -> int:
        _parent, _name, inode, _chain = self._resolve(path)
        if inode is None:
            raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)
        return inode

    def _open(self, fd: int) -> _OpenFile:
        of = self._fds.get(fd)
        if of is None:
            raise _oserror(_errno.EBADF)
        return of

    def _record(self, op: Op) -> None:
        self._trace.append(op)
        self._disk.apply(op)

    def _new_inode(self) -> int:
        inode = self._next_inode
        self._next_inode += 1
        return inode

    def _new_fd(self, of: _OpenFile) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = of
        return fd

    # ---------------------------------------------------------------- FileSystem protocol

    def read_file(self, path: str) -> bytes:
        with self._lock:
            inode = self._existing(path)
            if inode in self._disk.dirs:
                raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), path)
            return bytes(self._disk.files[inode])

    def open_lock(self, path: str) -> object:
        """An in-memory lock handle. Lock files are inter-process state of a running machine
        (format §8): they leave nothing on the simulated disk and a crash forgets them."""
        return SimLock(os.path.normpath(path))

    def try_lock(self, handle: object) -> bool:
        lock = _as_sim_lock(handle)
        with self._lock:
            holder = self._lock_holders.get(lock.key)
            if holder is not None and holder is not lock:
                return False
            self._lock_holders[lock.key] = lock
            return True

    def unlock(self, handle: object) -> None:
        lock = _as_sim_lock(handle)
        with self._lock:
            if self._lock_holders.get(lock.key) is lock:
                del self._lock_holders[lock.key]

    def close_lock(self, handle: object) -> None:
        self.unlock(handle)

    def read_lock_data(self, handle: object, size: int) -> bytes:
        with self._lock:
            return self._lock_data.get(_as_sim_lock(handle).key, b"")[:size]

    def write_lock_data(self, handle: object, data: bytes) -> None:
        with self._lock:
            key = _as_sim_lock(handle).key
            old = self._lock_data.get(key, b"")
            self._lock_data[key] = bytes(data) + old[len(data) :]

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        return self.read_file(path)[offset : offset + size]

    def file_size(self, path: str) -> int:
        """Size of the file at ``path`` in bytes; 0 for a directory."""
        with self._lock:
            inode = self._existing(path)
            return len(self._disk.files.get(inode, b""))

    def exists(self, path: str) -> bool:
        with self._lock:
            try:
                return self._resolve(path)[2] is not None
            except (FileNotFoundError, NotADirectoryError):
                return False

    def is_dir(self, path: str) -> bool:
        with self._lock:
            try:
                inode = self._resolve(path)[2]
            except (FileNotFoundError, NotADirectoryError):
                return False
            return inode is not None and inode in self._disk.dirs

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            inode = self._existing(path)
            if inode not in self._disk.dirs:
                raise NotADirectoryError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR), path)
            return sorted(self._disk.dirs[inode])

    def mkdir(self, path: str) -> None:
        with self._lock:
            self._check_fault("mkdir", path)
            parent, name, inode, _chain = self._resolve(path)
            if inode is not None or parent is None:
                raise FileExistsError(_errno.EEXIST, os.strerror(_errno.EEXIST), path)
            self._record(Mkdir(parent, name, self._new_inode(), os.path.normpath(path)))

    def create_exclusive(self, path: str) -> int:
        with self._lock:
            self._check_fault("create", path)
            parent, name, inode, _chain = self._resolve(path)
            if inode is not None or parent is None:
                raise FileExistsError(_errno.EEXIST, os.strerror(_errno.EEXIST), path)
            norm = os.path.normpath(path)
            new = self._new_inode()
            self._record(Create(parent, name, new, norm))
            return self._new_fd(_OpenFile(new, norm, append=False))

    def open_append(self, path: str) -> int:
        with self._lock:
            inode = self._existing(path)
            if inode in self._disk.dirs:
                raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), path)
            return self._new_fd(_OpenFile(inode, os.path.normpath(path), append=True))

    def write(self, fd: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` at the descriptor's position (append mode: at end of file).

        An injected failure writes nothing (no partial write) and leaves the position as it was.
        """
        with self._lock:
            of = self._open(fd)
            self._check_fault("write", of.path)
            payload = bytes(data)
            if not payload:
                return
            offset = len(self._disk.file(of.inode)) if of.append else of.pos
            self._record(Write(of.inode, offset, payload, of.path))
            of.pos = offset + len(payload)

    def _sync(self, fd: int, kind: Literal["fsync", "fdatasync"]) -> None:
        with self._lock:
            of = self._open(fd)
            try:
                self._check_fault(kind, of.path)
            except OSError:
                self._lose_pending(
                    lambda op: isinstance(op, Write | Truncate) and op.inode == of.inode,
                    lambda op: isinstance(op, Fsync) and op.inode == of.inode,
                )
                raise
            self._record(Fsync(of.inode, kind, of.path))

    def fsync(self, fd: int) -> None:
        """Persist every byte and the size of the file (a failure persists nothing, ever)."""
        self._sync(fd, "fsync")

    def fdatasync(self, fd: int) -> None:
        """As :meth:`fsync` (the simulator does not model timestamps)."""
        self._sync(fd, "fdatasync")

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            of = self._open(fd)
            self._check_fault("truncate", of.path)
            if size < 0:
                raise _oserror(_errno.EINVAL, of.path)
            self._record(Truncate(of.inode, size, of.path))

    def close(self, fd: int) -> None:
        """Release ``fd``; closing persists nothing."""
        with self._lock:
            self._open(fd)
            del self._fds[fd]

    def dup(self, fd: int) -> int:
        """A new descriptor sharing ``fd``'s open file (and so its position)."""
        with self._lock:
            return self._new_fd(self._open(fd))

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` atomically; durable once both directories are fsynced."""
        with self._lock:
            self._check_fault("replace", src)
            sdir, sname, sinode, _schain = self._resolve(src)
            if sinode is None:
                raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), src)
            if sdir is None:
                raise _oserror(_errno.EBUSY, src)
            ddir, dname, dinode, dchain = self._resolve(dst)
            if ddir is None:
                raise _oserror(_errno.EBUSY, dst)
            if dinode == sinode:
                return  # POSIX: both names already link the same file, nothing happens
            src_is_dir = sinode in self._disk.dirs
            if src_is_dir and sinode in dchain:
                raise _oserror(_errno.EINVAL, dst)  # a directory into itself
            if dinode is not None:
                dst_is_dir = dinode in self._disk.dirs
                if dst_is_dir and not src_is_dir:
                    raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), dst)
                if src_is_dir and not dst_is_dir:
                    raise NotADirectoryError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR), dst)
                if dst_is_dir and self._disk.dirs[dinode]:
                    raise _oserror(_errno.ENOTEMPTY, dst)
            label = f"{os.path.normpath(src)} -> {os.path.normpath(dst)}"
            self._record(Replace(sdir, sname, ddir, dname, sinode, src_is_dir, label))

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check_fault("unlink", path)
            parent, name, inode, _chain = self._resolve(path)
            if inode is None:
                raise FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), path)
            if parent is None or inode in self._disk.dirs:
                raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), path)
            self._record(Unlink(parent, name, inode, os.path.normpath(path)))

    def fsync_dir(self, path: str) -> None:
        """Persist the entries of directory ``path`` (a failure persists nothing, ever)."""
        with self._lock:
            inode = self._existing(path)
            if inode not in self._disk.dirs:
                raise NotADirectoryError(_errno.ENOTDIR, os.strerror(_errno.ENOTDIR), path)
            try:
                self._check_fault("fsync_dir", path)
            except OSError:
                self._lose_pending(
                    lambda op: (
                        isinstance(op, Create | Mkdir | Replace | Unlink) and inode in _dirs_of(op)
                    ),
                    lambda op: isinstance(op, FsyncDir) and op.dir == inode,
                )
                raise
            self._record(FsyncDir(inode, os.path.normpath(path)))

    def _lose_pending(self, covers: _OpPredicate, is_sync: _OpPredicate) -> None:
        """Mark the operations a failed sync would have persisted as never persistable."""
        for i in range(len(self._trace) - 1, -1, -1):
            op = self._trace[i]
            if is_sync(op):
                break
            if covers(op):
                self._lost.add(i)


# --------------------------------------------------------------------------------------------
# Replay.


def _crash_states(
    base: _Disk, ops: Sequence[Op], lost: frozenset[int], seed: int
) -> Iterator[tuple[str, SimFileSystem]]:
    """The states of :meth:`SimFileSystem.crash_states` for trace prefix ``ops``."""
    persisted = _persisted(ops, lost)
    pending = [i for i in range(len(ops)) if i not in persisted and _is_content_op(ops[i])]

    # A variant of one data op changes only its inode's bytes, and a variant of one
    # directory op only the directory entries; everything else is as in "prefix", whose
    # structures the variants share (read-only) and whose file hashes are memoised.
    full = _replay(base, ops)
    memo = full.content_memo()
    seen: set[bytes] = set()

    def emit(label: str, disk: _Disk) -> Iterator[tuple[str, SimFileSystem]]:
        key = disk.digest(memo)
        if key not in seen:
            seen.add(key)
            yield label, SimFileSystem._from_disk(disk.reachable(), seed)

    replayers: dict[int, _FileReplayer] = {}

    def with_file(i: int, inode: int, torn: _Torn | None) -> _Disk:
        replayer = replayers.get(inode)
        if replayer is None:
            replayer = replayers[inode] = _FileReplayer(base, ops, inode)
        return _Disk({**full.files, inode: replayer.variant(i, torn)}, full.dirs)

    yield from emit("prefix", full)
    yield from emit("synced-only", _replay(base, ops, skip=pending))
    for i in pending:
        op = ops[i]
        if isinstance(op, Write | Truncate):
            yield from emit(f"drop-one:{i}", with_file(i, op.inode, None))
    for i in pending:
        if isinstance(ops[i], Create | Mkdir | Replace | Unlink):
            yield from emit(f"lost-entry:{i}", _Disk(full.files, _replay_dirs(base, ops, i)))
    for i in pending:
        op = ops[i]
        if isinstance(op, Write):
            for name, torn in _torn_variants(i, op, seed):
                yield from emit(f"torn:{i}:{name}", with_file(i, op.inode, torn))


def _dirs_of(op: _DirOp) -> tuple[int, ...]:
    if isinstance(op, Replace):
        return (op.src_dir, op.dst_dir)
    return (op.dir,)


def _is_content_op(op: Op) -> bool:
    return not isinstance(op, Fsync | FsyncDir)


def _persisted(ops: Sequence[Op], lost: frozenset[int]) -> set[int]:
    """Indexes of the content operations of ``ops`` that a later sync within ``ops`` covers."""
    synced_files: set[int] = set()
    synced_dirs: set[int] = set()
    out: set[int] = set()
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if isinstance(op, Fsync):
            synced_files.add(op.inode)
        elif isinstance(op, FsyncDir):
            synced_dirs.add(op.dir)
        elif i in lost:
            continue
        elif isinstance(op, Write | Truncate):
            if op.inode in synced_files:
                out.add(i)
        elif all(d in synced_dirs for d in _dirs_of(op)):
            out.add(i)
    return out


def _replay(
    base: _Disk,
    ops: Sequence[Op],
    *,
    skip: Sequence[int] = (),
    torn: tuple[int, _Torn] | None = None,
) -> _Disk:
    disk = base.copy()
    skipped = set(skip)
    for i, op in enumerate(ops):
        if i in skipped:
            continue
        if torn is not None and torn[0] == i:
            assert isinstance(op, Write)
            _apply_torn(disk, op, torn[1])
        else:
            disk.apply(op)
    return disk


class _FileReplayer:
    """Content of one file after ``ops`` with one of its data ops left out or torn.

    Keeps the content before the last variant's op, so variants asked for in increasing op
    order cost only the ops after them.
    """

    def __init__(self, base: _Disk, ops: Sequence[Op], inode: int) -> None:
        self._ops = ops
        self._inode = inode
        self._mine = [
            i for i, op in enumerate(ops) if isinstance(op, Write | Truncate) and op.inode == inode
        ]
        self._initial = bytes(base.files.get(inode, b""))
        self._done = 0
        self._disk = _Disk({inode: bytearray(self._initial)}, {})

    def variant(self, i: int, torn: _Torn | None) -> bytearray:
        """The content with op ``i`` (one of this file's) torn, or left out if ``torn`` is None."""
        if self._done and self._mine[self._done - 1] >= i:
            self._done = 0
            self._disk = _Disk({self._inode: bytearray(self._initial)}, {})
        while self._mine[self._done] < i:
            self._disk.apply(self._ops[self._mine[self._done]])
            self._done += 1
        out = _Disk({self._inode: bytearray(self._disk.file(self._inode))}, {})
        op = self._ops[i]
        if torn is not None:
            assert isinstance(op, Write)
            _apply_torn(out, op, torn)
        for j in self._mine[self._done + 1 :]:
            out.apply(self._ops[j])
        return out.file(self._inode)


def _replay_dirs(base: _Disk, ops: Sequence[Op], skip: int) -> dict[int, dict[str, int]]:
    """The directory entries after ``ops`` with op ``skip`` left out."""
    disk = _Disk({}, {i: dict(d) for i, d in base.dirs.items()})
    for i, op in enumerate(ops):
        if i != skip and isinstance(op, Create | Mkdir | Replace | Unlink):
            disk.apply(op)
    return disk.dirs
