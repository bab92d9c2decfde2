"""Two-phase commit of files in ``workflows/``, ``checkpoints/`` and ``sessions/`` (docs/format.md
§10): a set of files (*participants*) replaced all or none after any crash, optionally
committing checkpoint entries (§9.3) with them.

The protocol, and what may fail where (the ZODB contract: the vote may fail, finish must not):

1. :func:`prepare`, no lock held. Participants are sorted by path, the one order every process
   and recovery use. Each is written to a temp file ``.<name>.<pid>.<hex>.tmp`` beside its final
   path and fsynced, then each directory involved is fsynced once, so every temp file's entry
   is durable before anything can be decided about it. **This is the last step that may
   fail** (a full disk, an I/O error): every temp file is then removed and
   ``TransactionError`` is raised, chained to the :class:`~wfstate.errors.StorageIOError`;
   nothing was decided and nothing a reader sees has changed. When that cause is a
   :class:`~wfstate.errors.SyncFailedError` (an fsync of a temp file or a directory failed)
   the caller must stop acknowledging anyway (DESIGN.md §3: a later sync of the same
   directory could report entries durable that the failed one lost): a store poisons itself.
   Bad input is refused before anything is written (``ValidationError`` naming the field).
2. Decide, under the writers' lock (the caller: a store appends :func:`encode_txn` of the
   prepared :class:`Txn` as a ``TXN`` record and syncs it). **The commit point:** a transaction
   whose ``TXN`` record is durable happened. A failure before the record is queued leaves the
   transaction undecided (the caller may :func:`abandon` it); a failed write or sync of the
   record leaves it unknown: the temp files must then stay, for recovery to decide by reading
   the log.
3. :func:`finish`, under the same tenure of the writers' lock, so no later transaction's file
   is renamed before this one's: each temp file is renamed to its final path in participant
   order, then each directory involved is fsynced once. **It must not fail**; if a rename or
   fsync does, the caller poisons the store (``StorePoisonedError`` from then on) and
   :func:`roll_forward` finishes the transaction at the next open or by the next lock holder.

Crash reasoning. Before the decision is durable the final files are untouched (prepare writes
only temp files), so a crash leaves the old files: the transaction did not happen, and its
temp files are *undecided*; :func:`undecided_temps` finds those whose writer is no longer
running, for the next opener or compaction to delete. Once the decision is durable, every temp
file's content and directory entry are durable too (step 1 synced both before the decision),
so after a crash each participant is either still its temp file, with exactly the recorded
size and checksum, or already renamed (the temp gone, the final path holding its content).
:func:`roll_forward` renames what is left, in participant order, and fsyncs the directories:
all participants then hold their new content. A temp file that fails its size or checksum was
damaged after it was synced: ``CorruptionError`` naming it, and nothing is renamed. Rolling
forward again finds no temp file and renames nothing (idempotent), so a crash during a roll
forward is repaired by the next one. Transactions are rolled forward in LSN order, so a path
replaced by several ends with the latest content.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

import msgspec

from wfstate.checkpointindex import CheckpointInfo, check_entry
from wfstate.errors import CorruptionError, TransactionError, ValidationError, storage_io
from wfstate.format import TXN_DIRS, checkpoint_path, is_txn_id, xxh3
from wfstate.fs import FileSystem, temp_name
from wfstate.payload import ENCODER, decode_versioned

TXN_VERSION: Final = 2
"""The newest ``TXN`` layout; a record is written with the lowest version that holds it
(docs/format.md §10.2: 2 only with a ``batch`` or an imported checkpoint entry)."""

_TEMP: Final = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]+\.tmp$")
"""A temp file name as :func:`wfstate.fs.temp_name` makes it: ``.<name>.<pid>.<hex>.tmp``."""
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f/\\]")
_U64: Final = 1 << 64


class Participant(NamedTuple):
    """One file of a transaction: ``path`` relative to the store (``<dir>/<name>``, ``dir`` one
    of ``workflows``, ``checkpoints``, ``sessions``) and its new ``content``."""

    path: str
    content: bytes


class TxnFile(msgspec.Struct, frozen=True, array_like=True):
    """A participant as the ``TXN`` record names it: ``[path, temp, size, checksum]``."""

    path: str
    temp: str
    size: int
    checksum: int


class Txn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A ``TXN`` record's content (docs/format.md §10.2). Fields in sorted order, so they are
    written sorted. ``sessions``: ``SESSION`` events (§11.1) the record commits, kept as their
    encoded maps (the session layer reads them); omitted when empty. ``batch``: a batch
    document (§5.1) the record commits, empty when none."""

    batch: bytes = b""
    checkpoints: tuple[CheckpointInfo, ...]
    files: tuple[TxnFile, ...]
    id: str
    sessions: tuple[msgspec.Raw, ...] = ()


class _Document(Txn, frozen=True, kw_only=True, omit_defaults=True):
    v: int


def new_txn_id() -> str:
    """A fresh transaction id: ``tx-`` and 16 random lowercase hex digits."""
    return f"tx-{secrets.token_hex(8)}"


# -- validation -------------------------------------------------------------------------------


def is_temp_name(name: str) -> bool:
    """Whether ``name`` has the form of a temp file name (``.<name>.<pid>.<hex>.tmp``)."""
    return _TEMP.match(name) is not None


def running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (temp files carry their writer's pid).
    A reused pid only delays a temp file's deletion to a later open or compaction."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned_temp(name: str) -> bool:
    """Whether ``name`` is a temp file whose writer is no longer running. Such a file is
    either undecided (deleting it is safe) or of a decided transaction, which the caller must
    have rolled forward first (holding the writers' lock)."""
    temp = _TEMP.match(name)
    return temp is not None and not running(int(temp.group(2)))


def _check_path(path: object, field: str) -> tuple[str, str]:
    """``(dir, name)`` of a participant path, or ``ValidationError(field)``."""
    if not isinstance(path, str):
        raise ValidationError(field, f"must be a str, not {type(path).__name__}")
    directory, sep, name = path.partition("/")
    if not sep or directory not in TXN_DIRS:
        raise ValidationError(
            field, f"{path!r} is not <dir>/<name> with <dir> one of {list(TXN_DIRS)}"
        )
    if not name or name in (".", "..") or _CONTROL.search(name) is not None:
        raise ValidationError(
            field, f"{path!r}: the name must be one path component, without control characters"
        )
    if is_temp_name(name):
        raise ValidationError(field, f"{path!r}: the name has the form of a temp file name")
    return directory, name


def check_participants(
    participants: Sequence[Participant], checkpoints: Sequence[CheckpointInfo] = ()
) -> list[Participant]:
    """The participants sorted by path, after checking them and the checkpoint entries that
    will be committed with them; ``ValidationError`` naming the field otherwise (nothing is
    written): ``participants`` a non-empty sequence of ``(path, content)``, each path a valid,
    distinct ``<dir>/<name>`` (:func:`_check_path`), each content bytes; each checkpoint a
    :class:`CheckpointInfo` whose ``file`` is a participant in ``checkpoints/`` with the entry's
    ``size``, ids distinct."""
    if isinstance(participants, str | bytes) or not isinstance(participants, Sequence):
        raise ValidationError("participants", "must be a sequence of (path, content)")
    if not participants:
        raise ValidationError("participants", "a transaction needs at least one file")
    checked: list[Participant] = []
    seen: dict[str, int] = {}
    for i, participant in enumerate(participants):
        if not isinstance(participant, tuple) or len(participant) != 2:
            raise ValidationError(f"participants[{i}]", "must be a (path, content) pair")
        path, content = participant
        _check_path(path, f"participants[{i}].path")
        if not isinstance(content, bytes | bytearray | memoryview):
            raise ValidationError(
                f"participants[{i}].content", f"must be bytes, not {type(content).__name__}"
            )
        if path in seen:
            raise ValidationError(
                f"participants[{i}].path", f"{path!r} is also participants[{seen[path]}]"
            )
        seen[path] = i
        checked.append(Participant(path, bytes(content)))
    if isinstance(checkpoints, str | bytes) or not isinstance(checkpoints, Sequence):
        raise ValidationError("checkpoints", "must be a sequence of CheckpointInfo")
    ids: set[str] = set()
    for i, info in enumerate(checkpoints):
        if not isinstance(info, CheckpointInfo):
            raise ValidationError(f"checkpoints[{i}]", "must be a CheckpointInfo")
        try:
            check_entry(info)
        except ValidationError as exc:
            raise ValidationError(f"checkpoints[{i}]", str(exc)) from exc
        at = seen.get(checkpoint_path(info.file))
        if at is None:
            raise ValidationError(
                f"checkpoints[{i}].file", f"{info.file!r} is not a participant in checkpoints/"
            )
        if len(checked[at].content) != info.size:
            raise ValidationError(
                f"checkpoints[{i}].size",
                f"{info.size} is not the size of participants[{at}] ({len(checked[at].content)})",
            )
        if info.id in ids:
            raise ValidationError(f"checkpoints[{i}].id", f"{info.id} is named twice")
        ids.add(info.id)
    return sorted(checked, key=lambda p: p.path)


# -- the protocol -----------------------------------------------------------------------------


def prepare(
    fs: FileSystem,
    root: str,
    participants: Sequence[Participant],
    *,
    checkpoints: Sequence[CheckpointInfo] = (),
    sessions: Sequence[bytes] = (),
    batch: bytes = b"",
    txn_id: str | None = None,
) -> Txn:
    """Step 1: write every participant of the store in directory ``root`` to its temp file,
    fsynced, in path order, then fsync each directory involved; return the :class:`Txn` to
    decide (its ``TXN`` record's content, with ``batch``: a batch document the record
    commits). No lock is needed.

    ``ValidationError`` for bad input (:func:`check_participants`), before anything is written.
    Any other failure (a :class:`~wfstate.errors.StorageIOError` for the file system's
    ``OSError``, an interruption) removes every temp file written so far and raises
    ``TransactionError`` chained to it: nothing was decided, no final file changed. A cause
    that is a :class:`~wfstate.errors.SyncFailedError` obliges the caller to stop (module
    docstring).
    """
    ordered = check_participants(participants, checkpoints)
    if isinstance(sessions, str | bytes) or not all(isinstance(s, bytes) for s in sessions):
        raise ValidationError("sessions", "must be a sequence of encoded SESSION maps (bytes)")
    if txn_id is None:
        txn_id = new_txn_id()
    elif not is_txn_id(txn_id):
        raise ValidationError("txn_id", f"must be `tx-` and 16 lowercase hex digits: {txn_id!r}")
    written: list[str] = []
    files: list[TxnFile] = []
    try:
        for participant in ordered:
            final = os.path.join(root, participant.path)
            temp = temp_name(final)
            with storage_io("create", temp):
                fd = fs.create_exclusive(temp)
            written.append(temp)
            try:
                with storage_io("write", temp):
                    fs.write(fd, participant.content)
                with storage_io("fsync", temp):
                    fs.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # the first failure is the one raised
                    fs.close(fd)
                raise
            with storage_io("close", temp):
                fs.close(fd)
            files.append(
                TxnFile(
                    participant.path,
                    os.path.basename(temp),
                    len(participant.content),
                    xxh3(participant.content),
                )
            )
        for directory in _directories(root, files):
            with storage_io("fsync_dir", directory):
                fs.fsync_dir(directory)
    except BaseException as exc:
        for temp in written:
            with contextlib.suppress(OSError):
                fs.unlink(temp)
        if isinstance(exc, Exception):
            raise TransactionError(
                f"transaction {txn_id}: preparing {len(ordered)} files failed, nothing was "
                f"decided and every temp file is removed: {exc}"
            ) from exc
        raise
    return Txn(
        batch=batch,
        checkpoints=tuple(checkpoints),
        files=tuple(files),
        id=txn_id,
        sessions=tuple(msgspec.Raw(s) for s in sessions),
    )


def abandon(fs: FileSystem, root: str, txn: Txn) -> None:
    """Remove the temp files of a prepared transaction that was certainly not decided (its
    ``TXN`` record was never queued). Best effort: a file left behind is undecided and is
    deleted later (:func:`undecided_temps`)."""
    for file in txn.files:
        with contextlib.suppress(OSError):
            fs.unlink(_temp_path(root, file))


def finish(fs: FileSystem, root: str, txn: Txn) -> None:
    """Step 3, holding the writers' lock in the tenure that decided ``txn``: rename each temp
    file to its final path in participant order, then fsync each directory involved once.

    Must not fail: a :class:`~wfstate.errors.StorageIOError` (or anything else) raised here
    means the transaction is decided but not known finished; the caller poisons the store and
    leaves the rest to :func:`roll_forward` (at the next open, or by the next holder of the
    writers' lock).
    """
    for file in txn.files:
        temp = _temp_path(root, file)
        with storage_io("rename", temp):
            fs.replace(temp, os.path.join(root, file.path))
    for directory in _directories(root, txn.files):
        with storage_io("fsync_dir", directory):
            fs.fsync_dir(directory)


def roll_forward(fs: FileSystem, root: str, txns: Iterable[Txn]) -> list[str]:
    """Finish decided transactions ``txns`` (in LSN order), holding the writers' lock; return
    the paths renamed into place.

    For each participant: a temp file that exists must have the recorded size and checksum
    (else ``CorruptionError`` naming it: it was synced before the decision, so this is
    damage), and is renamed to its final path; one that does not exist was renamed already.
    Every temp file of every transaction is verified before anything is renamed, so a
    ``CorruptionError`` changes nothing. Then every directory involved is fsynced, also when
    nothing was renamed here (a decider that died between its renames and its directory syncs
    left renames that are not yet durable). Idempotent: a second call renames nothing.
    A failed read, rename or sync raises :class:`~wfstate.errors.StorageIOError` (the caller
    stops: a decided transaction is not known finished).
    """
    todo: list[tuple[str, str]] = []
    directories: dict[str, None] = {}
    for txn in txns:
        for file in txn.files:
            directories[os.path.dirname(os.path.join(root, file.path))] = None
            temp = _temp_path(root, file)
            with storage_io("read", temp):
                try:
                    data = fs.read_file(temp)
                except FileNotFoundError:
                    continue  # already renamed
            if len(data) != file.size or xxh3(data) != file.checksum:
                raise CorruptionError(
                    temp,
                    0,
                    f"transaction {txn.id}: the temp file of {file.path} has {len(data)} bytes "
                    f"and checksum {xxh3(data):#018x}, its TXN record says {file.size} bytes "
                    f"and {file.checksum:#018x}; it was synced before the decision, so it is "
                    "damaged (nothing was renamed)",
                )
            todo.append((temp, os.path.join(root, file.path)))
    for temp, final in todo:
        with storage_io("rename", temp):
            fs.replace(temp, final)
    for directory in directories:
        with storage_io("fsync_dir", directory):
            fs.fsync_dir(directory)
    return [final for _temp, final in todo]


def undecided_temps(fs: FileSystem, directory: str) -> list[str]:
    """Names of the temp files in ``directory`` whose writer is no longer running, sorted.
    Meaningful only to the holder of the writers' lock that has rolled forward every decided
    transaction it knows of: those files are then undecided, and deleting them is safe (a
    missing directory has none)."""
    with storage_io("listdir", directory):
        try:
            names = fs.listdir(directory)
        except FileNotFoundError:
            return []
    return [name for name in names if is_abandoned_temp(name)]


# -- the TXN payload --------------------------------------------------------------------------


def encode_txn(txn: Txn) -> bytes:
    """The ``TXN`` record payload of ``txn`` (docs/format.md §10.2), keys sorted."""
    newer = bool(txn.batch) or any(info.origin == 0 for info in txn.checkpoints)
    return ENCODER.encode(
        _Document(
            batch=txn.batch,
            checkpoints=txn.checkpoints,
            files=txn.files,
            id=txn.id,
            sessions=txn.sessions,
            v=TXN_VERSION if newer else 1,
        )
    )


def decode_txn(data: bytes) -> Txn:
    """A ``TXN`` record payload: ``SchemaVersionError`` for a newer ``v``, ``ValidationError``
    (field ``txn...``) for anything malformed or that no writer produces: an id of the wrong
    form, files not sorted by path or named twice, a path or temp name outside the rules, a
    size or checksum out of range, a checkpoint entry that is invalid or names no file of the
    record."""
    document = decode_versioned(data, _Document, "txn", TXN_VERSION)
    if not is_txn_id(document.id):
        raise ValidationError("txn.id", f"not a transaction id: {document.id!r}")
    if not document.files:
        raise ValidationError("txn.files", "no file")
    for i, file in enumerate(document.files):
        field = f"txn.files[{i}]"
        _check_path(file.path, f"{field}.path")
        name = os.path.basename(file.path)
        if re.fullmatch(re.escape(f".{name}") + r"\.\d+\.[0-9a-f]+\.tmp", file.temp) is None:
            raise ValidationError(
                f"{field}.temp", f"{file.temp!r} is not a temp file name of {file.path!r}"
            )
        if not 0 <= file.size < _U64 or not 0 <= file.checksum < _U64:
            raise ValidationError(field, f"size {file.size}, checksum {file.checksum}")
        if i and file.path <= document.files[i - 1].path:
            raise ValidationError(f"{field}.path", "files are not sorted by path, or repeat")
    paths = {file.path: file for file in document.files}
    for i, info in enumerate(document.checkpoints):
        check_entry(info)
        named = paths.get(checkpoint_path(info.file))
        if named is None or named.size != info.size:
            raise ValidationError(
                f"txn.checkpoints[{i}].file", f"{info.file!r} is not a file of this record"
            )
    if document.v < 2 and (
        document.batch or any(info.origin == 0 for info in document.checkpoints)
    ):
        raise ValidationError("txn.v", "a batch or an imported checkpoint needs version 2")
    return Txn(
        batch=document.batch,
        checkpoints=document.checkpoints,
        files=document.files,
        id=document.id,
        sessions=document.sessions,
    )


# -- names ------------------------------------------------------------------------------------


def _temp_path(root: str, file: TxnFile) -> str:
    return os.path.join(root, os.path.dirname(file.path), file.temp)


def in_doubt_files(fs: FileSystem, root: str, txn: Txn) -> list[str]:
    """The participant paths of decided ``txn`` whose temp file is still there (not yet renamed
    into place: what a roll forward will rename), in participant order."""
    return [file.path for file in txn.files if fs.exists(_temp_path(root, file))]


def _directories(root: str, files: Iterable[TxnFile]) -> list[str]:
    """The directories of ``files``, each once, in participant order."""
    return list(dict.fromkeys(os.path.dirname(os.path.join(root, f.path)) for f in files))
