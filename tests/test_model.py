"""Contracts of ids, the state Structs, their canonical encoding, checksum and invariants."""

from __future__ import annotations

import gc
import math
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from msgspec.structs import replace

from wfstate.errors import ValidationError
from wfstate.ids import MAX_ID_LENGTH, validate_id
from wfstate.model import (
    SCHEMA_VERSION,
    AgentState,
    PerformanceMetrics,
    StateMetadata,
    StepOutput,
    Workflow,
    WorkflowContext,
    WorkflowState,
    WorkflowStep,
    _is_json_like,
    compute_progress,
    decode_state,
    encode_state,
    state_checksum,
    validate_json,
    validate_state,
    validate_steps,
)

# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["w", "a.b", "a..b", "..a", "x" * MAX_ID_LENGTH, "workflow 1", "ünïcødé-ид", "~", "a:b"],
)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_id(value, "workflow_id") == value


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (123, "must be a str, not int"),
        (b"w", "must be a str, not bytes"),
        (None, "must be a str, not NoneType"),
        ("", "must not be empty"),
        ("x" * (MAX_ID_LENGTH + 1), f"at most {MAX_ID_LENGTH} characters, not 129"),
        ("a\x00b", "control character U+0000 (index 1)"),
        ("a\nb", "control character U+000A"),
        ("\x1f", "control character U+001F"),
        ("a\x7f", "control character U+007F"),
        ("a/b", "path separator '/' (index 1)"),
        ("a\\b", "path separator '\\\\'"),
        ("a/../b", "path separator '/'"),
        ("../x", "path separator '/'"),
        (".", "path component '.'"),
        ("..", "path component '..'"),
    ],
)
def test_invalid_ids_name_the_field_and_the_rule(value: object, rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_id(value, "mutations[2].step_id")
    assert info.value.field == "mutations[2].step_id"
    assert rule in info.value.message


def test_max_id_length_is_128() -> None:
    assert MAX_ID_LENGTH == 128


# -- builders ---------------------------------------------------------------------------------


def full_state() -> WorkflowState:
    """A state with every field set to something other than its default."""
    steps = (
        WorkflowStep(
            id="fetch",
            name="Fetch",
            agent_id="agent-1",
            parallel=True,
            max_retries=2,
            status="completed",
            attempts=2,
            started_at=10.5,
            ended_at=12.0,
            error="first attempt timed out",
        ),
        WorkflowStep(
            id="summarise",
            name="Summarise",
            dependencies=("fetch",),
            status="running",
            attempts=1,
            started_at=12.5,
        ),
    )
    return WorkflowState(
        metadata=StateMetadata(
            schema_version=SCHEMA_VERSION, created_at=1.0, updated_at=13.0, version=7, last_lsn=42
        ),
        workflow=Workflow(
            id="wf-1",
            name="Report",
            status="running",
            current_step="summarise",
            steps=steps,
            progress=50.0,
            start_time=2.0,
            error=None,
        ),
        agents={
            "agent-1": AgentState(
                agent_id="agent-1", status="busy", data={"model": "m", "temp": 0.2}, updated_at=11.0
            )
        },
        outputs={
            "fetch": (
                StepOutput(step_id="fetch", version=1, data={"rows": [1, 2]}, created_at=11.0),
                StepOutput(
                    step_id="fetch",
                    version=2,
                    agent_id="agent-1",
                    data=["x", None, True, 1.5, {"n": -3}],
                    created_at=12.0,
                ),
            )
        },
        context=WorkflowContext(
            session_id="sess-1", environment={"REGION": "eu"}, user_data={"owner": "ann"}
        ),
        performance=PerformanceMetrics(
            step_durations={"fetch": 1.5}, total_duration=None, retries=1
        ),
    )


def with_workflow(state: WorkflowState, **changes: Any) -> WorkflowState:
    return replace(state, workflow=replace(state.workflow, **changes))


def with_step(state: WorkflowState, index: int, **changes: Any) -> WorkflowState:
    steps = list(state.workflow.steps)
    steps[index] = replace(steps[index], **changes)
    return with_workflow(state, steps=tuple(steps))


# -- structs ----------------------------------------------------------------------------------


def test_structs_are_frozen() -> None:
    state = full_state()
    with pytest.raises(AttributeError):
        state.workflow = state.workflow  # type: ignore[misc]
    with pytest.raises(AttributeError):
        state.workflow.steps[0].status = "failed"  # type: ignore[misc]


def test_defaults_of_a_step() -> None:
    step = WorkflowStep(id="s", name="S")
    assert (step.agent_id, step.dependencies, step.parallel, step.max_retries) == (
        None,
        (),
        False,
        0,
    )
    assert (step.status, step.attempts, step.started_at, step.ended_at, step.error) == (
        "pending",
        0,
        None,
        None,
        None,
    )


def test_schema_version_is_1() -> None:
    assert SCHEMA_VERSION == 1


# -- encoding ---------------------------------------------------------------------------------


def test_encode_decode_round_trips_a_full_state() -> None:
    state = full_state()
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert encode_state(decoded) == encode_state(state)


def test_encoding_is_independent_of_dict_insertion_order() -> None:
    a = full_state()
    b = replace(a, context=replace(a.context, user_data={"y": 1, "x": {"b": 2, "a": 1}}))
    c = replace(a, context=replace(a.context, user_data={"x": {"a": 1, "b": 2}, "y": 1}))
    assert b == c
    assert encode_state(b) == encode_state(c)
    assert state_checksum(b) == state_checksum(c)


def test_schema_version_is_always_written() -> None:
    """A default would be omitted and read back as whatever the default is at read time."""
    state = full_state()
    raw = msgspec.msgpack.decode(encode_state(state))
    assert raw["metadata"]["schema_version"] == SCHEMA_VERSION


class _FutureStep(WorkflowStep, frozen=True, kw_only=True):
    """WorkflowStep as a later version that added an optional field might define it."""

    timeout: float | None = None


def test_adding_a_defaulted_field_keeps_the_bytes_of_existing_values() -> None:
    old = WorkflowStep(id="s", name="S", max_retries=1)
    new = _FutureStep(id="s", name="S", max_retries=1)
    assert msgspec.msgpack.encode(new) == msgspec.msgpack.encode(old)


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    newer = _FutureStep(id="s", name="S", timeout=3.0)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(newer), type=WorkflowStep) == (
        WorkflowStep(id="s", name="S")
    )
    raw = msgspec.msgpack.decode(encode_state(full_state()))
    raw["metadata"]["future_field"] = [1, 2]
    raw["workflow"]["steps"][0]["timeout"] = 9
    assert decode_state(msgspec.msgpack.encode(raw)) == full_state()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        b"not msgpack at all",
        encode_state(full_state())[:-3],
    ],
)
def test_decoding_garbage_raises_validation_error_for_state(data: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        decode_state(data)
    assert info.value.field == "state"


def test_decoding_a_wrong_type_names_msgspecs_path() -> None:
    raw = msgspec.msgpack.decode(encode_state(full_state()))
    raw["workflow"]["steps"][0]["id"] = 17
    with pytest.raises(ValidationError) as info:
        decode_state(msgspec.msgpack.encode(raw))
    assert info.value.field == "state"
    assert "$.workflow.steps[0].id" in info.value.message


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("workflow", "status"), "sleeping", "$.workflow.status"),
        (("workflow", "progress"), 100.5, "$.workflow.progress"),
        (("workflow", "progress"), -1.0, "$.workflow.progress"),
        (("outputs", "fetch", 0, "version"), 0, "$.outputs[...][0].version"),
        (("metadata", "version"), -1, "$.metadata.version"),
        (("metadata", "last_lsn"), -1, "$.metadata.last_lsn"),
        (("performance", "retries"), -1, "$.performance.retries"),
    ],
)
def test_decoding_checks_declared_ranges(path: tuple[Any, ...], value: object, where: str) -> None:
    raw = msgspec.msgpack.decode(encode_state(full_state()))
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as info:
        decode_state(msgspec.msgpack.encode(raw))
    assert where in info.value.message


@pytest.mark.parametrize("version", [0, 2])
def test_decoding_another_schema_version_is_refused(version: int) -> None:
    raw = msgspec.msgpack.decode(encode_state(full_state()))
    raw["metadata"]["schema_version"] = version
    with pytest.raises(ValidationError) as info:
        decode_state(msgspec.msgpack.encode(raw))
    assert info.value.field in ("state", "state.metadata.schema_version")


def test_decoding_checks_invariants() -> None:
    state = with_step(full_state(), 0, dependencies=("summarise",))
    with pytest.raises(ValidationError) as info:
        decode_state(encode_state(state))
    assert info.value.field == "state.workflow.steps[1].dependencies"
    assert info.value.message == "dependency cycle: fetch -> summarise -> fetch"


def test_decoding_rejects_bytes_inside_json_data() -> None:
    state = replace(full_state(), context=WorkflowContext(user_data={"blob": b"\x00"}))
    with pytest.raises(ValidationError) as info:
        decode_state(encode_state(state))
    assert info.value.field == "state.context.user_data['blob']"


def test_encoding_an_unencodable_value_raises_validation_error() -> None:
    state = replace(full_state(), context=WorkflowContext(user_data={"x": object()}))
    with pytest.raises(ValidationError) as info:
        encode_state(state)
    assert info.value.field == "state"


# -- checksum ---------------------------------------------------------------------------------


def test_checksum_is_stable() -> None:
    """Pinned: a change here means every stored checksum changes (a format change)."""
    state = full_state()
    assert state_checksum(state) == state_checksum(full_state())
    assert state_checksum(decode_state(encode_state(state))) == state_checksum(state)
    assert state_checksum(state) == 0x06DF93234BD4D754


def test_checksum_ignores_last_lsn_only() -> None:
    state = full_state()
    assert state_checksum(replace(state, metadata=replace(state.metadata, last_lsn=0))) == (
        state_checksum(state)
    )
    assert state_checksum(replace(state, metadata=replace(state.metadata, last_lsn=9))) == (
        state_checksum(state)
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda s: replace(s, metadata=replace(s.metadata, version=8)),
        lambda s: replace(s, metadata=replace(s.metadata, updated_at=13.5)),
        lambda s: replace(s, metadata=replace(s.metadata, created_at=0.5)),
        lambda s: with_workflow(s, name="Report!"),
        lambda s: with_step(s, 1, attempts=2),
        lambda s: replace(s, context=replace(s.context, user_data={"owner": "bob"})),
        lambda s: replace(s, outputs={}),
        lambda s: replace(s, agents={}),
        lambda s: replace(s, performance=PerformanceMetrics()),
    ],
)
def test_checksum_changes_with_any_covered_field(change: Any) -> None:
    state = full_state()
    assert state_checksum(change(state)) != state_checksum(state)


# -- invariants -------------------------------------------------------------------------------


def test_full_state_is_valid() -> None:
    validate_state(full_state())


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: with_workflow(s, id="a/b"), "state.workflow.id", "separator"),
        (lambda s: with_step(s, 1, id="fetch"), "state.workflow.steps[1].id", "duplicate"),
        (lambda s: with_step(s, 1, id=""), "state.workflow.steps[1].id", "empty"),
        (lambda s: with_step(s, 0, agent_id=".."), "state.workflow.steps[0].agent_id", "'..'"),
        (
            lambda s: with_step(s, 1, dependencies=("nope",)),
            "state.workflow.steps[1].dependencies",
            "'nope' is not a step",
        ),
        (
            lambda s: with_step(s, 1, dependencies=("fetch", "fetch")),
            "state.workflow.steps[1].dependencies",
            "listed twice",
        ),
        (
            lambda s: with_step(s, 1, dependencies=("summarise",)),
            "state.workflow.steps[1].dependencies",
            "cycle: summarise -> summarise",
        ),
        (
            lambda s: with_step(s, 1, started_at=math.inf),
            "state.workflow.steps[1].started_at",
            "finite",
        ),
        (
            lambda s: with_step(s, 0, ended_at=math.nan),
            "state.workflow.steps[0].ended_at",
            "finite",
        ),
        (lambda s: with_workflow(s, current_step="x"), "state.workflow.current_step", "'x'"),
        (lambda s: with_workflow(s, start_time=math.nan), "state.workflow.start_time", "finite"),
        (lambda s: with_workflow(s, end_time=-math.inf), "state.workflow.end_time", "finite"),
        (
            lambda s: replace(s, metadata=replace(s.metadata, created_at=math.nan)),
            "state.metadata.created_at",
            "finite",
        ),
        (
            lambda s: replace(s, metadata=replace(s.metadata, updated_at=math.inf)),
            "state.metadata.updated_at",
            "finite",
        ),
        (
            lambda s: replace(
                s, agents={"a/b": AgentState(agent_id="a/b", status="x", updated_at=1.0)}
            ),
            "state.agents['a/b']",
            "separator",
        ),
        (
            lambda s: replace(
                s, agents={"a": AgentState(agent_id="b", status="x", updated_at=1.0)}
            ),
            "state.agents['a'].agent_id",
            "not its key",
        ),
        (
            lambda s: replace(
                s, agents={"a": AgentState(agent_id="a", status="x", updated_at=math.nan)}
            ),
            "state.agents['a'].updated_at",
            "finite",
        ),
        (
            lambda s: replace(
                s,
                agents={
                    "a": AgentState(agent_id="a", status="x", data={"k": math.nan}, updated_at=1)
                },
            ),
            "state.agents['a'].data['k']",
            "finite",
        ),
        (
            lambda s: replace(s, outputs={"ghost": ()}),
            "state.outputs['ghost']",
            "not a step",
        ),
        (
            lambda s: replace(
                s, outputs={"fetch": (StepOutput(step_id="summarise", version=1, created_at=1),)}
            ),
            "state.outputs['fetch'][0].step_id",
            "not its key",
        ),
        (
            lambda s: replace(
                s,
                outputs={
                    "fetch": (
                        StepOutput(step_id="fetch", version=2, created_at=1),
                        StepOutput(step_id="fetch", version=2, created_at=2),
                    )
                },
            ),
            "state.outputs['fetch'][1].version",
            "does not follow 2",
        ),
        (
            lambda s: replace(
                s,
                outputs={
                    "fetch": (StepOutput(step_id="fetch", version=1, agent_id="", created_at=1),)
                },
            ),
            "state.outputs['fetch'][0].agent_id",
            "empty",
        ),
        (
            lambda s: replace(
                s, outputs={"fetch": (StepOutput(step_id="fetch", version=1, created_at=math.inf),)}
            ),
            "state.outputs['fetch'][0].created_at",
            "finite",
        ),
        (
            lambda s: replace(
                s,
                outputs={
                    "fetch": (StepOutput(step_id="fetch", version=1, data=[b"x"], created_at=1),)
                },
            ),
            "state.outputs['fetch'][0].data[0]",
            "bytes",
        ),
        (
            lambda s: replace(s, context=replace(s.context, session_id="a\x00")),
            "state.context.session_id",
            "control character",
        ),
        (
            lambda s: replace(s, context=replace(s.context, user_data={"s": {1, 2}})),
            "state.context.user_data['s']",
            "set",
        ),
    ],
)
def test_broken_invariants_name_the_field(change: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_state(change(full_state()))
    assert info.value.field == field
    assert words in info.value.message


def steps_with(*deps: tuple[str, tuple[str, ...]]) -> tuple[WorkflowStep, ...]:
    return tuple(WorkflowStep(id=i, name=i, dependencies=d) for i, d in deps)


def test_long_cycles_are_found_and_reported_with_their_path() -> None:
    steps = steps_with(("a", ("d",)), ("b", ("a",)), ("c", ("b",)), ("d", ("c",)))
    with pytest.raises(ValidationError) as info:
        validate_steps(steps, "x.steps")
    assert info.value.field == "x.steps[1].dependencies"
    assert info.value.message == "dependency cycle: a -> d -> c -> b -> a"


def test_diamonds_and_long_chains_are_not_cycles() -> None:
    validate_steps(steps_with(("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))), "s")
    chain = tuple(
        WorkflowStep(id=f"s{i}", name="n", dependencies=(f"s{i + 1}",) if i < 4999 else ())
        for i in range(5000)
    )
    validate_steps(chain, "s")  # iterative: no recursion limit


def test_cycle_reachable_only_through_an_acyclic_prefix_is_found() -> None:
    steps = steps_with(("a", ("b",)), ("b", ("c",)), ("c", ("d",)), ("d", ("c",)))
    with pytest.raises(ValidationError) as info:
        validate_steps(steps, "s")
    assert info.value.field == "s[3].dependencies"
    assert info.value.message == "dependency cycle: c -> d -> c"


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"a": [1, {"b": math.nan}]}, "d['a'][1]['b']", "finite"),
        ({"a": math.inf}, "d['a']", "finite"),
        ({1: "x"}, "d", "key must be a str"),
        ({"t": (1, 2)}, "d['t']", "tuple"),
        ([b"x"], "d[0]", "bytes"),
        ({"x": object()}, "d['x']", "object"),
    ],
)
def test_validate_json_names_the_offending_item(value: object, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_json(value, "d")
    assert info.value.field == field
    assert words in info.value.message


def test_validate_json_accepts_json_like_values() -> None:
    validate_json({"a": [1, -2, 2**63, 1.5, "s", True, None, {"b": []}]}, "d")
    validate_json(None, "d")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), 0.0),
        (("pending",), 0.0),
        (("completed", "pending"), 50.0),
        (("skipped", "completed", "failed", "running"), 50.0),
        (("completed", "skipped", "completed"), 100.0),
    ],
)
def test_progress_counts_completed_and_skipped_steps(
    statuses: tuple[Any, ...], expected: float
) -> None:
    steps = tuple(WorkflowStep(id=f"s{i}", name="n", status=s) for i, s in enumerate(statuses))
    assert compute_progress(steps) == expected


class _Text(str):
    pass


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and inf included: not JSON-like
    st.text(max_size=3),
    st.builds(_Text, st.text(max_size=3)),  # a subclass: JSON-like, off the fast path
    st.binary(max_size=2),
    st.tuples(st.integers()),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=2) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


def _json_like_by_definition(value: object) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like_by_definition(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_like_by_definition(v) for v in value)
    return False


@given(_VALUES)
@example({"a": [1, {"b": math.nan}]})
@example([0.5, -math.inf])
@example({"a": {1: "x"}})
@example([[b"x"]])
@example({"a": (1,)})
def test_validate_json_accepts_exactly_the_json_like_values(value: object) -> None:
    """The exact-type fast path (``_is_json_like``) never accepts what the definition refuses,
    and what it refuses still goes through the full check, which alone decides."""
    expected = _json_like_by_definition(value)
    if _is_json_like(value):
        assert expected
    if expected:
        validate_json(value, "d")
    else:
        with pytest.raises(ValidationError):
            validate_json(value, "d")


def test_validate_json_accepts_subclasses_of_the_json_types() -> None:
    assert not _is_json_like({"a": _Text("x")})  # off the fast path ...
    validate_json({"a": [_Text("x")]}, "d")  # ... and accepted by the full check


def test_states_are_not_tracked_by_the_cyclic_collector() -> None:
    """gc=False on every state Struct (module docstring): a decoded state's Structs never
    join the collector's generations; only the JSON containers inside outputs do."""
    state = decode_state(encode_state(full_state()))
    structs = [
        state, state.metadata, state.workflow, state.context, state.performance,
        *state.workflow.steps, *state.agents.values(),
        *(o for versions in state.outputs.values() for o in versions),
    ]  # fmt: skip
    assert {type(s) for s in structs} >= {
        WorkflowState, StateMetadata, Workflow, WorkflowContext, PerformanceMetrics,
        WorkflowStep, AgentState, StepOutput,
    }  # fmt: skip
    assert not any(gc.is_tracked(s) for s in structs)
