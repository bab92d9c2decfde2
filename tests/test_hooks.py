"""Hooks: delivery order, filtering, unsubscribing, isolation of raising subscribers, and the
events a committed batch yields."""

from __future__ import annotations

import logging
import threading
from typing import get_args

import pytest

from wfstate import ValidationError
from wfstate.hooks import (
    EVENT_TYPES,
    CheckpointCreated,
    Event,
    Hooks,
    Recovery,
    SessionEnded,
    SessionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    Subscriber,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    events_for,
)
from wfstate.model import StepStatus, WorkflowStatus
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    PutStepOutput,
    SetStepStatus,
    SetWorkflowStatus,
    UpdateContext,
)
from wfstate.sessions import CrashedSession, SessionInfo, WorkflowPlan
from wfstate.wal import LogDamage

STARTED = WorkflowStarted(at=1.0, workflow_id="w1")
STEP = StepStarted(at=2.0, workflow_id="w1", step_id="s1")


def test_event_names_are_the_issues_names() -> None:
    assert {t.name for t in EVENT_TYPES} == {
        "workflow_start",
        "step_start",
        "step_complete",
        "step_failed",
        "workflow_complete",
        "workflow_failed",
        "checkpoint_created",
        "session_start",
        "session_end",
        "recovery",
    }
    assert "name" not in Event.__struct_fields__  # a class constant, not per event


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        STARTED.workflow_id = "w2"  # type: ignore[misc]


def test_subscribers_are_called_in_subscription_order() -> None:
    hooks = Hooks()
    calls: list[str] = []

    def recorder(tag: str) -> Subscriber:
        return lambda event: calls.append(f"{tag}:{event.name}")

    for tag in ("a", "b", "c"):
        hooks.subscribe(recorder(tag))
    hooks.emit(STARTED)
    assert calls == ["a:workflow_start", "b:workflow_start", "c:workflow_start"]


def test_a_subscriber_gets_only_the_types_it_asked_for() -> None:
    hooks = Hooks()
    steps: list[Event] = []
    everything: list[Event] = []
    workflow_or_checkpoint: list[Event] = []
    hooks.subscribe(steps.append, StepStarted)
    hooks.subscribe(everything.append)
    hooks.subscribe(workflow_or_checkpoint.append, WorkflowStarted, CheckpointCreated)
    checkpoint = CheckpointCreated(at=3.0, workflow_id="w1", checkpoint_id="c1", type="manual")
    for event in (STARTED, STEP, checkpoint):
        hooks.emit(event)
    assert steps == [STEP]
    assert everything == [STARTED, STEP, checkpoint]
    assert workflow_or_checkpoint == [STARTED, checkpoint]


def test_unsubscribe_removes_only_that_subscription_and_is_idempotent() -> None:
    hooks = Hooks()
    calls: list[Event] = []
    first = hooks.subscribe(calls.append)
    hooks.subscribe(calls.append)  # the same callback, a second subscription
    hooks.emit(STARTED)
    assert len(calls) == 2
    first()
    first()
    hooks.emit(STEP)
    assert calls == [STARTED, STARTED, STEP]
    assert hooks.subscribers == 1


def test_a_raising_subscriber_is_reported_and_the_others_still_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: list[tuple[Event, Subscriber, Exception]] = []
    hooks = Hooks(on_error=lambda e, s, x: reported.append((e, s, x)))
    calls: list[str] = []
    boom = RuntimeError("boom")

    def broken(event: Event) -> None:
        raise boom

    hooks.subscribe(lambda e: calls.append("before"))
    hooks.subscribe(broken)
    hooks.subscribe(lambda e: calls.append("after"))
    with caplog.at_level(logging.ERROR, logger="wfstate.hooks"):
        hooks.emit(STARTED)  # does not raise
    assert calls == ["before", "after"]
    assert hooks.failures == 1
    assert reported == [(STARTED, broken, boom)]
    (record,) = caplog.records
    assert record.name == "wfstate.hooks"
    assert record.exc_info is not None and record.exc_info[1] is boom
    hooks.emit(STEP)
    assert hooks.failures == 2


def test_a_raising_on_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def on_error(event: Event, subscriber: Subscriber, exc: Exception) -> None:
        raise ValueError("on_error broke")

    hooks = Hooks(on_error=on_error)
    after: list[Event] = []

    def broken(event: Event) -> None:
        raise ZeroDivisionError

    hooks.subscribe(broken)
    hooks.subscribe(after.append)
    with caplog.at_level(logging.ERROR, logger="wfstate.hooks"):
        hooks.emit(STARTED)
    assert after == [STARTED]
    assert len(caplog.records) == 2


def test_keyboard_interrupt_in_a_subscriber_propagates() -> None:
    hooks = Hooks()

    def interrupt(event: Event) -> None:
        raise KeyboardInterrupt

    hooks.subscribe(interrupt)
    with pytest.raises(KeyboardInterrupt):
        hooks.emit(STARTED)


def test_subscribing_during_an_emit_takes_effect_from_the_next_event() -> None:
    hooks = Hooks()
    late: list[Event] = []

    def subscribe_another(event: Event) -> None:
        hooks.subscribe(late.append)

    unsubscribe = hooks.subscribe(subscribe_another)
    hooks.emit(STARTED)
    assert late == []
    unsubscribe()
    hooks.emit(STEP)
    assert late == [STEP]


def test_concurrent_subscribe_and_emit_lose_no_subscription() -> None:
    hooks = Hooks()
    counts = [0] * 8
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(200):
            hooks.subscribe(lambda e: None)
            hooks.emit(STARTED)
        counts[i] = 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counts == [1] * 8
    assert hooks.subscribers == 8 * 200


def test_bad_arguments_are_rejected_naming_them() -> None:
    hooks = Hooks()
    with pytest.raises(ValidationError) as caught:
        hooks.subscribe("not callable")  # type: ignore[arg-type]
    assert caught.value.field == "callback"
    with pytest.raises(ValidationError) as caught:
        hooks.subscribe(print, int)  # type: ignore[arg-type]
    assert caught.value.field == "event_types"
    with pytest.raises(ValidationError) as caught:
        hooks.emit("workflow_start")  # type: ignore[arg-type]
    assert caught.value.field == "event"
    with pytest.raises(ValidationError) as caught:
        Hooks(on_error=3)  # type: ignore[arg-type]
    assert caught.value.field == "on_error"
    assert hooks.subscribers == 0


# -- events_for -----------------------------------------------------------------------------


def _workflow_status(status: WorkflowStatus, error: str | None = None) -> SetWorkflowStatus:
    return SetWorkflowStatus(workflow_id="w1", status=status, error=error, at=0)


def _step_status(status: StepStatus, error: str | None = None) -> SetStepStatus:
    return SetStepStatus(workflow_id="w1", step_id="s1", status=status, error=error, at=0)


EXPECTED_WORKFLOW: dict[str, Event | None] = {
    "idle": None,
    "running": WorkflowStarted(at=5.0, workflow_id="w1", lsn=7),
    "paused": None,
    "completed": WorkflowCompleted(at=5.0, workflow_id="w1", lsn=7),
    "failed": WorkflowFailed(at=5.0, workflow_id="w1", error="bad", lsn=7),
}
EXPECTED_STEP: dict[str, Event | None] = {
    "pending": None,
    "running": StepStarted(at=5.0, workflow_id="w1", step_id="s1", lsn=7),
    "completed": StepCompleted(at=5.0, workflow_id="w1", step_id="s1", lsn=7),
    "failed": StepFailed(at=5.0, workflow_id="w1", step_id="s1", error="bad", lsn=7),
    "skipped": None,
}


def test_the_expectations_cover_every_status() -> None:
    assert set(EXPECTED_WORKFLOW) == set(get_args(WorkflowStatus))
    assert set(EXPECTED_STEP) == set(get_args(StepStatus))


@pytest.mark.parametrize("status", sorted(EXPECTED_WORKFLOW))
def test_events_for_each_workflow_status(status: WorkflowStatus) -> None:
    error = "bad" if status == "failed" else None
    expected = EXPECTED_WORKFLOW[status]
    events = events_for([_workflow_status(status, error)], 5.0, lsn=7)
    assert events == ([] if expected is None else [expected])


@pytest.mark.parametrize("status", sorted(EXPECTED_STEP))
def test_events_for_each_step_status(status: StepStatus) -> None:
    error = "bad" if status == "failed" else None
    expected = EXPECTED_STEP[status]
    events = events_for([_step_status(status, error)], 5.0, lsn=7)
    assert events == ([] if expected is None else [expected])


def test_events_for_keeps_the_batch_order_and_ignores_other_mutations() -> None:
    batch: list[Mutation] = [
        CreateWorkflow(workflow_id="w1", name="w", at=0),
        _workflow_status("running"),
        _step_status("running"),
        PutStepOutput(workflow_id="w1", step_id="s1", agent_id="a", data=1, at=0),
        UpdateContext(workflow_id="w1", at=0),
        _step_status("completed"),
        _workflow_status("completed"),
        DeleteWorkflow(workflow_id="w1", at=0),
    ]
    events = events_for(batch, 9.0)
    assert [type(e) for e in events] == [
        WorkflowStarted,
        StepStarted,
        StepCompleted,
        WorkflowCompleted,
    ]
    assert all(e.at == 9.0 and e.workflow_id == "w1" for e in events)
    assert events_for([], 9.0) == []


def test_recovery_summarizes_what_the_crash_left() -> None:
    info = SessionInfo(
        id="s",
        user="u",
        metadata={},
        token=1,
        status="active",
        started=0.0,
        ended=None,
        workflows=("w1",),
    )
    plan = WorkflowPlan(
        workflow_id="w1",
        last_completed=None,
        in_doubt=("s1", "s2"),
        action="rerun_in_doubt",
        estimated_loss=2,
    )
    event = Recovery(
        at=1.0,
        damage=(LogDamage("torn_tail", "/x", 10, 30, "short"),),
        crashed_sessions=(CrashedSession(session=info, workflows=(plan,)),),
    )
    assert event.summary == ("1 log repair(s) (30 bytes), 1 crashed session(s), 2 step(s) in doubt")
    assert event.workflow_id is None
    assert SessionStarted(at=1.0, session_id="s").resumed is False
    assert SessionEnded(at=1.0, session_id="s", workflows=("w1",)).name == "session_end"
