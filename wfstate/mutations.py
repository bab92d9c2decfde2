"""Mutations of workflow state: a tagged union of frozen Structs and a pure ``apply``.

Every change to a workflow is one of the mutations below, written to the log as MessagePack
(a batch is a versioned document holding an array; each mutation a map whose ``op`` field names
its type; docs/format.md §5.1) and then applied.
Each carries the ``workflow_id`` it changes and ``at``, the time the store stamped on it at
commit, so :func:`apply` reads no clock and replaying the log rebuilds exactly the states that
were served. The schema-evolution rules of :mod:`wfstate.model` apply to these Structs too.

Determinism
    :func:`apply` first normalizes a mutation by encoding and decoding it, so it applies the
    very value a replay of the log decodes: ints in float fields become floats, tuples inside
    JSON data become lists, other types msgspec encodes (datetime, UUID, set, ...) become their
    encoded form, and every declared type and range is checked. The result depends only on
    the prior state and the mutation.

Validation (every failure raises before anything is produced)
    - ids: :func:`wfstate.ids.validate_id`; ``at`` and timestamps: finite numbers; JSON data
      (outputs, agent data, user data): :func:`wfstate.model.validate_json`.
    - ``CreateWorkflow`` on an existing workflow: ValidationError at ``workflow_id``
      ("already exists"); any other mutation on an absent workflow: NotFoundError.
    - steps: unique ids, dependencies naming steps of the same workflow, no cycles,
      ``max_retries >= 0``; new steps must be fresh (pending, no attempts, times or error).
    - an unknown ``step_id``: ValidationError at ``step_id``.
    - an illegal transition: ValidationError at ``status``, "from X to Y".

Step status transitions (``SetStepStatus``)::

    pending   -> running | skipped
    running   -> completed | failed
    failed    -> running (retry) | pending (re-queue; attempts are kept)
    completed -> (terminal)
    skipped   -> (terminal)

    Entering running requires attempts <= max_retries (attempts counted before this one), so a
    step runs at most 1 + max_retries times whatever path leads back to running; it increments
    attempts, sets started_at and clears ended_at. completed, failed and skipped set ended_at;
    pending clears started_at and ended_at. Dependencies and the workflow's status are not
    checked: scheduling is the orchestrator's decision.

Workflow status transitions (``SetWorkflowStatus``)::

    idle      -> running
    running   -> paused | completed | failed
    paused    -> running | failed
    failed    -> running (retry)
    completed -> (terminal)

    running sets start_time if unset and clears end_time; completed and failed set end_time.

Derived fields, kept up to date by every mutation
    ``progress`` = 100 × (completed + skipped steps) / steps (0 without steps);
    ``current_step`` = the step most recently set running; when it leaves running, the running
    step with the latest ``started_at`` (the last in step order on a tie), or None;
    ``metadata.version`` += 1 and ``metadata.updated_at`` = ``at`` (``created_at`` = ``at`` and
    ``version`` = 1 on creation); ``metadata.last_lsn`` is left for the engine to set.

The ``error`` of a status change replaces the recorded error (None clears it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, TypeAlias

import msgspec
from msgspec.structs import replace

from wfstate.errors import NotFoundError, ValidationError
from wfstate.ids import validate_id
from wfstate.model import (
    SCHEMA_VERSION,
    AgentState,
    JSONValue,
    StateMetadata,
    StepOutput,
    StepStatus,
    Workflow,
    WorkflowContext,
    WorkflowState,
    WorkflowStatus,
    WorkflowStep,
    compute_progress,
    split_msgspec_error,
    step_index,
    validate_json,
    validate_state,
    validate_steps,
    validate_time,
)
from wfstate.schema import BATCH_UPGRADES, SchemaUpgrades

STEP_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "pending": frozenset({"running", "skipped"}),
    "running": frozenset({"completed", "failed"}),
    "failed": frozenset({"running", "pending"}),
    "completed": frozenset(),
    "skipped": frozenset(),
}
"""Step status → the statuses ``SetStepStatus`` may move it to."""

WORKFLOW_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "idle": frozenset({"running"}),
    "running": frozenset({"paused", "completed", "failed"}),
    "paused": frozenset({"running", "failed"}),
    "failed": frozenset({"running"}),
    "completed": frozenset(),
}
"""Workflow status → the statuses ``SetWorkflowStatus`` may move it to."""


class _Mutation(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="op",
    forbid_unknown_fields=False,
    omit_defaults=True,
):
    """Fields of every mutation: the workflow it changes and the commit time."""

    workflow_id: str
    at: float


class CreateWorkflow(_Mutation, frozen=True, kw_only=True, tag="create_workflow"):
    """Create workflow ``workflow_id`` (status idle) with fresh ``steps`` and ``context``."""

    name: str
    steps: tuple[WorkflowStep, ...] = ()
    context: WorkflowContext | None = None


class SetWorkflowStatus(_Mutation, frozen=True, kw_only=True, tag="set_workflow_status"):
    """Move the workflow to ``status`` and record ``error``."""

    status: WorkflowStatus
    error: str | None = None


class SetStepStatus(_Mutation, frozen=True, kw_only=True, tag="set_step_status"):
    """Move step ``step_id`` to ``status`` and record ``error``.

    A non-None ``output`` is also appended as the step's next output version, attributed to
    the step's ``agent_id``.
    """

    step_id: str
    status: StepStatus
    error: str | None = None
    output: JSONValue = None


class PutStepOutput(_Mutation, frozen=True, kw_only=True, tag="put_step_output"):
    """Append ``data`` as the next output version of step ``step_id`` (1 for the first)."""

    step_id: str
    data: JSONValue
    agent_id: str | None = None


class SetAgentState(_Mutation, frozen=True, kw_only=True, tag="set_agent_state"):
    """Set (create or overwrite) the state of agent ``agent_id``."""

    agent_id: str
    status: str
    data: dict[str, Any] = {}


class UpdateContext(_Mutation, frozen=True, kw_only=True, tag="update_context"):
    """Merge into the workflow's context; a None argument leaves that part unchanged.

    The keys of ``environment`` and ``user_data`` are set one by one (other keys are kept);
    ``session_id`` replaces the session id.
    """

    environment: dict[str, str] | None = None
    user_data: dict[str, Any] | None = None
    session_id: str | None = None


class ReplaceState(_Mutation, frozen=True, kw_only=True, tag="replace_state"):
    """Replace the whole state of an existing workflow with ``state``.

    ``state.workflow.id`` must equal ``workflow_id``. ``state.metadata`` is ignored but for
    ``schema_version``, which must be :data:`~wfstate.model.SCHEMA_VERSION`: the state is
    logged inside the batch document and takes its version (docs/format.md §5.1 rule 7), so a
    state of another version must be upgraded before it is stored. The new state continues the
    replaced one's metadata (``created_at``, ``version`` + 1, ...), and its ``progress`` is
    recomputed from its steps.
    """

    state: WorkflowState


class DeleteWorkflow(_Mutation, frozen=True, kw_only=True, tag="delete_workflow"):
    """Delete the workflow; its state becomes None (absent)."""


Mutation: TypeAlias = (
    CreateWorkflow
    | SetWorkflowStatus
    | SetStepStatus
    | PutStepOutput
    | SetAgentState
    | UpdateContext
    | ReplaceState
    | DeleteWorkflow
)
MUTATION_TYPES: Final = (
    CreateWorkflow,
    SetWorkflowStatus,
    SetStepStatus,
    PutStepOutput,
    SetAgentState,
    UpdateContext,
    ReplaceState,
    DeleteWorkflow,
)

# -- encoding ---------------------------------------------------------------------------------


class _BatchDocument(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The batch document as written: ``v`` (schema version) first, then ``m`` (the body),
    then, for a batch written in a session only, ``s`` (its id) and ``t`` (the owner's
    fencing token) (docs/format.md §5.1, §11.2)."""

    v: int
    m: list[Mutation]
    s: str | None = None
    t: int | None = None


class _Owner(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    s: str | None = None
    t: int | None = None


_OWNER_DECODER: Final = msgspec.msgpack.Decoder(_Owner)


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The part of a batch document fixed across schema versions; ``m`` is left undecoded.

    An absent ``m`` decodes as the empty ``Raw`` (no MessagePack value is zero bytes long), so
    that a newer version is refused by its ``v`` whatever else its map holds.
    """

    v: Annotated[int, msgspec.Meta(ge=0)]
    m: msgspec.Raw = msgspec.Raw()


_LOG_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_PLAIN_ENCODER: Final = msgspec.msgpack.Encoder()
_ENVELOPE_DECODER: Final = msgspec.msgpack.Decoder(_Envelope)
_BATCH_DECODER: Final = msgspec.msgpack.Decoder(list[Mutation])
_DECODERS: Final[dict[type[Any], msgspec.msgpack.Decoder[Any]]] = {
    cls: msgspec.msgpack.Decoder(cls) for cls in MUTATION_TYPES
}


def encode_mutations(batch: Sequence[Mutation], *, session: tuple[str, int] | None = None) -> bytes:
    """The batch document of ``batch`` (docs/format.md §5.1), version :data:`SCHEMA_VERSION`;
    with ``session`` (id, fencing token) it also carries the keys ``s`` and ``t``.

    A MessagePack map ``{"v": SCHEMA_VERSION, "m": [tagged mutation maps]}``, dict keys in the
    mutations sorted. Raises ValidationError before producing anything: at
    ``mutations[i].state.metadata.schema_version`` when a ``ReplaceState`` embeds a state of
    another schema version (the document would be refused on load), and at ``mutations`` when
    a mutation holds a value MessagePack cannot carry.
    """
    mutations = list(batch)
    _check_embedded_versions(mutations, SCHEMA_VERSION)
    try:
        if session is None:
            return _LOG_ENCODER.encode(_BatchDocument(v=SCHEMA_VERSION, m=mutations))
        return _LOG_ENCODER.encode(
            _BatchDocument(v=SCHEMA_VERSION, m=mutations, s=session[0], t=session[1])
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("mutations", f"cannot be encoded: {exc}") from exc


def decode_mutations(data: bytes, *, upgrades: SchemaUpgrades = BATCH_UPGRADES) -> list[Mutation]:
    """The batch of the batch document ``data``, upgraded to the current schema and checked.

    The reading rule of docs/format.md §5.1, in order: the version ``v`` is read first; a
    version newer than :data:`SCHEMA_VERSION`, or older than ``upgrades.oldest``, raises
    :class:`~wfstate.errors.SchemaVersionError` naming it and the newest supported version
    (nothing else of the document is decoded). An older body is decoded to plain data and
    carried forward by ``upgrades`` (:mod:`wfstate.schema`); then every field's type and range
    is checked, and every embedded state must name the current schema version.

    ``upgrades`` defaults to the chain wfstate ships; one of its own (tests, or a store opened
    with a custom chain) must end at :data:`SCHEMA_VERSION`, else ValidationError("upgrades").
    Malformed bytes, a missing ``m``, an unknown ``op`` or a wrong type raise
    ValidationError("mutations", ...) with msgspec's path in the body (e.g. "at
    `$[2].step_id`"); a mismatched embedded state raises it at
    ``mutations[i].state.metadata.schema_version``. Errors of an upgrade propagate unchanged.
    """
    if upgrades.current != SCHEMA_VERSION:
        raise ValidationError(
            "upgrades",
            f"the chain ends at schema version {upgrades.current}, but this code reads version "
            f"{SCHEMA_VERSION}",
        )
    try:
        envelope = _ENVELOPE_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise ValidationError("mutations", f"not a batch document: {exc}") from exc
    version = envelope.v
    upgrades.check(version, field="mutations")
    if not envelope.m:
        raise ValidationError("mutations", "the batch document has no `m`")
    if version == SCHEMA_VERSION:
        body: bytes | msgspec.Raw = envelope.m
        context = ""
    else:
        try:
            old = msgspec.msgpack.decode(envelope.m)
        except msgspec.MsgspecError as exc:
            raise ValidationError("mutations", str(exc)) from exc
        new = upgrades.upgrade(old, version, field="mutations")
        context = f"after the upgrade from schema version {version}: "
        try:
            body = _LOG_ENCODER.encode(new)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValidationError("mutations", f"{context}cannot be encoded: {exc}") from exc
    try:
        batch = _BATCH_DECODER.decode(body)
    except msgspec.MsgspecError as exc:
        raise ValidationError("mutations", f"{context}{exc}") from exc
    _check_embedded_versions(batch, SCHEMA_VERSION)
    return batch


class _Target(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    op: str
    workflow_id: str


class _TargetDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    v: int
    m: list[_Target]


_TARGETS_DECODER: Final = msgspec.msgpack.Decoder(_TargetDocument)
CREATE_OP: Final = "create_workflow"
DELETE_OP: Final = "delete_workflow"
REPLACE_OP: Final = "replace_state"
"""The ``op`` tags of :class:`CreateWorkflow`, :class:`DeleteWorkflow`, :class:`ReplaceState`."""
assert CreateWorkflow.__struct_config__.tag == CREATE_OP
assert DeleteWorkflow.__struct_config__.tag == DELETE_OP
assert ReplaceState.__struct_config__.tag == REPLACE_OP


def batch_targets(
    data: bytes, *, upgrades: SchemaUpgrades = BATCH_UPGRADES
) -> list[tuple[str, str]]:
    """``(op, workflow_id)`` of each mutation of a logged batch document, in order.

    What a store needs to know which workflows a batch touched, at a fraction of the cost of
    :func:`decode_mutations` (the rest of each mutation is skipped, not built). For a document
    of another schema version this is :func:`decode_mutations` (with its errors) reduced.
    """
    try:
        document = _TARGETS_DECODER.decode(data)
    except msgspec.MsgspecError:
        document = None
    if document is None or document.v != SCHEMA_VERSION:
        return mutation_targets(decode_mutations(data, upgrades=upgrades))
    return [(t.op, t.workflow_id) for t in document.m]


def batch_session(data: bytes) -> tuple[str, int] | None:
    """The session id and fencing token a batch document carries (keys ``s``, ``t``, fixed for
    every schema version), or None for a batch of no session. ``ValidationError`` at
    ``mutations`` when only one of them is there or either has the wrong type."""
    try:
        owner = _OWNER_DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        raise ValidationError("mutations", f"not a batch document: {exc}") from exc
    if owner.s is None and owner.t is None:
        return None
    if owner.s is None or owner.t is None or isinstance(owner.t, bool):
        raise ValidationError("mutations", "a batch document needs both `s` and `t`, or neither")
    return owner.s, owner.t


def mutation_targets(batch: Sequence[Mutation]) -> list[tuple[str, str]]:
    """``(op, workflow_id)`` of each mutation of ``batch``, in order (as :func:`batch_targets`
    reads them from a logged document)."""
    return [(type(m).__struct_config__.tag, m.workflow_id) for m in batch]  # type: ignore[misc]


def _check_embedded_versions(batch: Sequence[object], version: int) -> None:
    """Every state a ``ReplaceState`` of ``batch`` embeds must name schema ``version``."""
    for i, m in enumerate(batch):
        if not isinstance(m, ReplaceState):
            continue
        found = getattr(getattr(m.state, "metadata", None), "schema_version", None)
        if found != version:
            raise ValidationError(
                f"mutations[{i}].state.metadata.schema_version",
                f"schema version {found!r} is not the batch document's version {version}",
            )


# -- validation -------------------------------------------------------------------------------


def validate(state: WorkflowState | None, m: Mutation, *, field: str = "mutation") -> None:
    """Raise if ``m`` cannot be applied to ``state`` (None: the workflow is absent).

    ValidationError names the offending field below ``field`` (``mutation.step_id``,
    ``mutations[2].steps[0].dependencies``, ...); NotFoundError means the workflow is absent.
    """
    _check(state, m, field)


def apply(state: WorkflowState | None, m: Mutation) -> WorkflowState | None:
    """The state after applying ``m`` to ``state``; None when the workflow is deleted.

    Validates first (as :func:`validate` with ``field="mutation"``) and raises before producing
    anything. ``state`` and ``m`` are never modified.
    """
    return _apply_checked(state, _check(state, m, "mutation"))


def apply_batch(
    states: Mapping[str, WorkflowState | None], batch: Sequence[Mutation]
) -> dict[str, WorkflowState | None]:
    """Apply ``batch`` in order, all or nothing.

    ``states`` maps workflow id → current state (a missing id is an absent workflow). Each
    mutation sees the results of the earlier ones. Returns the final state of every workflow
    the batch names (None = absent or deleted), keyed by id; ``states`` is not modified. The
    first invalid mutation raises (fields prefixed ``mutations[i]``) and nothing is returned.
    """
    result: dict[str, WorkflowState | None] = {}
    for i, m in enumerate(batch):
        field = f"mutations[{i}]"
        _check_type(m, field)
        workflow_id = validate_id(m.workflow_id, f"{field}.workflow_id")
        prior = result[workflow_id] if workflow_id in result else states.get(workflow_id)
        result[workflow_id] = _apply_checked(prior, _check(prior, m, field))
    return result


def replay_batch(
    states: Mapping[str, WorkflowState | None], batch: Sequence[Mutation]
) -> dict[str, WorkflowState | None]:
    """Apply a batch read back from the log, as :func:`apply_batch` but without validating.

    A logged batch was validated against exactly these states when it was committed, and its
    bytes are checksummed, so checking it again would only cost time (it is most of the cost of
    opening a store). What cannot be applied at all (a workflow that is absent, a step that does
    not exist) raises ``NotFoundError``/``ValidationError``, which a store reports as corruption.
    """
    replay = Replay(states)
    replay.apply(batch)
    return replay.result()


class Replay:
    """Logged batches applied in order, without validating (as :func:`replay_batch`), to
    states that start as ``states``; :meth:`result` is as :func:`replay_batch` of all of
    them concatenated.

    Rebuilding a workflow from its log is thousands of one-mutation batches, most of them
    ``PutStepOutput``; applied one state at a time, each copies the whole ``outputs`` dict, a
    cost quadratic in the number of steps. Here a state's ``outputs`` is copied once, on its
    first change, and the copy is then extended in place: it belongs to this replay alone
    until :meth:`result` hands it out. States given or returned are never changed.
    """

    def __init__(self, states: Mapping[str, WorkflowState | None]) -> None:
        self._states = states
        self._result: dict[str, WorkflowState | None] = {}
        self._owned: dict[str, dict[str, tuple[StepOutput, ...]]] = {}  # outputs built here

    def apply(self, batch: Sequence[Mutation]) -> None:
        """Apply ``batch`` (errors as :func:`replay_batch`, with indexes within ``batch``;
        after one, this replay must not be used further)."""
        result, owned = self._result, self._owned
        for i, m in enumerate(batch):
            workflow_id = m.workflow_id
            prior = result[workflow_id] if workflow_id in result else self._states.get(workflow_id)
            if prior is None and not isinstance(m, CreateWorkflow):
                raise NotFoundError(f"mutations[{i}].workflow_id: no workflow {workflow_id!r}")
            mine = owned.get(workflow_id)
            if type(m) is PutStepOutput and prior is not None and prior.outputs is mine:
                result[workflow_id] = _put_output_in_place(prior, m, mine)
                continue
            try:
                state = result[workflow_id] = _apply_checked(prior, m)
            except KeyError as exc:
                raise ValidationError(f"mutations[{i}].step_id", f"unknown step {exc}") from exc
            if (
                state is not None
                and prior is not None
                and state.outputs is not prior.outputs
                and not isinstance(m, ReplaceState)
            ):  # a copy _append_output made: this replay's own
                owned[workflow_id] = state.outputs
            elif state is None or state.outputs is not mine:
                owned.pop(workflow_id, None)

    def result(self) -> dict[str, WorkflowState | None]:
        """The final state of every workflow the batches named (None: absent or deleted),
        keyed by id. The states are handed out: later batches copy their outputs again."""
        self._owned.clear()
        return dict(self._result)


def _put_output_in_place(
    state: WorkflowState, n: PutStepOutput, outputs: dict[str, tuple[StepOutput, ...]]
) -> WorkflowState:
    """:func:`_apply_checked` of ``PutStepOutput`` ``n`` extending ``outputs`` (which is
    ``state.outputs`` and owned by the caller's replay) in place of a copy."""
    versions = outputs.get(n.step_id, ())
    version = versions[-1].version + 1 if versions else 1
    outputs[n.step_id] = (
        *versions,
        StepOutput(
            step_id=n.step_id, version=version, agent_id=n.agent_id, data=n.data, created_at=n.at
        ),
    )
    metadata = replace(state.metadata, version=state.metadata.version + 1, updated_at=n.at)
    return replace(state, metadata=metadata)


def _check_type(m: object, field: str) -> None:
    if type(m) not in _DECODERS:
        raise ValidationError(field, f"must be a mutation, not {type(m).__name__}")


def _normalize(m: Mutation, field: str) -> Mutation:
    """``m`` as a log replay decodes it; raises ValidationError naming the bad field."""
    try:
        data = _PLAIN_ENCODER.encode(m)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(field, f"cannot be encoded: {exc}") from exc
    try:
        normalized: Mutation = _DECODERS[type(m)].decode(data)
    except msgspec.ValidationError as exc:
        raise ValidationError(*split_msgspec_error(exc, field)) from exc
    return normalized


def _check(state: WorkflowState | None, m: Mutation, field: str) -> Mutation:
    """Validate ``m`` against ``state``; return the normalized mutation to apply."""
    _check_type(m, field)
    validate_id(m.workflow_id, f"{field}.workflow_id")
    n = _normalize(m, field)
    validate_time(n.at, f"{field}.at")
    if isinstance(n, CreateWorkflow):
        if state is not None:
            raise ValidationError(f"{field}.workflow_id", f"{n.workflow_id!r} already exists")
        _check_create(n, field)
        return n
    if state is None:
        raise NotFoundError(f"{field}.workflow_id: no workflow {n.workflow_id!r}")
    if state.workflow.id != n.workflow_id:
        raise ValidationError(
            f"{field}.workflow_id",
            f"names {n.workflow_id!r} but the state is of workflow {state.workflow.id!r}",
        )
    match n:
        case SetWorkflowStatus():
            old = state.workflow.status
            if n.status not in WORKFLOW_TRANSITIONS[old]:
                raise ValidationError(
                    f"{field}.status", f"illegal transition from {old} to {n.status}"
                )
        case SetStepStatus():
            step = _find_step(state, n.step_id, field)
            if n.status not in STEP_TRANSITIONS[step.status]:
                raise ValidationError(
                    f"{field}.status", f"illegal transition from {step.status} to {n.status}"
                )
            if n.status == "running" and step.attempts > step.max_retries:
                raise ValidationError(
                    f"{field}.status",
                    f"illegal transition from {step.status} to running: {step.attempts} attempts "
                    f"used and max_retries is {step.max_retries}",
                )
            if n.output is not None:
                validate_json(n.output, f"{field}.output")
        case PutStepOutput():
            _find_step(state, n.step_id, field)
            if n.agent_id is not None:
                validate_id(n.agent_id, f"{field}.agent_id")
            validate_json(n.data, f"{field}.data")
        case SetAgentState():
            validate_id(n.agent_id, f"{field}.agent_id")
            validate_json(n.data, f"{field}.data")
        case UpdateContext():
            if n.session_id is not None:
                validate_id(n.session_id, f"{field}.session_id")
            if n.user_data is not None:
                validate_json(n.user_data, f"{field}.user_data")
        case ReplaceState():
            if n.state.workflow.id != n.workflow_id:
                raise ValidationError(
                    f"{field}.state.workflow.id",
                    f"{n.state.workflow.id!r} is not the mutation's workflow {n.workflow_id!r}",
                )
            if n.state.metadata.schema_version != SCHEMA_VERSION:
                raise ValidationError(
                    f"{field}.state.metadata.schema_version",
                    f"schema version {n.state.metadata.schema_version} is not the current "
                    f"version {SCHEMA_VERSION}; upgrade the state first",
                )
            validate_state(n.state, f"{field}.state")
        case DeleteWorkflow():
            pass
    return n


_FRESH_STEP: Final = WorkflowStep(id="-", name="-")
_RUN_FIELDS: Final = ("status", "attempts", "started_at", "ended_at", "error")


def _check_create(n: CreateWorkflow, field: str) -> None:
    validate_steps(n.steps, f"{field}.steps")
    for i, step in enumerate(n.steps):
        for name in _RUN_FIELDS:
            if getattr(step, name) != getattr(_FRESH_STEP, name):
                raise ValidationError(
                    f"{field}.steps[{i}].{name}",
                    f"a new step must have {name}={getattr(_FRESH_STEP, name)!r}",
                )
    if n.context is not None:
        if n.context.session_id is not None:
            validate_id(n.context.session_id, f"{field}.context.session_id")
        validate_json(n.context.user_data, f"{field}.context.user_data")


def _find_step(state: WorkflowState, step_id: str, field: str) -> WorkflowStep:
    validate_id(step_id, f"{field}.step_id")
    for step in state.workflow.steps:
        if step.id == step_id:
            return step
    raise ValidationError(
        f"{field}.step_id", f"no step {step_id!r} in workflow {state.workflow.id!r}"
    )


# -- application ------------------------------------------------------------------------------


def _apply_checked(state: WorkflowState | None, n: Mutation) -> WorkflowState | None:
    """Apply the normalized, validated mutation ``n``."""
    at = n.at
    if isinstance(n, CreateWorkflow):
        return WorkflowState(
            metadata=StateMetadata(
                schema_version=SCHEMA_VERSION, created_at=at, updated_at=at, version=1
            ),
            workflow=Workflow(
                id=n.workflow_id, name=n.name, steps=n.steps, progress=compute_progress(n.steps)
            ),
            context=n.context if n.context is not None else WorkflowContext(),
        )
    assert state is not None  # _check raised NotFoundError otherwise
    metadata = replace(state.metadata, version=state.metadata.version + 1, updated_at=at)
    match n:
        case SetWorkflowStatus():
            return _set_workflow_status(state, n, metadata)
        case SetStepStatus():
            return _set_step_status(state, n, metadata)
        case PutStepOutput():
            outputs = _append_output(state.outputs, n.step_id, n.agent_id, n.data, at)
            return replace(state, metadata=metadata, outputs=outputs)
        case SetAgentState():
            agent = AgentState(agent_id=n.agent_id, status=n.status, data=n.data, updated_at=at)
            return replace(state, metadata=metadata, agents={**state.agents, n.agent_id: agent})
        case UpdateContext():
            context = state.context
            if n.environment is not None:
                context = replace(context, environment={**context.environment, **n.environment})
            if n.user_data is not None:
                context = replace(context, user_data={**context.user_data, **n.user_data})
            if n.session_id is not None:
                context = replace(context, session_id=n.session_id)
            return replace(state, metadata=metadata, context=context)
        case ReplaceState():
            new = n.state
            workflow = replace(new.workflow, progress=compute_progress(new.workflow.steps))
            return replace(
                new, metadata=replace(metadata, schema_version=SCHEMA_VERSION), workflow=workflow
            )
        case DeleteWorkflow():
            return None
    raise AssertionError(f"unhandled mutation {type(n).__name__}")  # pragma: no cover


def _set_workflow_status(
    state: WorkflowState, n: SetWorkflowStatus, metadata: StateMetadata
) -> WorkflowState:
    wf = state.workflow
    performance = state.performance
    if n.status == "running":
        start = wf.start_time if wf.start_time is not None else n.at
        wf = replace(wf, status="running", error=n.error, start_time=start, end_time=None)
        performance = replace(performance, total_duration=None)
    elif n.status in ("completed", "failed"):
        wf = replace(wf, status=n.status, error=n.error, end_time=n.at)
        total = n.at - wf.start_time if wf.start_time is not None else None
        performance = replace(performance, total_duration=total)
    else:
        wf = replace(wf, status=n.status, error=n.error)
    return replace(state, metadata=metadata, workflow=wf, performance=performance)


def _set_step_status(
    state: WorkflowState, n: SetStepStatus, metadata: StateMetadata
) -> WorkflowState:
    wf = state.workflow
    performance = state.performance
    index = step_index(wf.steps)[n.step_id]
    step = wf.steps[index]
    if n.status == "running":
        new_step = replace(
            step,
            status="running",
            attempts=step.attempts + 1,
            started_at=n.at,
            ended_at=None,
            error=n.error,
        )
        if step.attempts > 0:
            performance = replace(performance, retries=performance.retries + 1)
    elif n.status == "pending":
        new_step = replace(step, status="pending", started_at=None, ended_at=None, error=n.error)
    else:
        new_step = replace(step, status=n.status, ended_at=n.at, error=n.error)
        if n.status in ("completed", "failed") and step.started_at is not None:
            durations = {**performance.step_durations, n.step_id: n.at - step.started_at}
            performance = replace(performance, step_durations=durations)
    steps = (*wf.steps[:index], new_step, *wf.steps[index + 1 :])
    current = wf.current_step
    if n.status == "running":
        current = n.step_id
    elif current == n.step_id:
        current = _latest_running(steps)
    wf = replace(wf, steps=steps, current_step=current, progress=compute_progress(steps))
    outputs = state.outputs
    if n.output is not None:
        outputs = _append_output(outputs, n.step_id, step.agent_id, n.output, n.at)
    return replace(state, metadata=metadata, workflow=wf, performance=performance, outputs=outputs)


def _latest_running(steps: Sequence[WorkflowStep]) -> str | None:
    """The running step with the latest ``started_at`` (last in order on a tie), or None."""
    best: WorkflowStep | None = None
    for step in steps:
        if step.status != "running":
            continue
        if best is None or (step.started_at or 0.0) >= (best.started_at or 0.0):
            best = step
    return best.id if best is not None else None


def _append_output(
    outputs: dict[str, tuple[StepOutput, ...]],
    step_id: str,
    agent_id: str | None,
    data: JSONValue,
    at: float,
) -> dict[str, tuple[StepOutput, ...]]:
    versions = outputs.get(step_id, ())
    version = versions[-1].version + 1 if versions else 1
    output = StepOutput(
        step_id=step_id, version=version, agent_id=agent_id, data=data, created_at=at
    )
    return {**outputs, step_id: (*versions, output)}
