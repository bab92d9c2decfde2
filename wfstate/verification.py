"""A full offline integrity check of a store: ``python -m wfstate verify``. Changes nothing.

Checked, each against its own checksums and the rules of docs/format.md:

* the **log**: every record of every segment is read and decoded (a scan in the
  ``skip_corrupted`` mode on a shadow of the store, so that *all* damage is listed, not only the
  first), chained checksums, epochs and segment headers included;
* the **store opened as any process would** (default mode, on a shadow): the START file and
  anchor, transactions; what that open would repair is listed as pending repairs;
* every **checkpoint** in the index (checksums, parent chain, the state it yields, and, where
  the log still holds the workflow's history, equality with the log replayed to its LSN);
* every **workflow** is built (newest valid checkpoint plus the log);
* every **state file** ``workflows/*.state`` and **session file** ``sessions/*.session``.

``clean`` means no problem and nothing to repair; ``needs_repair`` that ``recover --apply``
has work (or a file is damaged); ``unrecoverable`` that the default open refuses or a workflow
cannot be built.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec

from wfstate.errors import CorruptionError, NotFoundError, WfstateError
from wfstate.format import (
    SESSION_FILE_SUFFIX,
    SESSIONS_DIR,
    WORKFLOW_STATE_SUFFIX,
    WORKFLOWS_DIR,
)
from wfstate.fs import FileSystem
from wfstate.offline import DEFAULT_LOCK_TIMEOUT, open_read_only, relative_damage
from wfstate.progress import Progress, quiet
from wfstate.recoveryplan import load_workflows
from wfstate.repairfs import RepairAction, folded_writes
from wfstate.sessions import decode_session_file
from wfstate.wal import LogDamage

__all__ = ["FileProblem", "VerifyReport", "verify_store"]


class FileProblem(msgspec.Struct, frozen=True, kw_only=True):
    """A file (relative to the store) or checkpoint that failed a check, and why."""

    path: str
    problem: str


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`verify_store` checked and found (module docstring)."""

    store: str
    status: Literal["clean", "needs_repair", "unrecoverable"]
    log_damage: tuple[LogDamage, ...]
    open_refused: str | None
    pending_repairs: tuple[RepairAction, ...]
    checkpoints_checked: int
    checkpoint_problems: tuple[FileProblem, ...]
    workflows_checked: int
    workflow_problems: tuple[FileProblem, ...]
    state_files_checked: int
    session_files_checked: int
    file_problems: tuple[FileProblem, ...]

    @property
    def problems(self) -> int:
        return (
            len(self.log_damage) + len(self.checkpoint_problems) + len(self.workflow_problems)
            + len(self.file_problems) + (self.open_refused is not None)
        )  # fmt: skip


def verify_store(
    path: str, *, progress: Progress = quiet, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> VerifyReport:
    """Check everything in the store at ``path`` (module docstring); the disk is not changed.
    ``NotFoundError`` if ``path`` is not a store."""
    scan = open_read_only(path, mode="skip_corrupted", lock_timeout=lock_timeout)
    root = scan.store.path
    try:
        damage = tuple(relative_damage(root, d) for d in scan.store.open_report.log_damage)
    finally:
        scan.store.close()
    try:
        offline = open_read_only(path, lock_timeout=lock_timeout)
    except CorruptionError as exc:
        return VerifyReport(
            store=root, status="unrecoverable", log_damage=damage, open_refused=str(exc),
            pending_repairs=(), checkpoints_checked=0, checkpoint_problems=(),
            workflows_checked=0, workflow_problems=(), state_files_checked=0,
            session_files_checked=0, file_problems=(),
        )  # fmt: skip
    store = offline.store
    try:
        infos = store.checkpoints()
        checkpoint_problems = []
        for info in progress(infos, label="checkpoints", total=len(infos)):
            try:
                checks = store.verify(info.id)
            except NotFoundError:
                continue
            checkpoint_problems += [
                FileProblem(path=f"checkpoints/{c.checkpoint.file}", problem=c.problem or "")
                for c in checks
                if not c.ok or c.matches_log is False
            ]
        loaded = load_workflows(store, progress)
        workflow_problems = [
            FileProblem(path=w.workflow_id, problem=w.problem or "")
            for w in loaded
            if not w.recoverable
        ]
        state_files = _names(offline.fs, root, WORKFLOWS_DIR, WORKFLOW_STATE_SUFFIX)
        file_problems = []
        for name in progress(state_files, label="state files", total=len(state_files)):
            try:
                store.read_state_file(name[: -len(WORKFLOW_STATE_SUFFIX)])
            except WfstateError as exc:
                file_problems.append(FileProblem(path=f"{WORKFLOWS_DIR}/{name}", problem=str(exc)))
        session_files = _names(offline.fs, root, SESSIONS_DIR, SESSION_FILE_SUFFIX)
        for name in progress(session_files, label="session files", total=len(session_files)):
            file = os.path.join(root, SESSIONS_DIR, name)
            try:
                decode_session_file(offline.fs.read_file(file), file)
            except WfstateError as exc:
                file_problems.append(FileProblem(path=f"{SESSIONS_DIR}/{name}", problem=str(exc)))
        pending = tuple(folded_writes(offline.fs.actions))
    finally:
        store.close()
    if workflow_problems:
        status: Literal["clean", "needs_repair", "unrecoverable"] = "unrecoverable"
    elif damage or pending or checkpoint_problems or file_problems:
        status = "needs_repair"
    else:
        status = "clean"
    return VerifyReport(
        store=root, status=status, log_damage=damage, open_refused=None,
        pending_repairs=pending, checkpoints_checked=len(infos),
        checkpoint_problems=tuple(checkpoint_problems), workflows_checked=len(loaded),
        workflow_problems=tuple(workflow_problems), state_files_checked=len(state_files),
        session_files_checked=len(session_files), file_problems=tuple(file_problems),
    )  # fmt: skip


def _names(fs: FileSystem, root: str, directory: str, suffix: str) -> list[str]:
    try:
        names = fs.listdir(os.path.join(root, directory))
    except FileNotFoundError:
        return []
    return [n for n in names if n.endswith(suffix) and not n.startswith(".")]
