"""Every error a store raises is in the one tree (DESIGN.md §9), whatever file system call fails.

For each public operation of :class:`LocalStore` that does file I/O (opening a new and an
existing store, commit/save/delete, full and incremental checkpoints, retention with a fold and
a drop, compaction, state files, sessions: start, resume, end, export, import, restore to a
file, reads that build a state from checkpoint files, close), a clean run on
:class:`CallFailingFS` counts the file system calls the operation makes, by method. Then for
every method and every N, the operation runs again on a fresh store with the N-th call of that
method failing with ``OSError(EIO)`` (nothing changes on the disk, as a failed call of the
simulator), and the test requires:

* what escapes is a :class:`WfstateError` (never a bare ``OSError``, nor anything else);
* an I/O failure surfacing as :class:`StorageIOError` is also an ``OSError`` with the injected
  ``errno``, raised from the file system's error;
* a failed sync (``fsync``, ``fdatasync``, ``fsync_dir``) is never acknowledged: the operation
  raises, and after an open the store is poisoned (the next write raises
  :class:`StorePoisonedError`).

``exists`` and ``is_dir`` are never failed: the real file system answers them without raising
(:meth:`wfstate.fs.OsFileSystem.exists`).
"""

from __future__ import annotations

import errno
import functools
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.simfs import SimFileSystem
from wfstate.backends.local import LocalStore, Session
from wfstate.checkpointpolicy import MANUAL_ONLY
from wfstate.errors import (
    StorageIOError,
    StorePoisonedError,
    SyncFailedError,
    WfstateError,
    storage_error,
    storage_io,
)
from wfstate.model import WorkflowStep
from wfstate.mutations import CreateWorkflow, Mutation, PutStepOutput
from wfstate.retention import RetentionPolicy
from wfstate.wal import Compression

STORE = "/s"
FAILABLE = (
    "read_file",
    "read_range",
    "file_size",
    "listdir",
    "mkdir",
    "create_exclusive",
    "open_append",
    "write",
    "fsync",
    "fdatasync",
    "truncate",
    "close",
    "dup",
    "replace",
    "unlink",
    "fsync_dir",
    "open_lock",
    "try_lock",
    "unlock",
    "close_lock",
    "read_lock_data",
    "write_lock_data",
)
"""The :class:`wfstate.fs.FileSystem` methods that can raise ``OSError`` on a real disk."""
SYNCS = frozenset({"fsync", "fdatasync", "fsync_dir"})
WITHOUT_A_STORE_AFTER = frozenset(
    {"open a new store", "open an existing store and read it", "close"}
)
"""Operations after which there is no open store to try a write on (a failed open raises
``StorageIOError``, or ``SyncFailedError`` from its own repairs: there is no store to
poison)."""


class CallFailingFS(SimFileSystem):
    """The simulator, counting the calls of each :data:`FAILABLE` method while ``counting``;
    the ``nth`` counted call of ``method`` (see :meth:`arm`) raises ``OSError(EIO)`` instead
    of running (so it changes nothing). ``failed``: the method that failed, once it has."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.calls: Counter[str] = Counter()
        self.target: tuple[str, int] | None = None
        self.failed: str | None = None

    def arm(self, method: str | None = None, nth: int = 0) -> None:
        self.calls.clear()
        self.counting = True
        self.target = None if method is None else (method, nth)

    def gate(self, method: str) -> None:
        if not self.counting:
            return
        self.calls[method] += 1
        if self.target == (method, self.calls[method]):
            self.failed = method
            raise OSError(errno.EIO, f"injected failure of {method} #{self.calls[method]}")


def _gated(method: str) -> Callable[..., Any]:
    base = getattr(SimFileSystem, method)

    @functools.wraps(base)
    def call(self: CallFailingFS, *args: Any, **kwargs: Any) -> Any:
        self.gate(method)
        return base(self, *args, **kwargs)

    return call


for _method in FAILABLE:
    setattr(CallFailingFS, _method, _gated(_method))


# -- the operations -----------------------------------------------------------------------------


def open_store(fs: SimFileSystem) -> LocalStore:
    return LocalStore.open(
        STORE,
        fs=fs,
        clock=lambda: 1000.0,
        segment_size=4096,
        compression=Compression(codec="none"),
        checkpoints=MANUAL_ONLY,
    )


STEP = WorkflowStep(id="s", name="s")


def create(workflow_id: str) -> list[Mutation]:
    return [CreateWorkflow(workflow_id=workflow_id, name=workflow_id, steps=(STEP,), at=0)]


def output(workflow_id: str, i: int) -> list[Mutation]:
    data = {"i": i, "text": "x" * 300}
    return [PutStepOutput(workflow_id=workflow_id, step_id="s", data=data, at=0)]


@dataclass
class World:
    """What a setup made, for its operation: the disk, an open store (None for the open
    operations), a session it owns, and a few values."""

    fs: CallFailingFS
    store: LocalStore | None = None
    session: Session | None = None
    checkpoint: str = ""
    bundle: bytes = b""


def populated(fs: CallFailingFS) -> LocalStore:
    """A store with two workflows, a few batches each and a full checkpoint of ``a``."""
    store = open_store(fs)
    for w in ("a", "b"):
        store.commit(create(w))
    for i in range(3):
        store.commit(output("a", i))
        store.commit(output("b", i))
    store.checkpoint("a")
    return store


def _fresh(fs: CallFailingFS) -> World:
    return World(fs)


def _closed(fs: CallFailingFS) -> World:
    store = populated(fs)
    store.write_state_files(checkpoint=True)
    store.close()
    return World(fs)


def _open(fs: CallFailingFS) -> World:
    store = populated(fs)
    return World(fs, store, checkpoint=store.checkpoints("a")[0].id)


def _with_chain(fs: CallFailingFS) -> World:
    """Incremental checkpoints of ``a`` (a retention keeping one folds the newest, drops its
    parents); the store reopened, so nothing is cached and reads go to the files."""
    store = populated(fs)
    for i in range(3, 5):
        store.commit(output("a", i))
        store.checkpoint("a")
    store.close()
    store = open_store(fs)
    return World(fs, store, checkpoint=store.checkpoints("a")[0].id)


def _in_session(fs: CallFailingFS) -> World:
    store = populated(fs)
    session = store.start_session("alice")
    store.commit(output("a", 9), session=session)
    return World(fs, store, session)


def _crashed_session(fs: CallFailingFS) -> World:
    world = _in_session(fs)
    assert world.session is not None
    world.session.close()  # gives up its lock, as its owner's crash would
    return world


def _bundle(fs: CallFailingFS) -> World:
    world = _in_session(fs)
    assert world.store is not None and world.session is not None
    world.bundle = world.store.export_session(world.session.id)
    other = CallFailingFS()
    world.store.close()
    return World(other, open_store(other), bundle=world.bundle)


def _store(w: World) -> LocalStore:
    assert w.store is not None
    return w.store


def _session(w: World) -> Session:
    assert w.session is not None
    return w.session


Operation = tuple[Callable[[CallFailingFS], World], Callable[[World], object]]

OPERATIONS: dict[str, Operation] = {
    "open a new store": (_fresh, lambda w: open_store(w.fs).close()),
    "open an existing store and read it": (
        _closed,
        lambda w: [open_store(w.fs).load(x) for x in ("a", "b")],
    ),
    "commit": (_open, lambda w: _store(w).commit(output("a", 7))),
    "save": (_open, lambda w: _store(w).save(_store(w).load("b"))),
    "delete": (_open, lambda w: _store(w).delete("b")),
    "checkpoint (full)": (_open, lambda w: _store(w).checkpoint("b")),
    "checkpoint (incremental)": (
        _open,
        lambda w: (_store(w).commit(output("a", 8)), _store(w).checkpoint("a")),
    ),
    "retain (fold and drop)": (
        _with_chain,
        lambda w: _store(w).retain(RetentionPolicy(keep_last=1)),
    ),
    "compact": (_open, lambda w: _store(w).compact()),
    "write_state_files": (_open, lambda w: _store(w).write_state_files(checkpoint=True)),
    "read a state through checkpoint files": (_with_chain, lambda w: _store(w).load("a")),
    "checkpoint_state and verify": (
        _with_chain,
        lambda w: (_store(w).checkpoint_state(w.checkpoint), _store(w).verify()),
    ),
    "read_state_file": (
        _open,
        lambda w: (_store(w).write_state_files(), _store(w).read_state_file("a")),
    ),
    "stats": (_open, lambda w: _store(w).stats()),
    "restore": (_with_chain, lambda w: _store(w).restore(w.checkpoint)),
    "restore to a file": (_with_chain, lambda w: _store(w).restore(w.checkpoint, to_file=True)),
    "start_session": (_open, lambda w: _store(w).start_session("bob")),
    "commit in a session": (
        _in_session,
        lambda w: _store(w).commit(output("b", 9), session=_session(w)),
    ),
    "end_session": (_in_session, lambda w: _store(w).end_session(_session(w))),
    "detect and resume a crashed session": (
        _crashed_session,
        lambda w: (_store(w).detect_crashed_sessions(), _store(w).resume_session(_session(w).id)),
    ),
    "export_session": (_in_session, lambda w: _store(w).export_session(_session(w).id)),
    "import_session": (_bundle, lambda w: _store(w).import_session(w.bundle)),
    "close": (_in_session, lambda w: _store(w).close()),
}


def _run(
    name: str, method: str | None, nth: int
) -> tuple[CallFailingFS, World, BaseException | None]:
    setup, operation = OPERATIONS[name]
    world = setup(CallFailingFS())
    world.fs.arm(method, nth)
    try:
        operation(world)
    except BaseException as exc:
        return world.fs, world, exc
    finally:
        world.fs.counting = False
    return world.fs, world, None


def violations(name: str, method: str, nth: int) -> list[str]:
    """What is wrong with operation ``name`` when the ``nth`` call of ``method`` fails."""
    fs, world, error = _run(name, method, nth)
    where = f"{name}, {method} #{nth} failing"
    if fs.failed is None:
        return []  # not reached: an earlier call took another path
    if error is None:
        if method in SYNCS:
            return [f"{where}: returned normally although a sync failed"]
        return []  # a failure the store may ignore (removing a temp file it abandons)
    if not isinstance(error, WfstateError):
        return [f"{where}: raised {type(error).__name__} outside the tree: {error!r}"]
    found = []
    if isinstance(error, StorageIOError):
        if error.errno != errno.EIO or not isinstance(error.__cause__, OSError):
            found.append(f"{where}: {error!r} lost its errno or its cause")
        if isinstance(error, SyncFailedError) and name not in WITHOUT_A_STORE_AFTER:
            found.append(f"{where}: a failed sync raised as {error!r}, the store not stopped")
    if method in SYNCS and name not in WITHOUT_A_STORE_AFTER:
        assert world.store is not None
        try:
            world.store.commit(output("a", 99))  # the store the operation ran on
        except StorePoisonedError:
            pass
        except BaseException as exc:
            found.append(f"{where}: the next write raised {exc!r}, not StorePoisonedError")
        else:
            found.append(f"{where}: the next write was acknowledged after a failed sync")
    return found


@functools.cache
def clean_calls(name: str) -> Counter[str]:
    fs, _world, error = _run(name, None, 0)
    assert error is None, f"{name}: the clean run raised {error!r}"
    return Counter(fs.calls)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_failing_call_of_an_operation_raises_an_error_of_the_tree(name: str) -> None:
    calls = clean_calls(name)
    assert calls, f"{name} made no file system call"
    found = [
        problem
        for method, count in sorted(calls.items())
        for nth in range(1, count + 1)
        for problem in violations(name, method, nth)
    ]
    assert not found, "\n".join(found)


# -- the error itself ---------------------------------------------------------------------------


def test_a_storage_io_error_is_a_wfstate_error_and_an_oserror_with_the_cause_s_errno() -> None:
    cause = FileNotFoundError(errno.ENOSPC, "No space left on device")
    with pytest.raises(StorageIOError) as caught, storage_io("write", "/s/checkpoints/x.tmp"):
        raise OSError(errno.ENOSPC, "No space left on device")
    error = caught.value
    assert isinstance(error, WfstateError) and isinstance(error, OSError)
    assert not isinstance(error, SyncFailedError)
    assert (error.errno, error.strerror) == (errno.ENOSPC, "No space left on device")
    assert error.filename == error.path == "/s/checkpoints/x.tmp"
    assert error.operation == "write"
    assert str(error) == (
        "write of /s/checkpoints/x.tmp failed: [Errno 28] No space left on device"
    )
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    assert storage_error("fsync", "/p", cause).errno == errno.ENOSPC


def test_a_failed_sync_is_a_sync_failed_error_and_control_flow_errors_stay_inside() -> None:
    with pytest.raises(SyncFailedError) as caught, storage_io("fsync_dir", "/s/checkpoints"):
        raise OSError(errno.EIO, "Input/output error")
    assert isinstance(caught.value, StorageIOError) and caught.value.errno == errno.EIO
    with storage_io("unlink", "/s/x"):  # a FileNotFoundError handled inside stays internal
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        except FileNotFoundError:
            pass
    inner = storage_error("rename", "/a", OSError(errno.EIO, "x"))
    with pytest.raises(StorageIOError) as again, storage_io("open", "/s"):
        raise inner
    assert again.value is inner, "the innermost, most precise error is kept"


def test_a_storage_io_error_pickles_and_is_caught_as_oserror() -> None:
    error = storage_error("fsync", "/s/wal", OSError(errno.EIO, "Input/output error"))
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is SyncFailedError
    assert (back.operation, back.path, back.errno, str(back)) == (
        "fsync", "/s/wal", errno.EIO, str(error)
    )  # fmt: skip
    try:
        raise error
    except OSError as caught:  # existing `except OSError` callers keep working
        assert caught is error


def test_the_double_fails_the_call_it_is_armed_for_and_changes_nothing() -> None:
    fs = CallFailingFS()
    fs.mkdir("/d")
    fs.arm("create_exclusive", 2)
    fs.create_exclusive("/d/a")
    with pytest.raises(OSError):
        fs.create_exclusive("/d/b")
    assert fs.failed == "create_exclusive" and fs.listdir("/d") == ["a"]
    assert fs.calls == Counter({"create_exclusive": 2, "listdir": 1})
