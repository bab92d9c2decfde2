"""The delta of an incremental checkpoint: a child state described from its parent state.

This module is docs/format.md §9.2 in code. It is pure: no I/O, no clock.

The delta
    :class:`StateDelta` carries, by key, what the child state has that the parent does not:
    always the child's ``metadata`` and its ``workflow`` without steps; the other keys only when
    that part of the state changed (steps new or differing by id, the step order when the
    order or the set of ids differs, agents and outputs set or removed by key, the whole
    ``context`` or ``performance`` when they differ).

Computing (:func:`compute_delta`)
    States share unchanged sub-objects (mutations build a new state with
    ``msgspec.structs.replace``), so each part is compared by identity first and only parts
    that are not the same object are compared by value. A child a few mutations away from
    its parent costs one pointer compare per step, agent and output key, and the delta holds
    only what changed. Value comparison is exact for the canonical encoding: two parts that
    ``==`` calls equal but that encode differently (``1``, ``1.0`` and ``True`` in JSON data
    compare equal in Python) count as changed, so the applied delta encodes, and checksums,
    exactly like the child.

Applying (:func:`apply_delta`)
    ``apply_delta(parent, compute_delta(parent, child))`` equals ``child`` and has its
    :func:`~wfstate.model.state_checksum`. A delta that cannot describe a child of ``parent``
    (docs/format.md §9.2: it names a step id absent from both the parent and ``steps``, or
    removes an absent key) raises :class:`~wfstate.errors.ValidationError` naming the field of
    the delta, and a result that breaks an invariant of :func:`~wfstate.model.validate_state`
    raises it naming the field of the state. The parent must be a valid state (every state
    :func:`~wfstate.model.decode_state`, :func:`apply_delta` or a mutation returns is): only
    what the delta brings in, and the invariants that span the whole state (steps, their
    dependencies, ``current_step``, output keys), are checked again.

Encoding
    :func:`encode_delta` writes MessagePack as :func:`~wfstate.model.encode_state` does: dict
    keys sorted, fields equal to their default (and absent keys) omitted; the delta's own keys
    are declared, and so written, in sorted order. :func:`decode_delta` checks every field's
    type and range and the rules a delta obeys on its own (:func:`check_delta`); the rules
    relative to a parent are checked by :func:`apply_delta`. The schema version is the one of
    the document holding the delta (a checkpoint payload's ``v``): the delta's
    ``metadata.schema_version`` must be :data:`~wfstate.model.SCHEMA_VERSION`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeVar

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import replace

from wfstate.errors import ValidationError
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
    split_msgspec_error,
    validate_state,
)

__all__ = [
    "StateDelta",
    "apply_delta",
    "check_delta",
    "compute_delta",
    "decode_delta",
    "encode_delta",
]

_V = TypeVar("_V")


class StateDelta(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=False,
    omit_defaults=True,
):
    """A child state described from its parent (docs/format.md §9.2); fields in sorted order.

    ``metadata`` and ``workflow`` (the child's, with ``steps`` empty) are always present. The
    others are empty (or ``UNSET``) when that part did not change: ``steps``, the child's steps
    that are new or differ from the parent's step of the same id, in the child's order;
    ``step_ids``, the child's step ids in order, set when the order or the set of ids differs
    (an empty tuple is a child without steps); ``agents``/``outputs``, entries new or changed;
    ``agents_removed``/``outputs_removed``, keys the child no longer has, sorted;
    ``context``/``performance``, the child's when they differ.
    """

    agents: dict[str, AgentState] = {}
    agents_removed: tuple[str, ...] = ()
    context: WorkflowContext | UnsetType = UNSET
    metadata: StateMetadata
    outputs: dict[str, tuple[StepOutput, ...]] = {}
    outputs_removed: tuple[str, ...] = ()
    performance: PerformanceMetrics | UnsetType = UNSET
    step_ids: tuple[str, ...] | UnsetType = UNSET
    steps: tuple[WorkflowStep, ...] = ()
    workflow: Workflow


_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_DECODER: Final = msgspec.msgpack.Decoder(StateDelta)
_NO_STEPS: Final[tuple[WorkflowStep, ...]] = ()


# -- computing --------------------------------------------------------------------------------


def _same(old: object, new: object) -> bool:
    """Whether ``new`` encodes exactly like ``old``: identity, else ``==`` and equal bytes.

    ``==`` alone is not enough: Python calls ``1``, ``1.0`` and ``True`` equal, MessagePack
    does not. The encoding is only compared for parts ``==`` calls equal that are not the
    same object: rare between a state and one mutations derived from it (they share the parts
    they leave alone), the common case between states built apart (one read back from disk).
    """
    if old is new:
        return True
    return bool(old == new) and _ENCODER.encode(old) == _ENCODER.encode(new)


def _step_changes(
    old: tuple[WorkflowStep, ...], new: tuple[WorkflowStep, ...]
) -> tuple[tuple[WorkflowStep, ...], tuple[str, ...] | UnsetType]:
    """``(steps, step_ids)`` of the delta from steps ``old`` to steps ``new``."""
    if old is new:
        return _NO_STEPS, UNSET
    if len(old) == len(new):
        changed: list[WorkflowStep] = []
        for before, after in zip(old, new, strict=True):
            if before is after:
                continue
            if before.id != after.id:
                break  # the order differs: handled below
            if not _same(before, after):
                changed.append(after)
        else:
            return tuple(changed), UNSET
    by_id = {step.id: step for step in old}
    changed = [
        step for step in new if (prior := by_id.get(step.id)) is None or not _same(prior, step)
    ]
    ids = tuple(step.id for step in new)
    same_order = len(old) == len(new) and all(
        before.id == sid for before, sid in zip(old, ids, strict=True)
    )
    return tuple(changed), UNSET if same_order else ids


def _map_changes(
    old: Mapping[str, _V], new: Mapping[str, _V]
) -> tuple[dict[str, _V], tuple[str, ...]]:
    """``(set, removed)``: entries of ``new`` new or changed from ``old``; keys it dropped."""
    if old is new:
        return {}, ()
    changed: dict[str, _V] = {}
    added = 0
    for key, value in new.items():
        if key not in old:
            added += 1
            changed[key] = value
        elif not _same(old[key], value):
            changed[key] = value
    if len(old) == len(new) - added:
        return changed, ()  # every key of old is still in new
    return changed, tuple(sorted(key for key in old if key not in new))


def compute_delta(parent: WorkflowState, child: WorkflowState) -> StateDelta:
    """The delta that turns ``parent`` into ``child`` (any two states, related or not).

    Cost: one identity compare per step, agent and output key of the child, plus a value
    compare (and, when equal by value, an encoding) of each part that is not shared with the
    parent. ``context`` and ``performance`` are compared whole (``performance`` changes with
    every finished step, and its ``step_durations`` then travel whole: docs/format.md §9.2).
    """
    steps, step_ids = _step_changes(parent.workflow.steps, child.workflow.steps)
    agents, agents_removed = _map_changes(parent.agents, child.agents)
    outputs, outputs_removed = _map_changes(parent.outputs, child.outputs)
    workflow = child.workflow
    return StateDelta(
        metadata=child.metadata,
        workflow=replace(workflow, steps=_NO_STEPS) if workflow.steps else workflow,
        steps=steps,
        step_ids=step_ids,
        agents=agents,
        agents_removed=agents_removed,
        outputs=outputs,
        outputs_removed=outputs_removed,
        context=UNSET if _same(parent.context, child.context) else child.context,
        performance=UNSET if _same(parent.performance, child.performance) else child.performance,
    )


# -- checking and applying --------------------------------------------------------------------


def _first_repeat(values: Sequence[str]) -> int | None:
    """Index of the first value that occurs earlier in ``values``, or None."""
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            return i
        seen.add(value)
    return None


def check_delta(delta: StateDelta, field: str = "delta") -> None:
    """Require the rules a delta obeys without its parent; ValidationError naming the field.

    ``metadata.schema_version`` is :data:`~wfstate.model.SCHEMA_VERSION`; ``workflow`` has no
    steps (they travel in ``steps``); no step id repeats in ``steps`` or in ``step_ids``; no key
    repeats in a ``*_removed`` array or is both set and removed.
    """
    if delta.metadata.schema_version != SCHEMA_VERSION:
        raise ValidationError(
            f"{field}.metadata.schema_version",
            f"schema version {delta.metadata.schema_version} is not the supported version "
            f"{SCHEMA_VERSION}",
        )
    if delta.workflow.steps:
        raise ValidationError(
            f"{field}.workflow.steps", "the workflow of a delta carries no steps (see `steps`)"
        )
    repeat = _first_repeat([step.id for step in delta.steps])
    if repeat is not None:
        raise ValidationError(
            f"{field}.steps[{repeat}].id", f"step {delta.steps[repeat].id!r} is listed twice"
        )
    if not isinstance(delta.step_ids, UnsetType):
        repeat = _first_repeat(delta.step_ids)
        if repeat is not None:
            raise ValidationError(
                f"{field}.step_ids[{repeat}]", f"step {delta.step_ids[repeat]!r} is listed twice"
            )
    for name, removed, updated in (
        ("agents_removed", delta.agents_removed, delta.agents),
        ("outputs_removed", delta.outputs_removed, delta.outputs),
    ):
        repeat = _first_repeat(removed)
        if repeat is not None:
            raise ValidationError(
                f"{field}.{name}[{repeat}]", f"{removed[repeat]!r} is listed twice"
            )
        for i, key in enumerate(removed):
            if key in updated:
                raise ValidationError(f"{field}.{name}[{i}]", f"{key!r} is both set and removed")


def _apply_steps(
    parent: tuple[WorkflowStep, ...], delta: StateDelta, field: str
) -> tuple[WorkflowStep, ...]:
    """The child's steps: ``parent``'s order (or ``step_ids``), ``delta.steps`` replacing by id."""
    changed = {step.id: step for step in delta.steps}
    order = delta.step_ids
    if isinstance(order, UnsetType):
        if not changed:
            return parent
        result: list[WorkflowStep] = []
        replaced = 0
        for step in parent:
            new = changed.get(step.id)
            if new is None:
                result.append(step)
            else:
                result.append(new)
                replaced += 1
        if replaced != len(changed):
            known = {step.id for step in parent}
            for i, step in enumerate(delta.steps):
                if step.id not in known:
                    raise ValidationError(
                        f"{field}.steps[{i}].id",
                        f"step {step.id!r} is not a step of the parent, and `step_ids` is absent",
                    )
        return tuple(result)
    by_id = {step.id: step for step in parent}
    steps: list[WorkflowStep] = []
    for i, sid in enumerate(order):
        found = changed.get(sid)
        if found is None:
            found = by_id.get(sid)
            if found is None:
                raise ValidationError(
                    f"{field}.step_ids[{i}]",
                    f"step {sid!r} is neither a step of the parent nor in `steps`",
                )
        steps.append(found)
    if changed:
        listed = set(order)
        for i, step in enumerate(delta.steps):
            if step.id not in listed:
                raise ValidationError(
                    f"{field}.steps[{i}].id", f"step {step.id!r} is not in `step_ids`"
                )
    return tuple(steps)


def _apply_map(
    parent: dict[str, _V], updated: dict[str, _V], removed: tuple[str, ...], field: str
) -> dict[str, _V]:
    """``parent`` without the ``removed`` keys (each must be there), with ``updated`` set."""
    if not updated and not removed:
        return parent
    result = dict(parent)
    for i, key in enumerate(removed):
        if key not in result:
            raise ValidationError(f"{field}[{i}]", f"{key!r} is not in the parent")
        del result[key]
    result.update(updated)
    return result


def apply_delta(parent: WorkflowState, delta: StateDelta) -> WorkflowState:
    """The child state ``delta`` describes from ``parent`` (a valid state).

    Parts the delta leaves out are ``parent``'s own objects, shared. Raises ValidationError:
    at ``delta.<field>`` for a delta that breaks :func:`check_delta` or cannot apply to
    ``parent`` (a step id in ``step_ids`` in neither the parent nor ``steps``; a step of
    ``steps`` missing from ``step_ids``, or, without ``step_ids``, not a step of the parent; a
    removed key the parent does not have); at ``state.<field>`` for a child that breaks an
    invariant of :func:`~wfstate.model.validate_state`.
    """
    check_delta(delta)
    steps = _apply_steps(parent.workflow.steps, delta, "delta")
    agents = _apply_map(parent.agents, delta.agents, delta.agents_removed, "delta.agents_removed")
    outputs = _apply_map(
        parent.outputs, delta.outputs, delta.outputs_removed, "delta.outputs_removed"
    )
    context = parent.context if isinstance(delta.context, UnsetType) else delta.context
    performance = (
        parent.performance if isinstance(delta.performance, UnsetType) else delta.performance
    )
    child = WorkflowState(
        metadata=delta.metadata,
        workflow=replace(delta.workflow, steps=steps),
        agents=agents,
        outputs=outputs,
        context=context,
        performance=performance,
    )
    _validate_child(child, delta)
    return child


def _validate_child(child: WorkflowState, delta: StateDelta) -> None:
    """:func:`~wfstate.model.validate_state` of ``child``, skipping what the parent held.

    Agents, outputs and the context not in the delta are the parent's, valid in the parent and
    valid alone (each is checked on its own), so they are left out of the state validated;
    steps, ``current_step`` and metadata are checked whole. The one invariant tying an
    unchanged part to a changed one, every output key naming a step, is checked here.
    """
    context = WorkflowContext() if isinstance(delta.context, UnsetType) else delta.context
    validate_state(
        replace(child, agents=delta.agents, outputs=delta.outputs, context=context), "state"
    )
    if not isinstance(delta.step_ids, UnsetType):  # the set of step ids may have changed
        ids = {step.id for step in child.workflow.steps}
        for key in child.outputs:
            if key not in ids:
                raise ValidationError(f"state.outputs[{key!r}]", f"{key!r} is not a step")


# -- encoding ---------------------------------------------------------------------------------


def encode_delta(delta: StateDelta) -> bytes:
    """The MessagePack bytes of ``delta`` (keys sorted, absent and default fields omitted).

    Raises ValidationError("delta", ...) if the delta holds a value MessagePack cannot carry.
    """
    try:
        return _ENCODER.encode(delta)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError("delta", f"cannot be encoded: {exc}") from exc


def decode_delta(data: bytes) -> StateDelta:
    """The delta encoded in ``data``, checked field by field and by :func:`check_delta`.

    Raises ValidationError naming the field: msgspec's path below ``delta`` for malformed bytes
    or a wrong type or range (e.g. ``delta.steps[0].attempts``), else the rule's field.
    """
    try:
        delta = _DECODER.decode(data)
    except msgspec.MsgspecError as exc:
        where, message = split_msgspec_error(exc, "delta")
        raise ValidationError(where, message) from exc
    check_delta(delta)
    return delta
