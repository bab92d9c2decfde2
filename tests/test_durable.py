"""DurableRun: a completed step's body never runs again, its result comes back equal; failures
recorded or retried as classified; unencodable results refused naming the key, recording
nothing; sync and async alike."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wfstate import (
    LockTimeoutError,
    NotFoundError,
    Session,
    StaleOwnerError,
    ValidationError,
    WorkflowStep,
)
from wfstate.api import WorkflowStore, open_store
from wfstate.asyncapi import AsyncWorkflowStore
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.durable import RECORD_PREFIX, DurableRun, StepRecord
from wfstate.errors import StepFailedError
from wfstate.mutations import UpdateContext


@pytest.fixture
def path(tmp_path: Path) -> str:
    path = str(tmp_path / "store")
    with open_store(path, checkpoints=MANUAL_ONLY) as api:
        api.create_workflow("run", "Run", (WorkflowStep(id="s", name="s"),))
    return path


@pytest.fixture
def api(path: str) -> Iterator[WorkflowStore]:
    with open_store(path, checkpoints=MANUAL_ONLY) as opened:
        yield opened


class Body:
    """A step body that counts its calls and returns (or raises) what it is given."""

    def __init__(self, result: object = None, error: BaseException | None = None) -> None:
        self.calls = 0
        self.result = result
        self.error = error

    def __call__(self, *args: object, **kwargs: object) -> Any:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result if self.result is not None else {"args": list(args), **kwargs}


def test_a_completed_step_is_not_run_again_after_reopening(path: str) -> None:
    body = Body()
    with open_store(path) as api:
        first = DurableRun(api, "run").step("fetch", body, 1, 2, page="a")
        assert first == {"args": [1, 2], "page": "a"}
        assert DurableRun(api, "run").step("fetch", body, 1, 2, page="a") == first
        state = api.load("run")
    assert body.calls == 1
    assert state.context.user_data[RECORD_PREFIX + "fetch"] == {
        "status": "completed",
        "result": first,
    }
    with open_store(path) as reopened:
        again = DurableRun(reopened, "run")
        assert again.step("fetch", body, 1, 2, page="a") == first
        assert again.recorded("fetch") == StepRecord(status="completed", result=first)
        assert again.recorded("other") is None
    assert body.calls == 1


@pytest.mark.parametrize(
    "result",
    [
        {"rows": [1, 2.5, True, None, "x"], "nested": {"deep": [{"a": 0}]}},
        [],
        "text",
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        False,
    ],
)
def test_the_recorded_result_equals_the_returned_one_with_its_types(
    api: WorkflowStore, path: str, result: object
) -> None:
    returned = DurableRun(api, "run").step("k", lambda: result)
    api.close()
    with open_store(path) as reopened:
        replayed = DurableRun(reopened, "run").step("k", Body())
    assert returned == result and replayed == result
    assert _typed(replayed) == _typed(result)  # the same types inside (no int -> float, ...)


def _typed(value: object) -> object:
    """``value`` with the type of every item beside it (dict order aside)."""
    if isinstance(value, dict):
        return ("dict", {k: _typed(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, value)


def test_a_step_returning_none_is_recorded(api: WorkflowStore) -> None:
    calls: list[int] = []
    run = DurableRun(api, "run")
    assert run.step("void", lambda: calls.append(1)) is None
    assert run.step("void", lambda: calls.append(1)) is None
    assert calls == [1]


@pytest.mark.parametrize(
    ("result", "field"),
    [
        ((1, 2), "step['bad'].result"),
        ({"when": object()}, "step['bad'].result['when']"),
        ({1: "int key"}, "step['bad'].result"),
        (float("inf"), "step['bad'].result"),
        (2**64, "step['bad'].result"),
        ({"n": [-(2**63) - 1]}, "step['bad'].result"),
    ],
)
def test_a_result_that_cannot_be_recorded_is_refused_naming_the_key(
    api: WorkflowStore, result: object, field: str
) -> None:
    before = api.stats().last_lsn
    run = DurableRun(api, "run")
    with pytest.raises(ValidationError) as raised:
        run.step("bad", lambda: result)
    assert raised.value.field == field
    assert "'bad'" in str(raised.value)
    assert api.stats().last_lsn == before  # nothing recorded
    assert run.recorded("bad") is None
    assert run.step("bad", lambda: "fixed") == "fixed"  # the next run runs the body again


def test_a_non_retryable_failure_is_recorded_and_re_raised_without_running_again(
    api: WorkflowStore, path: str
) -> None:
    body = Body(error=ValueError("bad input row 7"))
    run = DurableRun(api, "run")
    with pytest.raises(StepFailedError) as first:
        run.step("parse", body)
    assert isinstance(first.value.__cause__, ValueError)
    assert (first.value.key, first.value.error_type, first.value.error) == (
        "parse",
        "builtins.ValueError",
        "bad input row 7",
    )
    api.close()
    with open_store(path) as reopened, pytest.raises(StepFailedError) as again:
        DurableRun(reopened, "run").step("parse", body)
    assert str(again.value) == str(first.value)
    assert again.value.__cause__ is None
    assert body.calls == 1


class Flaky(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (TimeoutError("slow"), None),  # the default retryable classes
        (ConnectionResetError("reset"), None),
        (LockTimeoutError("busy"), None),  # wfstate's own retryable errors
        (Flaky("flaky"), (Flaky,)),
    ],
)
def test_a_retryable_error_is_re_raised_unchanged_and_not_recorded(
    api: WorkflowStore, error: Exception, retryable: tuple[type[BaseException], ...] | None
) -> None:
    run = (
        DurableRun(api, "run") if retryable is None else DurableRun(api, "run", retryable=retryable)
    )
    before = api.stats().last_lsn
    with pytest.raises(type(error)) as raised:
        run.step("call", Body(error=error))
    assert raised.value is error
    assert api.stats().last_lsn == before
    assert run.step("call", lambda: "second try") == "second try"


def test_without_the_default_classes_a_timeout_is_final(api: WorkflowStore) -> None:
    run = DurableRun(api, "run", retryable=())
    with pytest.raises(StepFailedError):
        run.step("call", Body(error=TimeoutError("slow")))
    assert run.recorded("call") == StepRecord(
        status="failed", error_type="builtins.TimeoutError", error="slow"
    )


def test_an_interrupt_is_never_recorded(api: WorkflowStore) -> None:
    run = DurableRun(api, "run")
    with pytest.raises(KeyboardInterrupt):
        run.step("k", Body(error=KeyboardInterrupt()))
    assert run.recorded("k") is None


def test_bad_arguments_are_refused_before_the_body_runs(api: WorkflowStore) -> None:
    body = Body()
    with pytest.raises(ValidationError) as raised:
        DurableRun(api, "run").step("", body)
    assert raised.value.field == "key"
    with pytest.raises(NotFoundError):
        DurableRun(api, "ghost").step("k", body)
    assert body.calls == 0
    with pytest.raises(ValidationError) as raised:
        DurableRun(api, "a/b")
    assert raised.value.field == "workflow_id"
    with pytest.raises(ValidationError) as raised:
        DurableRun(api, "run", retryable=[TimeoutError])  # type: ignore[arg-type]
    assert raised.value.field == "retryable"
    with pytest.raises(ValidationError) as raised:
        DurableRun(api.store, "run")  # type: ignore[arg-type]
    assert raised.value.field == "api"


def test_a_foreign_value_under_a_step_key_is_reported(api: WorkflowStore) -> None:
    api.commit([UpdateContext(workflow_id="run", user_data={RECORD_PREFIX + "k": 3}, at=0)])
    body = Body()
    with pytest.raises(ValidationError) as raised:
        DurableRun(api, "run").step("k", body)
    assert raised.value.field == f"context.user_data['{RECORD_PREFIX}k']"
    assert body.calls == 0


def test_a_taken_over_owner_cannot_record(path: str) -> None:
    with open_store(path, checkpoints=MANUAL_ONLY) as owner:
        session = owner.start_session("worker")
        session_id = session.id
        session.close()
        with open_store(path, checkpoints=MANUAL_ONLY) as other:
            other.resume_session(session_id)
            lock = owner.store._fs.open_lock(owner.store._session_lock_path(session_id))
            stale = Session(owner.store, session_id, "worker", 1, lock)
            try:
                with pytest.raises(StaleOwnerError):
                    DurableRun(owner, "run", session=stale).step("k", lambda: 1)
            finally:
                stale.close()
            assert DurableRun(other, "run").recorded("k") is None


# -- async ----------------------------------------------------------------------------------------


def test_astep_records_once_and_replays(api: WorkflowStore) -> None:
    calls: list[str] = []

    async def fetch(page: str) -> dict[str, str]:
        await asyncio.sleep(0)
        calls.append(page)
        return {"page": page}

    async def main() -> tuple[object, object]:
        run = DurableRun(AsyncWorkflowStore(api), "run")
        return await run.astep("fetch", fetch, "a"), await run.astep("fetch", fetch, "b")

    assert asyncio.run(main()) == ({"page": "a"}, {"page": "a"})
    assert calls == ["a"]
    assert DurableRun(api, "run").step("fetch", Body()) == {"page": "a"}  # sync sees it


def test_astep_records_failures_and_retries_retryable_ones(api: WorkflowStore) -> None:
    attempts: list[str] = []

    async def fails(error: Exception) -> None:
        attempts.append(type(error).__name__)
        raise error

    async def main() -> None:
        run = DurableRun(api, "run")
        with pytest.raises(ConnectionError):
            await run.astep("net", fails, ConnectionError("down"))
        with pytest.raises(StepFailedError):
            await run.astep("net", fails, KeyError("gone"))
        with pytest.raises(StepFailedError):
            await run.astep("net", fails, KeyError("not run"))
        with pytest.raises(ValidationError) as raised:
            await run.astep("tuple", _returns_tuple)
        assert raised.value.field == "step['tuple'].result"

    asyncio.run(main())
    assert attempts == ["ConnectionError", "KeyError"]


async def _returns_tuple() -> tuple[int, int]:
    return (1, 2)
