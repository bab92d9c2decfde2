"""Durable steps for engines that re-run code after a crash: :class:`DurableRun`.

Within one workflow run, ``run.step(key, fn, *args)`` returns the result recorded for ``key``
if its step completed before (in this process or one that crashed), and otherwise runs
``fn(*args)``, records its result durably and returns it. So a program re-run from the top
after a crash skips the bodies of the steps that completed and continues with the first that
did not.

Records
    One key per step in the workflow's ``context.user_data``, named ``wfstate.step/<key>``,
    written by one ``UpdateContext`` batch per step (through :meth:`WorkflowStore.commit`, so
    it is fenced by ``session=`` and timed like any commit). No format of its own: the
    records are part of the workflow's state, in its checkpoints and session exports.

What is guaranteed
    * A step whose record was acknowledged never runs its body again for that workflow: later
      calls return the recorded result (equal to what the body returned), or re-raise a
      recorded failure as :class:`~wfstate.errors.StepFailedError`.
    * At least once: the body runs until its outcome is recorded. A crash after the body
      returned and before its record is durable runs it again on the next run, so a body's
      own effects outside this store should be idempotent.
    * Keys are explicit and are the identity of a step: the same key must stand for the same
      work in every run (a counter or the step's name, not a time or a random value). One
      caller at a time per key: two concurrent calls of a key may both run the body.

Results
    A result must be JSON-like (dicts with str keys, lists, str, int, finite float, bool,
    None, as :func:`wfstate.model.validate_json` says) and fit MessagePack (ints within 64
    bits): then the recorded value is equal to the returned one, of the same types, on every
    run. Anything else (a tuple, a datetime, an object) is refused with ``ValidationError``
    whose field names the key (``step['fetch'].result[...]``) and nothing is recorded.

Errors
    An exception (an :class:`Exception`) from the body is *retryable* if it is an instance of
    one of the run's ``retryable`` classes or has a true ``retryable`` attribute (wfstate's
    own errors carry one, e.g. ``LockTimeoutError``): it is re-raised unchanged and nothing is
    recorded, so the next run retries the step. Any other exception is recorded as the key's
    final outcome (its qualified class name and message) and raised as ``StepFailedError``
    (with the original as ``__cause__``); every later run raises ``StepFailedError`` again
    without running the body. ``BaseException``\\ s that are not ``Exception``\\ s
    (``KeyboardInterrupt``, ``asyncio.CancelledError``) are re-raised and never recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, ParamSpec, TypeVar

import msgspec

from wfstate.api import WorkflowStore
from wfstate.asyncapi import AsyncWorkflowStore
from wfstate.backends.local import Session
from wfstate.errors import StepFailedError, ValidationError
from wfstate.ids import validate_id
from wfstate.model import validate_json
from wfstate.mutations import UpdateContext

RECORD_PREFIX: Final = "wfstate.step/"
"""The prefix of a durable step's key in ``context.user_data``."""

DEFAULT_RETRYABLE: Final[tuple[type[BaseException], ...]] = (TimeoutError, ConnectionError)
"""Exceptions a run treats as retryable unless told otherwise: transient by nature."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StepRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A durable step's recorded outcome: ``completed`` with ``result``, or ``failed`` with
    ``error_type`` (the exception's qualified class name) and ``error`` (its message)."""

    status: Literal["completed", "failed"]
    result: Any = None
    error_type: str | None = None
    error: str | None = None


class DurableRun:
    """The durable steps of workflow ``workflow_id`` (module docstring).

    ``api``: a :class:`~wfstate.api.WorkflowStore` or an
    :class:`~wfstate.asyncapi.AsyncWorkflowStore` (:meth:`astep` runs store calls in a worker
    thread either way). The workflow must exist (``NotFoundError`` at the first step
    otherwise). ``retryable``: exception classes whose instances are retried rather than
    recorded. ``session``: records are written in that session, so an owner that was taken
    over cannot record (``StaleOwnerError``).
    """

    def __init__(
        self,
        api: WorkflowStore | AsyncWorkflowStore,
        workflow_id: str,
        *,
        retryable: tuple[type[BaseException], ...] = DEFAULT_RETRYABLE,
        session: Session | None = None,
    ) -> None:
        if isinstance(api, AsyncWorkflowStore):
            api = api.sync
        if not isinstance(api, WorkflowStore):
            raise ValidationError(
                "api", f"must be a WorkflowStore or AsyncWorkflowStore, not {type(api).__name__}"
            )
        validate_id(workflow_id, "workflow_id")
        if not isinstance(retryable, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in retryable
        ):
            raise ValidationError("retryable", "must be a tuple of exception classes")
        self.api = api
        self.workflow_id = workflow_id
        self.retryable = retryable
        self.session = session

    def recorded(self, key: str) -> StepRecord | None:
        """The durable outcome recorded for ``key``; None if its step has not completed or
        failed for good. ``NotFoundError`` if the workflow does not exist."""
        name = RECORD_PREFIX + _check_key(key)
        found = self.api.load(self.workflow_id).context.user_data.get(name)
        if found is None:
            return None
        try:
            return msgspec.convert(found, StepRecord)
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"context.user_data[{name!r}]", f"is not a durable step record: {exc}"
            ) from exc

    def step(self, key: str, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn(*args, **kwargs)``'s result, run at most until it is recorded under ``key``
        (module docstring). Returns once the result is durable; raises ``StepFailedError``
        for a recorded failure, a retryable exception unchanged, ``ValidationError`` for a
        result that cannot be recorded (nothing recorded)."""
        record = self.recorded(key)
        if record is not None:
            return _replay(key, record)  # type: ignore[no-any-return]
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is None:
                raise
            self._record(key, failure)
            raise _failed(key, failure) from exc
        self._record(key, _completed(key, result))
        return result

    async def astep(
        self,
        key: str,
        afn: Callable[_P, Awaitable[_R]],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _R:
        """:meth:`step` for a coroutine function: ``await afn(*args, **kwargs)`` on the event
        loop; reading and writing the record run in a worker thread, so the loop never waits
        for the disk."""
        record = await asyncio.to_thread(self.recorded, key)
        if record is not None:
            return _replay(key, record)  # type: ignore[no-any-return]
        try:
            result = await afn(*args, **kwargs)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is None:
                raise
            await asyncio.to_thread(self._record, key, failure)
            raise _failed(key, failure) from exc
        await asyncio.to_thread(self._record, key, _completed(key, result))
        return result

    def _failure(self, exc: Exception) -> StepRecord | None:
        """The record of ``exc``; None if it is retryable."""
        if isinstance(exc, self.retryable) or getattr(exc, "retryable", False) is True:
            return None
        kind = type(exc)
        return StepRecord(
            status="failed", error_type=f"{kind.__module__}.{kind.__qualname__}", error=str(exc)
        )

    def _record(self, key: str, record: StepRecord) -> None:
        update = UpdateContext(
            workflow_id=self.workflow_id,
            user_data={RECORD_PREFIX + key: msgspec.to_builtins(record)},
            at=0,
        )
        self.api.commit([update], session=self.session)


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError("key", f"must be a non-empty str, not {key!r}")
    return key


def _completed(key: str, result: object) -> StepRecord:
    """The record of ``result``; ``ValidationError`` naming the key if it cannot be one."""
    field = f"step[{key!r}].result"
    validate_json(result, field)
    try:
        msgspec.msgpack.encode(result)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(field, f"cannot be encoded: {exc}") from exc
    return StepRecord(status="completed", result=result)


def _replay(key: str, record: StepRecord) -> Any:
    if record.status == "failed":
        raise _failed(key, record)
    return record.result


def _failed(key: str, record: StepRecord) -> StepFailedError:
    return StepFailedError(key, record.error_type or "", record.error or "")
