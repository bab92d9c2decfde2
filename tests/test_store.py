"""The Store contract (wfstate/store.py), checked on every backend alike."""

from __future__ import annotations

import gc
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest

from tests.fsdoubles import RecordingFS
from wfstate.backends.local import LocalStore
from wfstate.backends.memory import MemoryStore
from wfstate.errors import (
    ClosedError,
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    StorePoisonedError,
    ValidationError,
)
from wfstate.format import RECORD_BATCH, WAL_DIR
from wfstate.fs import OS_FS
from wfstate.model import JSONValue, WorkflowState, WorkflowStep
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    PutStepOutput,
    SetStepStatus,
    SetWorkflowStatus,
    encode_mutations,
)
from wfstate.statetable import StateTable
from wfstate.store import Store
from wfstate.wal import Log

Opener = Callable[[], Store]


def ticking_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: start + next(counter)


@pytest.fixture(params=["memory", "local"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Store] = []
    clock = ticking_clock()

    def opener() -> Store:
        store: Store
        if request.param == "memory":
            store = opened[0] if opened else MemoryStore(clock=clock)
        else:
            store = LocalStore.open(str(tmp_path / "store"), clock=clock)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def create(workflow_id: str, steps: int = 2) -> CreateWorkflow:
    return CreateWorkflow(
        workflow_id=workflow_id,
        name=f"workflow {workflow_id}",
        steps=tuple(WorkflowStep(id=f"s{i}", name=f"step {i}") for i in range(steps)),
        at=0,
    )


def run_step(workflow_id: str, step_id: str, output: JSONValue) -> list[Mutation]:
    return [
        SetStepStatus(workflow_id=workflow_id, step_id=step_id, status="running", at=0),
        SetStepStatus(
            workflow_id=workflow_id, step_id=step_id, status="completed", output=output, at=0
        ),
    ]


def test_commit_applies_a_batch_and_stamps_lsn_and_time(open_store: Opener) -> None:
    store = open_store()
    lsn1 = store.commit([create("w1")])
    lsn2 = store.commit(
        [
            SetWorkflowStatus(workflow_id="w1", status="running", at=123),
            *run_step("w1", "s0", {"answer": 42}),
        ]
    )
    assert lsn2 > lsn1
    state = store.load("w1")
    assert state.workflow.status == "running"
    assert state.workflow.steps[0].status == "completed"
    assert state.outputs["s0"][0].data == {"answer": 42}
    assert state.metadata.last_lsn == lsn2
    assert state.workflow.progress == 50
    # the store's clock stamps every mutation; the caller's `at` is ignored
    assert state.metadata.updated_at > 1_700_000_000
    assert state.workflow.start_time == state.metadata.updated_at


def test_an_invalid_batch_changes_nothing(open_store: Opener) -> None:
    store = open_store()
    store.commit([create("w1")])
    before = store.load("w1")
    with pytest.raises(ValidationError) as info:
        store.commit(
            [
                SetWorkflowStatus(workflow_id="w1", status="running", at=0),
                SetStepStatus(workflow_id="w1", step_id="nope", status="running", at=0),
            ]
        )
    assert info.value.field.startswith("mutations[1]")
    with pytest.raises(NotFoundError):
        store.commit([SetWorkflowStatus(workflow_id="ghost", status="running", at=0)])
    with pytest.raises(ValidationError):
        store.commit([create("bad/id")])
    with pytest.raises(ValidationError):
        store.commit([])
    assert store.load("w1") == before
    assert store.list_workflows() == ["w1"]


def test_batches_are_all_or_nothing_across_workflows(open_store: Opener) -> None:
    store = open_store()
    store.commit([create("a"), create("b")])
    with pytest.raises(ValidationError):
        store.commit([*run_step("a", "s0", 1), create("b")])
    assert store.load("a").workflow.steps[0].status == "pending"


def test_save_load_list_delete(open_store: Opener) -> None:
    store = open_store()
    store.commit([create("w1", steps=3)])
    store.commit(run_step("w1", "s1", "done"))
    state = store.load("w1")
    # save of a new workflow, from another workflow's state
    moved = msgspec.structs.replace(
        state, workflow=msgspec.structs.replace(state.workflow, id="w2")
    )
    store.save(moved)
    copy = store.load("w2")
    assert copy.workflow.steps == state.workflow.steps
    assert copy.outputs == state.outputs
    assert store.list_workflows() == ["w1", "w2"]
    store.save(store.load("w1"))  # saving an existing one replaces it
    assert store.load("w1").metadata.version == state.metadata.version + 1
    store.delete("w1")
    assert store.list_workflows() == ["w2"]
    with pytest.raises(NotFoundError):
        store.load("w1")
    with pytest.raises(NotFoundError):
        store.delete("w1")
    with pytest.raises(ValidationError) as info:
        store.load("../etc")
    assert info.value.field == "workflow_id"


def test_threads_commit_concurrently_without_losing_anything(open_store: Opener) -> None:
    store = open_store()
    threads, per_thread = 6, 15
    store.commit([create(f"w{k}", steps=per_thread) for k in range(threads)])

    def worker(k: int) -> None:
        for i in range(per_thread):
            store.commit(run_step(f"w{k}", f"s{i}", {"k": k, "i": i}))

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for k in range(threads):
        state = store.load(f"w{k}")
        assert state.workflow.progress == 100
        assert [state.outputs[f"s{i}"][0].data for i in range(per_thread)] == [
            {"k": k, "i": i} for i in range(per_thread)
        ]
        assert state.metadata.version == 1 + 2 * per_thread


def test_closed_store_refuses_work(open_store: Opener) -> None:
    store = open_store()
    store.close()
    with pytest.raises(ClosedError):
        store.commit([create("w1")])


# -- the local backend only -------------------------------------------------------------------
def _left_after_close(path: str, loads: bool) -> int:
    """How many more objects the cyclic collector tracks once a closed handle is dropped,
    with the collector off meanwhile: the handle sits in reference cycles, so whatever it
    still holds stays until a collection. With ``loads``, the handle loaded a workflow of 400
    outputs (each with a list, which the collector tracks) and checkpointed it (its
    parent-state cache)."""
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        store = LocalStore.open(path)
        if loads:
            store.load("w1")
            store.checkpoint("w1")
        store.close()
        del store
        return len(gc.get_objects()) - before
    finally:
        gc.enable()
        gc.collect()


def test_closing_drops_the_loaded_states_without_the_cyclic_collector(tmp_path: Path) -> None:
    """close() releases the cached and parent states, so they are freed at once by reference
    counting and not by a later full collection in the middle of the application's work (it
    cost 0.7 s after loading BENCHMARKS.md's big store)."""
    path = str(tmp_path / "store")
    with LocalStore.open(path) as store:
        store.commit([create("w1", steps=400)])
        store.commit(
            [PutStepOutput(workflow_id="w1", step_id=f"s{i}", data=[i], at=0) for i in range(400)]
        )
    baseline = _left_after_close(path, loads=False)
    assert _left_after_close(path, loads=True) < baseline + 100


def test_local_store_reopens_to_the_same_states(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with LocalStore.open(path) as store:
        store.commit([create("w1"), create("w2")])
        store.commit(run_step("w1", "s0", [1, 2, 3]))
        store.commit([PutStepOutput(workflow_id="w2", step_id="s1", data="draft", at=0)])
        store.delete("w2")
        expected = {w: store.load(w) for w in store.list_workflows()}
    with LocalStore.open(path) as store:
        assert {w: store.load(w) for w in store.list_workflows()} == expected


def test_a_store_is_opened_by_several_handles_and_each_sees_the_others(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with LocalStore.open(path) as first, LocalStore.open(path) as second:
        first.commit([create("w1")])
        assert second.list_workflows() == ["w1"]
        second.commit(run_step("w1", "s0", "from second"))  # validated on first's batch
        assert first.load("w1").outputs["s0"][0].data == "from second"
        assert first.load("w1") == second.load("w1")


def test_a_held_writers_lock_times_out_retryably_and_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with LocalStore.open(path) as store:
        store.commit([create("w1")])
        holder = OS_FS.open_lock(str(tmp_path / "store" / "LOCK"))
        assert OS_FS.try_lock(holder)
        try:
            with pytest.raises(LockTimeoutError) as info:
                LocalStore.open(path, lock_timeout=0.05)
            assert info.value.retryable
            assert "lock_timeout" in str(info.value)
            assert store.load("w1").metadata.version == 1  # readers are not blocked
        finally:
            OS_FS.close_lock(holder)
        store.commit(run_step("w1", "s0", 1))  # released: writing goes on
    with LocalStore.open(path) as store:
        assert store.load("w1").metadata.version == 3


def test_the_lock_is_taken_on_the_file_at_the_path_not_a_replaced_one(tmp_path: Path) -> None:
    lock_path = str(tmp_path / "LOCK")
    a, b = OS_FS.open_lock(lock_path), OS_FS.open_lock(lock_path)
    try:
        os.unlink(lock_path)
        Path(lock_path).touch()  # a new LOCK file: a and b hold the old inode open
        assert OS_FS.try_lock(a)  # a notices, reopens the path and locks the new file
        # b can lock the old inode (nobody holds it any more), but must not count that as
        # holding the lock: it reopens the path and finds the new file locked by a.
        assert not OS_FS.try_lock(b)
        OS_FS.unlock(a)
        assert OS_FS.try_lock(b)
    finally:
        OS_FS.close_lock(a)
        OS_FS.close_lock(b)


def test_local_commits_of_many_threads_share_syncs(tmp_path: Path) -> None:
    fs = RecordingFS(sync_delay=0.003)
    with LocalStore.open(str(tmp_path / "store"), fs=fs) as store:
        store.commit([create(f"w{k}", steps=10) for k in range(8)])
        before = fs.count("fdatasync")

        def worker(k: int) -> None:
            for i in range(10):
                store.commit(run_step(f"w{k}", f"s{i}", i))

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert fs.count("fdatasync") - before < 80


def test_oversized_batch_is_refused_naming_the_input(tmp_path: Path) -> None:
    with LocalStore.open(str(tmp_path / "store"), max_record_size=2000) as store:
        store.commit([create("w1")])
        with pytest.raises(ValidationError) as info:
            store.commit([PutStepOutput(workflow_id="w1", step_id="s0", data="x" * 5000, at=0)])
        assert info.value.field == "mutations"
        assert "s0" not in store.load("w1").outputs


def test_a_logged_batch_that_cannot_apply_is_reported_as_corruption(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Log.open(str(path / WAL_DIR)) as log:
        log.append(encode_mutations([create("w1")]), record_type=RECORD_BATCH)
        bad = encode_mutations(
            [SetStepStatus(workflow_id="w2", step_id="s0", status="running", at=0)]
        )
        lsn = log.append(bad, record_type=RECORD_BATCH)
    with pytest.raises(CorruptionError, match=f"batch at LSN {lsn} does not apply"):
        LocalStore.open(str(path))


# -- lazy materialization (local) ---------------------------------------------------------------
def _history(store: Store) -> None:
    """Commits touching several workflows, with deletes and a re-creation in one batch."""
    store.commit([create("a", steps=6), create("b"), create("c")])
    for i in range(6):
        out = PutStepOutput(workflow_id="b", step_id="s1", data=[i], at=0)
        store.commit([*run_step("a", f"s{i}", i), out])
        store.commit([PutStepOutput(workflow_id="c", step_id="s0", data={"i": i}, at=0)])
    store.commit([DeleteWorkflow(workflow_id="b", at=0), create("b", steps=3)])
    store.commit(run_step("b", "s2", "again"))
    store.delete("c")


def test_opening_builds_no_state_and_reads_build_exactly_the_committed_ones(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "store")
    with LocalStore.open(path, clock=ticking_clock()) as store:
        _history(store)
        committed = {w: store.load(w) for w in store.list_workflows()}
    assert sorted(committed) == ["a", "b"]
    for cache_bytes in (0, 10**9):
        with LocalStore.open(path, cache_bytes=cache_bytes) as store:
            assert store._table.cached == []  # nothing materialized by opening
            assert store.list_workflows() == ["a", "b"]
            assert {w: store.load(w) for w in ["b", "a"]} == committed
            assert len(store._table.cached) == (1 if cache_bytes == 0 else 2)


def test_a_small_cache_gives_the_same_states_as_an_unbounded_one(tmp_path: Path) -> None:
    with (
        LocalStore.open(str(tmp_path / "small"), cache_bytes=0, clock=ticking_clock()) as small,
        LocalStore.open(str(tmp_path / "big"), clock=ticking_clock()) as big,
    ):
        _history(small)  # every commit validates against states rebuilt from the log
        _history(big)
        assert len(small._table.cached) <= 1
        assert {w: small.load(w) for w in ["a", "b"]} == {w: big.load(w) for w in ["a", "b"]}


def test_another_handles_commits_reach_cached_and_evicted_states(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with LocalStore.open(path) as writer, LocalStore.open(path, cache_bytes=0) as reader:
        writer.commit([create("a"), create("b")])
        assert reader.load("a").metadata.version == 1  # cached in reader; b is not
        writer.commit(run_step("a", "s0", 1) + run_step("b", "s0", 2))
        assert reader.load("a") == writer.load("a")  # brought forward in the cache
        assert reader.load("b") == writer.load("b")  # rebuilt from the log
        writer.commit([DeleteWorkflow(workflow_id="a", at=0)])
        assert reader.list_workflows() == ["b"]
        with pytest.raises(NotFoundError):
            reader.load("a")


def test_a_logged_step_change_that_cannot_apply_is_corruption_when_read(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Log.open(str(path / WAL_DIR)) as log:
        log.append(encode_mutations([create("w1")]), record_type=RECORD_BATCH)
        bad = SetStepStatus(workflow_id="w1", step_id="nope", status="running", at=0)
        lsn = log.append(encode_mutations([bad]), record_type=RECORD_BATCH)
    store = LocalStore.open(str(path))  # opening only indexes batches
    with store, pytest.raises(CorruptionError, match=f"batch at LSN {lsn} does not apply"):
        store.load("w1")


@pytest.mark.parametrize("cache_bytes", [-1, 1.5, True, "1"])
def test_a_bad_cache_budget_is_refused(tmp_path: Path, cache_bytes: object) -> None:
    with pytest.raises(ValidationError) as info:
        LocalStore.open(str(tmp_path / "s"), cache_bytes=cache_bytes)  # type: ignore[arg-type]
    assert info.value.field == "cache_bytes"


def test_a_whole_state_replacement_resets_the_cache_estimate(tmp_path: Path) -> None:
    with LocalStore.open(str(tmp_path / "store"), cache_bytes=6000) as store:
        store.commit([create("a", steps=20), create("b", steps=20)])  # ~2 KB logged
        a = store.load("a")
        for _ in range(10):  # ~1.5 KB logged each: without the reset, "a" would weigh ~15 KB
            store.save(a)
        store.load("b")
        store.load("a")
        assert sorted(store._table.cached) == ["a", "b"]


def test_a_logged_batch_that_does_not_describe_one_history_changes_no_entry() -> None:
    built: list[list[tuple[int, int]]] = []
    model = MemoryStore(clock=ticking_clock())
    model.commit([create("a")])
    a = model.load("a")

    def materialize(
        workflow_id: str, origin: int, floor: int, entries: Sequence[tuple[int, int]]
    ) -> tuple[WorkflowState, int]:
        built.append(list(entries))
        return a, 1

    table = StateTable(materialize)
    table.replay([("create_workflow", "a")], 1, 10, lambda: [])
    with pytest.raises(NotFoundError):  # "a" is fine, "ghost" was never created
        table.replay([("put_step_output", "a"), ("put_step_output", "ghost")], 2, 10, lambda: [])
    with pytest.raises(ValidationError):  # created twice
        table.replay([("create_workflow", "a")], 3, 10, lambda: [])
    with pytest.raises(NotFoundError):  # changed after its delete, in the same batch
        table.replay([("delete_workflow", "a"), ("put_step_output", "a")], 4, 10, lambda: [])
    assert table.ids() == ["a"]
    assert table.get("a") is a
    assert built == [[(1, 0)]]  # neither rejected batch left an entry behind


def test_a_batch_from_another_writer_that_cannot_apply_stops_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with LocalStore.open(str(path)) as store:
        store.commit([create("w1")])
        with Log.open(str(path / WAL_DIR), lock_path=str(path / "LOCK")) as other:
            bad = PutStepOutput(workflow_id="ghost", step_id="s0", data=1, at=0)
            other.append(encode_mutations([bad]), record_type=RECORD_BATCH)
        with pytest.raises(CorruptionError, match="does not apply"):
            store.commit(run_step("w1", "s0", 1))
        with pytest.raises(StorePoisonedError):  # never writes on a view that lacks a batch
            store.commit(run_step("w1", "s0", 1))
    with pytest.raises(CorruptionError, match="does not apply"):
        LocalStore.open(str(path))
