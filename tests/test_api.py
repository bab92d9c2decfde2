"""WorkflowStore and open_store: every method over the engine, errors typed and raised before
anything is written, presets reaching the store."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fsdoubles import RecordingFS
from wfstate import (
    CheckpointPolicy,
    ClosedError,
    CorruptionError,
    LocalStore,
    NotFoundError,
    Session,
    StaleOwnerError,
    StorePoisonedError,
    ValidationError,
    WorkflowContext,
    WorkflowStep,
)
from wfstate.api import MILESTONE_TAG, AutoCheckpoints, WorkflowStore, open_store
from wfstate.asyncapi import AsyncWorkflowStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.config import PRESETS
from wfstate.hooks import (
    CheckpointCreated,
    Event,
    Hooks,
    Recovery,
    SessionEnded,
    SessionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    WorkflowFailed,
    WorkflowStarted,
)
from wfstate.metrics import Alert, Metrics, Thresholds
from wfstate.mutations import SetStepStatus

STEPS = (
    WorkflowStep(id="fetch", name="Fetch", agent_id="reader"),
    WorkflowStep(id="report", name="Report", dependencies=("fetch",)),
)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[WorkflowStore]:
    with open_store(str(tmp_path / "store"), checkpoints=MANUAL_ONLY) as opened:
        yield opened


def _last_lsn(api: WorkflowStore) -> int:
    return api.stats().last_lsn


def test_a_workflow_with_steps_agents_and_outputs_round_trips(
    api: WorkflowStore, tmp_path: Path
) -> None:
    context = WorkflowContext(user_data={"customer": "acme"})
    lsns = [
        api.create_workflow("report-42", "Report", STEPS, context=context),
        api.update_workflow("report-42", "running"),
        api.update_step("report-42", "fetch", "running"),
        api.update_agent("report-42", "reader", "busy", data={"page": 3}),
        api.add_output("report-42", "fetch", {"rows": 10}, agent_id="reader"),
        api.update_step("report-42", "fetch", "completed", output={"rows": 1200}),
        api.update_step("report-42", "report", "skipped", error="nothing to report"),
        api.update_workflow("report-42", "completed"),
    ]
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns)
    api.close()
    with open_store(str(tmp_path / "store")) as reopened:
        state = reopened.load("report-42")
    assert state.metadata.last_lsn == lsns[-1]
    assert state.workflow.status == "completed" and state.workflow.progress == 100.0
    assert [s.status for s in state.workflow.steps] == ["completed", "skipped"]
    assert state.workflow.steps[1].error == "nothing to report"
    assert state.agents["reader"].status == "busy"
    assert state.agents["reader"].data == {"page": 3}
    outputs = state.outputs["fetch"]
    assert [(o.version, o.agent_id, o.data) for o in outputs] == [
        (1, "reader", {"rows": 10}),
        (2, "reader", {"rows": 1200}),  # update_step's output: attributed to the step's agent
    ]
    assert state.context.user_data == {"customer": "acme"}


def test_save_load_delete_and_list(api: WorkflowStore) -> None:
    api.create_workflow("a", "A", STEPS)
    state = api.load("a")
    api.update_step("a", "fetch", "running")
    lsn = api.save(state)  # whole state back: fetch is pending again
    assert api.load("a").workflow.steps[0].status == "pending"
    assert api.load("a").metadata.last_lsn == lsn
    copy = state.__class__(
        metadata=state.metadata,
        workflow=state.workflow.__class__(id="b", name="B", steps=STEPS),
    )
    api.save(copy)  # creates "b"
    assert api.list_workflows() == ["a", "b"]
    api.delete("a")
    assert api.list_workflows() == ["b"]
    with pytest.raises(NotFoundError):
        api.load("a")
    with pytest.raises(NotFoundError):
        api.delete("a")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda api: api.update_step("w", "fetch", "completed"), "mutations[0].status"),
        (lambda api: api.update_step("w", "nope", "running"), "mutations[0].step_id"),
        (lambda api: api.update_step("w", "fetch", "done"), "mutations[0].status"),
        (lambda api: api.update_workflow("w", "completed"), "mutations[0].status"),
        (lambda api: api.update_agent("w", "a/b", "busy"), "mutations[0].agent_id"),
        (lambda api: api.update_agent("w", "a", "busy", data=[1]), "data"),
        (lambda api: api.add_output("w", "fetch", {"x": object()}), "mutations[0]"),
        (lambda api: api.add_output("w", "fetch", float("nan")), "mutations[0].data"),
        (lambda api: api.create_workflow("w", "again", STEPS), "mutations[0].workflow_id"),
        (lambda api: api.create_workflow("v", "V", "fetch"), "steps"),
        (
            lambda api: api.create_workflow("v", "V", (WorkflowStep(id="x", name="x"),) * 2),
            "mutations[0].steps[1].id",
        ),
        (lambda api: api.checkpoint("w", tags="milestone"), "tags"),
        (lambda api: api.start_session("no/slash"), "user"),
        (lambda api: api.checkpoints(limit=-1), "limit"),
    ],
)
def test_bad_input_raises_validation_error_naming_the_field_and_writes_nothing(
    api: WorkflowStore, call: object, field: str
) -> None:
    api.create_workflow("w", "W", STEPS)
    before = _last_lsn(api)
    with pytest.raises(ValidationError) as raised:
        call(api)  # type: ignore[operator]
    assert raised.value.field.startswith(field), raised.value
    assert _last_lsn(api) == before
    assert api.list_workflows() == ["w"]


def test_an_absent_workflow_raises_not_found(api: WorkflowStore) -> None:
    with pytest.raises(NotFoundError):
        api.update_step("ghost", "fetch", "running")
    with pytest.raises(NotFoundError):
        api.checkpoint("ghost")
    with pytest.raises(NotFoundError):
        api.restore("ck-0000000000000000")
    assert _last_lsn(api) == 0


def test_checkpoint_restore_and_recovery_suggestions(api: WorkflowStore) -> None:
    api.create_workflow("w", "W", STEPS)
    api.update_step("w", "fetch", "running")
    milestone = api.checkpoint("w", description="fetching", tags=["milestone"])
    assert (milestone.description, milestone.tags, milestone.type) == (
        "fetching",
        ("milestone",),
        "manual",
    )
    api.update_step("w", "fetch", "completed", output={"rows": 1})
    later = api.checkpoint("w")
    assert [c.id for c in api.checkpoints("w")] == [later.id, milestone.id]
    assert api.checkpoints("w", tag="milestone") == [milestone]
    assert api.recovery_suggestions("w").recommended == later
    lsn = api.restore(milestone.id)
    state = api.load("w")
    assert state.metadata.last_lsn == lsn
    assert state.workflow.steps[0].status == "running" and "fetch" not in state.outputs
    with pytest.raises(NotFoundError):
        api.store.read_state_file("w")  # a plain restore writes no state file
    lsn = api.restore(later.id, to_file=True)
    assert api.load("w").metadata.last_lsn == lsn
    assert api.store.read_state_file("w") == api.load("w")
    assert api.load("w").outputs["fetch"][-1].data == {"rows": 1}
    with pytest.raises(ValidationError) as raised:
        api.restore(later.id, to_file=1)  # type: ignore[arg-type]
    assert raised.value.field == "to_file"


def test_writes_in_a_session_are_fenced_and_end_in_one_transaction(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with open_store(path, checkpoints=MANUAL_ONLY) as owner:
        session = owner.start_session("worker", {"host": "a"})
        owner.create_workflow("w", "W", STEPS, session=session)
        owner.update_step("w", "fetch", "running", session=session)
        (info,) = owner.sessions()
        assert (info.id, info.user, info.workflows) == (session.id, "worker", ("w",))
        session.close()  # as a crash would: the session stays active, its lock is free
        with open_store(path, checkpoints=MANUAL_ONLY) as other:
            (crashed,) = other.crashed_sessions()
            assert crashed.session.id == session.id
            assert crashed.workflows[0].in_doubt == ("fetch",)
            taken = other.resume_session(session.id)
            assert taken.token == 2
            # the first owner, unaware it was taken over, still writes with token 1
            lock = owner.store._fs.open_lock(owner.store._session_lock_path(session.id))
            late = Session(owner.store, session.id, "worker", 1, lock)
            before = _last_lsn(owner)
            with pytest.raises(StaleOwnerError):
                owner.update_step("w", "fetch", "completed", session=late)
            assert _last_lsn(owner) == before
            late.close()
            other.update_step("w", "fetch", "completed", session=taken)
            assert other.end_session(taken)
            assert other.sessions()[0].status == "ended"
            assert other.crashed_sessions() == []
            assert len(other.checkpoints("w")) == 1  # the final checkpoint
            with pytest.raises(ValidationError) as raised:
                other.update_step("w", "report", "running", session=taken)
            assert raised.value.field == "session"


def test_a_session_is_exported_and_imported_into_another_store(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "a"), checkpoints=MANUAL_ONLY) as source:
        session = source.start_session("worker")
        source.create_workflow("w", "W", STEPS, session=session)
        source.update_step("w", "fetch", "running", session=session)
        source.add_output("w", "fetch", {"rows": 3}, session=session)
        source.checkpoint("w", tags=["m"])
        bundle = source.export_session(session.id)
        state = source.load("w")
        session.close()
    with open_store(str(tmp_path / "b"), checkpoints=MANUAL_ONLY) as target:
        before = target.stats().last_lsn
        with pytest.raises(CorruptionError):
            target.import_session(bundle[:-1])
        assert target.stats().last_lsn == before
        info = target.import_session(bundle)
        assert (info.id, info.user, info.workflows) == (session.id, "worker", ("w",))
        imported = target.load("w")
        assert imported.outputs == state.outputs and imported.workflow == state.workflow
        assert [c.tags for c in target.checkpoints("w")] == [("m",)]
        (crashed,) = target.crashed_sessions()  # active when exported: take it over
        taken = target.resume_session(crashed.session.id)
        target.update_step("w", "fetch", "completed", session=taken)
        target.end_session(taken)
        with pytest.raises(ValidationError) as raised:
            target.import_session(bundle)
        assert raised.value.field == "bundle.session"
        with pytest.raises(NotFoundError):
            target.export_session("se-0000000000000000")
        operations = target.metrics().operations
        assert operations["import_session"].count == 3
        assert operations["import_session"].errors == 2


def test_closing_closes_the_store(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "store")) as api:
        api.create_workflow("w", "W", STEPS)
    with pytest.raises(ClosedError):
        api.load("w")
    api.close()  # idempotent


def test_only_a_local_store_can_be_wrapped() -> None:
    with pytest.raises(ValidationError) as raised:
        WorkflowStore(object())  # type: ignore[arg-type]
    assert raised.value.field == "store"


# -- open_store -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_opens_the_store_with_its_configuration(tmp_path: Path, preset: str) -> None:
    with open_store(str(tmp_path / preset), preset) as api:
        assert api.config == PRESETS[preset]
        assert api.store._log._durability == PRESETS[preset].durability
        assert api.store._policy == PRESETS[preset].checkpoints
        api.create_workflow("w", "W", STEPS)
        assert api.load("w").workflow.name == "W"


def test_overrides_apply_on_top_of_the_preset(tmp_path: Path) -> None:
    policy = CheckpointPolicy(every_batches=None, on_step_end=True)
    with open_store(str(tmp_path / "s"), "development", checkpoints=policy) as api:
        assert api.config is not None
        assert api.config.durability == "none" and api.config.checkpoints == policy
        assert api.store._policy == policy


@pytest.mark.parametrize(
    ("preset", "overrides", "field"),
    [
        ("fastest", {}, "preset"),
        ("production", {"durabilty": "always"}, "durabilty"),
        ("production", {"durability": "sometimes"}, "durability"),
        ("production", {"segment_size": 10}, "segment_size"),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_is_created(
    tmp_path: Path, preset: str, overrides: dict[str, Any], field: str
) -> None:
    path = tmp_path / "store"
    with pytest.raises(ValidationError) as raised:
        open_store(str(path), preset, **overrides)
    assert raised.value.field == field
    assert not os.path.exists(path)


def test_a_store_opened_by_the_caller_has_no_config(tmp_path: Path) -> None:
    with WorkflowStore(LocalStore.open(str(tmp_path / "s"))) as api:
        assert api.config is None


# -- the asyncio twin -----------------------------------------------------------------------------


def _public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_every_blocking_method_has_an_async_twin_with_the_same_parameters() -> None:
    sync = _public_methods(WorkflowStore)
    twins = _public_methods(AsyncWorkflowStore)
    assert set(sync) <= set(twins), set(sync) - set(twins)
    for name, method in sync.items():
        assert inspect.iscoroutinefunction(twins[name]), name
        assert inspect.signature(twins[name]) == inspect.signature(method), name
    assert inspect.signature(AsyncWorkflowStore.open) == inspect.signature(open_store).replace(
        return_annotation="AsyncWorkflowStore"
    )


def test_the_event_loop_runs_while_a_call_waits_for_the_disk(tmp_path: Path) -> None:
    """Every fdatasync takes 0.2 s; a ticker on the loop keeps ticking during the commit."""
    fs = RecordingFS(sync_delay=0.2)
    store = LocalStore.open(str(tmp_path / "s"), checkpoints=MANUAL_ONLY, fs=fs)
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> tuple[float, float]:
        async with AsyncWorkflowStore(WorkflowStore(store)) as api:
            stop = asyncio.Event()
            task = asyncio.create_task(ticker(stop))
            await asyncio.sleep(0)
            started = time.monotonic()
            await api.create_workflow("w", "W", STEPS)
            ended = time.monotonic()
            stop.set()
            await task
            assert (await api.load("w")).workflow.name == "W"
        return started, ended

    started, ended = asyncio.run(main())
    assert ended - started >= 0.2  # the commit did wait for the slow sync
    during = [t for t in ticks if started < t < ended]
    assert len(during) >= 5, f"{len(during)} ticks in {ended - started:.2f} s"


def test_async_calls_return_and_raise_as_their_twins(tmp_path: Path) -> None:
    async def main() -> None:
        async with await AsyncWorkflowStore.open(
            str(tmp_path / "s"), "development", checkpoints=MANUAL_ONLY
        ) as api:
            assert api.sync.config is not None and api.sync.config.durability == "none"
            lsn = await api.create_workflow("w", "W", STEPS)
            assert await api.update_step("w", "fetch", "running") == lsn + 1
            await api.add_output("w", "fetch", {"n": 1}, agent_id="reader")
            await api.update_agent("w", "reader", "done")
            milestone = await api.checkpoint("w", tags=["m"])
            assert await api.checkpoints("w", tag="m") == [milestone]
            await api.restore(milestone.id)
            assert (await api.recovery_suggestions("w")).recommended == milestone
            session = await api.start_session("worker")
            await api.update_step("w", "fetch", "completed", session=session)
            assert await api.crashed_sessions() == []
            await api.end_session(session)
            assert [s.status for s in await api.sessions()] == ["ended"]
            assert await api.list_workflows() == ["w"]
            with pytest.raises(ValidationError) as raised:
                await api.update_step("w", "fetch", "running")
            assert raised.value.field == "mutations[0].status"
            with pytest.raises(NotFoundError):
                await api.load("ghost")
            await api.delete("w")
            assert (await api.stats()).workflows == 0
        with pytest.raises(ClosedError):
            await api.list_workflows()

    asyncio.run(main())


def test_concurrent_async_commits_share_syncs(tmp_path: Path) -> None:
    """Commits of concurrent tasks run in threads at once: fewer fdatasyncs than commits."""
    fs = RecordingFS(sync_delay=0.05)
    store = LocalStore.open(str(tmp_path / "s"), checkpoints=MANUAL_ONLY, fs=fs)

    async def main() -> None:
        async with AsyncWorkflowStore(WorkflowStore(store)) as api:
            before = fs.count("fdatasync")
            await asyncio.gather(*(api.create_workflow(f"w{i}", "W", STEPS) for i in range(16)))
            assert fs.count("fdatasync") - before < 16
            assert len(await api.list_workflows()) == 16

    asyncio.run(main())


# -- hooks ----------------------------------------------------------------------------------------


def test_a_run_emits_its_lifecycle_events_in_order_after_each_durable_call(
    tmp_path: Path,
) -> None:
    hooks = Hooks()
    seen: list[Event] = []
    api = open_store(str(tmp_path / "s"), hooks=hooks, checkpoints=MANUAL_ONLY)

    def record(event: Event) -> None:
        if getattr(event, "lsn", None) is not None:  # announced only once durable
            assert api.store._log.durable_lsn >= event.lsn  # type: ignore[attr-defined]
        seen.append(event)

    hooks.subscribe(record)
    with api:
        session = api.start_session("worker")
        api.create_workflow("w", "W", STEPS, session=session)  # idle: no event
        started = api.update_workflow("w", "running", session=session)
        api.update_step("w", "fetch", "running", session=session)
        api.update_agent("w", "reader", "busy", session=session)  # no event
        done = api.update_step("w", "fetch", "completed", output={"n": 1}, session=session)
        api.update_step("w", "report", "running", session=session)
        api.update_step("w", "report", "failed", error="boom", session=session)
        info = api.checkpoint("w", tags=["m"])
        api.update_workflow("w", "failed", error="report failed", session=session)
        api.end_session(session)
    assert [type(e) for e in seen] == [
        SessionStarted,
        WorkflowStarted,
        StepStarted,
        StepCompleted,
        StepStarted,
        StepFailed,
        CheckpointCreated,
        WorkflowFailed,
        CheckpointCreated,  # the end's final checkpoint: the store announces every one
        SessionEnded,
    ]
    assert seen[1] == WorkflowStarted(at=seen[1].at, workflow_id="w", lsn=started)
    assert seen[3] == StepCompleted(at=seen[3].at, workflow_id="w", step_id="fetch", lsn=done)
    assert isinstance(seen[5], StepFailed) and seen[5].error == "boom"
    assert seen[6] == CheckpointCreated(
        at=info.created, workflow_id="w", checkpoint_id=info.id, type="manual"
    )
    assert isinstance(seen[8], CheckpointCreated) and seen[8].type == "manual"
    assert isinstance(seen[9], SessionEnded) and seen[9].workflows == ("w",)
    assert seen[0] == SessionStarted(at=seen[0].at, session_id=session.id)


def test_a_raising_subscriber_does_not_break_the_call_and_is_reported(api: WorkflowStore) -> None:
    reported: list[tuple[Event, Exception]] = []
    hooks = Hooks(on_error=lambda event, _callback, exc: reported.append((event, exc)))
    api = WorkflowStore(api.store, hooks=hooks)
    later: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    hooks.subscribe(broken)
    hooks.subscribe(later.append)
    api.create_workflow("w", "W", STEPS)
    lsn = api.update_step("w", "fetch", "running")
    assert api.load("w").metadata.last_lsn == lsn  # the commit stands
    assert hooks.failures == 1
    assert [str(exc) for _event, exc in reported] == ["subscriber bug"]
    assert later == [reported[0][0]]  # the next subscriber still got it


def test_a_refused_write_emits_nothing(api: WorkflowStore) -> None:
    seen: list[Event] = []
    api.hooks.subscribe(seen.append)
    api.create_workflow("w", "W", STEPS)
    with pytest.raises(ValidationError):
        api.update_step("w", "fetch", "completed")
    with pytest.raises(ValidationError):
        api.commit(
            [
                SetStepStatus(workflow_id="w", step_id="fetch", status="running", at=0),
                SetStepStatus(workflow_id="w", step_id="nope", status="running", at=0),
            ]
        )
    assert seen == []


def test_opening_a_store_with_a_dead_sessions_owner_emits_recovery(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with open_store(path, checkpoints=MANUAL_ONLY) as owner:
        session = owner.start_session("worker")
        owner.create_workflow("w", "W", STEPS, session=session)
        owner.update_step("w", "fetch", "running", session=session)
        session.close()  # what a crash leaves: an active session whose lock is free
        hooks = Hooks()
        found: list[Event] = []
        hooks.subscribe(found.append, Recovery)
        with open_store(path, hooks=hooks, checkpoints=MANUAL_ONLY):
            pass
    (event,) = found
    assert isinstance(event, Recovery)
    (crashed,) = event.crashed_sessions
    assert crashed.session.id == session.id
    assert crashed.workflows[0].in_doubt == ("fetch",)
    assert "1 crashed session(s), 1 step(s) in doubt" in event.summary
    quiet: list[Event] = []
    hooks = Hooks()
    hooks.subscribe(quiet.append)
    with open_store(str(tmp_path / "fresh"), hooks=hooks):
        pass
    assert quiet == []


# -- metrics --------------------------------------------------------------------------------------


def test_user_timed_operations_and_fsyncs_are_in_the_metrics(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "s"), checkpoints=MANUAL_ONLY) as api:
        api.create_workflow("w", "W", STEPS)
        api.update_step("w", "fetch", "running")
        with pytest.raises(ValidationError):
            api.update_step("w", "fetch", "skipped")
        state = api.load("w")
        api.save(state)
        info = api.checkpoint("w")
        api.restore(info.id)
        snapshot = api.metrics()
    ops = snapshot.operations
    assert (ops["commit"].count, ops["commit"].errors) == (3, 1)
    assert ops["load"].count == 1 and ops["save"].count == 1
    assert ops["checkpoint"].count == 1 and ops["restore"].count == 1
    assert ops["fsync"].count >= 4  # production: every commit waited for an fdatasync
    assert all(op.mean_s >= 0 for op in ops.values())
    assert snapshot.store is not None and snapshot.store.workflows == 1


def test_metrics_check_the_thresholds(tmp_path: Path) -> None:
    alerts: list[Alert] = []
    metrics = Metrics(thresholds=Thresholds(max_log_bytes=100), on_alert=alerts.append)
    with open_store(str(tmp_path / "s"), metrics=metrics) as api:
        api.create_workflow("w", "W", STEPS)
        api.metrics()
        api.metrics()  # once per crossing
    assert [a.name for a in alerts] == ["log_bytes"]


# -- automatic checkpoints ------------------------------------------------------------------------

SIX = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(6))


def _complete(api: WorkflowStore, workflow_id: str, step_id: str) -> None:
    api.update_step(workflow_id, step_id, "running")
    api.update_step(workflow_id, step_id, "completed")


def test_a_checkpoint_every_n_completed_steps_and_at_milestones(tmp_path: Path) -> None:
    auto = AutoCheckpoints(every_completed_steps=2, milestones=frozenset({"s2"}))
    created: list[Event] = []
    hooks = Hooks()
    hooks.subscribe(created.append, CheckpointCreated)
    with open_store(
        str(tmp_path / "s"), hooks=hooks, auto_checkpoints=auto, checkpoints=MANUAL_ONLY
    ) as api:
        api.create_workflow("w", "W", SIX)
        taken: list[tuple[str, ...]] = []
        for step in SIX:
            _complete(api, "w", step.id)
            taken.append(tuple(c.type for c in api.checkpoints("w")))
        checkpoints = api.checkpoints("w")
        assert taken == [
            (),
            ("automatic",),
            ("post_step", "automatic"),  # s2, a milestone
            ("automatic", "post_step", "automatic"),  # 4 completed
            ("automatic", "post_step", "automatic"),
            ("automatic", "automatic", "post_step", "automatic"),
        ]
        milestone = api.checkpoints("w", tag=MILESTONE_TAG)
        assert [c.description for c in milestone] == ["milestone s2"]
        assert api.store.checkpoint_state(checkpoints[0].id).workflow.progress == 100.0
    announced = [e.checkpoint_id for e in created if isinstance(e, CheckpointCreated)]
    assert announced == [c.id for c in reversed(checkpoints)]


def test_a_failed_automatic_checkpoint_does_not_fail_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    auto = AutoCheckpoints(every_completed_steps=1)
    with open_store(str(tmp_path / "s"), auto_checkpoints=auto, checkpoints=MANUAL_ONLY) as api:
        api.create_workflow("w", "W", SIX)
        api.update_step("w", "s0", "running")

        def refuse(*args: object, **kwargs: object) -> None:
            raise StorePoisonedError("disk gone")

        monkeypatch.setattr(api.store, "checkpoint", refuse)
        lsn = api.update_step("w", "s0", "completed")
        assert api.load("w").metadata.last_lsn == lsn
        assert api.metrics().operations["checkpoint"].errors == 1
    assert "automatic checkpoint of 'w' failed: disk gone" in caplog.text


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"every_completed_steps": 0}, "every_completed_steps"),
        ({"every_completed_steps": True}, "every_completed_steps"),
        ({"milestones": {"s1"}}, "milestones"),
        ({"milestones": frozenset({1})}, "milestones"),
    ],
)
def test_bad_automatic_checkpoint_options_are_refused(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        AutoCheckpoints(**options)
    assert raised.value.field == field


@pytest.mark.parametrize("option", ["hooks", "metrics", "auto_checkpoints"])
def test_the_api_checks_its_collaborators(tmp_path: Path, option: str) -> None:
    options: dict[str, Any] = {option: object()}
    with pytest.raises(ValidationError) as raised:
        open_store(str(tmp_path / "s"), **options)
    assert raised.value.field == option
    assert not os.path.exists(tmp_path / "s")


def test_checkpoints_the_store_takes_itself_are_announced(tmp_path: Path) -> None:
    """Policy checkpoints (after a completed step) and compaction's are announced too, once
    durable; a raising observer never fails the write."""
    hooks = Hooks()
    seen: list[CheckpointCreated] = []
    hooks.subscribe(lambda e: seen.append(e) if isinstance(e, CheckpointCreated) else None)
    policy = CheckpointPolicy(every_batches=None, every_log_bytes=None, on_step_end=True)
    with open_store(str(tmp_path / "s"), hooks=hooks, checkpoints=policy) as api:
        api.create_workflow("w", "W", STEPS)
        api.update_step("w", "fetch", "running")
        api.update_step("w", "fetch", "completed")
        assert [e.type for e in seen] == ["post_step"]
        assert seen[0].checkpoint_id in {i.id for i in api.checkpoints("w")}
        api.update_step("w", "report", "running")  # uncovered again
        api.store.compact()
        assert [e.type for e in seen] == ["post_step", "compaction"]

        def broken(_info: object) -> None:
            raise RuntimeError("observer bug")

        api.store.set_checkpoint_observer(broken)
        api.checkpoint("w")  # the observer's failure is logged, not raised
