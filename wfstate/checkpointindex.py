"""Which checkpoints a store has: the index, and the log records that change it.

The log alone decides which checkpoints exist (docs/format.md §9): a checkpoint file counts
only from its durable ``CHECKPOINT`` record (§9.3) until a ``CHECKPOINT_DROP`` record names it
(§9.4), and a ``DISCARD`` record or the anchor in ``wal/START`` (§9.6) replaces the whole index
with the snapshot it carries. :class:`CheckpointIndex` is the fold of those records in LSN
order; it does no I/O, so every process that reads the same log holds the same index.

The payloads are MessagePack maps with a layout version ``v`` (1); a newer ``v`` is refused
with ``SchemaVersionError`` rather than misread, and anything malformed raises
``ValidationError`` (the store reports the record as corruption).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from wfstate.errors import ValidationError
from wfstate.format import is_checkpoint_id
from wfstate.payload import ENCODER, decode_versioned
from wfstate.sessions import SessionInfo

CheckpointType: TypeAlias = Literal[
    "manual", "automatic", "pre_step", "post_step", "error", "compaction"
]
"""Why a checkpoint was taken (docs/format.md §9.3)."""

CHECKPOINT_TYPES: Final[frozenset[str]] = frozenset(
    {"manual", "automatic", "pre_step", "post_step", "error", "compaction"}
)

ENTRY_VERSION: Final = 1
ANCHOR_VERSION: Final = 2
"""The newest anchor layout; 2 only when it holds an imported checkpoint (docs/format.md §9.6)."""
"""Layout version of the ``CHECKPOINT``/``CHECKPOINT_DROP``/``DISCARD`` payloads."""


class CheckpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the index: everything known about a checkpoint without reading its file.

    ``lsn``: the state includes every batch up to and including it. ``origin``: the LSN of
    the batch that created the workflow's incarnation. ``parent``: the checkpoint an
    incremental one builds on (None: full). ``checksum``: the file's header checksum, which
    binds the entry to exactly one file. ``created``: seconds since the Unix epoch.
    """

    id: str
    workflow_id: str
    origin: int
    lsn: int
    parent: str | None
    session_id: str | None
    type: CheckpointType
    tags: tuple[str, ...]
    description: str
    file: str
    size: int
    checksum: int
    created: float

    @property
    def incremental(self) -> bool:
        return self.parent is not None


class _Entry(CheckpointInfo, frozen=True, kw_only=True):
    v: int


class _Drop(msgspec.Struct, frozen=True, kw_only=True):
    v: int
    ids: tuple[str, ...]


class AnchorWorkflow(msgspec.Struct, frozen=True, array_like=True):
    """A workflow live at an anchor: its batches at or below ``floor`` are no longer in the
    log, so only checkpoints of the same ``origin`` with ``lsn >= floor`` can rebuild it."""

    workflow_id: str
    origin: int
    floor: int


class Anchor(msgspec.Struct, frozen=True, kw_only=True):
    """What stands in for the discarded log (docs/format.md §9.6). ``sessions``: the session
    table (§11) as of the anchor, sorted by id; absent (empty) in anchors without sessions."""

    workflows: tuple[AnchorWorkflow, ...]
    checkpoints: tuple[CheckpointInfo, ...]
    sessions: tuple[SessionInfo, ...] = ()


class _AnchorDocument(Anchor, frozen=True, kw_only=True, omit_defaults=True):
    v: int


def encode_entry(info: CheckpointInfo) -> bytes:
    """The ``CHECKPOINT`` record payload of ``info``."""
    return ENCODER.encode(_Entry(v=ENTRY_VERSION, **msgspec.structs.asdict(info)))


def decode_entry(data: bytes) -> CheckpointInfo:
    entry = decode_versioned(data, _Entry, "checkpoint", ENTRY_VERSION)
    fields = msgspec.structs.asdict(entry)
    del fields["v"]
    return check_entry(CheckpointInfo(**fields))


def encode_drop(ids: Sequence[str]) -> bytes:
    """The ``CHECKPOINT_DROP`` record payload naming ``ids``."""
    return ENCODER.encode(_Drop(v=ENTRY_VERSION, ids=tuple(ids)))


def decode_drop(data: bytes) -> tuple[str, ...]:
    return decode_versioned(data, _Drop, "checkpoint_drop", ENTRY_VERSION).ids


def encode_anchor(anchor: Anchor) -> bytes:
    """The ``DISCARD`` record payload (and ``wal/START`` anchor) of ``anchor``."""
    imported = any(info.origin == 0 for info in anchor.checkpoints)
    return ENCODER.encode(
        _AnchorDocument(
            v=ANCHOR_VERSION if imported else 1,
            workflows=anchor.workflows,
            checkpoints=anchor.checkpoints,
            sessions=anchor.sessions,
        )
    )


def decode_anchor(data: bytes) -> Anchor:
    document = decode_versioned(data, _AnchorDocument, "anchor", ANCHOR_VERSION)
    for info in document.checkpoints:
        check_entry(info)
        if info.origin == 0 and document.v < ANCHOR_VERSION:
            raise ValidationError("anchor.v", "an imported checkpoint needs version 2")
    return Anchor(
        workflows=document.workflows,
        checkpoints=document.checkpoints,
        sessions=document.sessions,
    )


def check_entry(info: CheckpointInfo) -> CheckpointInfo:
    """Refuse an entry no writer produces (its fields name files and order the index)."""
    if not is_checkpoint_id(info.id):
        raise ValidationError("checkpoint.id", f"not a checkpoint id: {info.id!r}")
    if info.parent is not None and not is_checkpoint_id(info.parent):
        raise ValidationError("checkpoint.parent", f"not a checkpoint id: {info.parent!r}")
    if info.type not in CHECKPOINT_TYPES:
        raise ValidationError("checkpoint.type", f"unknown type {info.type!r}")
    if os.path.basename(info.file) != info.file or not info.file.startswith(info.id):
        raise ValidationError("checkpoint.file", f"not a file of {info.id}: {info.file!r}")
    if info.origin == 0 and info.parent is not None:  # imported (docs/format.md §9.8)
        raise ValidationError("checkpoint.parent", "an imported checkpoint is full")
    if info.origin < 0 or info.lsn < info.origin or info.size < 0:
        raise ValidationError(
            "checkpoint.lsn", f"origin {info.origin}, lsn {info.lsn}, size {info.size}"
        )
    return info


class CheckpointIndex:
    """The checkpoints of a store, as its log says (module docstring). Not thread-safe."""

    def __init__(self, entries: Iterable[CheckpointInfo] = ()) -> None:
        self._by_id: dict[str, CheckpointInfo] = {}
        self._by_workflow: dict[str, dict[str, CheckpointInfo]] = {}
        self.reset(entries)

    def reset(self, entries: Iterable[CheckpointInfo]) -> None:
        """Make the index exactly ``entries`` (an anchor's snapshot)."""
        self._by_id = {}
        self._by_workflow = {}
        for info in entries:
            self.add(info)

    def add(self, info: CheckpointInfo) -> None:
        """Take a committed entry; one with a known id replaces it (a fold, §9.3)."""
        old = self._by_id.get(info.id)
        if old is not None and old.workflow_id != info.workflow_id:
            self._by_workflow[old.workflow_id].pop(info.id, None)
        self._by_id[info.id] = info
        self._by_workflow.setdefault(info.workflow_id, {})[info.id] = info

    def drop(self, ids: Iterable[str]) -> list[CheckpointInfo]:
        """Remove ``ids`` (unknown ones are ignored: a drop replayed after a snapshot)."""
        dropped = []
        for checkpoint_id in ids:
            info = self._by_id.pop(checkpoint_id, None)
            if info is None:
                continue
            dropped.append(info)
            of_workflow = self._by_workflow[info.workflow_id]
            del of_workflow[checkpoint_id]
            if not of_workflow:
                del self._by_workflow[info.workflow_id]
        return dropped

    def get(self, checkpoint_id: str) -> CheckpointInfo | None:
        return self._by_id.get(checkpoint_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, checkpoint_id: object) -> bool:
        return checkpoint_id in self._by_id

    def all(self) -> list[CheckpointInfo]:
        """Every entry, newest first (by LSN, then creation time, then id)."""
        return sorted(self._by_id.values(), key=_newest_first)

    def of_workflow(self, workflow_id: str, origin: int | None = None) -> list[CheckpointInfo]:
        """The checkpoints of ``workflow_id`` (of one incarnation if ``origin``), newest first."""
        return sorted(
            (
                info
                for info in self._by_workflow.get(workflow_id, {}).values()
                if origin is None or info.origin == origin
            ),
            key=_newest_first,
        )

    def newest_lsn(self, workflow_id: str, origin: int) -> int:
        """The highest LSN of a checkpoint of that incarnation; 0 if it has none."""
        return max(
            (
                info.lsn
                for info in self._by_workflow.get(workflow_id, {}).values()
                if info.origin == origin
            ),
            default=0,
        )

    def chain(self, info: CheckpointInfo) -> list[CheckpointInfo] | None:
        """``info`` and its ancestors up to a full checkpoint, oldest first; None when a
        parent is missing from the index (the chain is broken)."""
        chain = [info]
        seen = {info.id}
        while chain[-1].parent is not None:
            parent = self._by_id.get(chain[-1].parent)
            if parent is None or parent.id in seen:
                return None
            seen.add(parent.id)
            chain.append(parent)
        chain.reverse()
        return chain

    def children(self, checkpoint_id: str) -> list[CheckpointInfo]:
        """The checkpoints whose parent is ``checkpoint_id``."""
        return [info for info in self._by_id.values() if info.parent == checkpoint_id]

    def total_size(self) -> int:
        return sum(info.size for info in self._by_id.values())

    def files(self) -> set[str]:
        return {info.file for info in self._by_id.values()}


def _newest_first(info: CheckpointInfo) -> tuple[int, float, str]:
    return (-info.lsn, -info.created, info.id)
