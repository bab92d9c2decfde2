"""How cost grows with size (issue 8): commit and load against the steps of a workflow, recovery
against the records of the log; wfstate beside the peers where they do the same job.

Curves (``report.SCALING_CURVES``; quick mode measures the smaller sizes only):

- ``commit``: one durable commit of one step output (P1-style: a new output version of one
  step, ~1 KB) into a store holding one workflow of N steps, each with its output
  (``big_workflow_state(N)``). wfstate: ``LocalStore.commit`` of one ``PutStepOutput``
  (durability ``always``, default settings); ``sqlite_full``: one row per mutation (the batch
  as JSON) in SQLite WAL synchronous=FULL, its table first filled with the state's N outputs;
  ``json_rewrite``: the whole state with the change applied, encoded and rewritten (temp file,
  fsync, rename, directory fsync). Reported: p50. Each round's change is applied to the peers'
  in-memory state untimed; every ``RESET_EVERY`` rounds every system is put back to the
  N-step state untimed (wfstate: ``save``), so the state measured has N to N + 4 outputs.
- ``load``: open a fresh handle on a store holding only that workflow (saved once) and load
  it; as P4 (``sqlite_full``: its state as one JSON blob in one row). Reported: median.
- ``recovery``: "usable" is defined as the first workflow read: ``LocalStore.open`` (lock,
  recover the log's tail, index every record) then ``load`` of the first workflow, on a
  log-only store (checkpoint policy ``MANUAL_ONLY``, no checkpoint) whose log holds N
  step-output records (one ``PutStepOutput`` per batch, plus the creations: N / 1,000
  workflows of 1,000 steps, progressing side by side as in the big store), built at
  durability ``none``. The 100,000-record store is the big store itself. Every workflow has
  1,000 steps at every N, so the first read replays the same 1,000 records and the curve shows
  what the size of the log costs. The build opens its store with a cache large enough for
  every state (``BUILD_CACHE_BYTES``): with the default 256 MB, writing 1,000 workflows in
  turn evicts each before its next write, and every commit then rebuilds its workflow from the
  log (~20x slower per commit; the 1M build would take hours). The measured opens use the
  default cache. ``json_rewrite``: read and decode that first workflow's JSON file (a JSON-file
  store has no log to recover: what it has to read before it is usable). SQLite has no
  equivalent worth timing here (its recovery is a WAL it checkpointed at close). Median.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from bench import report
from bench.benchmark_protocol import Benchmark
from bench.big_store import BigStore
from bench.peers import JsonStateFiles, OpenStatePeer, SqliteFull, StatePeer, WfstateStore
from bench.report import QUICK, SCALING_CURVES
from bench.test_store_workloads import FreshHandles
from fixtures.reference_data import step_output, workflow_id
from fixtures.reference_states import big_store_batches, big_workflow_state
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.model import StepOutput, WorkflowState
from wfstate.mutations import PutStepOutput

QUICK_STEPS = (10, 100, 1_000)
QUICK_RECORDS = (10_000, 100_000)


def sizes(curve: str) -> tuple[int, ...]:
    full = SCALING_CURVES[curve][2]
    quick = QUICK_RECORDS if curve == "recovery" else QUICK_STEPS
    return quick if QUICK else full


COMMIT_ROUNDS = 15 if QUICK else 40
COMMIT_WARMUP = 3 if QUICK else 5
LOAD_ROUNDS = 5 if QUICK else 15
RECOVERY_ROUNDS = 3 if QUICK else 5
RESET_EVERY = 4
#: The steps of every workflow of a recovery store; records / RECOVERY_STEPS workflows.
RECOVERY_STEPS = 1000
#: The building store's state cache (module docstring): every state of the 1M store fits.
BUILD_CACHE_BYTES = 4 * 1024**3

_STATES: dict[int, WorkflowState] = {}
_JSON = msgspec.json.Encoder()


def state_of(steps: int) -> WorkflowState:
    """``big_workflow_state(steps)``, made once per run."""
    if steps not in _STATES:
        _STATES[steps] = big_workflow_state(steps)
    return _STATES[steps]


class OneStepChanges:
    """Round ``n`` puts a new output version on step ``n mod N`` (the output of workflow 1 at
    that index: ~1 KB, a real change), and says when the state is due to be put back."""

    def __init__(self, state: WorkflowState) -> None:
        self.state = state
        self._steps = [step.id for step in state.workflow.steps]
        self._counter = itertools.count()
        self.rounds = 0

    def next(self) -> tuple[str, dict[str, object]]:
        n = next(self._counter)
        self.rounds = n + 1
        index = n % len(self._steps)
        return self._steps[index], step_output(1, index)

    def reset_due(self) -> bool:
        return self.rounds > 0 and self.rounds % RESET_EVERY == 0

    def mutation(self, step: str, data: dict[str, object]) -> PutStepOutput:
        return PutStepOutput(
            workflow_id=self.state.workflow.id,
            step_id=step,
            data=data,
            agent_id=str(data["agent_id"]),
            at=0.0,
        )

    @staticmethod
    def applied(state: WorkflowState, step: str, data: dict[str, object]) -> WorkflowState:
        """``state`` with the new version of ``step``, as wfstate applies it."""
        versions = state.outputs.get(step, ())
        new = StepOutput(
            step_id=step,
            version=len(versions) + 1,
            agent_id=str(data["agent_id"]),
            data=data,
            created_at=state.metadata.updated_at,
        )
        return msgspec.structs.replace(state, outputs={**state.outputs, step: (*versions, new)})


def _record_p50(benchmark: Benchmark, curve: str, size: int, system: str) -> None:
    if benchmark.stats is None:
        return
    ms = benchmark.stats["median"] * 1e3
    benchmark.extra_info["median_ms"] = round(ms, 3)
    report.RESULTS.record_scaling(curve, size, system, ms)


@pytest.mark.benchmark(group="scaling commit")
@pytest.mark.parametrize("system", ["sqlite_full", "json_rewrite", "wfstate"])
@pytest.mark.parametrize("steps", sizes("commit"))
def test_scaling_commit(
    benchmark: Benchmark, tmp_path: Path, open_state_peer: OpenStatePeer, steps: int, system: str
) -> None:
    """One durable commit of one step output into a workflow of ``steps`` steps (docstring)."""
    state = state_of(steps)
    changes = OneStepChanges(state)
    target: Callable[..., object]
    setup: Callable[[], tuple[tuple[object, ...], dict[str, object]]]
    if system == "wfstate":
        store = LocalStore.open(str(tmp_path / "wfstate"), durability="always")
        report.RESULTS.data_dir = str(tmp_path)
        store.save(state)

        def wfstate_setup() -> tuple[tuple[object, ...], dict[str, object]]:
            if changes.reset_due():
                store.save(state)
            return ([changes.mutation(*changes.next())],), {}

        target, setup = store.commit, wfstate_setup
    elif system == "sqlite_full":
        rows = SqliteFull()
        rows.open(str(tmp_path / system))
        report.RESULTS.data_dir = str(tmp_path)
        for step, versions in state.outputs.items():
            last = versions[-1]
            put = PutStepOutput(
                workflow_id=state.workflow.id,
                step_id=step,
                data=last.data,
                agent_id=last.agent_id,
                at=0.0,
            )
            rows.commit(_JSON.encode([put]))

        def sqlite_setup() -> tuple[tuple[object, ...], dict[str, object]]:
            return (_JSON.encode([changes.mutation(*changes.next())]),), {}

        target, setup = rows.commit, sqlite_setup
    else:
        files = open_state_peer(system)
        files.save(state)
        current = [state]

        def json_setup() -> tuple[tuple[object, ...], dict[str, object]]:
            if changes.reset_due():
                current[0] = state
            current[0] = changes.applied(current[0], *changes.next())
            return (current[0],), {}

        target, setup = files.save, json_setup
    try:
        benchmark.pedantic(target, setup=setup, rounds=COMMIT_ROUNDS, warmup_rounds=COMMIT_WARMUP)
        if system == "wfstate":
            loaded = store.load(state.workflow.id)
            assert len(loaded.workflow.steps) == steps
            assert sum(map(len, loaded.outputs.values())) > steps  # the commits landed
        elif system == "sqlite_full":
            assert rows.count() > steps
    finally:
        if system == "wfstate":
            store.close()
        elif system == "sqlite_full":
            rows.close()
    _record_p50(benchmark, "commit", steps, system)
    benchmark.extra_info["steps"] = steps


@pytest.mark.benchmark(group="scaling load")
@pytest.mark.parametrize("system", ["sqlite_full", "json_rewrite", "wfstate"])
@pytest.mark.parametrize("steps", sizes("load"))
def test_scaling_load(benchmark: Benchmark, tmp_path: Path, steps: int, system: str) -> None:
    """Open a fresh handle on a store holding the workflow of ``steps`` steps, load it."""
    state = state_of(steps)
    handles = FreshHandles(system, str(tmp_path / system))
    report.RESULTS.data_dir = str(tmp_path)
    handles.save_once(state)
    wid = state.workflow.id
    outputs = handles.time_loads(benchmark, wid, rounds=LOAD_ROUNDS, warmup_rounds=1)
    assert outputs == steps
    assert handles.load_once(wid).outputs == state.outputs
    _record_p50(benchmark, "load", steps, system)
    benchmark.extra_info["steps"] = steps


class RecoveryStore:
    """A log-only wfstate store of ``records`` step-output records (module docstring) and the
    first workflow's state as a JSON file, built under ``root`` (``wfstate/``, ``json/``)."""

    def __init__(self, root: str, records: int) -> None:
        self.root = root
        self.records = records
        self.workflows = records // RECOVERY_STEPS

    def wfstate_dir(self) -> str:
        return os.path.join(self.root, "wfstate")

    def json_dir(self) -> str:
        return os.path.join(self.root, "json")

    def build(self) -> None:
        store = LocalStore.open(
            self.wfstate_dir(),
            durability="none",
            checkpoints=MANUAL_ONLY,
            cache_bytes=BUILD_CACHE_BYTES,
        )
        try:
            for batch in big_store_batches(self.workflows, RECOVERY_STEPS):
                store.commit(batch)
            files = JsonStateFiles()
            files.open(self.json_dir())
            files.save(store.load(workflow_id(0)))
        finally:
            store.close()


class RecoveryStores:
    """The recovery stores of a run, each built on first use; the big store is the 100,000."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._built: dict[int, RecoveryStore] = {}

    def directory(self, big: BigStore, records: int, system: str) -> str:
        if records == big.mutations and big.per_workflow == RECOVERY_STEPS:
            return big.directory(system)
        if records not in self._built:
            store = RecoveryStore(str(self._root / f"records_{records}"), records)
            store.build()
            self._built[records] = store
        built = self._built[records]
        return built.wfstate_dir() if system == "wfstate" else built.json_dir()


@pytest.fixture(scope="session")
def recovery_stores(tmp_path_factory: pytest.TempPathFactory) -> RecoveryStores:
    return RecoveryStores(tmp_path_factory.mktemp("recovery"))


def _manual_wfstate() -> StatePeer:
    return WfstateStore(checkpoints=MANUAL_ONLY)


RECOVERY_OPENERS: dict[str, Callable[[], StatePeer]] = {
    "json_rewrite": JsonStateFiles,
    "wfstate": _manual_wfstate,
}


@pytest.mark.benchmark(group="scaling recovery")
@pytest.mark.parametrize("system", list(RECOVERY_OPENERS))
@pytest.mark.parametrize("records", sizes("recovery"))
def test_scaling_recovery(
    benchmark: Benchmark,
    recovery_stores: RecoveryStores,
    big_store: BigStore,
    records: int,
    system: str,
) -> None:
    """Reopen a store whose log holds ``records`` records until its first workflow is read."""
    directory = recovery_stores.directory(big_store, records, system)
    handles = FreshHandles(system, directory, RECOVERY_OPENERS[system])
    outputs = handles.time_loads(benchmark, workflow_id(0), rounds=RECOVERY_ROUNDS, warmup_rounds=1)
    assert outputs == RECOVERY_STEPS
    _record_p50(benchmark, "recovery", records, system)
    benchmark.extra_info["records"] = records
