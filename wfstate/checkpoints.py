"""The checkpoint files of a store directory: written in two steps, read back verified.

Writing follows docs/format.md §9.3. :meth:`CheckpointFiles.prepare` encodes a checkpoint and
writes it to a temp file, fsynced, outside the writers' lock: that is where a full disk or an
I/O error surfaces, and nothing any reader sees has changed. :meth:`CheckpointFiles.install`
renames it into place and fsyncs the directory; the caller does that holding the writers'
lock and then appends the ``CHECKPOINT`` record, the commit point. Until that record is durable
the file is an orphan no index names: never read, and deleted by the next compaction (which
holds the lock, so it can never take a file another process is between rename and record).

Reading (:meth:`CheckpointFiles.read_state`) verifies everything §9.1 lists: the header and
payload checksums, that the file is the one its index entry names (the entry's checksum is
the file's header checksum), that an incremental's parents are all in the index and read, and
that the state produced has the checksum recorded at creation. Any failure is a
``CorruptionError`` naming the file; the caller falls back to an older checkpoint (§9.7).

I/O failures are :class:`~wfstate.errors.StorageIOError` naming the call and the file (never
a bare ``OSError``), raised from the file system's error. A failed fsync (of a temp file, or
of the directory after a rename or deletions) is its subclass
:class:`~wfstate.errors.SyncFailedError`: the caller must stop acknowledging (DESIGN.md §3;
the store poisons itself), since what the sync covered, and other entries made in the
directory meanwhile, may be lost while a later sync reports success. A failed create or write
(a full disk) before any sync is not fatal: the temp file is removed (or, if even that
fails, left as an orphan for the next compaction), no index names it, and the store goes on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import NamedTuple

from wfstate.checkpointfile import decode_checkpoint, encode_checkpoint, read_header, yielded_state
from wfstate.checkpointindex import CheckpointIndex, CheckpointInfo
from wfstate.delta import compute_delta
from wfstate.errors import CorruptionError, SchemaVersionError, storage_io
from wfstate.format import CHECKPOINT_SUFFIX, checkpoint_file_name
from wfstate.fs import FileSystem, temp_name
from wfstate.model import WorkflowState, state_checksum
from wfstate.statetable import stamped_with
from wfstate.twophase import is_abandoned_temp
from wfstate.wal.codec import Compression


class Prepared(NamedTuple):
    """A checkpoint file written and fsynced under a temp name, not yet in place."""

    temp: str
    info: CheckpointInfo
    state: WorkflowState


class CheckpointFiles:
    """The files of ``directory`` (``<store>/checkpoints``) of the store with ``epoch``."""

    def __init__(
        self, fs: FileSystem, directory: str, epoch: int, compression: Compression | None
    ) -> None:
        self._fs = fs
        self.directory = directory
        self._epoch = epoch
        self._compression = compression

    def path(self, info: CheckpointInfo) -> str:
        return os.path.join(self.directory, info.file)

    def prepare(
        self,
        template: CheckpointInfo,
        state: WorkflowState,
        parent: tuple[CheckpointInfo, WorkflowState] | None,
        *,
        folded: bool = False,
    ) -> Prepared:
        """Write the checkpoint ``template`` describes (its ``size``, ``checksum`` and ``file``
        are filled in here) holding ``state``: incremental from ``parent`` (its entry and the
        state it yields) when given, else full. Raises ``StorageIOError`` for a failed create,
        write or close, ``SyncFailedError`` for a failed fsync (the caller stops); the temp
        file is removed either way (best effort: one left is an orphan)."""
        file = checkpoint_file_name(template.id, folded=folded)
        data = encode_checkpoint(
            checkpoint_id=template.id,
            workflow_id=template.workflow_id,
            origin=template.origin,
            lsn=template.lsn,
            epoch=self._epoch,
            parent=parent[0].id if parent is not None else None,
            state=state if parent is None else None,
            delta=compute_delta(parent[1], state) if parent is not None else None,
            # a full checkpoint's checksum is computed from the bytes it stores (one encoding)
            state_checksum=state_checksum(state) if parent is not None else None,
            compression=self._compression,
        )
        header = read_header(data, file)
        info = CheckpointInfo(
            id=template.id,
            workflow_id=template.workflow_id,
            origin=template.origin,
            lsn=template.lsn,
            parent=parent[0].id if parent is not None else None,
            session_id=template.session_id,
            type=template.type,
            tags=template.tags,
            description=template.description,
            file=file,
            size=len(data),
            checksum=header.header_checksum,
            created=template.created,
        )
        temp = temp_name(os.path.join(self.directory, file))
        with storage_io("create", temp):
            fd = self._fs.create_exclusive(temp)
        try:
            try:
                with storage_io("write", temp):
                    self._fs.write(fd, data)
                with storage_io("fsync", temp):
                    self._fs.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # the first failure is the one raised
                    self._fs.close(fd)
                raise
            with storage_io("close", temp):
                self._fs.close(fd)
        except BaseException:
            self._remove_quietly(temp)
            raise
        return Prepared(temp, info, state)

    def install(self, prepared: Prepared) -> None:
        """Rename the prepared file into place and make that durable. Call holding the
        writers' lock, and append the ``CHECKPOINT`` record right after. ``StorageIOError``
        for a failed rename (the temp file stays, for :meth:`abandon`), ``SyncFailedError``
        for a failed directory sync (the rename may or may not last: the file is an orphan
        until a record names it; the caller stops)."""
        with storage_io("rename", prepared.temp):
            self._fs.replace(prepared.temp, self.path(prepared.info))
        with storage_io("fsync_dir", self.directory):
            self._fs.fsync_dir(self.directory)

    def abandon(self, prepared: Prepared) -> None:
        """Remove a prepared file that will not be committed."""
        self._remove_quietly(prepared.temp)

    def read_state(self, info: CheckpointInfo, index: CheckpointIndex) -> WorkflowState:
        """The state checkpoint ``info`` yields, verified (module docstring)."""
        chain = index.chain(info)
        if chain is None:
            raise CorruptionError(
                self.path(info), 0, f"checkpoint {info.id}: a parent is missing from the index"
            )
        state: WorkflowState | None = None
        for link in chain:
            path = self.path(link)
            with storage_io("read", path):
                try:
                    data = self._fs.read_file(path)
                except FileNotFoundError as exc:
                    raise CorruptionError(path, 0, f"checkpoint {link.id}: file missing") from exc
            try:
                decoded = decode_checkpoint(data, path, epoch=self._epoch)
            except SchemaVersionError as exc:  # intact, but not readable by this version
                raise CorruptionError(path, 0, f"checkpoint {link.id}: {exc}") from exc
            _check_entry(decoded, link, path)
            state = yielded_state(decoded, state, path)
        if state is not None:  # a full checkpoint stores no LSN stamp: it is the entry's
            state = stamped_with(state, info.lsn)
        assert state is not None
        return state

    def delete(self, files: Iterable[str]) -> list[str]:
        """Delete ``files`` (names in the directory) and fsync it; returns those deleted.
        ``StorageIOError`` for a failed unlink (the files not yet deleted stay, as orphans),
        ``SyncFailedError`` for a failed directory sync (the caller stops)."""
        deleted = []
        for name in files:
            path = os.path.join(self.directory, name)
            with storage_io("unlink", path):
                try:
                    self._fs.unlink(path)
                except FileNotFoundError:
                    continue
            deleted.append(name)
        if deleted:
            with storage_io("fsync_dir", self.directory):
                self._fs.fsync_dir(self.directory)
        return deleted

    def orphans(self, index: CheckpointIndex) -> list[str]:
        """Files no index entry names: checkpoint files a crash left uncommitted or dropped
        but not yet deleted, and temp files of processes no longer running. Meaningful only
        to the writers' lock holder (an uncommitted file is renamed in only under it)."""
        named = index.files()
        found = []
        with storage_io("listdir", self.directory):
            names = self._fs.listdir(self.directory)
        for name in names:
            unnamed = name.endswith(CHECKPOINT_SUFFIX) and name not in named
            if unnamed or is_abandoned_temp(name):
                found.append(name)
        return sorted(found)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self._fs.unlink(path)


def _check_entry(decoded: object, info: CheckpointInfo, path: str) -> None:
    """The file must be the one ``info`` names (docs/format.md §9.1)."""
    expected = {
        "checkpoint_id": info.id,
        "workflow_id": info.workflow_id,
        "origin": info.origin,
        "lsn": info.lsn,
        "parent": info.parent,
        "header_checksum": info.checksum,
    }
    for field, value in expected.items():
        found = getattr(decoded, field)
        if found != value:
            raise CorruptionError(
                path, 0, f"checkpoint {info.id}: the file has {field} {found!r}, not {value!r}"
            )
