"""The crash simulator over checkpoint creation, retention (fold + drop) and compaction
(segment discard), issue 4: in every crash state, after reopening,

- every workflow equals the model after one prefix of batches that includes every
  acknowledged batch (no acknowledged mutation is lost, nothing is half applied);
- every checkpoint in the index reads and holds exactly the state it was taken of (a fold
  holds the same state under the same id): no checkpoint loads wrong;
- every acknowledged checkpoint is in the index unless a retention under way dropped it, and
  no acknowledged drop comes back;
- once a compaction is acknowledged the log starts at its anchor and no segment before it is
  left on disk after the open (a deleted segment never comes back as live data).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.simfs import SimFileSystem
from tests.test_store_crash import WORKFLOWS, batches
from wfstate.backends.local import LocalStore
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.format import WAL_DIR, parse_segment_name
from wfstate.model import WorkflowState, encode_state
from wfstate.retention import RetentionPolicy
from wfstate.statetable import stamped_with
from wfstate.wal import Compression

STORE = "/data/store"


def _bytes(state: WorkflowState) -> bytes:
    """A state's encoding without its LSN stamp: checkpoint and drop records take LSNs the
    model's batches do not."""
    return encode_state(stamped_with(state, 0))


def snapshot(store: LocalStore | MemoryStore) -> dict[str, bytes]:
    return {w: _bytes(store.load(w)) for w in store.list_workflows()}


class _Acks:
    """What the workload had acknowledged, by the trace position of each acknowledgement."""

    def __init__(self) -> None:
        self.batches: list[int] = []  # op count at each batch's ack
        self.checkpoints: list[tuple[int, str]] = []  # (op count, id)
        self.drops: list[tuple[int, int, str]] = []  # (op count at start, at ack, id)
        self.discards: list[tuple[int, int]] = []  # (op count, first LSN after)


def _open(fs: SimFileSystem, clock: Callable[[], float]) -> LocalStore:
    return LocalStore.open(
        STORE,
        fs=fs,
        clock=clock,
        segment_size=4096,
        compression=Compression(codec="none"),
        checkpoints=MANUAL_ONLY,
    )


def test_checkpoints_retention_and_compaction_survive_every_crash_state(
    crash_report: list[str],
) -> None:
    plan = batches()
    model = MemoryStore(clock=lambda: 1000.0)  # one time: checkpoints read the clock too
    prefixes: list[dict[str, bytes]] = [{}]
    for batch in plan:
        model.commit(batch)
        prefixes.append(snapshot(model))

    fs = SimFileSystem()
    clock = lambda: 1000.0  # noqa: E731
    acks = _Acks()
    expected: dict[str, bytes] = {}  # checkpoint id -> the state it was taken of
    store = _open(fs, clock)
    done = 0

    def commit(upto: int) -> None:
        nonlocal done
        while done < upto:
            store.commit(plan[done])
            done += 1
            acks.batches.append(fs.op_count)

    def checkpoint(workflow_id: str) -> str:
        info = store.checkpoint(workflow_id, tags=("t",))
        expected[info.id] = _bytes(store.load(workflow_id))
        acks.checkpoints.append((fs.op_count, info.id))
        return info.id

    commit(5)
    first = checkpoint(WORKFLOWS[0])  # full
    checkpoint(WORKFLOWS[1])
    commit(9)
    second = checkpoint(WORKFLOWS[0])  # incremental on `first`
    assert store.checkpoints(WORKFLOWS[0])[0].parent == first
    retain_started = fs.op_count
    result = store.retain(RetentionPolicy(keep_last=1))  # folds `second`, drops `first`
    assert [i.id for i in result.fold] == [second] and first in {i.id for i in result.drop}
    acks.drops += [(retain_started, fs.op_count, info.id) for info in result.drop]
    commit(13)
    report = store.compact()
    assert report.segments_discarded, "the workload must discard segments"
    acks.discards.append((fs.op_count, report.log_first_lsn))
    for info in store.checkpoints():
        expected.setdefault(info.id, _bytes(store.checkpoint_state(info.id)))
    commit(len(plan))
    store.close()

    states = 0
    for at in fs.crash_points():
        for label, disk in fs.crash_states(at):
            states += 1
            _check_state(disk, at, label, acks, expected, prefixes)
    crash_report.append(
        f"checkpoints, retention and compaction ({len(plan)} batches, {len(expected)} "
        f"checkpoints, {len(report.segments_discarded)} segments discarded): {states} crash "
        f"states at {fs.op_count + 1} crash points; every one a whole prefix with every acked "
        "batch, every checkpoint reads as taken, no dropped checkpoint or discarded segment "
        "back"
    )
    assert states > 500


def _check_state(
    disk: SimFileSystem,
    at: int,
    label: str,
    acks: _Acks,
    expected: dict[str, bytes],
    prefixes: list[dict[str, bytes]],
) -> None:
    where = f"op {at} {label}"
    with _open(disk, lambda: 5000.0) as recovered:
        got = snapshot(recovered)
        assert got in prefixes, f"{where}: not the model after any prefix"
        acked = sum(1 for op in acks.batches if op <= at)
        assert prefixes.index(got) >= acked, f"{where}: an acknowledged batch is lost"
        index = {info.id: info for info in recovered.checkpoints()}
        for checkpoint_id in index:
            assert checkpoint_id in expected, f"{where}: unknown checkpoint {checkpoint_id}"
            state = _bytes(recovered.checkpoint_state(checkpoint_id))
            assert state == expected[checkpoint_id], f"{where}: {checkpoint_id} loads wrong"
        dropped = {cid for _start, op, cid in acks.drops if op <= at}
        dropping = {cid for start, _op, cid in acks.drops if start <= at}
        for op, checkpoint_id in acks.checkpoints:
            if op <= at and checkpoint_id not in dropping:
                assert checkpoint_id in index, f"{where}: acked checkpoint {checkpoint_id} lost"
        assert not dropped & set(index), f"{where}: dropped checkpoints back: {dropped}"
        for op, first_lsn in acks.discards:
            if op <= at:
                assert recovered.stats().log_first_lsn == first_lsn, f"{where}: log start"
                wal = os.path.join(STORE, WAL_DIR)
                for name in disk.listdir(wal):
                    parsed = parse_segment_name(name)
                    assert parsed is None or parsed[1] >= first_lsn, (
                        f"{where}: discarded segment {name} still there after the open"
                    )
