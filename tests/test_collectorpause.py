"""The cyclic garbage collector is paused while a state decodes, and always restored."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.collectorpause import collector_paused
from wfstate.model import WorkflowStep
from wfstate.mutations import CreateWorkflow, PutStepOutput


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_back_on_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer block still runs"
    assert gc.isenabled()


def test_an_exception_in_the_block_restores_the_collector() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads_restore_only_when_both_end() -> None:
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with collector_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with collector_paused():
        pass
    assert not gc.isenabled(), "the other thread's block still runs"
    release.set()
    thread.join(10)
    assert gc.isenabled()


def _store_with_a_big_workflow(path: Path, steps: int) -> None:
    with LocalStore.open(str(path), checkpoints=MANUAL_ONLY, durability="none") as store:
        store.commit(
            [
                CreateWorkflow(
                    workflow_id="w",
                    name="w",
                    at=0.0,
                    steps=tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(steps)),
                )
            ]
        )
        for i in range(steps):
            data = {"tags": ["a", "b"], "scores": [1.0, 2.0], "nested": {"k": [i]}}
            store.commit([PutStepOutput(workflow_id="w", step_id=f"s{i}", data=data, at=0.0)])
        store.checkpoint("w")  # the load decodes a checkpoint file and replays the log after it
        store.commit([PutStepOutput(workflow_id="w", step_id="s0", data={"again": [1]}, at=0.0)])


def _collections_during_load(path: Path) -> list[int]:
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    with LocalStore.open(str(path), checkpoints=MANUAL_ONLY) as store:
        gc.collect()
        gc.callbacks.append(count)
        try:
            state = store.load("w")
        finally:
            gc.callbacks.remove(count)
    assert len(state.outputs) == 1500
    return collections


def test_a_load_decodes_without_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding 1,500 outputs of five containers each passes the collector's first threshold
    (700 allocations) many times over. Paused, the only collection is the one young-generation
    pass the allocations owe when the collector comes back on; unpaused (the same load with
    the pause taken out), collections run all through the decode."""
    _store_with_a_big_workflow(tmp_path, 1500)
    assert _collections_during_load(tmp_path) in ([], [0])
    assert gc.isenabled()
    monkeypatch.setattr("wfstate.backends.local.collector_paused", contextlib.nullcontext)
    assert len(_collections_during_load(tmp_path)) > 5
