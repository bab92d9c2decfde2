"""P3, P4, P5, P5b and P7 from BENCHMARKS.md: wfstate's store API beside its peers (P6: in
``bench/test_checkpoints.py``).

wfstate is ``LocalStore`` through its public methods only (``open``, ``save``, ``load``,
``list_workflows``, ``close``; :class:`bench.peers.WfstateStore`), so these keep measuring the
same thing while the store's internals change. Peers (:data:`bench.peers.STATE_SYSTEMS`):
``sqlite_full`` (SQLite WAL, synchronous=FULL, a workflow's state as one JSON blob in one row)
and ``json_rewrite`` (one JSON file per workflow, rewritten whole), both decoding back into the
same typed ``WorkflowState`` wfstate returns.

P5, P5b and P7 also measure ``wfstate+checkpoints``: wfstate on the big store built with the
default checkpoint policy (automatic checkpoints and compaction; ``bench/big_store.py``), in
rows of their own beside the log-only ``wfstate`` ones; the seed targets are judged on it.
P5 and P5b also measure ``wfstate+crash``, that store as a crash before its close leaves it
(no compaction on close), in rows ``+crash``, reported and not gated.
P5 and P5b open both wfstate stores with checkpoint policy ``MANUAL_ONLY``, so that no round
does automatic work.

Times are medians of rounds (pytest-benchmark); the report keeps them in ms beside the ratios.
P7 measures memory, not time: its numbers are in ``extra_info`` and the report table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench import report
from bench.benchmark_protocol import Benchmark
from bench.big_store import CHECKPOINTED, CRASHED, BigStore
from bench.peers import STATE_SYSTEMS, JsonStateFiles, OpenStatePeer, StatePeer, WfstateStore
from bench.report import QUICK
from bench.rss_probe import run_in_subprocess
from fixtures.reference_states import big_workflow_state
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.model import WorkflowState

# Budgets (2-core VM, ext4): this file takes ~1.5 min in quick mode, ~2 min in full mode (mostly
# the big store, full size in both modes: building it twice, ~70 s, and
# reopening it in P5, P5b and P7; quick mode runs fewer rounds of them).
P3_ROUNDS = 5 if QUICK else 20
P3_WARMUP = 2 if QUICK else 3  # past wfstate's first save (which also creates the workflow)
P4_ROUNDS = 10 if QUICK else 30
P4_WARMUP = 2
P5_ROUNDS = 2 if QUICK else 5
P5_WARMUP = 0 if QUICK else 1  # the big store was just built: its files are in the page cache
P5B_ROUNDS = 3 if QUICK else 10
P5B_WARMUP = 1

ALL_SYSTEMS = ["sqlite_full", "json_rewrite", "wfstate"]


def _manual_wfstate() -> StatePeer:
    return WfstateStore(checkpoints=MANUAL_ONLY)


#: How P5 and P5b open each system. They have one peer: the same states read from JSON files.
#: wfstate, on the log-only and the default-policy big stores, opened without automatic
#: checkpoints so that no round does automatic work (a load never triggers any).
BIG_STORE_OPENERS: dict[str, Callable[[], StatePeer]] = {
    "json_rewrite": JsonStateFiles,
    "wfstate": _manual_wfstate,
    CHECKPOINTED: _manual_wfstate,
    CRASHED: _manual_wfstate,
}
BIG_STORE_SYSTEMS = list(BIG_STORE_OPENERS)

_KIB_TO_MB = 1024 / 1e6


@pytest.fixture(scope="module")
def big_state() -> WorkflowState:
    """The big state (1,000 steps, each with its output) as the ``WorkflowState`` to save."""
    return big_workflow_state()


class FreshHandles:
    """Opens a new handle of ``system`` (made by ``opener``, by default the one of
    :data:`bench.peers.STATE_SYSTEMS`) on ``directory`` inside a timed round.

    What a round loaded is kept (:meth:`keep`) and, with every handle opened, dropped in
    pytest-benchmark's untimed teardown (:meth:`close_all`; a store is locked while open). So
    no round pays for freeing the previous round's states, or has them alive during its own
    garbage collections; rounds return only a small summary for the same reason.
    """

    def __init__(
        self, system: str, directory: str, opener: Callable[[], StatePeer] | None = None
    ) -> None:
        self.system = system
        self.directory = directory
        self._opener = STATE_SYSTEMS[system] if opener is None else opener
        self._opened: list[StatePeer] = []
        self._kept: list[object] = []

    def open(self) -> StatePeer:
        peer = self._opener()
        peer.open(self.directory)
        self._opened.append(peer)
        return peer

    def keep(self, loaded: object) -> None:
        self._kept.append(loaded)

    def close_all(self) -> None:
        self._kept.clear()
        opened, self._opened = self._opened, []
        for peer in reversed(opened):
            peer.close()

    def save_once(self, state: WorkflowState) -> None:
        """Untimed: open, save ``state``, close (the data the rounds then read)."""
        try:
            self.open().save(state)
        finally:
            self.close_all()

    def time_loads(
        self, benchmark: Benchmark, workflow_id: str, *, rounds: int, warmup_rounds: int
    ) -> int:
        """Time ``rounds`` rounds of: open a fresh handle, load ``workflow_id``; the number
        of outputs the loaded state holds (the rounds' summary)."""

        def open_and_load() -> int:
            state = self.open().load(workflow_id)
            self.keep(state)
            return len(state.outputs)

        outputs: int = benchmark.pedantic(
            open_and_load,
            teardown=self.close_all,
            rounds=rounds,
            warmup_rounds=warmup_rounds,
        )
        return outputs

    def load_once(self, workflow_id: str) -> WorkflowState:
        """Untimed: open, load ``workflow_id``, close (to check what the rounds read)."""
        try:
            return self.open().load(workflow_id)
        finally:
            self.close_all()


def record_median(benchmark: Benchmark, key: str, system: str) -> None:
    """Report the median round of ``benchmark`` for store row ``key``, in ms."""
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    median_ms = benchmark.stats["median"] * 1e3
    benchmark.extra_info["median_ms"] = round(median_ms, 2)
    report.RESULTS.record(key, system, median_ms)


def _big_store_rows(key: str, system: str) -> list[tuple[str, str]]:
    """The ``(row, column)`` of the report that ``system``'s number for workload ``key`` goes
    to: ``wfstate+checkpoints`` is the wfstate column of row ``key+ck``, ``wfstate+crash``
    of row ``key+crash``; a peer's number goes to every row, as the yardstick of each."""
    if system == CHECKPOINTED:
        return [(key + "+ck", "wfstate")]
    if system == CRASHED:
        return [(key + "+crash", "wfstate")]
    if system == "wfstate":
        return [(key, system)]
    rows = [(key, system), (key + "+ck", system)]
    return [*rows, (key + "+crash", system)] if key in ("P5", "P5b") else rows


@pytest.mark.benchmark(group="P3")
@pytest.mark.parametrize("system", ALL_SYSTEMS)
def test_p3_save_big_state(
    benchmark: Benchmark,
    open_state_peer: OpenStatePeer,
    big_state: WorkflowState,
    system: str,
) -> None:
    """One durable save of the big state into an open store that already holds it.

    Every system saves the same ``WorkflowState`` object each round and encodes it itself
    (wfstate: ``LocalStore.save``; the peers: ``msgspec.json`` then their write). Warm-up
    rounds take each system past its first save, into the steady state of a long-running one.
    """
    peer = open_state_peer(system)
    benchmark.pedantic(peer.save, args=(big_state,), rounds=P3_ROUNDS, warmup_rounds=P3_WARMUP)
    saved = peer.load(big_state.workflow.id)
    assert saved.outputs == big_state.outputs
    record_median(benchmark, "P3", system)


@pytest.mark.benchmark(group="P4")
@pytest.mark.parametrize("system", ALL_SYSTEMS)
def test_p4_load_big_state(
    benchmark: Benchmark, tmp_path: Path, big_state: WorkflowState, system: str
) -> None:
    """Load the big state with a fresh handle: open the store that holds it (saved once, as
    by P3, then closed), then ``load`` it. JSON: read + decode the file; SQLite: connect,
    select, decode."""
    handles = FreshHandles(system, str(tmp_path / system))
    report.RESULTS.data_dir = str(tmp_path)
    handles.save_once(big_state)
    wid = big_state.workflow.id
    loaded = handles.time_loads(benchmark, wid, rounds=P4_ROUNDS, warmup_rounds=P4_WARMUP)
    assert loaded == len(big_state.outputs)
    assert handles.load_once(wid).outputs == big_state.outputs
    record_median(benchmark, "P4", system)


@pytest.mark.benchmark(group="P5")
@pytest.mark.parametrize("system", BIG_STORE_SYSTEMS)
def test_p5_materialize_big_store(benchmark: Benchmark, big_store: BigStore, system: str) -> None:
    """Reopen the big store and load every workflow it lists (JSON: list the directory, read
    and decode every file)."""
    handles = FreshHandles(system, big_store.directory(system), BIG_STORE_OPENERS[system])

    def materialize() -> tuple[int, int]:
        peer = handles.open()
        states = [peer.load(w) for w in peer.list_workflows()]
        handles.keep(states)
        return len(states), sum(len(s.outputs) for s in states)

    loaded = benchmark.pedantic(
        materialize, teardown=handles.close_all, rounds=P5_ROUNDS, warmup_rounds=P5_WARMUP
    )
    assert loaded == (big_store.workflows, big_store.mutations)
    benchmark.extra_info["big_store"] = big_store.label()
    for row, column in _big_store_rows("P5", system):
        record_median(benchmark, row, column)


@pytest.mark.benchmark(group="P5b")
@pytest.mark.parametrize("system", BIG_STORE_SYSTEMS)
def test_p5b_first_read_big_store(benchmark: Benchmark, big_store: BigStore, system: str) -> None:
    """Reopen the big store until its first workflow is read: open + one ``load`` (JSON: read
    and decode one file)."""
    handles = FreshHandles(system, big_store.directory(system), BIG_STORE_OPENERS[system])
    outputs = handles.time_loads(
        benchmark, big_store.first_workflow, rounds=P5B_ROUNDS, warmup_rounds=P5B_WARMUP
    )
    assert outputs == big_store.per_workflow
    benchmark.extra_info["big_store"] = big_store.label()
    for row, column in _big_store_rows("P5b", system):
        record_median(benchmark, row, column)


@pytest.mark.benchmark(group="P7")
@pytest.mark.parametrize("system", [*ALL_SYSTEMS, CHECKPOINTED])
def test_p7_rss_growth_big_store_open(
    benchmark: Benchmark, big_store: BigStore, system: str
) -> None:
    """RSS growth of a fresh process when it opens the big store (``bench/rss_probe.py``).

    wfstate: ``LocalStore.open``, then also one ``load``; json_rewrite: every JSON file decoded
    and held; sqlite_full: a connection to SQLite holding the same mutations. The time
    pytest-benchmark shows is the whole probe process (start-up, imports, open): not a target.
    ``wfstate+checkpoints``: the probe's wfstate on the default-policy store (the ``wfstate``
    system of :attr:`BigStore.checkpointed`), reported in rows ``P7+ck`` and ``P7+ck+load``.
    """
    if system == CHECKPOINTED:
        probe_args = ("wfstate", big_store.checkpointed)
    else:
        probe_args = (system, big_store)
    probe = benchmark.pedantic(run_in_subprocess, args=probe_args, rounds=1)
    open_mb = probe.open_growth_kib * _KIB_TO_MB
    peak_mb = probe.peak_growth_kib * _KIB_TO_MB
    benchmark.extra_info.update(
        rss_before_kib=probe.before_kib,
        rss_open_growth_mb=round(open_mb, 1),
        rss_peak_growth_mb=round(peak_mb, 1),
        rss_source=probe.source,
        big_store=big_store.label(),
    )
    ck = system == CHECKPOINTED
    for row, column in _big_store_rows("P7", system):
        report.RESULTS.record(row, column, open_mb)
    if not ck:
        report.RESULTS.record("P7 peak", system, peak_mb)
    loaded = probe.first_load_growth_kib
    if loaded is not None:
        load_mb = loaded * _KIB_TO_MB
        benchmark.extra_info["rss_first_load_growth_mb"] = round(load_mb, 1)
        report.RESULTS.record("P7+ck+load" if ck else "P7+load", "wfstate", load_mb)
