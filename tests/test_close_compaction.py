"""A clean ``close()`` compacts once enough log piled up (``compact_on_close_bytes``).

The guarantee: after a close that compacted, the next open scans no batch (the log holds only
the anchor) and every state reads the same; below the threshold, with the setting off, with
``MANUAL_ONLY`` or for the operator's offline commands, close writes nothing; a failure of that
compaction is logged, never turns ``close`` into an error and loses nothing. A crash during
it is explored by ``tests/test_checkpoint_crash.py`` (the ``checkpoints-close`` workload).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import msgspec
import pytest

from tests.bytesutil import snapshot_without_locks
from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import DEFAULT_POLICY, MANUAL_ONLY, CheckpointPolicy
from wfstate.errors import ClosedError, ValidationError
from wfstate.format import CHECKPOINTS_DIR, WAL_DIR, parse_segment_name
from wfstate.fs import OsFileSystem
from wfstate.model import WorkflowStep, encode_state
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput
from wfstate.offline import open_read_only, open_repairing

_MiB = 1024 * 1024
_STEPS = 4


def _create(workflow_id: str) -> list[Mutation]:
    steps = tuple(WorkflowStep(id=f"s{i}", name=f"s{i}") for i in range(_STEPS))
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=steps, at=0)]


def _fill(store: LocalStore, batch_bytes: int, *, workflows: int = 3) -> None:
    """Commit about ``batch_bytes`` bytes of batches over ``workflows`` workflows."""
    text = "".join(f"w{i} " for i in range(4000))  # ~24 KB a batch
    written = 0
    for w in range(workflows):
        store.commit(_create(f"wf{w}"))
    n = 0
    while written < batch_bytes:
        data = {"n": n, "text": text}
        store.commit(
            [
                PutStepOutput(
                    workflow_id=f"wf{n % workflows}", step_id=f"s{n % _STEPS}", data=data, at=0
                )
            ]
        )
        written += len(msgspec.msgpack.encode(data))
        n += 1


def _states(store: LocalStore) -> dict[str, bytes]:
    return {w: encode_state(store.load(w)) for w in store.list_workflows()}


def _segments(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path / WAL_DIR) if parse_segment_name(n))


def _open(path: Path, policy: CheckpointPolicy = DEFAULT_POLICY, **kwargs: object) -> LocalStore:
    return LocalStore.open(str(path), durability="none", checkpoints=policy, **kwargs)  # type: ignore[arg-type]


def test_a_close_after_a_mebibyte_of_batches_compacts_and_the_reopen_replays_nothing(
    tmp_path: Path,
) -> None:
    with _open(tmp_path) as store:
        _fill(store, _MiB + 64 * 1024)
        expected = _states(store)
        before = _segments(tmp_path)
        assert store.stats().log_first_lsn == 1 and store.checkpoints() == []
    assert _segments(tmp_path) != before  # the segments before the anchor are gone
    with _open(tmp_path) as store:
        stats = store.stats()
        assert stats.log_first_lsn > 1
        assert stats.bytes_since_compaction == 0  # the open read no batch
        assert {i.type for i in store.checkpoints()} == {"compaction"}
        assert {i.workflow_id for i in store.checkpoints()} == set(expected)
        assert _states(store) == expected


def test_bytes_read_at_open_count_so_a_reader_closing_compacts_what_it_scanned(
    tmp_path: Path,
) -> None:
    """A handle that only reads (after a crash, say) scanned the log at open: its close
    compacts it, as LevelDB flushes the log it recovered."""
    never = msgspec.structs.replace(DEFAULT_POLICY, compact_on_close_bytes=None)
    with _open(tmp_path, never) as store:
        _fill(store, _MiB + 64 * 1024)
        expected = _states(store)
    assert _open(tmp_path, MANUAL_ONLY).stats().log_first_lsn == 1  # closed without compacting
    with _open(tmp_path) as store:
        assert store.stats().bytes_since_compaction >= _MiB
        assert _states(store) == expected
    with _open(tmp_path) as store:
        assert store.stats().bytes_since_compaction == 0
        assert _states(store) == expected


@pytest.mark.parametrize(
    "policy",
    [
        msgspec.structs.replace(DEFAULT_POLICY, compact_on_close_bytes=None),
        MANUAL_ONLY,
        msgspec.structs.replace(DEFAULT_POLICY, compact_on_close_bytes=4 * _MiB),
    ],
    ids=["off", "manual-only", "below-threshold"],
)
def test_close_writes_nothing_below_the_threshold_or_with_compaction_on_close_off(
    tmp_path: Path, policy: CheckpointPolicy
) -> None:
    with _open(tmp_path, policy) as store:
        _fill(store, _MiB + 64 * 1024)
        on_disk = snapshot_without_locks(tmp_path)
    assert snapshot_without_locks(tmp_path) == on_disk


def test_the_operators_commands_never_compact_on_close(tmp_path: Path) -> None:
    """``recover`` repairs only damage: its handle (:func:`open_repairing`, on the real disk)
    closes without compacting a healthy log, however long."""
    never = msgspec.structs.replace(DEFAULT_POLICY, compact_on_close_bytes=None)
    with _open(tmp_path, never) as store:
        _fill(store, _MiB + 64 * 1024)
    on_disk = snapshot_without_locks(tmp_path)
    for opener in (open_read_only, open_repairing):
        offline = opener(str(tmp_path))
        offline.store.close()
        assert offline.fs.actions == []
        assert snapshot_without_locks(tmp_path) == on_disk


class _NoCheckpointFiles(OsFileSystem):
    """The real file system, refusing to create files in ``checkpoints/`` (a full disk)."""

    def create_exclusive(self, path: str) -> int:
        if os.path.basename(os.path.dirname(path)) == CHECKPOINTS_DIR:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return super().create_exclusive(path)


def test_a_failed_compaction_on_close_is_logged_and_the_store_closes_losing_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _open(tmp_path, fs=_NoCheckpointFiles())
    _fill(store, _MiB + 64 * 1024)
    expected = _states(store)
    with caplog.at_level(logging.WARNING, logger="wfstate"):
        store.close()  # no exception
    assert any("on close compaction failed" in r.getMessage() for r in caplog.records)
    with _open(tmp_path, MANUAL_ONLY) as again:  # the lock was released; nothing was lost
        assert again.stats().log_first_lsn == 1
        assert _states(again) == expected
        assert again.checkpoints() == []


def test_an_interrupt_during_the_compaction_on_close_still_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path)
    _fill(store, _MiB + 64 * 1024)
    expected = _states(store)

    def interrupted(*, dry_run: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "compact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.close()
    with pytest.raises(ClosedError):
        store.load("wf0")
    with _open(tmp_path, MANUAL_ONLY, lock_timeout=0.5) as again:  # the lock was released
        assert _states(again) == expected


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1"])
def test_a_bad_compact_on_close_bytes_names_the_field(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        CheckpointPolicy(compact_on_close_bytes=value)  # type: ignore[arg-type]
    assert caught.value.field == "compact_on_close_bytes"
