"""The materialized state of one workflow, as frozen msgspec Structs, and its canonical bytes.

A :class:`WorkflowState` is a value: every Struct here is frozen, and :mod:`wfstate.mutations`
builds a new state for every change, sharing the unchanged parts with the old one. The dicts
inside a state are plain dicts; treat them as read-only, since states share them.

The Structs are not tracked by the cyclic garbage collector (msgspec's ``gc=False``): a loaded
state of 1,000 outputs holds about 2,000 fewer objects for the collector to traverse again and
again while it stays loaded (BENCHMARKS.md P5 loads 100 of them). A state is freed by reference
counting; it could only leak if a dict inside it were made to refer back to a Struct that holds
it, which the read-only rule above and :func:`validate_json` (no Structs in JSON data) exclude.

Encoding
    :func:`encode_state` writes MessagePack with dict keys sorted (msgspec's ``deterministic``
    order) and fields equal to their default omitted, so equal states encode to equal bytes
    whatever the insertion order of their dicts. :func:`decode_state` checks every field's type
    and range, then the invariants of :func:`validate_state`; anything else raises
    :class:`~wfstate.errors.ValidationError`.

Checksum
    :func:`state_checksum` is XXH3-64 of that encoding with ``metadata.last_lsn`` set to 0: it
    covers the whole state, including ``metadata.schema_version``, ``created_at``,
    ``updated_at`` and ``version``, but not the log position the engine stamps after applying
    a mutation. Because defaults are omitted, adding an optional field (rule 1 below) leaves the
    checksum of every existing state unchanged.

Schema evolution (the rules every change to this module follows)
    1. Add a field only with a default, and only where an old state without it means exactly
       that default. Old readers ignore fields they do not know (``forbid_unknown_fields`` is
       off), so old and new code can read each other's states. Use a constant default or an
       empty ``dict``/``list``/``tuple``: those are omitted when equal to the default, while a
       ``default_factory`` building a Struct is always written (and would change checksums).
    2. Never change a field's type, range or meaning, and never reuse a removed field's name.
    3. Removing or renaming a field, or changing a type, range or meaning, bumps
       :data:`SCHEMA_VERSION` and comes with an upgrade function from the previous version,
       registered in :mod:`wfstate.schema` (its docstring has the contract and the checklist).
       Stored documents carry their schema version (a batch document: docs/format.md §5.1)
       and are upgraded when read; :func:`decode_state` reads only states of the current
       :data:`SCHEMA_VERSION` (older ones are upgraded first, newer ones are rejected, never
       misread).
    4. ``StateMetadata.schema_version`` has no default, so it is always written (a default
       would be omitted from the bytes and read back as whatever the default is then).

Nothing in this module does I/O or reads a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from wfstate.errors import ValidationError
from wfstate.format import xxh3
from wfstate.ids import validate_id

SCHEMA_VERSION: Final = 1
"""The version of the state schema this code writes and reads (see the evolution rules)."""

WorkflowStatus: TypeAlias = Literal["idle", "running", "paused", "completed", "failed"]
StepStatus: TypeAlias = Literal["pending", "running", "completed", "failed", "skipped"]
WORKFLOW_STATUSES: Final[frozenset[str]] = frozenset(
    {"idle", "running", "paused", "completed", "failed"}
)
STEP_STATUSES: Final[frozenset[str]] = frozenset(
    {"pending", "running", "completed", "failed", "skipped"}
)

JSONValue: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None
"""A JSON-like value: see :func:`validate_json` for what is accepted inside it."""

NonNegativeInt: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt: TypeAlias = Annotated[int, msgspec.Meta(ge=1)]
Percent: TypeAlias = Annotated[float, msgspec.Meta(ge=0, le=100)]


class _Model(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=False,
    omit_defaults=True,
    gc=False,
):
    """Configuration shared by every state Struct (inherited by subclasses); ``gc=False``: see
    the module docstring."""


class WorkflowStep(_Model, frozen=True, kw_only=True):
    """One step of a workflow.

    ``dependencies`` name steps of the same workflow that this step depends on (no cycles).
    ``max_retries`` is how many times the step may be re-run after failing; ``attempts`` counts
    how many times it entered ``running``. ``started_at`` is when the latest attempt started;
    ``ended_at`` when the step last reached completed, failed or skipped (None while pending or
    running). ``error`` is the error recorded with the latest status change.
    """

    id: str
    name: str
    agent_id: str | None = None
    dependencies: tuple[str, ...] = ()
    parallel: bool = False
    max_retries: NonNegativeInt = 0
    status: StepStatus = "pending"
    attempts: NonNegativeInt = 0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None


class StepOutput(_Model, frozen=True, kw_only=True):
    """One version of a step's output. Versions of a step start at 1 and increase by 1."""

    step_id: str
    version: PositiveInt
    agent_id: str | None = None
    data: JSONValue = None
    created_at: float


class AgentState(_Model, frozen=True, kw_only=True):
    """The last reported state of one agent. ``status`` is free text chosen by the agent."""

    agent_id: str
    status: str
    data: dict[str, Any] = {}
    updated_at: float


class WorkflowContext(_Model, frozen=True, kw_only=True):
    """The session a workflow runs in, its environment and free-form user data."""

    session_id: str | None = None
    environment: dict[str, str] = {}
    user_data: dict[str, Any] = {}


class PerformanceMetrics(_Model, frozen=True, kw_only=True):
    """Execution figures derived while applying mutations.

    ``step_durations``: seconds of each step's latest finished attempt (started_at to the time
    it completed or failed). ``total_duration``: ``end_time - start_time`` once the workflow
    completed or failed, None while it can still run. ``retries``: how many times any step
    re-entered ``running`` after an earlier attempt.
    """

    step_durations: dict[str, float] = {}
    total_duration: float | None = None
    retries: NonNegativeInt = 0


class Workflow(_Model, frozen=True, kw_only=True):
    """The workflow itself.

    ``current_step``: the step most recently set running, or another running step once that
    one finished, or None when no step runs. ``progress``: 100 × (completed + skipped steps) /
    steps, 0 for a workflow without steps. ``start_time``: when it first ran (kept across
    pauses and retries). ``end_time``: when it completed or failed (cleared when it runs again).
    """

    id: str
    name: str
    status: WorkflowStatus = "idle"
    current_step: str | None = None
    steps: tuple[WorkflowStep, ...] = ()
    progress: Percent = 0.0
    start_time: float | None = None
    end_time: float | None = None
    error: str | None = None


class StateMetadata(_Model, frozen=True, kw_only=True):
    """Bookkeeping of a state.

    ``version``: how many mutations produced this state (1 after creation). ``created_at`` /
    ``updated_at``: the ``at`` of the creating and of the latest mutation. ``last_lsn``: the log
    position of the latest mutation, set by the store engine (``apply`` leaves it unchanged).
    ``schema_version`` has no default on purpose (evolution rule 4).
    """

    schema_version: PositiveInt
    created_at: float
    updated_at: float
    version: NonNegativeInt = 0
    last_lsn: NonNegativeInt = 0


class WorkflowState(_Model, frozen=True, kw_only=True):
    """The complete state of one workflow.

    ``agents`` is keyed by agent id; ``outputs`` by step id, holding every version of that
    step's output, oldest first.
    """

    metadata: StateMetadata
    workflow: Workflow
    agents: dict[str, AgentState] = {}
    outputs: dict[str, tuple[StepOutput, ...]] = {}
    context: WorkflowContext = msgspec.field(default_factory=WorkflowContext)
    performance: PerformanceMetrics = msgspec.field(default_factory=PerformanceMetrics)


# -- encoding -------------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_STATE_DECODER: Final = msgspec.msgpack.Decoder(WorkflowState)
_MSGSPEC_PATH: Final = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def split_msgspec_error(error: Exception, prefix: str) -> tuple[str, str]:
    """``(field, message)`` of a msgspec error: its ``$``-path appended to ``prefix``."""
    text = str(error)
    found = _MSGSPEC_PATH.match(text)
    if found is None:
        return prefix, text
    return prefix + found["path"], found["message"]


def encode_state(state: WorkflowState) -> bytes:
    """The canonical MessagePack bytes of ``state`` (sorted dict keys, defaults omitted).

    Raises ValidationError("state", ...) if the state holds a value MessagePack cannot carry.
    """
    try:
        return _ENCODER.encode(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("state", f"cannot be encoded: {exc}") from exc


def decode_state(data: bytes, *, invariants: bool = True) -> WorkflowState:
    """The state encoded in ``data``, checked field by field and by :func:`validate_state`.

    ``invariants=False`` skips :func:`validate_state` (types, ranges and the schema version
    are still checked): only for bytes this code wrote from a state it had validated and that
    a checksum proves intact (a checkpoint file), where it is most of the decoding time.

    Raises ValidationError: ``field="state"`` for malformed bytes or a wrong type or range
    (the message carries msgspec's path, e.g. "at `$.workflow.steps[0].id`"), and the path of
    the offending field for a broken invariant or a ``schema_version`` other than
    :data:`SCHEMA_VERSION`.
    """
    try:
        state = _STATE_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise ValidationError("state", str(exc)) from exc
    if state.metadata.schema_version != SCHEMA_VERSION:
        raise ValidationError(
            "state.metadata.schema_version",
            f"schema version {state.metadata.schema_version} is not the supported version "
            f"{SCHEMA_VERSION}; upgrade it first",
        )
    if invariants:
        validate_state(state, "state")
    return state


def state_checksum(state: WorkflowState) -> int:
    """XXH3-64 of the canonical encoding of ``state`` with ``metadata.last_lsn`` set to 0.

    Equal states (as ``==`` compares them) that hold the same Python types have equal
    checksums; any change to a covered field changes it (up to hash collisions).
    """
    if state.metadata.last_lsn != 0:
        state = msgspec.structs.replace(
            state, metadata=msgspec.structs.replace(state.metadata, last_lsn=0)
        )
    return xxh3(encode_state(state))


# -- invariants -------------------------------------------------------------------------------


def step_index(steps: Iterable[WorkflowStep]) -> dict[str, int]:
    """Step id → position in ``steps`` (the last position if an id repeats)."""
    return {step.id: i for i, step in enumerate(steps)}


def compute_progress(steps: Sequence[WorkflowStep]) -> float:
    """100 × (completed + skipped steps) / steps; 0.0 for no steps."""
    if not steps:
        return 0.0
    done = sum(1 for step in steps if step.status in ("completed", "skipped"))
    return 100.0 * done / len(steps)


def validate_time(value: object, field: str, *, optional: bool = False) -> None:
    """Require a finite int or float (or None when ``optional``) as a timestamp."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(field, f"a timestamp must be a finite number, not {value!r}")


def validate_json(value: object, field: str) -> None:
    """Require a JSON-like value: dicts with str keys, lists, str, int, finite float, bool, None.

    The error names the path of the first offending item below ``field``, e.g.
    ``mutation.data['rows'][3]``.
    """
    if _is_json_like(value):
        return  # the common case, checked without building a path for every item
    stack: list[tuple[object, str]] = [(value, field)]
    while stack:
        item, path = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(path, f"a JSON number must be finite, not {item!r}")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValidationError(path, f"a JSON object key must be a str, not {key!r}")
                stack.append((child, f"{path}[{key!r}]"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        else:
            raise ValidationError(path, f"a value must be JSON-like, not {type(item).__name__}")


def _is_json_like(value: object) -> bool:
    """Whether ``value`` is JSON-like built of the exact types ``dict``, ``list``, ``str``,
    ``int``, ``bool``, ``float`` and None (no paths kept).

    True implies :func:`validate_json` accepts ``value``; False only sends it to the full
    check (which also accepts subclasses of those types). Exact ``type`` tests and only
    containers on the stack: this runs over every output of a state on each save.
    """
    isfinite = math.isfinite
    stack = [value]
    push = stack.append
    while stack:
        item = stack.pop()
        kind = type(item)
        children: Iterable[object]
        if kind is dict:
            for key in item:  # type: ignore[attr-defined]
                if type(key) is not str:
                    return False
            children = item.values()  # type: ignore[attr-defined]
        elif kind is list:
            children = item  # type: ignore[assignment]
        else:
            children = (item,)
        for child in children:
            kind = type(child)
            if kind is str or kind is int or kind is bool or child is None:
                continue
            if kind is float:
                if not isfinite(child):  # type: ignore[arg-type]
                    return False
            elif kind is dict or kind is list:
                push(child)
            else:
                return False
    return True


def validate_steps(steps: Sequence[WorkflowStep], field: str) -> None:
    """Require valid, unique step ids and agent ids, finite timestamps, known acyclic dependencies.

    ``field`` is the path of the sequence; errors name an element's field below it, e.g.
    ``mutation.steps[3].dependencies``. A cycle is reported at the step whose dependency
    closes it, with the cycle in the message ("a -> b -> a").
    """
    seen: set[str] = set()
    for i, step in enumerate(steps):
        here = f"{field}[{i}]"
        validate_id(step.id, f"{here}.id")
        if step.id in seen:
            raise ValidationError(f"{here}.id", f"duplicate step id {step.id!r}")
        seen.add(step.id)
        if step.agent_id is not None:
            validate_id(step.agent_id, f"{here}.agent_id")
        validate_time(step.started_at, f"{here}.started_at", optional=True)
        validate_time(step.ended_at, f"{here}.ended_at", optional=True)
    for i, step in enumerate(steps):
        listed: set[str] = set()
        for dep in step.dependencies:
            where = f"{field}[{i}].dependencies"
            if dep not in seen:
                raise ValidationError(where, f"{dep!r} is not a step of this workflow")
            if dep in listed:
                raise ValidationError(where, f"{dep!r} is listed twice")
            listed.add(dep)
    _check_acyclic(steps, field)


def _check_acyclic(steps: Sequence[WorkflowStep], field: str) -> None:
    """Iterative depth-first search; raises at the first dependency that closes a cycle."""
    index = step_index(steps)
    done: set[str] = set()
    for root in steps:
        if root.id in done:
            continue
        path: list[str] = [root.id]
        on_path: set[str] = {root.id}
        pending = [iter(root.dependencies)]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if dep in on_path:
                cycle = [*path[path.index(dep) :], dep]
                raise ValidationError(
                    f"{field}[{index[path[-1]]}].dependencies",
                    f"dependency cycle: {' -> '.join(cycle)}",
                )
            if dep in done:
                continue
            path.append(dep)
            on_path.add(dep)
            pending.append(iter(steps[index[dep]].dependencies))


def validate_state(state: WorkflowState, field: str = "state") -> None:
    """Require the invariants of a state whose field types msgspec has already checked.

    Ids valid (:func:`~wfstate.ids.validate_id`); steps as :func:`validate_steps`;
    ``current_step`` None or a step of the workflow; timestamps finite;
    ``agents`` keyed by their own ``agent_id``; ``outputs`` keyed by steps of the workflow, each
    version naming that step, versions strictly increasing; ``data``/``user_data`` JSON-like.
    Errors name the path below ``field``. ``progress`` is not checked against the steps.
    """
    meta = state.metadata
    validate_time(meta.created_at, f"{field}.metadata.created_at")
    validate_time(meta.updated_at, f"{field}.metadata.updated_at")
    wf = state.workflow
    at = f"{field}.workflow"
    validate_id(wf.id, f"{at}.id")
    validate_steps(wf.steps, f"{at}.steps")
    steps = step_index(wf.steps)
    if wf.current_step is not None and wf.current_step not in steps:
        raise ValidationError(f"{at}.current_step", f"{wf.current_step!r} is not a step")
    validate_time(wf.start_time, f"{at}.start_time", optional=True)
    validate_time(wf.end_time, f"{at}.end_time", optional=True)
    for key, agent in state.agents.items():
        here = f"{field}.agents[{key!r}]"
        validate_id(key, here)
        if agent.agent_id != key:
            raise ValidationError(f"{here}.agent_id", f"{agent.agent_id!r} is not its key")
        validate_time(agent.updated_at, f"{here}.updated_at")
        validate_json(agent.data, f"{here}.data")
    for key, versions in state.outputs.items():
        here = f"{field}.outputs[{key!r}]"
        if key not in steps:
            raise ValidationError(here, f"{key!r} is not a step")
        previous = 0
        for i, output in enumerate(versions):
            item = f"{here}[{i}]"
            if output.step_id != key:
                raise ValidationError(f"{item}.step_id", f"{output.step_id!r} is not its key")
            if output.version <= previous:
                raise ValidationError(
                    f"{item}.version", f"version {output.version} does not follow {previous}"
                )
            previous = output.version
            if output.agent_id is not None:
                validate_id(output.agent_id, f"{item}.agent_id")
            validate_time(output.created_at, f"{item}.created_at")
            validate_json(output.data, f"{item}.data")
    context = state.context
    if context.session_id is not None:
        validate_id(context.session_id, f"{field}.context.session_id")
    validate_json(context.user_data, f"{field}.context.user_data")
