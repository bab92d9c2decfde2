"""P6 from BENCHMARKS.md: checkpoints of the big state, beside the snapshot a peer would write.

wfstate (``variant``):

- ``full``: ``LocalStore.checkpoint`` of the big state (1,000 steps with outputs) in a store at
  durability ``always`` whose policy writes only full checkpoints (``MANUAL_ONLY`` with
  ``incremental=False``);
- ``incremental``: the same call with ``MANUAL_ONLY`` (incremental, ``max_chain`` 8) on a handle
  that took the workflow's previous checkpoint, so it writes the delta from it.

Every round first commits, untimed (pytest-benchmark's ``setup``), one batch of 10
``PutStepOutput`` (a new ~1 KB output version of 10 steps, different steps each round), then
times the one ``checkpoint`` call: encode, write and fsync the file, rename it into place and
fsync the directory, append the ``CHECKPOINT`` record and wait for it to be durable. Each round
asserts what it wrote (``parent is None`` for ``full``, set for ``incremental``).

New output versions make the state grow (~1 % a round), and a checkpoint's cost grows with the
state (both variants encode it whole, for its checksum at least). So every ``max_chain`` (8)
rounds the untimed setup puts the big state back (``save``): the state measured stays within 8 %
of the big state. For ``incremental`` that is also where the chain is full, and the setup then
takes, untimed, the full checkpoint the store wants next, so every measured round of it is an
incremental checkpoint.

The peers have no checkpoint: their snapshot of a state is saving it whole, durably, exactly as
in P3 (``sqlite_full``: the state as one JSON blob in one row, WAL, synchronous=FULL;
``json_rewrite``: the JSON file rewritten, temp file + fsync + rename + directory fsync). Each
round changes the same 10 steps of their in-memory state untimed (put back to the big state on
the same rounds), then times the save, so the ``incremental`` rows show what the peers pay for
the same change: the whole state again.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bench.benchmark_protocol import Benchmark
from bench.peers import OpenStatePeer
from bench.report import QUICK
from bench.test_store_workloads import record_median
from fixtures.reference_data import step_output
from fixtures.reference_states import big_workflow_state
from wfstate.backends.local import LocalStore
from wfstate.checkpointindex import CheckpointInfo
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.model import StepOutput, WorkflowState
from wfstate.mutations import Mutation, PutStepOutput

# Budgets (2-core VM, ext4): ~2 s in quick mode, ~4 s in full mode.
P6_ROUNDS = 10 if QUICK else 40
P6_WARMUP = 2
CHANGED_STEPS = 10

PEERS = ["sqlite_full", "json_rewrite"]
VARIANTS = ["full", "incremental"]

#: Every this many rounds the state is put back to the big state (and incremental chains restart).
RESET_EVERY = MANUAL_ONLY.max_chain

#: Report rows (``bench/report.py``) of each variant.
ROW = {"full": "P6", "incremental": "P6 incr"}

#: No automatic work; ``full`` writes only full checkpoints, ``incremental`` deltas when it can.
POLICY: dict[str, CheckpointPolicy] = {
    "full": msgspec.structs.replace(MANUAL_ONLY, incremental=False),
    "incremental": MANUAL_ONLY,
}


@pytest.fixture(scope="module")
def big_state() -> WorkflowState:
    return big_workflow_state()


class Changes:
    """The change of round ``n``: a new output version of ``CHANGED_STEPS`` steps.

    Round ``n`` changes steps ``10n .. 10n+9`` (modulo the step count) with the reference
    output of workflow 1 at that step index (about 1 KB each, not the step's own, so it is a
    real change), the same for wfstate and the peers. :meth:`reset_due`: whether the state is
    to be put back to the big state before the next change.
    """

    def __init__(self, state: WorkflowState) -> None:
        self._step_ids = [step.id for step in state.workflow.steps]
        self.workflow_id = state.workflow.id
        self.rounds = 0

    def reset_due(self) -> bool:
        return self.rounds > 0 and self.rounds % RESET_EVERY == 0

    def next(self) -> list[tuple[str, dict[str, object]]]:
        n = self.rounds
        self.rounds += 1
        count = len(self._step_ids)
        picked = [(n * CHANGED_STEPS + k) % count for k in range(CHANGED_STEPS)]
        return [(self._step_ids[i], step_output(1, i)) for i in picked]

    def batch(self) -> list[Mutation]:
        return [
            PutStepOutput(
                workflow_id=self.workflow_id,
                step_id=sid,
                data=data,
                agent_id=str(data["agent_id"]),
                at=0.0,
            )
            for sid, data in self.next()
        ]

    def apply(self, state: WorkflowState) -> WorkflowState:
        """``state`` with the next change applied as wfstate applies it (a new version)."""
        outputs = dict(state.outputs)
        for sid, data in self.next():
            versions = outputs.get(sid, ())
            new = StepOutput(
                step_id=sid,
                version=len(versions) + 1,
                agent_id=str(data["agent_id"]),
                data=data,
                created_at=state.metadata.updated_at,
            )
            outputs[sid] = (*versions, new)
        return msgspec.structs.replace(state, outputs=outputs)


class CheckpointRounds:
    """Drives one wfstate store through the rounds of one variant (module docstring)."""

    def __init__(self, store: LocalStore, state: WorkflowState, variant: str) -> None:
        self.store = store
        self.state = state
        self.variant = variant
        self.changes = Changes(state)
        self.wid = state.workflow.id
        self.measured: list[CheckpointInfo] = []
        self.resets = 0
        self._links = 0  # incremental checkpoints since the newest full one
        store.save(state)
        first = store.checkpoint(self.wid)  # untimed: the first one is full for both variants
        assert first.parent is None

    def setup(self) -> None:
        if self.changes.reset_due():
            self.store.save(self.state)
            self.resets += 1
            if self.variant == "incremental":
                assert self._links == MANUAL_ONLY.max_chain, self._links
                info = self.store.checkpoint(self.wid)
                assert info.parent is None, "a chain at max_chain must restart with a full one"
                self._links = 0
        self.store.commit(self.changes.batch())

    def checkpoint(self) -> None:
        info = self.store.checkpoint(self.wid)
        self.measured.append(info)
        self._links = self._links + 1 if info.parent is not None else 0


@pytest.mark.benchmark(group="P6")
@pytest.mark.parametrize("variant", VARIANTS)
def test_p6_checkpoint_big_state_wfstate(
    benchmark: Benchmark, tmp_path: Path, big_state: WorkflowState, variant: str
) -> None:
    """One ``checkpoint`` of the big state after 10 steps changed (module docstring)."""
    store = LocalStore.open(
        str(tmp_path / "wfstate"), durability="always", checkpoints=POLICY[variant]
    )
    try:
        rounds = CheckpointRounds(store, big_state, variant)
        benchmark.pedantic(
            rounds.checkpoint, setup=rounds.setup, rounds=P6_ROUNDS, warmup_rounds=P6_WARMUP
        )
        infos = rounds.measured
        # --benchmark-disable runs the target once
        assert len(infos) == (1 if benchmark.stats is None else P6_ROUNDS + P6_WARMUP)
        if variant == "full":
            assert all(info.parent is None for info in infos)
        else:
            assert all(info.parent is not None for info in infos)
        last = infos[-1]
        (check,) = store.verify(last.id)
        assert check.ok, check.problem
        assert store.checkpoint_state(last.id) == store.load(big_state.workflow.id)
        sizes = sorted(info.size for info in infos)
        benchmark.extra_info.update(
            checkpoint_bytes_median=sizes[len(sizes) // 2],
            state_resets_in_setup=rounds.resets,
        )
    finally:
        store.close()
    record_median(benchmark, ROW[variant], "wfstate")


@pytest.mark.benchmark(group="P6")
@pytest.mark.parametrize("system", PEERS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_p6_snapshot_big_state_peer(
    benchmark: Benchmark,
    open_state_peer: OpenStatePeer,
    big_state: WorkflowState,
    variant: str,
    system: str,
) -> None:
    """A peer's snapshot: the big state, 10 steps changed untimed, saved whole and durably.

    ``full`` and ``incremental`` are the same operation for a peer (it has nothing smaller to
    write); both are measured so that each wfstate row has its peers from the same run.
    """
    peer = open_state_peer(system)
    peer.save(big_state)  # untimed: past each peer's first save, as P3's warm-up
    changes = Changes(big_state)
    current = [big_state]

    def setup() -> tuple[tuple[WorkflowState], dict[str, object]]:
        if changes.reset_due():
            current[0] = big_state
        current[0] = changes.apply(current[0])
        return (current[0],), {}

    benchmark.pedantic(peer.save, setup=setup, rounds=P6_ROUNDS, warmup_rounds=P6_WARMUP)
    assert peer.load(big_state.workflow.id) == current[0]
    record_median(benchmark, ROW[variant], system)
