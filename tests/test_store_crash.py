"""The crash simulator over batched mutations (issue 3): after every crash state, every
workflow equals the model after one and the same prefix of batches, which includes every
acknowledged batch; no batch is half applied."""

from __future__ import annotations

import itertools

import pytest

from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore
from wfstate.backends.memory import MemoryStore
from wfstate.model import WorkflowStep, encode_state
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput, SetStepStatus
from wfstate.wal import Compression

STORE = "/data/store"
WORKFLOWS = ("alpha", "beta", "gamma")
STEPS = 10


def batches() -> list[list[Mutation]]:
    """A batch per step: the same step run in all three workflows at once (cross-workflow
    atomicity), with outputs large enough to tear across pieces."""
    out: list[list[Mutation]] = [
        [
            CreateWorkflow(
                workflow_id=w,
                name=w,
                steps=tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(STEPS)),
                at=0,
            )
            for w in WORKFLOWS
        ]
    ]
    for i in range(STEPS):
        running: list[Mutation] = [
            SetStepStatus(workflow_id=w, step_id=f"s{i}", status="running", at=0) for w in WORKFLOWS
        ]
        outputs: list[Mutation] = [
            PutStepOutput(
                workflow_id=w, step_id=f"s{i}", data={"text": f"{w} {i} " * (40 + 60 * i)}, at=0
            )
            for w in WORKFLOWS
        ]
        done: list[Mutation] = [
            SetStepStatus(workflow_id=w, step_id=f"s{i}", status="completed", at=0)
            for w in WORKFLOWS
        ]
        out += [running, outputs + done]
    return out


def snapshot(store: LocalStore | MemoryStore) -> dict[str, bytes]:
    return {w: encode_state(store.load(w)) for w in store.list_workflows()}


@pytest.mark.parametrize("handles", [1, 2], ids=["one handle", "two handles alternating"])
def test_every_crash_state_is_the_model_after_a_prefix_of_batches(
    crash_report: list[str], handles: int
) -> None:
    """With two handles (two processes' worth of writers' lock, catch-up and hint, format
    §8) each commits every other batch, validated against the batches of the other."""
    plan = batches()
    # the model: the state after each prefix of batches, same clock, same LSNs
    model_ticks = itertools.count()
    model = MemoryStore(clock=lambda: 1000.0 + next(model_ticks))
    prefixes: list[dict[str, bytes]] = [{}]
    for batch in plan:
        model.commit(batch)
        prefixes.append(snapshot(model))

    fs = SimFileSystem()
    ticks = itertools.count()
    stores = [
        LocalStore.open(
            STORE,
            fs=fs,
            clock=lambda: 1000.0 + next(ticks),
            segment_size=4096,
            compression=Compression(codec="none"),
        )
        for _ in range(handles)
    ]
    acked_at: list[int] = []
    for i, batch in enumerate(plan):
        stores[i % handles].commit(batch)
        acked_at.append(fs.op_count)
    for store in stores:
        store.close()

    states = 0
    for at in fs.crash_points():
        acked = sum(1 for op in acked_at if op <= at)
        for label, disk in fs.crash_states(at):
            states += 1
            with LocalStore.open(STORE, fs=disk) as recovered:
                got = snapshot(recovered)
            assert got in prefixes, f"op {at} {label}: not the model after any prefix"
            k = prefixes.index(got)
            assert k >= acked, f"op {at} {label}: {acked} batches acknowledged, {k} recovered"
    crash_report.append(
        f"store batches, {handles} handle(s) (3 workflows per batch, {len(plan)} batches): "
        f"{states} crash states "
        f"at {fs.op_count + 1} crash points; every one a whole prefix with every acked batch"
    )
    assert states > 300
