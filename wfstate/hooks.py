"""Lifecycle events and the registry that delivers them: :class:`Hooks`, :func:`events_for`.

Events are frozen values (msgspec Structs); each class has a ``name`` (``"step_complete"``,
...). :func:`events_for` derives the workflow and step events of one committed batch, so a
caller emits them after the batch is durable: an event never announces a change a crash could
still undo.

Delivery (:meth:`Hooks.emit`) is synchronous, on the emitting thread, to each matching
subscriber in subscription order. A subscriber that raises does not stop the others or reach
the emitter: the exception is logged on ``wfstate.hooks``, counted in :attr:`Hooks.failures`
and handed to the registry's ``on_error``. Only :class:`Exception` is caught;
``KeyboardInterrupt`` and ``SystemExit`` propagate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar, Final

import msgspec

from wfstate.checkpointindex import CheckpointType
from wfstate.errors import ValidationError
from wfstate.mutations import Mutation, SetStepStatus, SetWorkflowStatus
from wfstate.sessions import CrashedSession
from wfstate.wal.reader import LogDamage

LOGGER: Final = logging.getLogger("wfstate.hooks")


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened to the store: ``at`` (seconds since the epoch, the commit time
    for workflow and step events) and the ``workflow_id`` it concerns, if one."""

    name: ClassVar[str]
    at: float
    workflow_id: str | None = None


class WorkflowStarted(Event, frozen=True, kw_only=True):
    """The workflow entered ``running`` (first start, resume from ``paused``, or retry after
    ``failed``), at LSN ``lsn`` when known."""

    name: ClassVar[str] = "workflow_start"
    workflow_id: str
    lsn: int | None = None


class WorkflowCompleted(Event, frozen=True, kw_only=True):
    """The workflow entered ``completed``."""

    name: ClassVar[str] = "workflow_complete"
    workflow_id: str
    lsn: int | None = None


class WorkflowFailed(Event, frozen=True, kw_only=True):
    """The workflow entered ``failed``; ``error`` as recorded."""

    name: ClassVar[str] = "workflow_failed"
    workflow_id: str
    error: str | None = None
    lsn: int | None = None


class StepStarted(Event, frozen=True, kw_only=True):
    """Step ``step_id`` entered ``running`` (a first run or a retry)."""

    name: ClassVar[str] = "step_start"
    workflow_id: str
    step_id: str
    lsn: int | None = None


class StepCompleted(Event, frozen=True, kw_only=True):
    """Step ``step_id`` entered ``completed``."""

    name: ClassVar[str] = "step_complete"
    workflow_id: str
    step_id: str
    lsn: int | None = None


class StepFailed(Event, frozen=True, kw_only=True):
    """Step ``step_id`` entered ``failed``; ``error`` as recorded."""

    name: ClassVar[str] = "step_failed"
    workflow_id: str
    step_id: str
    error: str | None = None
    lsn: int | None = None


class CheckpointCreated(Event, frozen=True, kw_only=True):
    """Checkpoint ``checkpoint_id`` of ``workflow_id``, of ``type``, was committed."""

    name: ClassVar[str] = "checkpoint_created"
    workflow_id: str
    checkpoint_id: str
    type: CheckpointType


class SessionStarted(Event, frozen=True, kw_only=True):
    """Session ``session_id`` started (``resumed``: an existing one was taken over)."""

    name: ClassVar[str] = "session_start"
    session_id: str
    resumed: bool = False


class SessionEnded(Event, frozen=True, kw_only=True):
    """Session ``session_id`` ended; ``workflows`` it wrote."""

    name: ClassVar[str] = "session_end"
    session_id: str
    workflows: tuple[str, ...] = ()


class Recovery(Event, frozen=True, kw_only=True):
    """Opening the store found the traces of a crash: ``damage`` the log's recovery repaired
    (a torn tail, ...) and ``crashed_sessions`` whose owner died."""

    name: ClassVar[str] = "recovery"
    damage: tuple[LogDamage, ...] = ()
    crashed_sessions: tuple[CrashedSession, ...] = ()

    @property
    def summary(self) -> str:
        """One line for a log or an alert."""
        in_doubt = sum(
            len(plan.in_doubt) for crashed in self.crashed_sessions for plan in crashed.workflows
        )
        return (
            f"{len(self.damage)} log repair(s) "
            f"({sum(item.length for item in self.damage)} bytes), "
            f"{len(self.crashed_sessions)} crashed session(s), {in_doubt} step(s) in doubt"
        )


EVENT_TYPES: Final[tuple[type[Event], ...]] = (
    WorkflowStarted,
    WorkflowCompleted,
    WorkflowFailed,
    StepStarted,
    StepCompleted,
    StepFailed,
    CheckpointCreated,
    SessionStarted,
    SessionEnded,
    Recovery,
)
"""Every concrete event class."""

Subscriber = Callable[[Event], None]
ErrorCallback = Callable[[Event, Subscriber, Exception], None]


class _Subscription:
    __slots__ = ("callback", "types")

    def __init__(self, callback: Subscriber, types: tuple[type[Event], ...]) -> None:
        self.callback = callback
        self.types = types


class Hooks:
    """A registry of subscribers to :class:`Event`\\ s. Thread-safe.

    ``on_error(event, subscriber, exc)`` is called (on the emitting thread) for each exception
    a subscriber raises; if it raises in turn, that is logged and dropped too.
    """

    def __init__(self, *, on_error: ErrorCallback | None = None) -> None:
        if on_error is not None and not callable(on_error):
            raise ValidationError("on_error", f"must be callable or None, not {on_error!r}")
        self._on_error = on_error
        self._lock = threading.Lock()
        self._subscriptions: tuple[_Subscription, ...] = ()  # replaced, never mutated
        self._failures = 0

    def subscribe(self, callback: Subscriber, *event_types: type[Event]) -> Callable[[], None]:
        """Call ``callback(event)`` for every emitted event that is an instance of one of
        ``event_types`` (none given: every event), after the subscribers before it.

        Returns ``unsubscribe``: it removes this subscription only (the same callback may be
        subscribed more than once, each delivery separate) and is idempotent. An emit already
        running on another thread may still deliver to it once. Raises ``ValidationError``
        (``callback``, ``event_types``) for a non-callable or a type that is not an Event.
        """
        if not callable(callback):
            raise ValidationError("callback", f"must be callable, not {callback!r}")
        for event_type in event_types:
            if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                raise ValidationError(
                    "event_types", f"must be subclasses of wfstate.hooks.Event, not {event_type!r}"
                )
        subscription = _Subscription(callback, event_types)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)

        def unsubscribe() -> None:
            with self._lock:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to the matching subscribers of the moment of the call, in
        subscription order, on this thread. Never raises what a subscriber raises (module
        docstring). Subscribers may subscribe, unsubscribe and emit (no lock is held while
        they run); a subscription made during an emit receives later events only.
        """
        if not isinstance(event, Event):
            raise ValidationError("event", f"must be a wfstate.hooks.Event, not {event!r}")
        for subscription in self._subscriptions:  # a snapshot: the tuple is never mutated
            if subscription.types and not isinstance(event, subscription.types):
                continue
            try:
                subscription.callback(event)
            except Exception as exc:
                self._report(event, subscription.callback, exc)

    @property
    def failures(self) -> int:
        """How many subscriber calls raised since this registry was made."""
        return self._failures

    @property
    def subscribers(self) -> int:
        """How many subscriptions are registered."""
        return len(self._subscriptions)

    def _report(self, event: Event, callback: Subscriber, exc: Exception) -> None:
        with self._lock:
            self._failures += 1
        LOGGER.error("hook subscriber %r raised on %s event", callback, event.name, exc_info=exc)
        if self._on_error is None:
            return
        try:
            self._on_error(event, callback, exc)
        except Exception:
            LOGGER.exception("hook on_error callback raised on %s event", event.name)


def events_for(mutations: Sequence[Mutation], at: float, *, lsn: int | None = None) -> list[Event]:
    """The lifecycle events of one committed batch, in the batch's order, stamped ``at``
    (the commit time) and ``lsn`` (the batch's LSN, if known).

    ``SetWorkflowStatus``: ``running`` → :class:`WorkflowStarted`, ``completed`` →
    :class:`WorkflowCompleted`, ``failed`` → :class:`WorkflowFailed`; ``paused`` and
    ``idle`` → none. ``SetStepStatus``: ``running`` → :class:`StepStarted`, ``completed`` →
    :class:`StepCompleted`, ``failed`` → :class:`StepFailed`; ``skipped`` and ``pending`` →
    none. Every other mutation (``CreateWorkflow``: the workflow is ``idle``, not started;
    outputs, context, agent state, replace, delete) → none. Pure: reads no state, so it
    trusts that the batch was valid (call it only for a committed batch).
    """
    events: list[Event] = []
    for mutation in mutations:
        if isinstance(mutation, SetWorkflowStatus):
            workflow_id = mutation.workflow_id
            if mutation.status == "running":
                events.append(WorkflowStarted(at=at, workflow_id=workflow_id, lsn=lsn))
            elif mutation.status == "completed":
                events.append(WorkflowCompleted(at=at, workflow_id=workflow_id, lsn=lsn))
            elif mutation.status == "failed":
                events.append(
                    WorkflowFailed(at=at, workflow_id=workflow_id, error=mutation.error, lsn=lsn)
                )
        elif isinstance(mutation, SetStepStatus):
            workflow_id, step_id = mutation.workflow_id, mutation.step_id
            if mutation.status == "running":
                events.append(StepStarted(at=at, workflow_id=workflow_id, step_id=step_id, lsn=lsn))
            elif mutation.status == "completed":
                events.append(
                    StepCompleted(at=at, workflow_id=workflow_id, step_id=step_id, lsn=lsn)
                )
            elif mutation.status == "failed":
                events.append(
                    StepFailed(
                        at=at,
                        workflow_id=workflow_id,
                        step_id=step_id,
                        error=mutation.error,
                        lsn=lsn,
                    )
                )
    return events
