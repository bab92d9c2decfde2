"""Contracts of wfstate.delta: compute, apply, encode and decode the delta of docs/format.md §9.2.

The state strategies here (:func:`states`, :func:`edited`) are shared with
``tests/test_checkpointfile.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET
from msgspec.structs import replace

from fixtures.reference_states import big_workflow_state
from wfstate.delta import (
    StateDelta,
    apply_delta,
    compute_delta,
    decode_delta,
    encode_delta,
)
from wfstate.errors import ValidationError
from wfstate.model import (
    SCHEMA_VERSION,
    STEP_STATUSES,
    WORKFLOW_STATUSES,
    AgentState,
    PerformanceMetrics,
    StateMetadata,
    StepOutput,
    Workflow,
    WorkflowContext,
    WorkflowState,
    WorkflowStep,
    decode_state,
    encode_state,
    state_checksum,
    validate_state,
)

# -- strategies -------------------------------------------------------------------------------

STEP_IDS = [f"s{i}" for i in range(8)]
AGENT_IDS = ["a1", "a2", "a3"]

# 0, 1, 1.0, True, -0.0: values Python calls equal that encode differently are drawn often.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-2, max_value=2)
    | st.sampled_from([0.0, -0.0, 1.0, 2.5])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
json_maps = st.dictionaries(st.text(max_size=3), json_values, max_size=2)
times = st.floats(min_value=0, max_value=1e9) | st.sampled_from([0.0, -0.0, 1.0])
optional_times = st.none() | times
texts = st.text(max_size=4)


def draw_step(draw: st.DrawFn, step_id: str, depends_on: list[str]) -> WorkflowStep:
    """A valid step ``step_id`` depending on some of ``depends_on``."""
    dependencies = (
        draw(st.lists(st.sampled_from(depends_on), unique=True, max_size=2)) if depends_on else []
    )
    return WorkflowStep(
        id=step_id,
        name=draw(texts),
        agent_id=draw(st.sampled_from([None, *AGENT_IDS])),
        dependencies=tuple(dependencies),
        parallel=draw(st.booleans()),
        max_retries=draw(st.integers(min_value=0, max_value=3)),
        status=draw(st.sampled_from(sorted(STEP_STATUSES))),
        attempts=draw(st.integers(min_value=0, max_value=3)),
        started_at=draw(optional_times),
        ended_at=draw(optional_times),
        error=draw(st.none() | texts),
    )


def draw_agent(draw: st.DrawFn, agent_id: str) -> AgentState:
    return AgentState(
        agent_id=agent_id, status=draw(texts), data=draw(json_maps), updated_at=draw(times)
    )


def draw_outputs(draw: st.DrawFn, step_id: str, first: int = 1) -> tuple[StepOutput, ...]:
    count = draw(st.integers(min_value=1, max_value=3))
    return tuple(
        StepOutput(
            step_id=step_id,
            version=first + i,
            agent_id=draw(st.sampled_from([None, *AGENT_IDS])),
            data=draw(json_values),
            created_at=draw(times),
        )
        for i in range(count)
    )


def draw_context(draw: st.DrawFn) -> WorkflowContext:
    return WorkflowContext(
        session_id=draw(st.sampled_from([None, "sess-1", "sess-2"])),
        environment=draw(st.dictionaries(texts, texts, max_size=2)),
        user_data=draw(json_maps),
    )


def draw_performance(draw: st.DrawFn, step_ids: list[str]) -> PerformanceMetrics:
    keys = draw(st.lists(st.sampled_from(STEP_IDS), unique=True, max_size=len(step_ids)))
    return PerformanceMetrics(
        step_durations={key: draw(times) for key in keys},
        total_duration=draw(optional_times),
        retries=draw(st.integers(min_value=0, max_value=5)),
    )


def draw_metadata(draw: st.DrawFn) -> StateMetadata:
    return StateMetadata(
        schema_version=SCHEMA_VERSION,
        created_at=draw(times),
        updated_at=draw(times),
        version=draw(st.integers(min_value=0, max_value=100)),
        last_lsn=draw(st.integers(min_value=0, max_value=1000)),
    )


@st.composite
def states(draw: st.DrawFn, workflow_id: str | None = None) -> WorkflowState:
    """A valid state with every field drawn, steps among :data:`STEP_IDS`."""
    ids = draw(st.lists(st.sampled_from(STEP_IDS), unique=True, max_size=6))
    steps = tuple(draw_step(draw, sid, ids[:i]) for i, sid in enumerate(ids))
    agent_ids = draw(st.lists(st.sampled_from(AGENT_IDS), unique=True))
    output_ids = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    state = WorkflowState(
        metadata=draw_metadata(draw),
        workflow=Workflow(
            id=workflow_id if workflow_id is not None else draw(st.sampled_from(["wf", "wf-2"])),
            name=draw(texts),
            status=draw(st.sampled_from(sorted(WORKFLOW_STATUSES))),
            current_step=draw(st.sampled_from([None, *ids])),
            steps=steps,
            progress=draw(st.floats(min_value=0, max_value=100)),
            start_time=draw(optional_times),
            end_time=draw(optional_times),
            error=draw(st.none() | texts),
        ),
        agents={aid: draw_agent(draw, aid) for aid in agent_ids},
        outputs={sid: draw_outputs(draw, sid) for sid in output_ids},
        context=draw_context(draw),
        performance=draw_performance(draw, ids),
    )
    validate_state(state)
    return state


Edit = Callable[[st.DrawFn, WorkflowState], WorkflowState]


def _with_steps(state: WorkflowState, steps: tuple[WorkflowStep, ...]) -> WorkflowState:
    workflow = state.workflow
    ids = {step.id for step in steps}
    current = workflow.current_step if workflow.current_step in ids else None
    outputs = state.outputs
    if any(key not in ids for key in outputs):
        outputs = {key: value for key, value in outputs.items() if key in ids}
    return replace(
        state, workflow=replace(workflow, steps=steps, current_step=current), outputs=outputs
    )


def change_step(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    steps = state.workflow.steps
    if not steps:
        return state
    i = draw(st.integers(min_value=0, max_value=len(steps) - 1))
    changed = replace(
        steps[i],
        status=draw(st.sampled_from(sorted(STEP_STATUSES))),
        attempts=draw(st.integers(min_value=0, max_value=3)),
        error=draw(st.none() | texts),
        started_at=draw(optional_times),
    )
    return _with_steps(state, (*steps[:i], changed, *steps[i + 1 :]))


def add_step(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    steps = state.workflow.steps
    ids = [step.id for step in steps]
    fresh = [sid for sid in STEP_IDS if sid not in ids]
    if not fresh:
        return state
    new = draw_step(draw, draw(st.sampled_from(fresh)), ids)
    at = draw(st.integers(min_value=0, max_value=len(steps)))
    return _with_steps(state, (*steps[:at], new, *steps[at:]))


def remove_step(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    steps = state.workflow.steps
    needed = {dep for step in steps for dep in step.dependencies}
    removable = [i for i, step in enumerate(steps) if step.id not in needed]
    if not removable:
        return state
    i = draw(st.sampled_from(removable))
    return _with_steps(state, (*steps[:i], *steps[i + 1 :]))


def reorder_steps(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    return _with_steps(state, tuple(draw(st.permutations(state.workflow.steps))))


def set_agent(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    agent = draw_agent(draw, draw(st.sampled_from(AGENT_IDS)))
    return replace(state, agents={**state.agents, agent.agent_id: agent})


def remove_agent(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    if not state.agents:
        return state
    gone = draw(st.sampled_from(sorted(state.agents)))
    return replace(state, agents={k: v for k, v in state.agents.items() if k != gone})


def put_output(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    if not state.workflow.steps:
        return state
    sid = draw(st.sampled_from([step.id for step in state.workflow.steps]))
    versions = state.outputs.get(sid, ())
    first = versions[-1].version + 1 if versions else 1
    return replace(
        state, outputs={**state.outputs, sid: (*versions, *draw_outputs(draw, sid, first))}
    )


def remove_output(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    if not state.outputs:
        return state
    gone = draw(st.sampled_from(sorted(state.outputs)))
    return replace(state, outputs={k: v for k, v in state.outputs.items() if k != gone})


def change_context(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    return replace(state, context=draw_context(draw))


def change_performance(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    ids = [step.id for step in state.workflow.steps]
    return replace(state, performance=draw_performance(draw, ids))


def change_metadata(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    return replace(state, metadata=draw_metadata(draw))


def change_workflow(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    workflow = replace(
        state.workflow,
        status=draw(st.sampled_from(sorted(WORKFLOW_STATUSES))),
        progress=draw(st.floats(min_value=0, max_value=100)),
        error=draw(st.none() | texts),
        name=draw(texts),
    )
    return replace(state, workflow=workflow)


def copy_parts(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    """The same values as new objects (a state read back from disk shares nothing)."""
    return decode_state(encode_state(state))


def _retyped(value: Any) -> Any:
    """A value Python calls equal to ``value`` that encodes differently, where there is one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value)
    if isinstance(value, float) and value == 0:
        return -value
    if isinstance(value, dict):
        return {key: _retyped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_retyped(item) for item in value]
    return value


def retype_json(draw: st.DrawFn, state: WorkflowState) -> WorkflowState:
    """Agent data and user data replaced by values ``==`` calls equal (1 → 1.0, True → 1)."""
    agents = {key: replace(agent, data=_retyped(agent.data)) for key, agent in state.agents.items()}
    context = replace(state.context, user_data=_retyped(state.context.user_data))
    return replace(state, agents=agents, context=context)


EDITS: list[Edit] = [
    change_step,
    add_step,
    remove_step,
    reorder_steps,
    set_agent,
    remove_agent,
    put_output,
    remove_output,
    change_context,
    change_performance,
    change_metadata,
    change_workflow,
    copy_parts,
    retype_json,
]


@st.composite
def edited(draw: st.DrawFn, parent: WorkflowState) -> WorkflowState:
    """``parent`` after a few random edits, sharing the parts they left alone."""
    state = parent
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        state = draw(st.sampled_from(EDITS))(draw, state)
    validate_state(state)
    return state


@st.composite
def related_pairs(draw: st.DrawFn) -> tuple[WorkflowState, WorkflowState]:
    parent = draw(states())
    return parent, draw(edited(parent))


# -- helpers ----------------------------------------------------------------------------------


def assert_reproduces(parent: WorkflowState, child: WorkflowState) -> StateDelta:
    """The delta from ``parent`` to ``child`` rebuilds ``child`` exactly, also after a trip
    through its bytes; returns it."""
    delta = compute_delta(parent, child)
    encoded = encode_delta(delta)
    for candidate in (delta, decode_delta(encoded)):
        rebuilt = apply_delta(parent, candidate)
        assert rebuilt == child
        assert encode_state(rebuilt) == encode_state(child)
        assert state_checksum(rebuilt) == state_checksum(child)
    assert encode_delta(decode_delta(encoded)) == encoded
    return delta


def step_of(state: WorkflowState, step_id: str) -> WorkflowStep | None:
    return next((s for s in state.workflow.steps if s.id == step_id), None)


def base_state() -> WorkflowState:
    """Three steps ``a <- b``, ``c``; an agent; outputs of ``a``."""
    steps = (
        WorkflowStep(id="a", name="A"),
        WorkflowStep(id="b", name="B", dependencies=("a",)),
        WorkflowStep(id="c", name="C"),
    )
    return WorkflowState(
        metadata=StateMetadata(schema_version=SCHEMA_VERSION, created_at=1.0, updated_at=2.0),
        workflow=Workflow(id="wf", name="W", steps=steps),
        agents={"a1": AgentState(agent_id="a1", status="idle", data={"n": 1}, updated_at=1.0)},
        outputs={"a": (StepOutput(step_id="a", version=1, data=[1], created_at=2.0),)},
        context=WorkflowContext(user_data={"k": "v"}),
        performance=PerformanceMetrics(step_durations={"a": 1.0}),
    )


def with_step(state: WorkflowState, index: int, **changes: Any) -> WorkflowState:
    steps = list(state.workflow.steps)
    steps[index] = replace(steps[index], **changes)
    return replace(state, workflow=replace(state.workflow, steps=tuple(steps)))


# -- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(related_pairs())
def test_delta_of_an_edited_state_rebuilds_it(pair: tuple[WorkflowState, WorkflowState]) -> None:
    parent, child = pair
    delta = assert_reproduces(parent, child)
    parent_steps = {step.id: step for step in parent.workflow.steps}
    for step in delta.steps:  # only new or differing steps travel
        before = parent_steps.get(step.id)
        assert before is None or encode_state_part(before) != encode_state_part(step)
    if child.workflow.steps is parent.workflow.steps:
        assert delta.steps == () and delta.step_ids is UNSET
    if child.agents is parent.agents:
        assert delta.agents == {} and delta.agents_removed == ()
    if child.outputs is parent.outputs:
        assert delta.outputs == {} and delta.outputs_removed == ()
    if child.context is parent.context:
        assert delta.context is UNSET
    if child.performance is parent.performance:
        assert delta.performance is UNSET


def encode_state_part(part: object) -> bytes:
    return msgspec.msgpack.Encoder(order="deterministic").encode(part)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states(), states())
def test_delta_between_unrelated_states_rebuilds_the_child(
    parent: WorkflowState, child: WorkflowState
) -> None:
    assert_reproduces(parent, child)


# -- computing --------------------------------------------------------------------------------


def test_delta_of_a_state_to_itself_holds_only_metadata_and_workflow() -> None:
    state = base_state()
    delta = assert_reproduces(state, state)
    assert delta == StateDelta(metadata=state.metadata, workflow=replace(state.workflow, steps=()))
    assert sorted(msgspec.msgpack.decode(encode_delta(delta))) == ["metadata", "workflow"]
    assert apply_delta(state, delta).workflow.steps is state.workflow.steps


def test_a_changed_step_travels_alone_and_the_rest_is_shared() -> None:
    parent = base_state()
    child = with_step(parent, 1, status="running", attempts=1)
    delta = assert_reproduces(parent, child)
    assert delta.steps == (child.workflow.steps[1],)
    assert delta.step_ids is UNSET
    rebuilt = apply_delta(parent, delta)
    assert rebuilt.workflow.steps[0] is parent.workflow.steps[0]
    assert rebuilt.workflow.steps[2] is parent.workflow.steps[2]
    assert rebuilt.agents is parent.agents
    assert rebuilt.outputs is parent.outputs
    assert rebuilt.context is parent.context
    assert rebuilt.performance is parent.performance


def test_order_and_set_changes_carry_step_ids() -> None:
    parent = base_state()
    steps = parent.workflow.steps
    reordered = replace(parent, workflow=replace(parent.workflow, steps=steps[::-1]))
    delta = assert_reproduces(parent, reordered)
    assert delta.steps == ()
    assert delta.step_ids == ("c", "b", "a")
    new = WorkflowStep(id="d", name="D", dependencies=("c",))
    added = replace(parent, workflow=replace(parent.workflow, steps=(*steps, new)))
    delta = assert_reproduces(parent, added)
    assert delta.steps == (new,)
    assert delta.step_ids == ("a", "b", "c", "d")
    emptied = replace(parent, workflow=replace(parent.workflow, steps=()), outputs={})
    delta = assert_reproduces(parent, emptied)
    assert delta.step_ids == ()
    assert delta.outputs_removed == ("a",)
    assert "step_ids" in msgspec.msgpack.decode(encode_delta(delta))


def test_removals_are_listed_sorted() -> None:
    parent = replace(
        base_state(),
        agents={
            key: AgentState(agent_id=key, status="s", updated_at=1.0) for key in ("z", "a1", "m")
        },
    )
    child = replace(parent, agents={})
    assert compute_delta(parent, child).agents_removed == ("a1", "m", "z")


@pytest.mark.parametrize(
    ("old", "new"),
    [(1, 1.0), (1, True), (0, False), (0.0, -0.0), (1.0, True)],
    ids=repr,
)
def test_values_python_calls_equal_but_that_encode_differently_are_changes(
    old: object, new: object
) -> None:
    assert old == new
    parent = base_state()
    child = replace(
        parent,
        agents={"a1": replace(parent.agents["a1"], data={"n": new})},
        context=replace(parent.context, user_data={"k": new}),
    )
    parent = replace(
        parent,
        agents={"a1": replace(parent.agents["a1"], data={"n": old})},
        context=replace(parent.context, user_data={"k": old}),
    )
    delta = assert_reproduces(parent, child)
    assert delta.agents == child.agents
    assert delta.context == child.context


def test_negative_zero_in_a_step_is_a_change() -> None:
    parent = with_step(base_state(), 0, started_at=0.0)
    child = with_step(parent, 0, started_at=-0.0)
    assert parent == child
    assert compute_delta(parent, child).steps == (child.workflow.steps[0],)
    assert_reproduces(parent, child)


def test_equal_copies_that_share_nothing_give_an_empty_delta() -> None:
    parent = base_state()
    child = decode_state(encode_state(parent))
    assert child.workflow.steps[0] is not parent.workflow.steps[0]
    delta = assert_reproduces(parent, child)
    assert delta == StateDelta(metadata=child.metadata, workflow=replace(child.workflow, steps=()))


def test_delta_keys_are_written_sorted_and_absent_ones_omitted() -> None:
    parent = base_state()
    child = replace(
        with_step(parent, 0, error="x"),
        agents={},
        context=WorkflowContext(),
        performance=PerformanceMetrics(),
    )
    document = msgspec.msgpack.decode(encode_delta(compute_delta(parent, child)))
    assert list(document) == sorted(document)
    assert set(document) == {
        "agents_removed",
        "context",
        "metadata",
        "performance",
        "steps",
        "workflow",
    }
    assert "steps" not in document["workflow"]


def test_big_state_with_ten_changed_steps_gives_a_small_delta() -> None:
    parent = big_workflow_state()
    child = parent
    for i in range(0, 1000, 100):
        step = child.workflow.steps[i]
        versions = child.outputs[step.id]
        output = StepOutput(step_id=step.id, version=2, data={"retry": i}, created_at=1.0)
        child = replace(
            with_step(child, i, attempts=step.attempts + 1, error="retried"),
            outputs={**child.outputs, step.id: (*versions, output)},
            performance=replace(
                child.performance,
                step_durations={**child.performance.step_durations, step.id: 2.0},
            ),
        )
    delta = assert_reproduces(parent, child)
    assert len(delta.steps) == 10
    assert len(delta.outputs) == 10
    full = len(encode_state(child))
    assert len(encode_delta(delta)) < full * 0.05
    assert len(encode_delta(compute_delta(parent, parent))) < 300


# -- malformed deltas -------------------------------------------------------------------------


def malformed(parent: WorkflowState, delta: StateDelta) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        apply_delta(parent, delta)
    # the same delta read from bytes is refused the same way, at decoding or at applying
    with pytest.raises(ValidationError) as again:
        apply_delta(parent, decode_delta(encode_delta(delta)))
    assert again.value.field == info.value.field
    return info.value


def empty_delta(state: WorkflowState, **fields: Any) -> StateDelta:
    return StateDelta(metadata=state.metadata, workflow=replace(state.workflow, steps=()), **fields)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"step_ids": ("a", "zz", "c")}, "delta.step_ids[1]", "neither a step of the parent"),
        (
            {"steps": (WorkflowStep(id="zz", name="Z"),)},
            "delta.steps[0].id",
            "not a step of the parent, and `step_ids` is absent",
        ),
        (
            {"steps": (WorkflowStep(id="zz", name="Z"),), "step_ids": ("a", "b", "c")},
            "delta.steps[0].id",
            "not in `step_ids`",
        ),
        (
            {"steps": (WorkflowStep(id="a", name="A"), WorkflowStep(id="a", name="A2"))},
            "delta.steps[1].id",
            "listed twice",
        ),
        ({"step_ids": ("a", "b", "a")}, "delta.step_ids[2]", "listed twice"),
        ({"agents_removed": ("a1", "nope")}, "delta.agents_removed[1]", "not in the parent"),
        ({"agents_removed": ("a1", "a1")}, "delta.agents_removed[1]", "listed twice"),
        ({"outputs_removed": ("b",)}, "delta.outputs_removed[0]", "not in the parent"),
        (
            {
                "outputs": {"a": (StepOutput(step_id="a", version=1, created_at=1.0),)},
                "outputs_removed": ("a",),
            },
            "delta.outputs_removed[0]",
            "both set and removed",
        ),
        # a child that breaks a state invariant is named at the field of the state
        ({"step_ids": ("b", "c")}, "state.workflow.steps[0].dependencies", "'a' is not a step"),
        ({"step_ids": ("c", "b")}, "state.workflow.steps[1].dependencies", "'a' is not a step"),
        (
            {"agents": {"a2": AgentState(agent_id="a1", status="s", updated_at=1.0)}},
            "state.agents['a2'].agent_id",
            "is not its key",
        ),
        (
            {"outputs": {"zz": (StepOutput(step_id="zz", version=1, created_at=1.0),)}},
            "state.outputs['zz']",
            "is not a step",
        ),
    ],
)
def test_malformed_deltas_are_refused_naming_the_field(
    fields: dict[str, Any], field: str, words: str
) -> None:
    parent = base_state()
    error = malformed(parent, empty_delta(parent, **fields))
    assert error.field.startswith(field)
    assert words in error.message


def test_a_removed_step_whose_outputs_stay_is_refused() -> None:
    parent = replace(
        base_state(),
        outputs={"c": (StepOutput(step_id="c", version=1, created_at=1.0),)},
    )
    error = malformed(parent, empty_delta(parent, step_ids=("a", "b")))
    assert error.field == "state.outputs['c']"


def test_a_workflow_with_steps_inside_a_delta_is_refused() -> None:
    parent = base_state()
    delta = StateDelta(metadata=parent.metadata, workflow=parent.workflow)
    assert malformed(parent, delta).field == "delta.workflow.steps"


def test_another_schema_version_is_refused() -> None:
    parent = base_state()
    delta = empty_delta(parent)
    delta = replace(delta, metadata=replace(delta.metadata, schema_version=SCHEMA_VERSION + 1))
    assert malformed(parent, delta).field == "delta.metadata.schema_version"


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (b"\xc1", "delta", "MessagePack"),
        (msgspec.msgpack.encode([1, 2]), "delta", "Expected `object`"),
        (msgspec.msgpack.encode({"workflow": {"id": "w", "name": "n"}}), "delta", "`metadata`"),
    ],
)
def test_undecodable_deltas_are_refused(data: bytes, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_delta(data)
    assert info.value.field == field
    assert words in info.value.message


def test_a_wrong_type_or_range_is_named_by_its_path() -> None:
    document = msgspec.msgpack.decode(encode_delta(compute_delta(base_state(), base_state())))
    document["steps"] = [{"id": "a", "name": "A", "attempts": -1}]
    with pytest.raises(ValidationError) as info:
        decode_delta(msgspec.msgpack.encode(document))
    assert info.value.field == "delta.steps[0].attempts"
    document["steps"] = []
    document["step_ids"] = None
    with pytest.raises(ValidationError) as info:
        decode_delta(msgspec.msgpack.encode(document))
    assert info.value.field == "delta.step_ids"


def test_unknown_keys_from_a_newer_writer_are_ignored() -> None:
    state = base_state()
    document = msgspec.msgpack.decode(encode_delta(compute_delta(state, state)))
    document["later"] = 1
    assert decode_delta(msgspec.msgpack.encode(document)) == compute_delta(state, state)


def test_encoding_an_unencodable_value_raises_validation_error() -> None:
    state = base_state()
    delta = empty_delta(
        state,
        agents={"a1": AgentState(agent_id="a1", status="s", data={"x": object()}, updated_at=1.0)},
    )
    with pytest.raises(ValidationError) as info:
        encode_delta(delta)
    assert info.value.field == "delta"
