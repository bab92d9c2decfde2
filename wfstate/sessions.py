"""Sessions: which owners of writes a store has, as its log says (docs/format.md §11).

A session is started by a ``SESSION`` record (type 7, event ``start``, token 1), taken over by
a ``resume`` record (token + 1) and ended by an ``end`` event embedded in the ``TXN`` record of
the transaction writing its final files (§11.1). :class:`SessionTable` is the fold of those
events in LSN order, plus which workflows each session's batches touched (the optional ``s``
key of a batch document, §5.1). It does no I/O, so every process reading the same log holds
the same table; the anchor (§9.6, key ``sessions``) carries it across compaction.

Fencing (§11.2) is :meth:`SessionTable.check_owner`, called by the writers' lock holder after
catching up and before assigning an LSN: a token that is not the session's current one, or an
ended session, raises ``StaleOwnerError`` and nothing is written.

Also here: the session record file (§11.3), encoded with checksums over its header and its
payload, so any damaged byte is detected on read.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias

import msgspec

from wfstate.errors import (
    CorruptionError,
    FormatVersionError,
    StaleOwnerError,
    ValidationError,
)
from wfstate.format import (
    FORMAT_VERSION,
    SESSION_HEADER,
    SESSION_HEADER_CHECKED,
    SESSION_HEADER_SIZE,
    SESSION_MAGIC,
    is_session_id,
    xxh3,
)
from wfstate.ids import validate_id
from wfstate.payload import ENCODER, decode_versioned

SESSION_VERSION: Final = 1
"""Layout version of the ``SESSION`` payload and of the session record file's payload."""

EventKind: TypeAlias = Literal["start", "resume", "end"]
SessionStatus: TypeAlias = Literal["active", "ended"]


class SessionEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One ``SESSION`` event (docs/format.md §11.1); fields in sorted order, so they are
    written sorted. ``user``/``metadata`` only at ``start``."""

    at: float
    event: EventKind
    host: str
    id: str
    metadata: dict[str, Any] | None = None
    pid: int
    token: int
    user: str | None = None


class _EventDocument(SessionEvent, frozen=True, kw_only=True, omit_defaults=True):
    v: int


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A session as the log says: ``token`` the current owner's fencing token, ``status``
    ``active`` (started, not ended: live or crashed) or ``ended``; ``started``/``ended`` seconds
    since the Unix epoch (``ended`` None while active); ``workflows`` the ids of the workflows
    its batches touched, sorted."""

    id: str
    user: str
    metadata: dict[str, Any]
    token: int
    status: SessionStatus
    started: float
    ended: float | None
    workflows: tuple[str, ...]


def new_session_id() -> str:
    """A fresh session id: ``se-`` and 16 random lowercase hex digits."""
    return f"se-{secrets.token_hex(8)}"


def make_event(
    session_id: str,
    event: EventKind,
    token: int,
    *,
    at: float,
    user: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> SessionEvent:
    """An event at ``at`` (the store's clock), with this process's pid and host."""
    return SessionEvent(
        at=at,
        event=event,
        host=socket.gethostname(),
        id=session_id,
        metadata=None if metadata is None else dict(metadata),
        pid=os.getpid(),
        token=token,
        user=user,
    )


def encode_event(event: SessionEvent, *, versioned: bool = True) -> bytes:
    """The ``SESSION`` record payload of ``event`` (with ``v``), or its map as embedded in a
    ``TXN`` record (``versioned=False``: without ``v``, which the ``TXN`` record's covers)."""
    if not versioned:
        return ENCODER.encode(event)
    return ENCODER.encode(_EventDocument(v=SESSION_VERSION, **msgspec.structs.asdict(event)))


def decode_event(data: bytes, *, versioned: bool = True) -> SessionEvent:
    """A ``SESSION`` payload (or, ``versioned=False``, a map embedded in a ``TXN`` record):
    ``SchemaVersionError`` for a newer ``v``, ``ValidationError`` (field ``session...``) for
    anything malformed or that no writer produces."""
    if versioned:
        document = decode_versioned(data, _EventDocument, "session", SESSION_VERSION)
        fields = msgspec.structs.asdict(document)
        del fields["v"]
        event = SessionEvent(**fields)
    else:
        try:
            event = msgspec.msgpack.decode(data, type=SessionEvent)
        except msgspec.DecodeError as exc:
            raise ValidationError("session", f"malformed: {exc}") from exc
    if not is_session_id(event.id):
        raise ValidationError("session.id", f"not a session id: {event.id!r}")
    if event.token < 1:
        raise ValidationError("session.token", f"must be >= 1, not {event.token}")
    if event.event == "start":
        if event.user is None or event.metadata is None or event.token != 1:
            raise ValidationError("session", "a start event needs user, metadata and token 1")
        validate_id(event.user, "session.user")
    return event


class SessionTable:
    """The sessions of a store, folded from its log (module docstring). Not thread-safe: the
    store calls it under its lock."""

    def __init__(self) -> None:
        self._by_id: dict[str, SessionInfo] = {}

    def reset(self, infos: Iterable[SessionInfo]) -> None:
        """Make the table exactly ``infos`` (an anchor's snapshot)."""
        self._by_id = {info.id: info for info in infos}

    def snapshot(self) -> tuple[SessionInfo, ...]:
        """Every session, sorted by id (for the anchor)."""
        return tuple(self._by_id[i] for i in sorted(self._by_id))

    def get(self, session_id: str) -> SessionInfo | None:
        return self._by_id.get(session_id)

    def apply(self, event: SessionEvent) -> None:
        """Fold one committed event. ``ValidationError`` (the store reports the record as
        corruption) for an event no writer produces in that order: a second start, a resume
        whose token is not the previous + 1, an end with another token than the current one,
        any event after an end or of an unknown session."""
        old = self._by_id.get(event.id)
        if event.event == "start":
            if old is not None:
                raise ValidationError("session.id", f"{event.id} started twice")
            assert event.user is not None and event.metadata is not None  # decode_event
            self._by_id[event.id] = SessionInfo(
                id=event.id,
                user=event.user,
                metadata=event.metadata,
                token=1,
                status="active",
                started=event.at,
                ended=None,
                workflows=(),
            )
            return
        if old is None:
            raise ValidationError("session.id", f"{event.event} of unknown session {event.id}")
        if old.status == "ended":
            raise ValidationError("session.event", f"{event.event} of ended session {event.id}")
        if event.event == "resume":
            if event.token != old.token + 1:
                raise ValidationError(
                    "session.token", f"resume with token {event.token} after {old.token}"
                )
            self._by_id[event.id] = msgspec.structs.replace(old, token=event.token)
        else:
            if event.token != old.token:
                raise ValidationError(
                    "session.token", f"end with token {event.token}, current {old.token}"
                )
            self._by_id[event.id] = msgspec.structs.replace(old, status="ended", ended=event.at)

    def note_batch(self, session_id: str, workflow_ids: Iterable[str]) -> None:
        """Record that a committed batch of ``session_id`` touched ``workflow_ids``. A batch of
        a session the table does not know (history before a snapshot that no longer names it)
        is ignored: which workflows it wrote is only for ending and crash plans."""
        old = self._by_id.get(session_id)
        if old is None:
            return
        touched = set(old.workflows).union(workflow_ids)
        if len(touched) != len(old.workflows):
            self._by_id[session_id] = msgspec.structs.replace(old, workflows=tuple(sorted(touched)))

    def check_owner(self, session_id: str, token: int) -> SessionInfo:
        """Fencing (§11.2): the session if ``token`` is its current one and it has not ended,
        else ``StaleOwnerError``. Call with the writers' lock held, caught up."""
        info = self._by_id.get(session_id)
        if info is None:
            raise StaleOwnerError(f"session {session_id} is not in this store's log")
        if info.status == "ended":
            raise StaleOwnerError(f"session {session_id} has ended: it accepts no more writes")
        if token != info.token:
            raise StaleOwnerError(
                f"session {session_id}: token {token} is stale, the current owner has "
                f"token {info.token} (the session was taken over)"
            )
        return info


# -- the session record file (docs/format.md §11.3) --------------------------------------------


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a session record file (docs/format.md §11.3), also a bundle's `session`
    (§11.4); fields in sorted order, so they are written sorted."""

    ended: float | None
    id: str
    metadata: dict[str, Any]
    started: float
    token: int
    user: str
    v: int
    workflows: tuple[str, ...]


def session_record(info: SessionInfo) -> SessionRecord:
    """The record payload of ``info`` (its status is implied by ``ended``)."""
    return SessionRecord(
        ended=info.ended,
        id=info.id,
        metadata=info.metadata,
        started=info.started,
        token=info.token,
        user=info.user,
        v=SESSION_VERSION,
        workflows=info.workflows,
    )


def session_info(record: SessionRecord) -> SessionInfo:
    """The session a record payload describes (``ended`` when it names an end time)."""
    return SessionInfo(
        id=record.id,
        user=record.user,
        metadata=record.metadata,
        token=record.token,
        status="active" if record.ended is None else "ended",
        started=record.started,
        ended=record.ended,
        workflows=record.workflows,
    )


def encode_session_file(info: SessionInfo) -> bytes:
    """The bytes of ``sessions/<id>.session`` for ``info``: the 32-byte header (magic,
    format version, length, payload and header checksums), then the payload map."""
    payload = ENCODER.encode(session_record(info))
    head = SESSION_HEADER.pack(SESSION_MAGIC, FORMAT_VERSION, 0, len(payload), xxh3(payload), 0)
    head = head[:SESSION_HEADER_CHECKED]
    return head + xxh3(head).to_bytes(8, "little") + payload


def decode_session_file(data: bytes, path: str) -> SessionInfo:
    """The session a record file holds (status ``ended`` when it names an end time).
    ``CorruptionError`` naming ``path`` for any damage (every byte is covered by a checksum,
    the size is exact), ``FormatVersionError``/``SchemaVersionError`` for newer versions."""
    if len(data) < SESSION_HEADER_SIZE:
        raise CorruptionError(path, 0, f"{len(data)} bytes: shorter than the header")
    magic, version, reserved, length, payload_checksum, header_checksum = (
        SESSION_HEADER.unpack_from(data, 0)
    )
    if header_checksum != xxh3(data[:SESSION_HEADER_CHECKED]):
        raise CorruptionError(path, 0, "header checksum mismatch")
    if magic != SESSION_MAGIC or reserved != 0:
        raise CorruptionError(path, 0, "not a session record file")
    if version > FORMAT_VERSION:
        raise FormatVersionError(path, version, FORMAT_VERSION)
    if len(data) != SESSION_HEADER_SIZE + length:
        raise CorruptionError(
            path, 0, f"{len(data)} bytes, the header says {SESSION_HEADER_SIZE + length}"
        )
    payload = data[SESSION_HEADER_SIZE:]
    if xxh3(payload) != payload_checksum:
        raise CorruptionError(path, SESSION_HEADER_SIZE, "payload checksum mismatch")
    try:
        record = decode_versioned(payload, SessionRecord, "session_file", SESSION_VERSION)
    except ValidationError as exc:
        raise CorruptionError(path, SESSION_HEADER_SIZE, str(exc)) from exc
    return session_info(record)


# -- crash plans ---------------------------------------------------------------------------------


class WorkflowPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What a crashed session left of one workflow it wrote, from its durable state.

    ``last_completed``: the completed step that ended last (None: none); ``in_doubt``: steps
    left ``running`` (their work may have partly happened: the log cannot say); ``action``:
    ``rerun_in_doubt`` (resume, then re-run or check the in-doubt steps), ``continue`` (nothing
    in doubt) or ``none`` (the workflow no longer exists); ``estimated_loss``: how many steps'
    work may be lost (the in-doubt ones)."""

    workflow_id: str
    last_completed: str | None
    in_doubt: tuple[str, ...]
    action: Literal["rerun_in_doubt", "continue", "none"]
    estimated_loss: int


class CrashedSession(msgspec.Struct, frozen=True, kw_only=True):
    """A session the log says is active whose lock nobody holds: its owner died. Take it
    over with ``resume_session``; ``workflows`` the plan for each workflow it wrote."""

    session: SessionInfo
    workflows: tuple[WorkflowPlan, ...]
