"""Sessions with liveness and fencing (issue 5, docs/format.md §11): start, resume (takeover),
listing, crash detection, fencing of stale owners' writes, ending in one transaction, the
session record file, and the session table across reopen and compaction."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.errors import (
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    SchemaVersionError,
    StaleOwnerError,
    StorePoisonedError,
    TransactionError,
    ValidationError,
)
from wfstate.format import RECORD_SESSION, is_session_id
from wfstate.fs import OS_FS, FileSystem
from wfstate.model import WorkflowStep
from wfstate.mutations import (
    CreateWorkflow,
    Mutation,
    PutStepOutput,
    SetStepStatus,
    batch_session,
    encode_mutations,
)
from wfstate.retention import RetentionPolicy
from wfstate.sessions import (
    SessionInfo,
    SessionTable,
    decode_event,
    decode_session_file,
    encode_event,
    encode_session_file,
    make_event,
)
from wfstate.twophase import finish

SIM = "/store"


def create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(3))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def run(workflow_id: str, i: int) -> list[Mutation]:
    return [SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="running", at=0)]


def done(workflow_id: str, i: int) -> list[Mutation]:
    return [
        *run(workflow_id, i),
        PutStepOutput(workflow_id=workflow_id, step_id=f"s{i}", data={"i": i}, at=0),
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="completed", at=0),
    ]


def open_store(path: str, fs: FileSystem = OS_FS, **kwargs: object) -> LocalStore:
    kwargs.setdefault("checkpoints", MANUAL_ONLY)
    kwargs.setdefault("lock_timeout", 0.2)
    return LocalStore.open(path, fs=fs, clock=lambda: 1000.0, **kwargs)  # type: ignore[arg-type]


def crash(session: Session) -> None:
    """What the owner's death does to its session: the lock is released (the kernel does it
    for a dead process); the handle itself lingers, as a late writer would."""
    lock = session._lock
    assert lock is not None
    session.store._fs.unlock(lock)


def files(root: str, fs: FileSystem = OS_FS) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for directory in ("workflows", "checkpoints", "sessions"):
        for name in fs.listdir(os.path.join(root, directory)):
            if not name.endswith(".lock"):
                out[f"{directory}/{name}"] = fs.read_file(os.path.join(root, directory, name))
    return out


# -- slice 1: start, list, liveness, resume ------------------------------------------------------


def test_start_lists_the_session_in_this_and_other_handles_and_after_reopen_and_compaction(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    with open_store(path) as store, open_store(path) as other:
        session = store.start_session("alice", {"engine": "x", "n": [1, 2]})
        assert is_session_id(session.id) and session.token == 1 and session.user == "alice"
        assert (tmp_path / "sessions" / f"{session.id}.lock").exists()
        store.commit(create("a"), session=session)
        store.commit(create("b"))  # no session
        (info,) = store.sessions()
        assert (info.id, info.user, info.token, info.status) == (session.id, "alice", 1, "active")
        assert info.metadata == {"engine": "x", "n": [1, 2]} and info.ended is None
        assert info.workflows == ("a",)
        assert other.sessions() == [info]  # read from the log
        store.compact()
        assert other.sessions() == [info]  # the DISCARD anchor carries it
        session.close()
    with open_store(path) as reopened:  # from wal/START's anchor
        assert reopened.sessions() == [info]


def test_start_is_durable_before_it_returns_whatever_the_durability(tmp_path: Path) -> None:
    path = str(tmp_path)
    with open_store(path, durability="none") as store:
        session = store.start_session("alice")
        record = [r for r in store._log.read(store._log.first_lsn) if r.type == RECORD_SESSION]
        assert store._log.durable_lsn >= record[0].lsn
        session.close()


@pytest.mark.parametrize(
    ("user", "metadata", "field"),
    [("", None, "user"), ("a/b", None, "user"), (7, None, "user"), ("u", [1], "metadata"),
     ("u", {"x": float("nan")}, "metadata"), ("u", {1: "x"}, "metadata")],
)  # fmt: skip
def test_start_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, user: object, metadata: object, field: str
) -> None:
    with open_store(str(tmp_path)) as store:
        last = store.stats().last_lsn
        with pytest.raises(ValidationError) as caught:
            store.start_session(user, metadata)  # type: ignore[arg-type]
        assert caught.value.field.startswith(field)
        assert store.stats().last_lsn == last and store.sessions() == []
        assert os.listdir(tmp_path / "sessions") == []


def test_a_live_session_is_not_crashed_and_cannot_be_resumed(tmp_path: Path) -> None:
    path = str(tmp_path)
    with open_store(path) as store, open_store(path) as other:
        session = store.start_session("alice")
        assert other.detect_crashed_sessions() == []
        assert store.detect_crashed_sessions() == []
        with pytest.raises(LockTimeoutError):
            other.resume_session(session.id)
        assert other.sessions()[0].token == 1  # nothing appended
        with pytest.raises(ValidationError) as caught:
            store.resume_session(session.id)  # owned by this very handle
        assert caught.value.field == "session_id"


def test_a_crashed_session_is_detected_with_a_plan_and_taken_over(tmp_path: Path) -> None:
    path = str(tmp_path)
    with open_store(path) as store, open_store(path) as other:
        session = store.start_session("alice")
        store.commit(create("a"), session=session)
        store.commit(done("a", 0), session=session)
        store.commit(run("a", 1), session=session)
        store.commit(create("gone"), session=session)
        store.delete("gone", session=session)
        crash(session)
        (crashed,) = other.detect_crashed_sessions()
        assert crashed.session.id == session.id and crashed.session.workflows == ("a", "gone")
        plan_a, plan_gone = crashed.workflows
        assert (plan_a.last_completed, plan_a.in_doubt) == ("s0", ("s1",))
        assert (plan_a.action, plan_a.estimated_loss) == ("rerun_in_doubt", 1)
        assert (plan_gone.action, plan_gone.estimated_loss) == ("none", 0)
        resumed = other.resume_session(session.id)
        assert resumed.token == 2 and resumed.user == "alice"
        assert store.sessions()[0].token == 2
        assert store.detect_crashed_sessions() == []  # owned again
        resumed.close()
    with open_store(path) as reopened:
        assert reopened.sessions()[0].token == 2
        (again,) = reopened.detect_crashed_sessions()
        assert reopened.resume_session(again.session.id).token == 3


def test_resume_refuses_unknown_malformed_and_ended_sessions(tmp_path: Path) -> None:
    with open_store(str(tmp_path)) as store:
        with pytest.raises(NotFoundError):
            store.resume_session("se-0123456789abcdef")
        with pytest.raises(ValidationError) as caught:
            store.resume_session("nope")
        assert caught.value.field == "session_id"
        session = store.start_session("alice")
        session.end()
        with pytest.raises(ValidationError) as caught:
            store.resume_session(session.id)
        assert caught.value.field == "session_id" and "ended" in caught.value.message


# -- slice 2: fencing ------------------------------------------------------------------------------


def test_batch_documents_carry_the_owner_only_in_a_session() -> None:
    assert encode_mutations([]) == bytes.fromhex("82a17601a16d90")
    assert batch_session(encode_mutations([])) is None
    data = encode_mutations([], session=("se-0123456789abcdef", 3))
    assert batch_session(data) == ("se-0123456789abcdef", 3)
    with pytest.raises(ValidationError):
        batch_session(msgspec.msgpack.encode({"v": 1, "m": [], "s": "se-0123456789abcdef"}))


def test_a_late_write_of_a_taken_over_owner_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice")
        a.commit(create("w"), session=session)
        crash(session)
        taken = b.resume_session(session.id)
        last = b.stats().last_lsn
        state = a.load("w")
        lates: list[Callable[[], int]] = [
            lambda: a.commit(done("w", 0), session=session),
            lambda: a.save(state, session=session),
            lambda: a.delete("w", session=session),
        ]
        for late in lates:
            with pytest.raises(StaleOwnerError):
                late()
        assert a.stats().last_lsn == last and b.load("w") == state
        b.commit(done("w", 0), session=taken)  # the new owner writes
        assert a.load("w").workflow.steps[0].status == "completed"
        taken.close()


def test_the_session_argument_is_checked(tmp_path: Path) -> None:
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice")
        for bad in (object(), session):  # another store handle's session
            with pytest.raises(ValidationError) as caught:
                b.commit(create("w"), session=bad)  # type: ignore[arg-type]
            assert caught.value.field == "session"
        session.close()
        with pytest.raises(ValidationError):
            a.commit(create("w"), session=session)  # closed
        assert a.list_workflows() == []


# -- slice 3: end ----------------------------------------------------------------------------------


def test_end_writes_checkpoints_state_files_and_the_session_file_and_fences(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice", {"k": 1})
        a.commit(create("w"), session=session)
        a.commit(done("w", 0), session=session)
        a.commit(create("other"))
        a.end_session(session)
        assert session.closed
        assert not (tmp_path / "workflows" / "other.state").exists()
        assert a.read_state_file("w") == a.load("w")
        (ck,) = a.checkpoints()
        assert (ck.workflow_id, ck.type, ck.parent) == ("w", "manual", None)
        name = tmp_path / "sessions" / f"{session.id}.session"
        record = decode_session_file(name.read_bytes(), str(name))
        (info,) = b.sessions()  # the end came to b in the TXN record
        assert info.status == "ended" and info.ended is not None
        assert record == info and record.workflows == ("w",) and record.metadata == {"k": 1}
        # a handle with the current token still cannot write: the session has ended
        lock = b._fs.open_lock(b._session_lock_path(session.id))
        ghost = Session(b, session.id, "alice", info.token, lock)
        last = b.stats().last_lsn
        with pytest.raises(StaleOwnerError):
            b.commit(done("w", 1), session=ghost)
        with pytest.raises(StaleOwnerError):
            b.end_session(ghost)
        assert b.stats().last_lsn == last
        ghost.close()
        a.compact()
    with open_store(path) as reopened:
        assert reopened.sessions() == [info]


def test_end_without_final_checkpoint_writes_no_checkpoint(tmp_path: Path) -> None:
    with open_store(str(tmp_path)) as store:
        session = store.start_session("alice")
        store.commit(create("w"), session=session)
        session.end(final_checkpoint=False)
        assert store.checkpoints() == []
        assert store.read_state_file("w") == store.load("w")
        assert store.sessions()[0].status == "ended"


def test_end_by_a_taken_over_owner_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice")
        a.commit(create("w"), session=session)
        crash(session)
        taken = b.resume_session(session.id)
        before = files(path)
        with pytest.raises(StaleOwnerError):
            a.end_session(session)
        assert files(path) == before and a.checkpoints() == []
        assert b.sessions()[0].status == "active"
        taken.end()
        assert a.sessions()[0].status == "ended"


def test_end_refused_under_the_lock_abandons_its_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The takeover lands between preparing the transaction and deciding it: the check under
    the writers' lock refuses the end, and no temp file is left."""
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice")
        a.commit(create("w"), session=session)
        before = files(path)
        crash(session)
        real = a._held
        taken: list[Session] = []

        def held():  # type: ignore[no-untyped-def]
            if not taken:
                taken.append(b.resume_session(session.id))
            return real()

        monkeypatch.setattr(a, "_held", held)
        with pytest.raises(StaleOwnerError):
            a.end_session(session)
        assert files(path) == before
        assert not any(name.endswith(".tmp") for name in files(path))
        taken[0].close()


@pytest.mark.parametrize(("op", "nth"), [("create", 2), ("write", 3)])
def test_a_failed_prepare_of_the_end_changes_nothing(op: str, nth: int) -> None:
    fs = SimFileSystem()
    with open_store(SIM, fs) as store:
        session = store.start_session("alice")
        store.commit(create("w"), session=session)
        before = files(SIM, fs)
        fs.inject(op, nth)  # type: ignore[arg-type]
        with pytest.raises(TransactionError):
            store.end_session(session)
        assert files(SIM, fs) == before and store.checkpoints() == []
        assert store.sessions()[0].status == "active" and not session.closed
        store.commit(done("w", 0), session=session)  # still the owner
        session.end()
        assert store.sessions()[0].status == "ended"


def test_a_failed_directory_sync_while_preparing_the_end_poisons_and_changes_nothing() -> None:
    """A failed sync is fatal (DESIGN.md §3), also of a temp file's directory: the end
    raises ``StorePoisonedError``, its temp files are gone, and a reopened store still has
    the session active, to resume and end."""
    fs = SimFileSystem()
    with open_store(SIM, fs) as store:
        session = store.start_session("alice")
        store.commit(create("w"), session=session)
        before = files(SIM, fs)
        fs.inject("fsync_dir", 1)
        with pytest.raises(StorePoisonedError) as caught:
            store.end_session(session)
        assert isinstance(caught.value.__cause__, TransactionError)
        assert files(SIM, fs) == before
        with pytest.raises(StorePoisonedError):
            store.commit(done("w", 0), session=session)
    with open_store(SIM, fs) as store:
        assert store.sessions()[0].status == "active" and store.checkpoints() == []
        resumed = store.resume_session(session.id)
        resumed.end()
        assert store.sessions()[0].status == "ended"


def test_a_failed_finish_of_the_end_is_rolled_forward_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs = SimFileSystem()
    store = open_store(SIM, fs)
    session = store.start_session("alice")
    store.commit(create("w"), session=session)
    state = store.load("w")

    def failing(fs_: FileSystem, root: str, txn: object) -> None:
        fs.inject("replace", 2)
        finish(fs_, root, txn)  # type: ignore[arg-type]

    monkeypatch.setattr("wfstate.backends.local.finish", failing)
    with pytest.raises(StorePoisonedError):
        store.end_session(session)
    store.close()
    monkeypatch.undo()
    with open_store(SIM, fs) as reopened:
        (info,) = reopened.sessions()
        assert info.status == "ended"
        assert reopened.read_state_file("w") == state
        (ck,) = reopened.checkpoints()
        assert reopened.checkpoint_state(ck.id) == state
        name = f"{SIM}/sessions/{session.id}.session"
        assert decode_session_file(fs.read_file(name), name) == info


# -- the session record file and payloads ----------------------------------------------------------


def _ended_info() -> SessionInfo:
    table = SessionTable()
    table.apply(
        make_event("se-0123456789abcdef", "start", 1, user="u", metadata={"a": [1]}, at=1.0)
    )
    table.note_batch("se-0123456789abcdef", ["w", "v"])
    table.apply(make_event("se-0123456789abcdef", "end", 1, at=1.0))
    info = table.get("se-0123456789abcdef")
    assert info is not None
    return info


def test_the_session_file_round_trips_and_every_flipped_byte_is_detected() -> None:
    info = _ended_info()
    data = encode_session_file(info)
    assert data[:8] == b"WFSTSESS" and len(data) == 32 + int.from_bytes(data[12:16], "little")
    assert decode_session_file(data, "f") == info
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(CorruptionError):
                decode_session_file(bytes(bad), "f")
    for cut in (data[:-1], data + b"\0", data[:31], b""):
        with pytest.raises(CorruptionError):
            decode_session_file(cut, "f")


def test_session_events_out_of_order_are_refused() -> None:
    sid = "se-0123456789abcdef"
    table = SessionTable()
    with pytest.raises(ValidationError):
        table.apply(make_event(sid, "resume", 2, at=1.0))  # unknown
    table.apply(make_event(sid, "start", 1, user="u", metadata={}, at=1.0))
    for bad in (
        make_event(sid, "start", 1, user="u", metadata={}, at=1.0),
        make_event(sid, "resume", 3, at=1.0),
        make_event(sid, "end", 2, at=1.0),
    ):
        with pytest.raises(ValidationError):
            table.apply(bad)
    table.apply(make_event(sid, "resume", 2, at=1.0))
    table.apply(make_event(sid, "end", 2, at=1.0))
    with pytest.raises(ValidationError):
        table.apply(make_event(sid, "resume", 3, at=1.0))
    with pytest.raises(StaleOwnerError):
        table.check_owner(sid, 2)


def test_session_payloads_decode_and_refuse_newer_versions() -> None:
    event = make_event("se-0123456789abcdef", "start", 1, user="u", metadata={"a": 1}, at=1.0)
    assert decode_event(encode_event(event)) == event
    assert decode_event(encode_event(event, versioned=False), versioned=False) == event
    newer = msgspec.msgpack.decode(encode_event(event))
    newer["v"] = 2
    with pytest.raises(SchemaVersionError):
        decode_event(msgspec.msgpack.encode(newer))
    for field, value in (("id", "tx-0123456789abcdef"), ("token", 0), ("user", "a/b")):
        bad = msgspec.msgpack.decode(encode_event(event))
        bad[field] = value
        with pytest.raises(ValidationError):
            decode_event(msgspec.msgpack.encode(bad))


def test_session_events_are_stamped_by_the_store_clock(tmp_path: Path) -> None:
    with open_store(str(tmp_path)) as store:  # clock: 1000.0
        session = store.start_session("alice")
        store.commit(create("w"), session=session)
        session.end()
        (info,) = store.sessions()
        assert (info.started, info.ended) == (1000.0, 1000.0)


def test_end_takes_the_states_as_of_its_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of the session that another handle (with the owner's token) commits after the
    end began, but before it takes the writers' lock, is in the final checkpoint and the
    state file: the states are read under the lock, not before it."""
    path = str(tmp_path)
    with open_store(path) as a, open_store(path) as b:
        session = a.start_session("alice")
        a.commit(create("w"), session=session)
        lock = b._fs.open_lock(b._session_lock_path(session.id) + ".ghost")
        twin = Session(b, session.id, "alice", session.token, lock)
        real = a._held
        raced: list[int] = []

        def held():  # type: ignore[no-untyped-def]
            if not raced:
                raced.append(b.commit(done("w", 0), session=twin))
            return real()

        monkeypatch.setattr(a, "_held", held)
        a.end_session(session)
        twin.close()
        final = a.load("w")
        assert final.metadata.last_lsn == raced[0]
        assert a.read_state_file("w") == final
        (ck,) = a.checkpoints()
        assert ck.lsn == raced[0] and a.checkpoint_state(ck.id) == final


def test_compaction_forgets_sessions_ended_longer_ago_than_retention_keeps(
    tmp_path: Path,
) -> None:
    """Ended sessions leave the table (and every later anchor) once older than
    ``RetentionPolicy.ended_sessions``; active ones and recent ones stay; the record file
    of a forgotten one stays on disk."""
    now = [1000.0]
    policy = CheckpointPolicy(
        every_batches=None,
        every_log_bytes=None,
        on_step_start=False,
        on_step_end=False,
        on_error=False,
        retention=RetentionPolicy(ended_sessions=100.0),
    )
    path = str(tmp_path)

    def opened() -> LocalStore:
        return LocalStore.open(path, clock=lambda: now[0], checkpoints=policy)

    with opened() as store, opened() as other:
        old = store.start_session("alice")
        store.commit(create("a"), session=old)
        old.end()
        now[0] = 1050.0
        recent = store.start_session("bob")
        recent.end()
        active = store.start_session("carol")
        now[0] = 1101.0
        assert store.compact(dry_run=True).sessions_forgotten == (old.id,)
        assert store.compact().sessions_forgotten == (old.id,)
        kept = {s.id for s in store.sessions()}
        assert kept == {recent.id, active.id} == {s.id for s in other.sessions()}
        with pytest.raises(NotFoundError):
            store.export_session(old.id)
        assert (tmp_path / "sessions" / f"{old.id}.session").exists()
        active.close()
    with opened() as store:
        assert {s.id for s in store.sessions()} == kept
    with pytest.raises(ValidationError) as info:
        RetentionPolicy(ended_sessions=-1)
    assert info.value.field == "ended_sessions"
