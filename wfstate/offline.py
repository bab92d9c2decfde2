"""Opening an existing store for an operator's command: read-only, or repairing with evidence.

The operator's commands (``python -m wfstate recover``, ``verify``, ``inspect`` …) never create a
store: :func:`require_store` refuses a path that is not one, naming what is missing, before
anything is opened. Then

* :func:`open_read_only` runs the store's real open (log recovery, transactions rolled forward,
  undecided temp files removed) on a :class:`~wfstate.shadowfs.ShadowFileSystem`: what it finds
  and would repair is real, and nothing reaches the disk;
* :func:`open_repairing` runs the same open on the disk through a
  :class:`~wfstate.repairfs.RepairFileSystem`: every file it would delete goes to
  ``<store>/quarantine/`` instead, and every change is recorded.

Both wrap the file system in a ``RepairFileSystem``, so the actions a plan lists and the actions
an apply performs come from the same code on the same bytes. The writers' lock is taken as by
any open (waiting up to ``lock_timeout``), so a repair never runs while another process writes.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import NotFoundError
from wfstate.format import WAL_DIR, parse_segment_name
from wfstate.fs import OS_FS, FileSystem
from wfstate.repairfs import RepairFileSystem
from wfstate.shadowfs import ShadowFileSystem
from wfstate.wal import LogDamage, RecoveryMode

__all__ = [
    "OfflineStore",
    "open_read_only",
    "open_repairing",
    "relative_damage",
    "require_store",
]

DEFAULT_LOCK_TIMEOUT = 10.0
"""Seconds an operator's command waits for the writers' lock held by a running process."""


class OfflineStore(NamedTuple):
    """A store opened for an operator's command and the file system recording its changes."""

    store: LocalStore
    fs: RepairFileSystem


def require_store(path: str, fs: FileSystem = OS_FS) -> str:
    """``path`` normalised if it is a wfstate store directory, else ``NotFoundError`` saying
    what is missing (the path, a directory, its ``wal/`` log with at least one segment)."""
    if not fs.exists(path):
        raise NotFoundError(f"{path}: no such file or directory")
    if not fs.is_dir(path):
        raise NotFoundError(f"{path}: not a directory, so not a wfstate store")
    wal = os.path.join(path, WAL_DIR)
    if not fs.is_dir(wal) or not any(parse_segment_name(n) for n in fs.listdir(wal)):
        raise NotFoundError(f"{path}: not a wfstate store (no log segments in {WAL_DIR}/)")
    return os.path.normpath(path)


def _open(path: str, base: FileSystem, mode: RecoveryMode, lock_timeout: float) -> OfflineStore:
    path = require_store(path)
    fs = RepairFileSystem(base, path)
    # an operator's command does no automatic work: no checkpoint, no compaction on close
    store = LocalStore.open(
        path, mode=mode, fs=fs, lock_timeout=lock_timeout, checkpoints=MANUAL_ONLY
    )
    return OfflineStore(store, fs)


def open_read_only(
    path: str,
    *,
    mode: RecoveryMode = "tolerate_torn_tail",
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> OfflineStore:
    """Open the store at ``path`` with every change kept in memory (module docstring)."""
    return _open(path, ShadowFileSystem(OS_FS), mode, lock_timeout)


def open_repairing(
    path: str,
    *,
    mode: RecoveryMode = "tolerate_torn_tail",
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> OfflineStore:
    """Open the store at ``path`` for real, deleting nothing (module docstring)."""
    return _open(path, OS_FS, mode, lock_timeout)


def relative_damage(root: str, damage: LogDamage) -> LogDamage:
    """``damage`` with its path relative to the store directory ``root`` (for reports)."""
    return LogDamage(
        damage.kind, os.path.relpath(damage.path, root), damage.offset, damage.length,
        damage.reason,
    )  # fmt: skip
