"""The file system recovery runs on when an operator asks for it: nothing is deleted, all is told.

:class:`RepairFileSystem` wraps another :class:`~wfstate.fs.FileSystem` (the real one for
``recover --apply``, a :class:`~wfstate.shadowfs.ShadowFileSystem` for the read-only plan) and

* turns every ``unlink`` below the store into a move to ``<store>/quarantine/<same relative
  path>`` (the first free name: evidence never overwrites evidence), made durable by syncing
  the quarantine directory and then the directory the file left; so a repair never destroys a
  file (an undecided transaction's temp file, a dropped bad checkpoint, a discarded segment a
  crash left behind), and
* records every change it passes on as a :class:`RepairAction`, in order, which is what the plan
  and the repair report list.

Crash reasoning for the move: a rename is atomic; until both directory syncs complete a crash
leaves the file at its old name or at its quarantine name, never neither, and the recovery run
again after such a crash finds it where the crash left it (at its old name it is moved again).
"""

from __future__ import annotations

import os
import threading
from typing import Literal

import msgspec

from wfstate.format import QUARANTINE_DIR
from wfstate.fs import FileSystem, make_dirs
from wfstate.twophase import is_temp_name

__all__ = ["ActionKind", "RepairAction", "RepairFileSystem", "folded_writes"]

ActionKind = Literal["create", "write", "truncate", "rename", "quarantine", "mkdir"]


class RepairAction(msgspec.Struct, frozen=True, kw_only=True):
    """One change recovery made. Paths are relative to the store directory.

    ``create``: a new file ``path``. ``write``: ``size`` bytes written to ``path``.
    ``truncate``: ``path`` cut from ``from_size`` to ``size`` bytes. ``rename``: ``path`` put
    in place as ``to`` (a file written whole, a rolled-forward transaction file, bytes set
    aside as ``*.broken-*`` evidence). ``quarantine``: ``path`` (``size`` bytes) moved to
    ``to`` instead of being deleted. ``mkdir``: a directory created.
    """

    kind: ActionKind
    path: str
    to: str = ""
    size: int = 0
    from_size: int = 0


class RepairFileSystem:
    """``base`` with unlinks below ``root`` turned into quarantine moves, and changes recorded."""

    def __init__(self, base: FileSystem, root: str) -> None:
        self._fs = base
        self.root = os.path.normpath(root)
        self.quarantine = os.path.join(self.root, QUARANTINE_DIR)
        self._actions: list[RepairAction] = []
        self._paths: dict[int, str] = {}
        self._mutex = threading.Lock()

    @property
    def actions(self) -> list[RepairAction]:
        """The changes made so far, in order."""
        with self._mutex:
            return list(self._actions)

    def _rel(self, path: str) -> str:
        return os.path.relpath(os.path.normpath(path), self.root)

    def _record(self, action: RepairAction) -> None:
        with self._mutex:
            self._actions.append(action)

    # -- reads pass through ---------------------------------------------------------------------
    def read_file(self, path: str) -> bytes:
        return self._fs.read_file(path)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        return self._fs.read_range(path, offset, size)

    def file_size(self, path: str) -> int:
        return self._fs.file_size(path)

    def exists(self, path: str) -> bool:
        return self._fs.exists(path)

    def is_dir(self, path: str) -> bool:
        return self._fs.is_dir(path)

    def listdir(self, path: str) -> list[str]:
        return self._fs.listdir(path)

    # -- changes are recorded -----------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        self._fs.mkdir(path)
        self._record(RepairAction(kind="mkdir", path=self._rel(path)))

    def create_exclusive(self, path: str) -> int:
        fd = self._fs.create_exclusive(path)
        with self._mutex:
            self._paths[fd] = path
        self._record(RepairAction(kind="create", path=self._rel(path)))
        return fd

    def open_append(self, path: str) -> int:
        fd = self._fs.open_append(path)
        with self._mutex:
            self._paths[fd] = path
        return fd

    def _path_of(self, fd: int) -> str:
        with self._mutex:
            return self._paths.get(fd, f"<descriptor {fd}>")

    def write(self, fd: int, data: bytes | memoryview) -> None:
        self._fs.write(fd, data)
        self._record(RepairAction(kind="write", path=self._rel(self._path_of(fd)), size=len(data)))

    def truncate(self, fd: int, size: int) -> None:
        path = self._path_of(fd)
        before = self._fs.file_size(path) if self._fs.exists(path) else 0
        self._fs.truncate(fd, size)
        self._record(
            RepairAction(kind="truncate", path=self._rel(path), size=size, from_size=before)
        )

    def fsync(self, fd: int) -> None:
        self._fs.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._fs.fdatasync(fd)

    def close(self, fd: int) -> None:
        self._fs.close(fd)
        with self._mutex:
            self._paths.pop(fd, None)

    def dup(self, fd: int) -> int:
        copy = self._fs.dup(fd)
        with self._mutex:
            self._paths[copy] = self._paths.get(fd, f"<descriptor {fd}>")
        return copy

    def replace(self, src: str, dst: str) -> None:
        self._fs.replace(src, dst)
        self._record(RepairAction(kind="rename", path=self._rel(src), to=self._rel(dst)))

    def unlink(self, path: str) -> None:
        """Move ``path`` into the quarantine (durably) instead of deleting it; paths outside
        the store are deleted as asked."""
        path = os.path.normpath(path)
        rel = self._rel(path)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            self._fs.unlink(path)
            return
        size = self._fs.file_size(path)
        target = os.path.join(self.quarantine, rel)
        make_dirs(self._fs, os.path.dirname(target))
        candidate, n = target, 0
        while self._fs.exists(candidate):
            n += 1
            candidate = f"{target}.{n}"
        self._fs.replace(path, candidate)
        self._fs.fsync_dir(os.path.dirname(candidate))
        self._fs.fsync_dir(os.path.dirname(path))
        self._record(RepairAction(kind="quarantine", path=rel, to=self._rel(candidate), size=size))

    def fsync_dir(self, path: str) -> None:
        self._fs.fsync_dir(path)

    # -- locks pass through -------------------------------------------------------------------
    def open_lock(self, path: str) -> object:
        return self._fs.open_lock(path)

    def try_lock(self, handle: object) -> bool:
        return self._fs.try_lock(handle)

    def unlock(self, handle: object) -> None:
        self._fs.unlock(handle)

    def close_lock(self, handle: object) -> None:
        self._fs.close_lock(handle)

    def read_lock_data(self, handle: object, size: int) -> bytes:
        return self._fs.read_lock_data(handle, size)

    def write_lock_data(self, handle: object, data: bytes) -> None:
        self._fs.write_lock_data(handle, data)


def folded_writes(actions: list[RepairAction]) -> list[RepairAction]:
    """``actions`` with each whole-file write (a temp file created, written and renamed into
    place: :func:`wfstate.fs.atomic_write`, a checkpoint, a record's ``*.broken-*`` evidence)
    shown as one ``write`` of its final path with the bytes written. Everything else, and temp
    files not renamed, stay as they are."""
    written: dict[str, int] = {}
    out: list[RepairAction] = []
    for action in actions:
        name = os.path.basename(action.path)
        if action.kind == "create" and is_temp_name(name):
            written[action.path] = 0
        elif action.kind == "write" and action.path in written:
            written[action.path] += action.size
        elif action.kind == "rename" and action.path in written:
            out.append(RepairAction(kind="write", path=action.to, size=written.pop(action.path)))
        else:
            out.append(action)
    for path, size in written.items():
        out.append(RepairAction(kind="create", path=path, size=size))
    return out
