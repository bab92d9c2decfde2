"""Two-phase commit across ``workflows/``, ``checkpoints/`` and ``sessions/`` (issue 5,
docs/format.md §10): the protocol in :mod:`wfstate.twophase`, the ``TXN`` payload, and the
local store's transactions (``write_state_files``), their failures, roll forward and clean-up.
The crash simulator over whole workloads is in ``tests/test_twophase_crash.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import (
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    SchemaVersionError,
    StorePoisonedError,
    SyncFailedError,
    TransactionError,
    ValidationError,
)
from wfstate.format import RECORD_TXN, TXN_DIRS, is_txn_id, xxh3
from wfstate.fs import OS_FS, FileSystem
from wfstate.model import WorkflowState, WorkflowStep, encode_state
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.statetable import stamped_with
from wfstate.twophase import (
    Participant,
    Txn,
    TxnFile,
    check_participants,
    decode_txn,
    encode_txn,
    finish,
    is_abandoned_temp,
    prepare,
    roll_forward,
)
from wfstate.wal import Log

SIM = "/store"


def create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(3))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def step(workflow_id: str, i: int, text: str = "out") -> list[Mutation]:
    return [
        SetStepStatus(workflow_id=workflow_id, step_id=f"s{i}", status="running", at=0),
        PutStepOutput(workflow_id=workflow_id, step_id=f"s{i}", data={"t": text}, at=0),
    ]


def open_store(path: str, fs: FileSystem = OS_FS, **kwargs: object) -> LocalStore:
    kwargs.setdefault("checkpoints", MANUAL_ONLY)
    return LocalStore.open(path, fs=fs, clock=lambda: 1000.0, **kwargs)  # type: ignore[arg-type]


def populated(path: str, fs: FileSystem = OS_FS, workflows: Sequence[str] = ("a", "b")) -> None:
    with open_store(path, fs) as store:
        for w in workflows:
            store.commit(create(w))
            store.commit(step(w, 0))


def tree(fs: FileSystem, root: str) -> dict[str, bytes]:
    """Every file below ``root`` (LOCK excluded: its hint is not persistent state) and its
    content, by relative path."""
    out: dict[str, bytes] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        for name in fs.listdir(directory):
            path = os.path.join(directory, name)
            if fs.is_dir(path):
                stack.append(path)
            elif name != "LOCK":
                out[os.path.relpath(path, root)] = fs.read_file(path)
    return out


def temps(fs: FileSystem, root: str) -> list[str]:
    return [p for p in tree(fs, root) if os.path.basename(p).endswith(".tmp")]


def same_state(a: WorkflowState, b: WorkflowState) -> bool:
    return encode_state(stamped_with(a, 0)) == encode_state(stamped_with(b, 0))


def decide_only(
    store: LocalStore,
    participants: Sequence[Participant],
    checkpoints: Sequence[CheckpointInfo] = (),
) -> Txn:
    """Prepare and decide a transaction through the store's internals, without finishing it:
    what a decider killed between its decision and its renames leaves."""
    txn = prepare(store._fs, store.path, participants, checkpoints=checkpoints)
    with store._mutex, store._held() as writer:
        writer.enqueue(encode_txn(txn), record_type=RECORD_TXN)
        writer.sync()
    return txn


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- the happy path ----------------------------------------------------------------------------


def test_state_files_and_checkpoints_appear_and_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as other, open_store(path) as store:
        assert other.checkpoints() == []
        txn_id = store.write_state_files(checkpoint=True)
        assert is_txn_id(txn_id)
        assert sorted(os.listdir(tmp_path / "workflows")) == ["a.state", "b.state"]
        entries = store.checkpoints()
        assert sorted(i.workflow_id for i in entries) == ["a", "b"]
        assert all(i.parent is None and i.type == "manual" for i in entries)
        assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(i.file for i in entries)
        for w in ("a", "b"):
            assert same_state(store.read_state_file(w), store.load(w))
            assert store.read_state_file(w).metadata.last_lsn == store.load(w).metadata.last_lsn
        assert all(c.ok and c.matches_log for c in store.verify())
        # a second handle sees the entries the TXN record embeds, and loads from them
        assert other.checkpoints() == entries
        for info in entries:
            assert same_state(other.checkpoint_state(info.id), other.load(info.workflow_id))
        assert temps(OS_FS, path) == []
    with open_store(path) as store:
        assert store.checkpoints() == entries
        assert all(c.ok and c.matches_log for c in store.verify())
        assert same_state(store.read_state_file("a"), store.load("a"))


def test_named_workflows_only_and_a_later_transaction_replaces_the_files(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        store.write_state_files(["b"])
        assert os.listdir(tmp_path / "workflows") == ["b.state"]
        assert store.checkpoints() == []  # no checkpoint unless asked
        old = store.read_state_file("b")
        store.commit(step("b", 1, "later"))
        assert same_state(store.read_state_file("b"), old)
        store.write_state_files(["b", "a"])
        assert same_state(store.read_state_file("b"), store.load("b"))
        assert not same_state(store.read_state_file("b"), old)
        with pytest.raises(NotFoundError, match="workflow_id"):
            store.read_state_file("c")


def test_a_checkpoint_committed_by_a_transaction_is_a_parent_for_incremental_ones(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        store.write_state_files(["a"], checkpoint=True)
        (full,) = store.checkpoints("a")
        store.commit(step("a", 1))
        incremental = store.checkpoint("a")
        assert incremental.parent == full.id
        assert same_state(store.checkpoint_state(incremental.id), store.load("a"))


def test_the_txn_record_is_durable_whatever_the_durability_level() -> None:
    fs = SimFileSystem()
    populated(SIM, fs)
    with open_store(SIM, fs, durability="none") as store:
        store.write_state_files(checkpoint=True)
        after = fs.op_count
        entries = store.checkpoints()
        states = {w: store.load(w) for w in ("a", "b")}
    for label, disk in fs.crash_states(after):  # every state an OS crash then could leave
        with open_store(SIM, disk) as store:
            assert store.checkpoints() == entries, label
            for w, state in states.items():
                assert same_state(store.read_state_file(w), state), label


def test_a_damaged_state_file_does_not_read(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        store.write_state_files(["a"])
        state_file = tmp_path / "workflows" / "a.state"
        data = bytearray(state_file.read_bytes())
        data[-1] ^= 1
        state_file.write_bytes(bytes(data))
        with pytest.raises(CorruptionError) as caught:
            store.read_state_file("a")
        assert caught.value.path == str(state_file)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow_ids", "checkpoint", "error", "field"),
    [
        ("a", False, ValidationError, "workflow_ids"),
        ([], False, ValidationError, "workflow_ids"),
        (["a", "a"], False, ValidationError, "workflow_ids[1]"),
        (["a", "x/y"], False, ValidationError, "workflow_ids[1]"),
        (["a", 7], False, ValidationError, "workflow_ids[1]"),
        (["a", "nope"], False, NotFoundError, "workflow_ids[1]"),
        (None, "yes", ValidationError, "checkpoint"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    workflow_ids: object, checkpoint: object, error: type[Exception], field: str
) -> None:
    fs = SimFileSystem()
    populated(SIM, fs)
    with open_store(SIM, fs) as store:
        before = fs.op_count
        with pytest.raises(error, match="^" + re.escape(field) + ": "):
            store.write_state_files(workflow_ids, checkpoint=checkpoint)  # type: ignore[arg-type]
        assert fs.op_count == before, "nothing may be written"
        store.write_state_files()  # still usable


def test_an_empty_store_has_no_state_file_to_write() -> None:
    fs = SimFileSystem()
    with open_store(SIM, fs) as store, pytest.raises(ValidationError, match=r"^workflow_ids: "):
        store.write_state_files()


@pytest.mark.parametrize(
    ("participants", "field"),
    [
        ([], "participants"),
        ([("wal/x", b"")], "participants[0].path"),
        ([("workflows", b"")], "participants[0].path"),
        ([("workflows/", b"")], "participants[0].path"),
        ([("workflows/a/b", b"")], "participants[0].path"),
        ([("workflows/..", b"")], "participants[0].path"),
        ([("sessions/x\x00", b"")], "participants[0].path"),
        ([("workflows/.a.state.12.ab.tmp", b"")], "participants[0].path"),
        ([("workflows/a", b""), ("sessions/a", "text")], "participants[1].content"),
        ([("workflows/a", b""), ("workflows/a", b"x")], "participants[1].path"),
        ([("workflows/a", b""), (b"workflows/b", b"")], "participants[1].path"),
        (["workflows/a"], "participants[0]"),
    ],
)
def test_bad_participants_are_refused_before_anything_is_written(
    participants: list[object], field: str
) -> None:
    fs = SimFileSystem()
    before = fs.op_count
    with pytest.raises(ValidationError) as caught:
        prepare(fs, SIM, participants)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert fs.op_count == before


def _entry(file: str = "ck-00000000000000aa.ckpt", size: int = 3) -> CheckpointInfo:
    return CheckpointInfo(
        id="ck-00000000000000aa",
        workflow_id="a",
        origin=1,
        lsn=2,
        parent=None,
        session_id=None,
        type="manual",
        tags=(),
        description="",
        file=file,
        size=size,
        checksum=5,
        created=1.0,
    )


@pytest.mark.parametrize(
    ("checkpoints", "field"),
    [
        ([_entry(size=4)], "checkpoints[0].size"),
        ([_entry(file="ck-00000000000000aa.folded.ckpt")], "checkpoints[0].file"),
        ([_entry(file="other.ckpt")], "checkpoints[0]"),
        ([_entry(), _entry()], "checkpoints[1].id"),
        (["entry"], "checkpoints[0]"),
    ],
)
def test_bad_checkpoint_entries_are_refused(checkpoints: list[object], field: str) -> None:
    participants = [Participant("checkpoints/ck-00000000000000aa.ckpt", b"abc")]
    with pytest.raises(ValidationError) as caught:
        check_participants(participants, checkpoints)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_participants_are_ordered_by_path() -> None:
    got = check_participants(
        [
            Participant("workflows/b", b"1"),
            Participant("checkpoints/z", b"2"),
            Participant("sessions/a", b"3"),
            Participant("workflows/a", b""),
        ]
    )
    assert [p.path for p in got] == ["checkpoints/z", "sessions/a", "workflows/a", "workflows/b"]


# -- the TXN payload ---------------------------------------------------------------------------


def _txn() -> Txn:
    return Txn(
        checkpoints=(_entry(),),
        files=(
            TxnFile(
                "checkpoints/ck-00000000000000aa.ckpt", ".ck-00000000000000aa.ckpt.7.ab.tmp", 3, 9
            ),
            TxnFile("workflows/a.state", ".a.state.7.cd.tmp", 10, 11),
        ),
        id="tx-0123456789abcdef",
    )


def test_txn_payload_round_trips_with_sorted_keys_and_version_1() -> None:
    txn = _txn()
    data = encode_txn(txn)
    assert decode_txn(data) == txn
    raw = msgspec.msgpack.decode(data)
    assert list(raw) == ["checkpoints", "files", "id", "v"]  # sessions omitted when empty
    assert raw["v"] == 1
    assert raw["files"][1] == ["workflows/a.state", ".a.state.7.cd.tmp", 10, 11]
    assert list(raw["checkpoints"][0]) == sorted(raw["checkpoints"][0])
    assert "v" not in raw["checkpoints"][0]
    with_session = msgspec.structs.replace(
        txn, sessions=(msgspec.Raw(msgspec.msgpack.encode({"id": "se"})),)
    )
    assert decode_txn(encode_txn(with_session)).sessions[0] == with_session.sessions[0]


def _reencoded(**changes: object) -> bytes:
    raw = msgspec.msgpack.decode(encode_txn(_txn()))
    raw.update(changes)
    return msgspec.msgpack.encode(raw)


def test_a_newer_txn_version_is_refused_not_misread() -> None:
    with pytest.raises(SchemaVersionError):
        decode_txn(_reencoded(v=3, files="anything"))


def test_a_txn_is_written_with_the_lowest_version_that_holds_it() -> None:
    """Version 2 only for a batch (docs/format.md §10.2): a reader of version 1 refuses exactly
    the records it cannot apply, and reads every other one."""
    plain = decode_txn(_reencoded())
    assert msgspec.msgpack.decode(encode_txn(plain))["v"] == 1
    with_batch = msgspec.structs.replace(plain, batch=b"\x81\xa1v\x01")
    document = msgspec.msgpack.decode(encode_txn(with_batch))
    assert document["v"] == 2 and document["batch"] == b"\x81\xa1v\x01"
    assert decode_txn(encode_txn(with_batch)) == with_batch
    with pytest.raises(ValidationError, match="needs version 2"):
        decode_txn(_reencoded(batch=b"\x81\xa1v\x01"))  # v 1 claiming a batch


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgspec.msgpack.encode({"v": 1}),
        _reencoded(id="tx-123"),
        _reencoded(files=[]),
        _reencoded(
            files=[["workflows/b", ".b.1.ab.tmp", 1, 1], ["workflows/a", ".a.1.ab.tmp", 1, 1]]
        ),
        _reencoded(
            files=[["workflows/a", ".a.1.ab.tmp", 1, 1], ["workflows/a", ".a.1.cd.tmp", 1, 1]]
        ),
        _reencoded(files=[["workflows/a", ".b.1.ab.tmp", 1, 1]]),
        _reencoded(files=[["workflows/a", "../a.1.ab.tmp", 1, 1]]),
        _reencoded(files=[["wal/a", ".a.1.ab.tmp", 1, 1]]),
        _reencoded(files=[["workflows/a", ".a.1.ab.tmp", -1, 1]]),
        _reencoded(files=[["workflows/a.state", ".a.state.7.cd.tmp", 10, 11]]),  # entry's file gone
    ],
)
def test_a_malformed_txn_payload_is_refused(data: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_txn(data)
    assert caught.value.field.startswith("txn")


def test_a_malformed_txn_record_in_the_log_is_corruption(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with Log.open(str(tmp_path / "wal"), lock_path=str(tmp_path / "LOCK")) as log:
        log.append(_reencoded(id="nope"), record_type=RECORD_TXN)
    with pytest.raises(CorruptionError, match="transaction record at LSN 5"):
        open_store(path)


# -- prepare fails: nothing decided, nothing changed ------------------------------------------


@pytest.mark.parametrize(("op", "nth"), [("create", 2), ("write", 3)])
def test_a_failure_while_preparing_raises_transaction_error_and_changes_nothing(
    op: str, nth: int
) -> None:
    fs = SimFileSystem()
    populated(SIM, fs)
    with open_store(SIM, fs) as store:
        store.write_state_files(checkpoint=True)
        store.commit(step("a", 1))
        before = tree(fs, SIM)
        index = store.checkpoints()
        last = store.stats().last_lsn
        fs.inject(op, nth)  # type: ignore[arg-type]
        with pytest.raises(TransactionError) as caught:
            store.write_state_files(checkpoint=True)
        assert isinstance(caught.value.__cause__, OSError)
        assert tree(fs, SIM) == before, "no final file changed and no temp file is left"
        assert store.checkpoints() == index and store.stats().last_lsn == last
        # the store goes on
        store.commit(step("b", 1))
        store.write_state_files(checkpoint=True)
        for w in ("a", "b"):
            assert same_state(store.read_state_file(w), store.load(w))
        assert temps(fs, SIM) == []


@pytest.mark.parametrize(("op", "nth"), [("fsync", 1), ("fsync_dir", 2)])
def test_a_failed_sync_while_preparing_changes_nothing_and_poisons_the_store(
    op: str, nth: int
) -> None:
    """DESIGN.md §3: a failed fsync is fatal even of a temp file nothing names (a later sync
    of the directory could report entries durable that the failed one lost): the temp files
    are removed, the call and every later one raise ``StorePoisonedError``, a reopened store
    goes on."""
    fs = SimFileSystem()
    populated(SIM, fs)
    with open_store(SIM, fs) as store:
        store.write_state_files(checkpoint=True)
        before = tree(fs, SIM)
        index = store.checkpoints()
        fs.inject(op, nth)  # type: ignore[arg-type]
        with pytest.raises(StorePoisonedError) as caught:
            store.write_state_files(checkpoint=True)
        assert isinstance(caught.value.__cause__, TransactionError)
        assert isinstance(caught.value.__cause__.__cause__, SyncFailedError)
        assert tree(fs, SIM) == before, "no final file changed and no temp file is left"
        with pytest.raises(StorePoisonedError):
            store.commit(step("a", 1))
        assert tree(fs, SIM) == before
    with open_store(SIM, fs) as store:
        assert store.checkpoints() == index
        store.commit(step("a", 1))
        store.write_state_files(checkpoint=True)
        assert same_state(store.read_state_file("a"), store.load("a"))


def test_a_failure_to_take_the_lock_removes_the_temp_files(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    wal, lock = str(tmp_path / "wal"), str(tmp_path / "LOCK")
    with open_store(path, lock_timeout=0) as store, Log.open(wal, lock_path=lock) as log:
        with log.writing(), pytest.raises(LockTimeoutError):  # another writer holds the lock
            store.write_state_files()
        assert temps(OS_FS, path) == []
        assert os.listdir(tmp_path / "workflows") == []
        store.write_state_files()
        assert os.listdir(tmp_path / "workflows") == ["a.state", "b.state"]


# -- finish fails: the store is poisoned, reopening rolls forward ------------------------------


def _fail_in_finish(
    monkeypatch: pytest.MonkeyPatch, fs: SimFileSystem, op: str, nth: int
) -> list[Txn]:
    """Arm a fault on ``op`` (``nth`` call) as the finish step starts; returns the txns seen."""
    seen: list[Txn] = []

    def failing(fs_: FileSystem, root: str, txn: Txn) -> None:
        seen.append(txn)
        fs.inject(op, nth)  # type: ignore[arg-type]
        finish(fs_, root, txn)

    monkeypatch.setattr("wfstate.backends.local.finish", failing)
    return seen


@pytest.mark.parametrize(
    ("op", "nth"), [("replace", 1), ("replace", 3), ("fsync_dir", 1), ("fsync_dir", 2)]
)
def test_a_failure_while_finishing_poisons_the_store_and_reopening_rolls_forward(
    monkeypatch: pytest.MonkeyPatch, op: str, nth: int
) -> None:
    fs = SimFileSystem()
    populated(SIM, fs)
    with open_store(SIM, fs) as store:
        store.write_state_files(checkpoint=True)
        old_index = store.checkpoints()
        store.commit(step("a", 1, "new"))
        store.commit(step("b", 1, "new"))
        expected = {w: store.load(w) for w in ("a", "b")}
    store = open_store(SIM, fs)
    seen = _fail_in_finish(monkeypatch, fs, op, nth)
    with pytest.raises(StorePoisonedError) as caught:
        store.write_state_files(checkpoint=True)
    assert isinstance(caught.value.__cause__, OSError)
    for call in (
        lambda: store.load("a"),
        store.list_workflows,
        lambda: store.commit(step("a", 2)),
        store.checkpoints,
        store.write_state_files,
        lambda: store.read_state_file("a"),
    ):
        with pytest.raises(StorePoisonedError):
            call()
    store.close()
    monkeypatch.undo()
    (txn,) = seen
    with open_store(SIM, fs) as reopened:
        assert temps(fs, SIM) == []
        for w, state in expected.items():
            assert same_state(reopened.read_state_file(w), state)
        new = [i for i in reopened.checkpoints() if i not in old_index]
        assert sorted(i.id for i in new) == sorted(i.id for i in txn.checkpoints)
        for info in new:
            assert same_state(reopened.checkpoint_state(info.id), expected[info.workflow_id])
        for f in txn.files:
            data = fs.read_file(os.path.join(SIM, f.path))
            assert (len(data), xxh3(data)) == (f.size, f.checksum)


def test_a_failed_sync_of_the_decision_poisons_the_log_and_keeps_the_temp_files() -> None:
    """Whether the TXN record is durable is unknown after a failed sync: the temp files stay
    (removing them would break a transaction that did happen). The poisoned writer marks the
    LOCK hint (format §8.1), so the reopen in the same boot cuts the record the page cache
    still shows instead of building on it: the transaction did not happen, and its temp files
    stay while their writer lives (a later open of another process deletes them)."""
    fs = SimFileSystem()
    populated(SIM, fs)
    store = open_store(SIM, fs)
    fs.inject("fdatasync", 1)
    with pytest.raises(StorePoisonedError):
        store.write_state_files()
    prepared = temps(fs, SIM)
    assert len(prepared) == 2
    store.close()
    with open_store(SIM, fs) as reopened:
        (cut,) = reopened.open_report.log_damage
        assert cut.kind == "torn_tail"
        assert "sync that failed" in cut.reason
        assert reopened.open_report.rolled_forward == ()
        assert temps(fs, SIM) == prepared
        with pytest.raises(NotFoundError):
            reopened.read_state_file("a")


# -- roll forward ------------------------------------------------------------------------------


def _mixed(tag: bytes) -> list[Participant]:
    return [
        Participant("workflows/x.state", b"x " + tag),
        Participant("sessions/s.session", b"s " + tag * 100),
        Participant("checkpoints/c.ckpt", b"c " + tag * 3),
    ]


def test_rolling_forward_twice_is_rolling_forward_once(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        txn = decide_only(store, _mixed(b"new"))
    assert len(temps(OS_FS, path)) == 3
    # a decider that died half way: the first rename done
    first = txn.files[0]
    os.replace(tmp_path / os.path.dirname(first.path) / first.temp, tmp_path / first.path)
    renamed = roll_forward(OS_FS, path, [txn])
    assert renamed == [str(tmp_path / f.path) for f in txn.files[1:]]
    once = tree(OS_FS, path)
    assert roll_forward(OS_FS, path, [txn]) == []
    assert tree(OS_FS, path) == once
    for p in _mixed(b"new"):
        assert (tmp_path / p.path).read_bytes() == p.content
    assert temps(OS_FS, path) == []
    with open_store(path):
        assert tree(OS_FS, path) == once
    with open_store(path):
        assert tree(OS_FS, path) == once


def test_reopening_finishes_a_decided_transaction_and_a_second_open_changes_nothing(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        decide_only(store, _mixed(b"old"))
    with open_store(path) as store:
        decide_only(store, _mixed(b"new"))  # the same paths again, before the first finished
    with open_store(path):
        for p in _mixed(b"new"):
            assert (tmp_path / p.path).read_bytes() == p.content
        assert temps(OS_FS, path) == []
        once = tree(OS_FS, path)
    with open_store(path):
        assert tree(OS_FS, path) == once


def test_a_damaged_temp_file_of_a_decided_transaction_is_corruption_at_open(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    populated(path)
    for p in _mixed(b"old"):
        (tmp_path / p.path).write_bytes(p.content)
    with open_store(path) as store:
        txn = decide_only(store, _mixed(b"new"))
    damaged = tmp_path / os.path.dirname(txn.files[1].path) / txn.files[1].temp
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    before = tree(OS_FS, path)
    with pytest.raises(CorruptionError) as caught:
        open_store(path)
    assert caught.value.path == str(damaged)
    assert txn.id in caught.value.reason
    assert tree(OS_FS, path) == before, "nothing is renamed"
    damaged.write_bytes(good)
    with open_store(path):
        for p in _mixed(b"new"):
            assert (tmp_path / p.path).read_bytes() == p.content


def test_another_handle_rolls_forward_what_a_killed_decider_left(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as decider, open_store(path) as other, open_store(path) as reader:
        with decider._mutex:
            a = decider._current("a")
            origin = decider._table.origin("a")
        assert a is not None and origin is not None
        data, info = decider._full_file(origin, a, created=5.0)
        participants = [*_mixed(b"new"), Participant(f"checkpoints/{info.file}", data)]
        decide_only(decider, participants, [info])  # then "killed": it never finishes
        # a reader catches up without the lock: it takes the entry, renames nothing
        assert info in reader.checkpoints()
        assert len(temps(OS_FS, path)) == 4
        # the next holder of the writers' lock finishes the transaction before it writes
        other.commit(step("b", 1))
        assert temps(OS_FS, path) == []
        for p in participants:
            assert (tmp_path / p.path).read_bytes() == p.content
        assert same_state(other.checkpoint_state(info.id), a)
        assert same_state(reader.checkpoint_state(info.id), a)
        # the reader, which saw the record without the lock, rolls forward at its own tenure
        # (nothing left to rename) and goes on
        reader.commit(step("a", 1))


def test_a_damaged_temp_file_found_by_a_later_writer_stops_its_store(tmp_path: Path) -> None:
    """A writer that cannot roll forward another's decided transaction writes nothing more: a
    later file of its own could otherwise be put in place before that transaction's."""
    path = str(tmp_path)
    populated(path)
    with open_store(path) as decider, open_store(path) as other:
        txn = decide_only(decider, _mixed(b"new"))
        damaged = tmp_path / os.path.dirname(txn.files[0].path) / txn.files[0].temp
        damaged.write_bytes(b"rot")
        last = other.stats().last_lsn
        with pytest.raises(CorruptionError) as caught:
            other.commit(step("a", 1))
        assert caught.value.path == str(damaged)
        with pytest.raises(StorePoisonedError):
            other.load("a")
        assert decider.stats().last_lsn == last, "the batch was not written"


# -- undecided temp files ----------------------------------------------------------------------


def test_undecided_temp_files_of_dead_writers_are_deleted_at_open_live_ones_kept(
    tmp_path: Path,
) -> None:
    path = str(tmp_path)
    populated(path)
    dead, live = dead_pid(), os.getppid()
    assert is_abandoned_temp(f".x.{dead}.ab.tmp") and not is_abandoned_temp(f".x.{live}.ab.tmp")
    for d in TXN_DIRS:
        (tmp_path / d / f".x.state.{dead}.abc.tmp").write_bytes(b"dead")
        (tmp_path / d / f".y.state.{live}.abc.tmp").write_bytes(b"live")
        (tmp_path / d / f".z.state.{os.getpid()}.abc.tmp").write_bytes(b"mine")
    with open_store(path):
        for d in TXN_DIRS:
            assert sorted(os.listdir(tmp_path / d)) == sorted(
                [f".y.state.{live}.abc.tmp", f".z.state.{os.getpid()}.abc.tmp"]
            )


def test_compaction_deletes_undecided_temp_files_of_dead_writers(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path)
    with open_store(path) as store:
        dead = dead_pid()
        for d in TXN_DIRS:
            (tmp_path / d / f".x.state.{dead}.abc.tmp").write_bytes(b"dead")
        store.compact()
        assert temps(OS_FS, path) == []


# -- the log's part: sync inside a writing block -------------------------------------------------


def test_a_writer_syncs_its_records_and_keeps_the_lock(tmp_path: Path) -> None:
    wal = str(tmp_path / "wal")
    with Log.open(wal, durability="none") as log, Log.open(wal, lock_timeout=0) as other:
        with log.writing() as writer:
            lsn = writer.enqueue(b"decision")
            assert log.durable_lsn < lsn
            writer.sync()
            assert log.durable_lsn == lsn
            with pytest.raises(LockTimeoutError):
                other.append(b"not now")
        assert other.append(b"now") == lsn + 1


# -- restoring a checkpoint into the workflow file ----------------------------------------------


def test_restore_to_file_restores_and_writes_the_file_in_one_transaction(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path, workflows=("a",))
    with open_store(path) as other, open_store(path) as store:
        ck = store.checkpoint("a")
        saved = store.load("a")
        store.commit(step("a", 1, "later"))
        before = store.load("a")
        lsn = store.restore(ck.id, to_file=True)
        restored = store.load("a")
        assert (
            restored.metadata.last_lsn == lsn
            and restored.metadata.version == before.metadata.version + 1
        )
        assert restored.outputs == saved.outputs and restored.workflow == saved.workflow
        assert store.read_state_file("a") == restored
        assert other.load("a") == restored  # the TXN record's batch, read from the log
        assert temps(OS_FS, path) == []
    with open_store(path, cache_bytes=0) as store:  # rebuilt by reading the TXN batch back
        assert store.load("a") == restored and store.read_state_file("a") == restored
        assert all(c.ok and c.matches_log for c in store.verify())
        store.compact()
    with open_store(path) as store:
        assert store.load("a") == restored


def test_restore_to_file_recreates_a_deleted_workflow(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path, workflows=("a",))
    with open_store(path) as store:
        ck = store.checkpoint("a")
        store.delete("a")
        lsn = store.restore(ck.id, to_file=True)
        assert store.load("a").metadata.last_lsn == lsn
        assert store.read_state_file("a") == store.load("a")
        assert store.stats().last_lsn == lsn
    with open_store(path, cache_bytes=0) as store:
        loaded, saved = store.load("a"), store.checkpoint_state(ck.id)
        assert (loaded.workflow, loaded.outputs) == (saved.workflow, saved.outputs)
        assert store.read_state_file("a") == loaded


def test_restore_to_file_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path)
    populated(path, workflows=("a",))
    with open_store(path) as store:
        ck = store.checkpoint("a")
        before = tree(OS_FS, path)
        with pytest.raises(ValidationError) as info:
            store.restore(ck.id, to_file=1)  # type: ignore[arg-type]
        assert info.value.field == "to_file"
        with pytest.raises(NotFoundError):
            store.restore("ck-0000000000000000", to_file=True)
        assert tree(OS_FS, path) == before
