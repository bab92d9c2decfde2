"""The one tree of wfstate errors (DESIGN.md §9).

Every error the library raises on purpose derives from :class:`WfstateError`. Errors a caller
may retry as they are (a lock held by someone else, a busy backend) have ``retryable = True``;
all others mean the same call will fail again until something changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final


class WfstateError(Exception):
    """Root of every error wfstate raises on purpose."""

    retryable: bool = False


class ValidationError(WfstateError, ValueError):
    """Bad input, rejected before anything was written. ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CorruptionError(WfstateError):
    """Stored bytes fail their integrity rule. Names the file, the byte offset and the reason."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class TornWriteError(CorruptionError):
    """A torn tail found where the recovery mode tolerates none (``absolute``)."""


class FormatVersionError(WfstateError):
    """A file written by a newer format version than this code reads; never misread."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path}: format version {found} is newer than the supported version {supported}"
        )
        self.path = path
        self.found = found
        self.supported = supported


class SchemaVersionError(WfstateError):
    """A stored document's schema version is one this code cannot read; never misread.

    Either newer than the newest version this code reads (``found > supported``: written by a
    newer wfstate), or older than the oldest version its upgrade chain starts from
    (``found < oldest``: no upgrade is registered for it). ``field`` names the document.
    Not a :class:`ValidationError`: the stored bytes are intact, this code is too old (or
    lacks an upgrade) to read them.
    """

    def __init__(self, field: str, found: int, *, supported: int, oldest: int) -> None:
        if found > supported:
            detail = (
                f"schema version {found} is newer than the newest supported version "
                f"{supported} (written by a newer wfstate)"
            )
        else:
            detail = (
                f"schema version {found} is older than the oldest supported version {oldest}: "
                f"no upgrade from version {found} is registered (this code reads versions "
                f"{oldest} to {supported})"
            )
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.found = found
        self.supported = supported
        self.oldest = oldest


class StorePoisonedError(WfstateError):
    """A write or fsync failed; the store acknowledges nothing more until it is reopened.

    After a failed fsync the kernel may have dropped the dirty pages while reporting later
    fsyncs as successful, so nothing written since the last good sync can be trusted as
    durable. Reopening recovers from what is on disk.
    """


class ClosedError(WfstateError):
    """The object was used after ``close()``."""


class TransactionError(WfstateError):
    """A multi-participant transaction could not be prepared or committed."""


class StaleOwnerError(WfstateError):
    """A write carried a fencing token older than the current owner's."""


class NotFoundError(WfstateError, KeyError):
    """The named workflow, session, checkpoint or record does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else ""


class LockTimeoutError(WfstateError):
    """A lock held by another owner was not released in time."""

    retryable = True


class BackendError(WfstateError):
    """A storage backend failed in a way not covered by a more specific error."""


class StorageIOError(BackendError, OSError):
    """A call of the file system under the store failed: a full disk (``ENOSPC``), an I/O
    error, a permission. Both a :class:`BackendError` (so in the one tree) and an ``OSError``
    (so ``except OSError`` callers keep working), with the cause's ``errno`` and ``strerror``;
    ``filename`` and ``path`` are the file or directory the call was made on, ``operation``
    the call (``create``, ``write``, ``fsync``, ``fsync_dir``, ``rename``, ``unlink``,
    ``read``, ``listdir``, ``lock``...; for the log, what the store was doing with it:
    ``catch up on``, ``read``, ``write``, ``sync``, ``close``; ``open`` for anything failing
    while a store opens). Always raised ``from`` the ``OSError`` of the file system.

    What happened is in the contract of the call that raised it. Writing or renaming a
    checkpoint file or a transaction's temp file changed nothing (the file is removed or left
    as an orphan nothing names) and the store goes on; a failed open acknowledged nothing.
    A failed *sync* is different (:class:`SyncFailedError`): the store stops.
    """

    def __init__(self, operation: str, path: str, errno: int | None, strerror: str | None):
        super().__init__(errno, strerror, path)  # OSError's: sets errno, strerror, filename
        self.operation = operation
        self.path = path

    def __str__(self) -> str:
        code = "" if self.errno is None else f"[Errno {self.errno}] "
        return f"{self.operation} of {self.path} failed: {code}{self.strerror or 'OSError'}"

    def __reduce__(self) -> tuple[type[StorageIOError], tuple[str, str, int | None, str | None]]:
        return type(self), (self.operation, self.path, self.errno, self.strerror)


class SyncFailedError(StorageIOError):
    """An ``fsync``/``fdatasync`` of a file or directory failed (DESIGN.md §3: fatal). The
    kernel may have dropped what the sync covered while later syncs report success
    (fsyncgate), also for *other* changes made meanwhile in the same directory, so the
    store that saw it acknowledges nothing more: it is poisoned, and the call that hit it
    raises :class:`StorePoisonedError` chained to this error. Never retried; reopening
    recovers from what is on disk."""


SYNC_OPERATIONS: Final = frozenset({"fsync", "fdatasync", "fsync_dir"})
"""The :attr:`StorageIOError.operation` names of syncs: their failure is a
:class:`SyncFailedError`."""


def storage_error(operation: str, path: str, cause: OSError) -> StorageIOError:
    """The :class:`StorageIOError` (:class:`SyncFailedError` for an operation of
    :data:`SYNC_OPERATIONS`) for ``cause``, raised by ``operation`` on ``path``; the caller
    raises it ``from cause``. A ``cause`` that already is one is returned as it is (its
    operation and path are the innermost, most precise)."""
    if isinstance(cause, StorageIOError):
        return cause
    kind = SyncFailedError if operation in SYNC_OPERATIONS else StorageIOError
    return kind(operation, path, cause.errno, cause.strerror or str(cause) or None)


@contextmanager
def storage_io(operation: str, path: str) -> Iterator[None]:
    """Within the block, an ``OSError`` of the file system is raised as
    :func:`storage_error` ``(operation, path, cause)`` from it. Control flow on a specific
    ``OSError`` (a ``FileNotFoundError`` meaning "already gone") belongs inside the block."""
    try:
        yield
    except OSError as exc:
        error = storage_error(operation, path, exc)
        if error is exc:
            raise
        raise error from exc


class StepFailedError(WfstateError):
    """A durable step's body raised an error that is not retryable, and the failure is recorded
    (:mod:`wfstate.durable`): raised on the run that failed (``__cause__`` is the original
    exception) and on every later run of the same key, without running the body again.
    ``key``: the step's key; ``error_type``: the original exception's qualified class name;
    ``error``: its message."""

    def __init__(self, key: str, error_type: str, error: str) -> None:
        super().__init__(f"durable step {key!r} failed: {error_type}: {error}")
        self.key = key
        self.error_type = error_type
        self.error = error
