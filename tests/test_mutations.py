"""Contracts of the mutations: validation, transitions, derived fields, purity, encoding and the
determinism of ``apply`` (a log replay rebuilds exactly the states that were served)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from wfstate.errors import NotFoundError, ValidationError
from wfstate.model import (
    SCHEMA_VERSION,
    StepStatus,
    WorkflowContext,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
    decode_state,
    encode_state,
    state_checksum,
)
from wfstate.mutations import (
    MUTATION_TYPES,
    STEP_TRANSITIONS,
    WORKFLOW_TRANSITIONS,
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    PutStepOutput,
    ReplaceState,
    Replay,
    SetAgentState,
    SetStepStatus,
    SetWorkflowStatus,
    UpdateContext,
    apply,
    apply_batch,
    decode_mutations,
    encode_mutations,
    replay_batch,
    validate,
)

WF = "wf-1"
STEP_STATUSES: tuple[StepStatus, ...] = ("pending", "running", "completed", "failed", "skipped")
WORKFLOW_STATUSES: tuple[WorkflowStatus, ...] = ("idle", "running", "paused", "completed", "failed")


def step(step_id: str, *deps: str, **kw: Any) -> WorkflowStep:
    return WorkflowStep(id=step_id, name=step_id.title(), dependencies=deps, **kw)


def create(*steps: WorkflowStep, at: float = 1.0, **kw: Any) -> CreateWorkflow:
    return CreateWorkflow(workflow_id=WF, name="Report", steps=steps, at=at, **kw)


def created(*steps: WorkflowStep) -> WorkflowState:
    state = apply(None, create(*steps))
    assert state is not None
    return state


def run(state: WorkflowState | None, *mutations: Mutation) -> WorkflowState:
    for m in mutations:
        state = apply(state, m)
    assert state is not None
    return state


def ss(step_id: str, status: StepStatus, at: float = 2.0, **kw: Any) -> SetStepStatus:
    return SetStepStatus(workflow_id=WF, step_id=step_id, status=status, at=at, **kw)


def ws(status: WorkflowStatus, at: float = 2.0, **kw: Any) -> SetWorkflowStatus:
    return SetWorkflowStatus(workflow_id=WF, status=status, at=at, **kw)


def out(step_id: str, data: Any, at: float = 3.0, **kw: Any) -> PutStepOutput:
    return PutStepOutput(workflow_id=WF, step_id=step_id, data=data, at=at, **kw)


def get_step(state: WorkflowState, step_id: str) -> WorkflowStep:
    return next(s for s in state.workflow.steps if s.id == step_id)


def forced(state: WorkflowState, step_id: str, **changes: Any) -> WorkflowState:
    """``state`` with one step's fields set directly (a shortcut to any step status)."""
    steps = tuple(replace(s, **changes) if s.id == step_id else s for s in state.workflow.steps)
    return replace(state, workflow=replace(state.workflow, steps=steps))


def raises_at(field: str, state: WorkflowState | None, m: Mutation) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        apply(state, m)
    assert info.value.field == field, info.value
    return info.value


# One instance of every mutation type, valid against ``sample_state()``.
SAMPLES: list[Mutation] = [
    create(
        step("a", agent_id="agent-1", max_retries=2, parallel=True),
        step("b", "a"),
        context=WorkflowContext(session_id="s1", environment={"E": "1"}, user_data={"k": [1]}),
    ),
    ws("running", error=None),
    ss("a", "running", error="note", output={"partial": True}),
    out("a", [1, 2.5, "x", None, {"y": False}], agent_id="agent-1"),
    SetAgentState(workflow_id=WF, agent_id="agent-1", status="busy", data={"n": 1}, at=4.0),
    UpdateContext(
        workflow_id=WF, environment={"F": "2"}, user_data={"z": 0}, session_id="s2", at=5
    ),
    DeleteWorkflow(workflow_id=WF, at=7.0),
]


def sample_state() -> WorkflowState:
    return run(None, *SAMPLES[:-1])


SAMPLES.insert(-1, ReplaceState(workflow_id=WF, state=sample_state(), at=6.0))


# -- creation, existence, ids -----------------------------------------------------------------


def test_create_sets_metadata_and_an_idle_workflow() -> None:
    state = created(step("a"), step("b", "a"))
    assert state.metadata == msgspec.convert(
        {"schema_version": SCHEMA_VERSION, "created_at": 1.0, "updated_at": 1.0, "version": 1},
        type(state.metadata),
    )
    assert state.metadata.last_lsn == 0
    assert state.workflow.id == WF
    assert state.workflow.status == "idle"
    assert state.workflow.progress == 0.0
    assert state.workflow.current_step is None
    assert [s.id for s in state.workflow.steps] == ["a", "b"]
    assert state.context == WorkflowContext()
    assert (state.agents, state.outputs) == ({}, {})


def test_create_on_an_existing_workflow_is_refused() -> None:
    error = raises_at("mutation.workflow_id", created(), create())
    assert "already exists" in error.message


@pytest.mark.parametrize("m", SAMPLES[1:], ids=lambda m: type(m).__name__)
def test_any_other_mutation_on_an_absent_workflow_is_not_found(m: Mutation) -> None:
    with pytest.raises(NotFoundError) as info:
        apply(None, m)
    assert "mutation.workflow_id" in str(info.value)
    assert WF in str(info.value)


def test_a_mutation_for_another_workflow_is_refused() -> None:
    other = replace(ws("running"), workflow_id="wf-2")
    error = raises_at("mutation.workflow_id", created(), other)
    assert "'wf-2'" in error.message


@pytest.mark.parametrize(
    ("state", "m", "field"),
    [
        (None, CreateWorkflow(workflow_id="a/b", name="x", at=1), "mutation.workflow_id"),
        (None, CreateWorkflow(workflow_id="..", name="x", at=1), "mutation.workflow_id"),
        (None, CreateWorkflow(workflow_id="", name="x", at=1), "mutation.workflow_id"),
        (None, create(step("a\x00")), "mutation.steps[0].id"),
        (None, create(step("a"), step("x" * 129)), "mutation.steps[1].id"),
        (None, create(step("a", agent_id="a\\b")), "mutation.steps[0].agent_id"),
        (
            None,
            create(context=WorkflowContext(session_id=".")),
            "mutation.context.session_id",
        ),
        ("state", ss("a/b", "running"), "mutation.step_id"),
        ("state", out("", 1), "mutation.step_id"),
        ("state", out(".", 1), "mutation.step_id"),
        ("state", out("a", 1, agent_id="\x7f"), "mutation.agent_id"),
        (
            "state",
            SetAgentState(workflow_id=WF, agent_id="../x", status="s", at=2),
            "mutation.agent_id",
        ),
        ("state", UpdateContext(workflow_id=WF, session_id="a\nb", at=2), "mutation.session_id"),
    ],
)
def test_bad_ids_are_refused_naming_the_field(state: Any, m: Mutation, field: str) -> None:
    error = raises_at(field, created(step("a")) if state == "state" else None, m)
    assert error.message.startswith("an id must")  # the id rule, not "no such step"


def test_not_a_mutation_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        apply(None, {"op": "create_workflow"})  # type: ignore[arg-type]
    assert info.value.field == "mutation"


@pytest.mark.parametrize(
    ("m", "field"),
    [
        (create(at=math.nan), "mutation.at"),
        (create(at=math.inf), "mutation.at"),
        (CreateWorkflow(workflow_id=WF, name=5, at=1), "mutation.name"),  # type: ignore[arg-type]
        (CreateWorkflow(workflow_id=WF, name="n", at="1"), "mutation.at"),  # type: ignore[arg-type]
        (create(step("a", max_retries=-1)), "mutation.steps[0].max_retries"),
        (create(step("a", status="bogus")), "mutation.steps[0].status"),
    ],
)
def test_wrong_types_and_ranges_are_refused(m: Mutation, field: str) -> None:
    raises_at(field, None, m)


def test_an_unknown_status_is_refused() -> None:
    raises_at("mutation.status", created(), ws("sleeping"))  # type: ignore[arg-type]
    raises_at("mutation.status", created(step("a")), ss("a", "done"))  # type: ignore[arg-type]


# -- steps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ((step("a"), step("a")), "mutation.steps[1].id", "duplicate step id 'a'"),
        ((step("a", "zz"),), "mutation.steps[0].dependencies", "'zz' is not a step"),
        ((step("a"), step("b", "a", "a")), "mutation.steps[1].dependencies", "listed twice"),
        ((step("a", "a"),), "mutation.steps[0].dependencies", "cycle: a -> a"),
        (
            (step("a", "c"), step("b", "a"), step("c", "b")),
            "mutation.steps[1].dependencies",
            "cycle: a -> c -> b -> a",
        ),
        ((step("a", max_retries=-1),), "mutation.steps[0].max_retries", ">= 0"),
    ],
)
def test_step_rules_on_create(steps: tuple[WorkflowStep, ...], field: str, words: str) -> None:
    error = raises_at(field, None, create(*steps))
    assert words in error.message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": "running"}, "status"),
        ({"attempts": 1}, "attempts"),
        ({"started_at": 1.0}, "started_at"),
        ({"ended_at": 1.0}, "ended_at"),
        ({"error": "x"}, "error"),
    ],
)
def test_new_steps_must_be_fresh(changes: dict[str, Any], field: str) -> None:
    raises_at(f"mutation.steps[1].{field}", None, create(step("a"), step("b", **changes)))


def test_unknown_step_id_is_refused() -> None:
    state = created(step("a"))
    assert "no step 'b'" in raises_at("mutation.step_id", state, ss("b", "running")).message
    raises_at("mutation.step_id", state, out("b", 1))


# -- step transitions -------------------------------------------------------------------------

EXPECTED_STEP = {
    "pending": {"running", "skipped"},
    "running": {"completed", "failed"},
    "failed": {"running", "pending"},
    "completed": set(),
    "skipped": set(),
}
EXPECTED_WORKFLOW = {
    "idle": {"running"},
    "running": {"paused", "completed", "failed"},
    "paused": {"running", "failed"},
    "failed": {"running"},
    "completed": set(),
}


def test_transition_tables_are_as_documented() -> None:
    assert {k: set(v) for k, v in STEP_TRANSITIONS.items()} == EXPECTED_STEP
    assert {k: set(v) for k, v in WORKFLOW_TRANSITIONS.items()} == EXPECTED_WORKFLOW


@pytest.mark.parametrize("old", STEP_STATUSES)
@pytest.mark.parametrize("new", STEP_STATUSES)
def test_every_step_transition(old: StepStatus, new: StepStatus) -> None:
    state = forced(created(step("a", max_retries=5)), "a", status=old, attempts=1)
    m = ss("a", new)
    if new in EXPECTED_STEP[old]:
        assert get_step(run(state, m), "a").status == new
    else:
        error = raises_at("mutation.status", state, m)
        assert f"from {old} to {new}" in error.message


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_a_step_runs_at_most_one_plus_max_retries_times(max_retries: int) -> None:
    state = created(step("a", max_retries=max_retries))
    for attempt in range(1, max_retries + 2):
        state = run(state, ss("a", "running", at=attempt), ss("a", "failed", at=attempt + 0.5))
        assert get_step(state, "a").attempts == attempt
    error = raises_at("mutation.status", state, ss("a", "running", at=99))
    assert "from failed to running" in error.message
    assert "max_retries" in error.message
    # going through pending does not reset the budget
    state = run(state, ss("a", "pending", at=100))
    raises_at("mutation.status", state, ss("a", "running", at=101))


def test_entering_running_counts_an_attempt_and_stamps_the_start() -> None:
    state = created(step("a", max_retries=1))
    state = run(state, ss("a", "running", at=5.0))
    a = get_step(state, "a")
    assert (a.attempts, a.started_at, a.ended_at) == (1, 5.0, None)
    assert state.performance.retries == 0
    state = run(state, ss("a", "failed", at=7.0, error="boom"))
    a = get_step(state, "a")
    assert (a.ended_at, a.error) == (7.0, "boom")
    assert state.performance.step_durations == {"a": 2.0}
    state = run(state, ss("a", "running", at=8.0))
    a = get_step(state, "a")
    assert (a.attempts, a.started_at, a.ended_at, a.error) == (2, 8.0, None, None)
    assert state.performance.retries == 1
    state = run(state, ss("a", "completed", at=8.5))
    assert get_step(state, "a").ended_at == 8.5
    assert state.performance.step_durations == {"a": 0.5}


def test_skipped_ends_the_step_and_pending_clears_the_times() -> None:
    state = created(step("a"), step("b"))
    state = run(state, ss("a", "skipped", at=3.0))
    assert get_step(state, "a").ended_at == 3.0
    state = run(state, ss("b", "running", at=4.0), ss("b", "failed", at=5.0, error="x"))
    b = get_step(run(state, ss("b", "pending", at=6.0)), "b")
    assert (b.status, b.attempts, b.started_at, b.ended_at, b.error) == (
        "pending",
        1,
        None,
        None,
        None,
    )


# -- workflow transitions ---------------------------------------------------------------------


@pytest.mark.parametrize("old", WORKFLOW_STATUSES)
@pytest.mark.parametrize("new", WORKFLOW_STATUSES)
def test_every_workflow_transition(old: WorkflowStatus, new: WorkflowStatus) -> None:
    base = created()
    state = replace(base, workflow=replace(base.workflow, status=old))
    m = ws(new)
    if new in EXPECTED_WORKFLOW[old]:
        assert run(state, m).workflow.status == new
    else:
        error = raises_at("mutation.status", state, m)
        assert f"from {old} to {new}" in error.message


def test_workflow_times() -> None:
    state = run(created(), ws("running", at=10.0))
    assert (state.workflow.start_time, state.workflow.end_time) == (10.0, None)
    state = run(state, ws("paused", at=11.0), ws("running", at=12.0))
    assert state.workflow.start_time == 10.0  # kept across a pause
    state = run(state, ws("failed", at=15.0, error="boom"))
    assert (state.workflow.end_time, state.workflow.error) == (15.0, "boom")
    assert state.performance.total_duration == 5.0
    state = run(state, ws("running", at=20.0))
    assert (state.workflow.start_time, state.workflow.end_time, state.workflow.error) == (
        10.0,
        None,
        None,
    )
    assert state.performance.total_duration is None
    state = run(state, ws("completed", at=30.0))
    assert state.workflow.end_time == 30.0
    assert state.performance.total_duration == 20.0


# -- derived fields ---------------------------------------------------------------------------


def test_progress_follows_completed_and_skipped_steps() -> None:
    state = created(step("a"), step("b"), step("c"), step("d"))
    state = run(state, ss("a", "running"), ss("a", "completed"))
    assert state.workflow.progress == 25.0
    state = run(state, ss("b", "skipped"))
    assert state.workflow.progress == 50.0
    state = run(state, ss("c", "running"), ss("c", "failed"))
    assert state.workflow.progress == 50.0
    assert run(created(), ws("running")).workflow.progress == 0.0


def test_current_step_is_the_most_recently_started_running_step() -> None:
    state = created(step("a"), step("b"), step("c"))
    state = run(state, ss("a", "running", at=1.0))
    assert state.workflow.current_step == "a"
    state = run(state, ss("b", "running", at=2.0))
    assert state.workflow.current_step == "b"
    state = run(state, ss("a", "completed", at=3.0))
    assert state.workflow.current_step == "b"  # another step finishing does not move it
    state = run(state, ss("c", "running", at=4.0), ss("c", "failed", at=5.0))
    assert state.workflow.current_step == "b"  # c finished: back to the latest running one
    state = run(state, ss("b", "completed", at=6.0))
    assert state.workflow.current_step is None


def test_current_step_follows_the_order_of_mutations_not_the_clock() -> None:
    state = created(step("a"), step("b"), step("c"))
    state = run(state, ss("a", "running", at=1.0), ss("b", "running", at=10.0))
    state = run(state, ss("c", "running", at=3.0))  # the commit clock went back
    assert state.workflow.current_step == "c"
    state = run(state, ss("a", "completed", at=4.0))
    assert state.workflow.current_step == "c"
    state = run(state, ss("c", "completed", at=5.0))
    assert state.workflow.current_step == "b"


def test_current_step_ties_go_to_the_last_step_in_order() -> None:
    state = created(step("a"), step("b"), step("c"))
    state = run(state, ss("a", "running", at=1.0), ss("b", "running", at=1.0))
    state = run(state, ss("c", "running", at=2.0), ss("c", "completed", at=3.0))
    assert state.workflow.current_step == "b"


def test_outputs_keep_every_version_in_order() -> None:
    state = created(step("a", agent_id="agent-1"), step("b"))
    state = run(state, out("a", {"v": 1}), out("b", "x"), out("a", {"v": 2}, agent_id="agent-2"))
    state = run(state, ss("a", "running"), ss("a", "completed", output={"v": 3}))
    versions = state.outputs["a"]
    assert [o.version for o in versions] == [1, 2, 3]
    assert [o.data for o in versions] == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert [o.agent_id for o in versions] == [None, "agent-2", "agent-1"]
    assert [o.version for o in state.outputs["b"]] == [1]


def test_metadata_version_counts_mutations_and_updated_at_follows_at() -> None:
    state = created(step("a"))
    state = replace(state, metadata=replace(state.metadata, last_lsn=41))
    history: list[Mutation] = [ws("running", at=5.0), ss("a", "running", at=6.0), out("a", 1, at=7)]
    for i, m in enumerate(history):
        state = run(state, m)
        assert state.metadata.version == i + 2
        assert state.metadata.updated_at == m.at
        assert state.metadata.created_at == 1.0
        assert state.metadata.last_lsn == 41  # the engine's to set


def test_agent_state_is_set_and_overwritten() -> None:
    state = created()
    state = run(state, SetAgentState(workflow_id=WF, agent_id="a1", status="idle", at=2))
    state = run(
        state, SetAgentState(workflow_id=WF, agent_id="a1", status="busy", data={"x": 1}, at=3)
    )
    agent = state.agents["a1"]
    assert (agent.status, agent.data, agent.updated_at) == ("busy", {"x": 1}, 3.0)


def test_update_context_merges_keys() -> None:
    state = apply(
        None, create(context=WorkflowContext(session_id="s1", environment={"A": "1", "B": "2"}))
    )
    state = run(state, UpdateContext(workflow_id=WF, environment={"B": "3", "C": "4"}, at=2))
    state = run(state, UpdateContext(workflow_id=WF, user_data={"u": 1}, at=3))
    state = run(state, UpdateContext(workflow_id=WF, user_data={"v": 2}, at=4))
    assert state.context.environment == {"A": "1", "B": "3", "C": "4"}
    assert state.context.user_data == {"u": 1, "v": 2}
    assert state.context.session_id == "s1"
    state = run(state, UpdateContext(workflow_id=WF, session_id="s2", at=5))
    assert state.context.session_id == "s2"
    assert state.context.environment == {"A": "1", "B": "3", "C": "4"}


@pytest.mark.parametrize(
    ("m", "field"),
    [
        (out("a", {"x": math.nan}), "mutation.data['x']"),
        (out("a", [1, b"raw"]), "mutation.data[1]"),
        (ss("a", "running", output={"x": [math.inf]}), "mutation.output['x'][0]"),
        (
            SetAgentState(workflow_id=WF, agent_id="g", status="s", data={"b": b""}, at=2),
            "mutation.data['b']",
        ),
        (
            UpdateContext(workflow_id=WF, user_data={"n": -math.inf}, at=2),
            "mutation.user_data['n']",
        ),
        (
            UpdateContext(workflow_id=WF, environment={"A": 1}, at=2),  # type: ignore[dict-item]
            "mutation.environment[...]",
        ),
        (out("a", {"x": {1: 2}}), "mutation.data['x']"),
    ],
)
def test_data_must_be_json_like(m: Mutation, field: str) -> None:
    raises_at(field, created(step("a")), m)


def test_create_context_user_data_must_be_json_like() -> None:
    m = create(context=WorkflowContext(user_data={"b": b"x"}))
    raises_at("mutation.context.user_data['b']", None, m)


# -- replace and delete -----------------------------------------------------------------------


def test_replace_state_continues_the_metadata_and_recomputes_progress() -> None:
    old = run(created(step("a"), step("b")), ws("running", at=2.0))
    old = replace(old, metadata=replace(old.metadata, last_lsn=7))
    new = forced(created(step("a"), step("b")), "a", status="completed", attempts=1)
    new = replace(new, metadata=replace(new.metadata, created_at=99.0, version=500))
    result = run(old, ReplaceState(workflow_id=WF, state=new, at=3.0))
    assert result.metadata == replace(old.metadata, version=3, updated_at=3.0)
    assert result.workflow.progress == 50.0
    assert get_step(result, "a").status == "completed"
    assert result.workflow.status == "idle"


def test_replace_state_must_name_the_same_workflow() -> None:
    other = replace(created(), workflow=replace(created().workflow, id="wf-2"))
    raises_at(
        "mutation.state.workflow.id", created(), ReplaceState(workflow_id=WF, state=other, at=2)
    )


def test_replace_state_checks_the_new_state() -> None:
    bad = forced(created(step("a"), step("b", "a")), "a", dependencies=("b",))
    error = raises_at(
        "mutation.state.workflow.steps[1].dependencies",
        created(),
        ReplaceState(workflow_id=WF, state=bad, at=2),
    )
    assert "cycle" in error.message
    wrong_type = forced(created(step("a")), "a", attempts=-1)
    raises_at(
        "mutation.state.workflow.steps[0].attempts",
        created(),
        ReplaceState(workflow_id=WF, state=wrong_type, at=2),
    )


def test_delete_makes_the_workflow_absent_and_it_can_be_created_again() -> None:
    assert apply(created(), DeleteWorkflow(workflow_id=WF, at=2)) is None
    with pytest.raises(NotFoundError):
        apply(None, DeleteWorkflow(workflow_id=WF, at=2))
    assert apply(None, create(at=3.0)) is not None


# -- purity and determinism -------------------------------------------------------------------


@pytest.mark.parametrize("index", range(1, len(SAMPLES)), ids=lambda i: type(SAMPLES[i]).__name__)
def test_apply_does_not_modify_its_inputs(index: int) -> None:
    state = run(None, *SAMPLES[:index]) if index < len(SAMPLES) - 2 else sample_state()
    m = SAMPLES[index]
    state_before, m_before = copy.deepcopy(state), copy.deepcopy(m)
    bytes_before = encode_state(state)
    apply(state, m)
    assert state == state_before
    assert encode_state(state) == bytes_before
    assert m == m_before


def test_a_state_does_not_share_mutable_data_with_the_mutation() -> None:
    data: dict[str, Any] = {"rows": [1]}
    m = out("a", data)
    state = run(created(step("a")), m)
    data["rows"].append(2)
    assert state.outputs["a"][0].data == {"rows": [1]}


def test_apply_normalizes_to_what_a_replay_decodes() -> None:
    state = created(step("a"))
    m = out("a", {"t": (1, 2)}, at=7)
    replayed = decode_mutations(encode_mutations([m]))[0]
    direct, again = run(state, m), run(state, replayed)
    assert direct == again
    assert encode_state(direct) == encode_state(again)
    assert direct.outputs["a"][0].data == {"t": [1, 2]}
    assert isinstance(direct.metadata.updated_at, float)


def test_validate_uses_the_given_prefix_and_produces_nothing() -> None:
    state = created(step("a"))
    with pytest.raises(ValidationError) as info:
        validate(state, ss("zz", "running"), field="mutations[4]")
    assert info.value.field == "mutations[4].step_id"
    validate(state, ss("a", "running"))
    assert get_step(state, "a").status == "pending"


# -- batches ----------------------------------------------------------------------------------


def test_apply_batch_applies_in_order_and_returns_the_named_workflows() -> None:
    other = apply(None, CreateWorkflow(workflow_id="wf-2", name="x", at=1))
    states: dict[str, WorkflowState | None] = {"wf-2": other, "wf-3": None}
    batch: list[Mutation] = [
        create(step("a")),
        ss("a", "running", at=2),
        ss("a", "completed", at=3),
        DeleteWorkflow(workflow_id="wf-2", at=4),
    ]
    result = apply_batch(states, batch)
    assert set(result) == {WF, "wf-2"}
    assert result["wf-2"] is None
    assert result[WF] == run(None, *batch[:3])
    assert states == {"wf-2": other, "wf-3": None}  # input untouched


def test_apply_batch_is_all_or_nothing_and_names_the_mutation() -> None:
    state = created(step("a"))
    states = {WF: state}
    with pytest.raises(ValidationError) as info:
        apply_batch(states, [ss("a", "running"), ss("a", "completed"), ss("a", "running")])
    assert info.value.field == "mutations[2].status"
    assert "from completed to running" in info.value.message
    assert states == {WF: state}
    with pytest.raises(ValidationError) as info:
        apply_batch({}, [create(), create()])
    assert info.value.field == "mutations[1].workflow_id"
    with pytest.raises(NotFoundError, match=r"mutations\[0\]\.workflow_id"):
        apply_batch({}, [ws("running")])
    with pytest.raises(ValidationError) as info:
        apply_batch({}, [create(), "nope"])  # type: ignore[list-item]
    assert info.value.field == "mutations[1]"
    with pytest.raises(ValidationError) as info:
        apply_batch({}, [CreateWorkflow(workflow_id=["x"], name="n", at=1)])  # type: ignore[arg-type]
    assert info.value.field == "mutations[0].workflow_id"


def test_apply_batch_sees_a_delete_before_a_create() -> None:
    result = apply_batch({WF: created()}, [DeleteWorkflow(workflow_id=WF, at=2), create(at=3)])
    state = result[WF]
    assert state is not None
    assert state.metadata.created_at == 3.0


# -- encoding ---------------------------------------------------------------------------------


def test_every_mutation_type_has_a_snake_case_tag() -> None:
    tags = {msgspec.inspect.type_info(cls).tag for cls in MUTATION_TYPES}  # type: ignore[attr-defined]
    assert tags == {
        "create_workflow",
        "set_workflow_status",
        "set_step_status",
        "put_step_output",
        "set_agent_state",
        "update_context",
        "replace_state",
        "delete_workflow",
    }
    assert {type(m) for m in SAMPLES} == set(MUTATION_TYPES)


@pytest.mark.parametrize("m", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_mutation_type_round_trips(m: Mutation) -> None:
    data = encode_mutations([m])
    assert decode_mutations(data) == [m]
    assert msgspec.msgpack.decode(data)["m"][0]["op"] == msgspec.inspect.type_info(type(m)).tag  # type: ignore[attr-defined]


def test_encoding_is_independent_of_dict_insertion_order() -> None:
    a = UpdateContext(workflow_id=WF, user_data={"x": 1, "y": {"b": 1, "a": 2}}, at=1)
    b = UpdateContext(workflow_id=WF, user_data={"y": {"a": 2, "b": 1}, "x": 1}, at=1)
    assert encode_mutations([a]) == encode_mutations([b])


def test_a_batch_round_trips_and_an_empty_batch_is_an_empty_list() -> None:
    assert decode_mutations(encode_mutations(SAMPLES)) == SAMPLES
    assert decode_mutations(encode_mutations([])) == []


def batch_document(body: object, v: object = SCHEMA_VERSION) -> bytes:
    return msgspec.msgpack.encode({"v": v, "m": body})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x01",
        batch_document([{"op": "explode", "workflow_id": WF, "at": 1.0}]),
        batch_document([{"op": "delete_workflow", "at": 1.0}]),
        batch_document(
            [{"op": "set_workflow_status", "workflow_id": WF, "at": 1.0, "status": "sleeping"}]
        ),
        batch_document([{"workflow_id": WF, "at": 1.0}]),
        batch_document({"not": "an array"}),
        encode_mutations(SAMPLES)[:-5],
        # the envelope of docs/format.md §5.1 is missing or broken
        msgspec.msgpack.encode([{"op": "delete_workflow", "workflow_id": WF, "at": 1.0}]),
        msgspec.msgpack.encode({"m": []}),
        msgspec.msgpack.encode({"v": SCHEMA_VERSION}),
        batch_document([], v="1"),
        batch_document([], v=True),
        batch_document([], v=-1),
        batch_document([], v=1.0),
    ],
)
def test_decoding_garbage_raises_validation_error(data: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        decode_mutations(data)
    assert info.value.field == "mutations"


def test_decoding_names_msgspecs_path() -> None:
    raw = msgspec.msgpack.decode(encode_mutations(SAMPLES))
    raw["m"][2]["step_id"] = 5
    with pytest.raises(ValidationError) as info:
        decode_mutations(msgspec.msgpack.encode(raw))
    assert "$[2].step_id" in info.value.message


def test_encoding_an_unencodable_mutation_raises_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        encode_mutations([out("a", {"x": object()})])
    assert info.value.field == "mutations"
    raises_at("mutation", created(step("a")), out("a", {"x": object()}))
    raises_at("mutation", created(step("a")), out("a", 2**64))


# -- property: random valid histories -----------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
AGENTS = ["agent-1", "agent-2"]


@st.composite
def histories(draw: st.DrawFn) -> list[Mutation]:
    """A valid history: a create, then mutations each legal in the state before it."""
    count = draw(st.integers(min_value=0, max_value=5))
    ids = [f"s{i}" for i in range(count)]
    steps = tuple(
        WorkflowStep(
            id=ids[i],
            name=f"Step {i}",
            agent_id=draw(st.sampled_from([None, *AGENTS])),
            dependencies=tuple(draw(st.sets(st.sampled_from(ids[:i]))) if i else ()),
            max_retries=draw(st.integers(min_value=0, max_value=2)),
        )
        for i in range(count)
    )
    t = draw(st.floats(min_value=0, max_value=1e9))
    history: list[Mutation] = [CreateWorkflow(workflow_id=WF, name="W", steps=steps, at=t)]
    state = apply(None, history[0])
    for _ in range(draw(st.integers(min_value=0, max_value=30))):
        assert state is not None
        t += draw(st.floats(min_value=0, max_value=100))
        choices: list[st.SearchStrategy[Mutation]] = [
            st.builds(
                SetWorkflowStatus,
                workflow_id=st.just(WF),
                status=st.just(s),
                error=st.none() | st.text(max_size=5),
                at=st.just(t),
            )
            for s in sorted(WORKFLOW_TRANSITIONS[state.workflow.status])
        ]
        for s_ in state.workflow.steps:
            for target in sorted(STEP_TRANSITIONS[s_.status]):
                if target == "running" and s_.attempts > s_.max_retries:
                    continue
                choices.append(
                    st.builds(
                        SetStepStatus,
                        workflow_id=st.just(WF),
                        step_id=st.just(s_.id),
                        status=st.just(target),
                        output=st.none() | json_values,
                        at=st.just(t),
                    )
                )
        if ids:
            choices.append(
                st.builds(
                    PutStepOutput,
                    workflow_id=st.just(WF),
                    step_id=st.sampled_from(ids),
                    data=json_values,
                    agent_id=st.sampled_from([None, *AGENTS]),
                    at=st.just(t),
                )
            )
        choices += [
            st.builds(
                SetAgentState,
                workflow_id=st.just(WF),
                agent_id=st.sampled_from(AGENTS),
                status=st.text(max_size=5),
                data=st.dictionaries(st.text(max_size=3), json_values, max_size=2),
                at=st.just(t),
            ),
            st.builds(
                UpdateContext,
                workflow_id=st.just(WF),
                environment=st.none() | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                user_data=st.none() | st.dictionaries(st.text(max_size=3), json_values, max_size=2),
                session_id=st.sampled_from([None, "s1", "s2"]),
                at=st.just(t),
            ),
            st.builds(ReplaceState, workflow_id=st.just(WF), state=st.just(state), at=st.just(t)),
        ]
        m = draw(st.one_of(choices))
        history.append(m)
        state = apply(state, m)
    if draw(st.booleans()):
        history.append(DeleteWorkflow(workflow_id=WF, at=t))
    return history


def replay(history: Sequence[Mutation]) -> list[WorkflowState | None]:
    states: list[WorkflowState | None] = []
    state: WorkflowState | None = None
    for m in history:
        state = apply(state, m)
        states.append(state)
    return states


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_random_histories_are_deterministic_and_round_trip(history: list[Mutation]) -> None:
    first = replay(history)
    second = replay(history)
    from_log = replay(decode_mutations(encode_mutations(history)))
    assert first == second == from_log
    for a, b in zip(first, from_log, strict=True):
        if a is None:
            assert b is None
            continue
        assert b is not None
        assert encode_state(a) == encode_state(b)
        assert state_checksum(a) == state_checksum(b)
        decoded = decode_state(encode_state(a))
        assert decoded == a
        assert state_checksum(decoded) == state_checksum(a)
        assert [o.version for v in a.outputs.values() for o in v] == [
            i + 1 for v in a.outputs.values() for i in range(len(v))
        ]
    assert apply_batch({}, history)[WF] == first[-1]
    logged = decode_mutations(encode_mutations(history))
    assert replay_batch({}, logged)[WF] == first[-1]
    one_by_one: dict[str, WorkflowState | None] = {}
    for m in logged:
        one_by_one = {**one_by_one, **replay_batch(one_by_one, [m])}
    assert one_by_one[WF] == first[-1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_a_replay_fed_in_chunks_is_the_history_applied_one_by_one(
    history: list[Mutation], data: st.DataObject
) -> None:
    """``Replay`` extends the outputs it copied in place: whatever the chunks, its states are
    those of ``apply`` one mutation at a time, and no state it was given or handed out (by a
    ``result`` taken midway) changes afterwards."""
    logged = decode_mutations(encode_mutations(history))
    expected = replay(history)
    cut = data.draw(st.integers(min_value=0, max_value=len(logged)), label="cut")
    given_states = replay_batch({}, logged[:cut])
    handed_out = [(given_states, {w: encode_state(s) for w, s in given_states.items() if s})]
    replaying = Replay(given_states)
    done = cut
    while done < len(logged):
        size = data.draw(st.integers(min_value=1, max_value=4), label="chunk")
        replaying.apply(logged[done : done + size])
        done = min(done + size, len(logged))
        if data.draw(st.booleans(), label="result now"):
            midway = replaying.result()
            assert midway[WF] == expected[done - 1]
            handed_out.append((midway, {w: encode_state(s) for w, s in midway.items() if s}))
    final = {**given_states, **replaying.result()}
    assert final.get(WF) == expected[-1]
    for states, encoded in handed_out:
        assert {w: encode_state(s) for w, s in states.items() if s} == encoded


def test_a_replay_of_many_outputs_copies_none_of_the_states_given() -> None:
    state = created(step("a"), step("b"))
    puts = [
        PutStepOutput(workflow_id=WF, step_id="ab"[i % 2], data={"i": i}, at=float(i))
        for i in range(50)
    ]
    replaying = Replay({WF: state})
    for m in puts:
        replaying.apply([m])
    result = replaying.result()[WF]
    assert result is not None
    assert result == run(state, *puts)
    assert state.outputs == {}
    assert [o.version for o in result.outputs["a"]] == list(range(1, 26))
    again = Replay({WF: result})  # a state handed out is copied, not extended, by a new replay
    again.apply([puts[0]])
    assert len(result.outputs["a"]) == 25
    extended = again.result()[WF]
    assert extended is not None
    assert len(extended.outputs["a"]) == 26


def test_a_replay_that_deletes_and_creates_again_starts_from_fresh_outputs() -> None:
    steps = (step("a"),)
    put = PutStepOutput(workflow_id=WF, step_id="a", data=1, at=2.0)
    replaying = Replay({})
    replaying.apply([CreateWorkflow(workflow_id=WF, name="W", steps=steps, at=1.0), put, put])
    replaying.apply([DeleteWorkflow(workflow_id=WF, at=3.0)])
    replaying.apply([CreateWorkflow(workflow_id=WF, name="W", steps=steps, at=4.0), put])
    state = replaying.result()[WF]
    assert state is not None
    assert [o.version for o in state.outputs["a"]] == [1]


def test_replay_refuses_a_logged_batch_that_cannot_apply() -> None:
    # Replay trusts the log's validation, but a batch naming something that does not exist
    # cannot be applied at all: it is reported (a store turns it into CorruptionError).
    state = created(step("a"))
    with pytest.raises(NotFoundError, match=r"mutations\[0\].workflow_id"):
        replay_batch({}, [ss("a", "running")])
    with pytest.raises(ValidationError) as info:
        replay_batch({WF: state}, [ss("a", "running"), ss("nope", "running")])
    assert info.value.field == "mutations[1].step_id"
    assert replay_batch({WF: state}, [DeleteWorkflow(workflow_id=WF, at=1)]) == {WF: None}
