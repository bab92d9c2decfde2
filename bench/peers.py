"""The peers of BENCHMARKS.md and wfstate adapters, in two shapes.

Log peers (P1, P2): ``open(directory)``, ``commit(payload)`` and ``close()``. ``commit``
returns only once the payload is durable (it survives an OS crash or power loss). Peers marked
thread-safe may be committed to from many threads at once (P2).

State peers (P3-P5b, :class:`StatePeer`): whole workflow states, ``open(directory)``,
``save(state)`` (durable on return), ``load(workflow_id)``, ``list_workflows()`` and
``close()``; wfstate is its store API (``LocalStore``), the peers keep each state as one JSON
document (``msgspec.json``, decoded back into the same typed ``WorkflowState``).

Peers call ``os`` directly: they are yardsticks, not part of wfstate.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Final, Protocol

import msgspec

from wfstate.backends.local import LocalStore
from wfstate.checkpointpolicy import DEFAULT_POLICY, CheckpointPolicy
from wfstate.model import WorkflowState
from wfstate.wal import Durability, Log

__all__ = [
    "STATE_SYSTEMS",
    "SYSTEMS",
    "Floor",
    "GroupFloor",
    "JsonRewrite",
    "JsonStateFiles",
    "LockedFloor",
    "OpenPeer",
    "OpenStatePeer",
    "Peer",
    "SqliteFull",
    "SqliteStateRows",
    "StatePeer",
    "Wfstate",
    "WfstateStore",
]

_LEN_BYTES = 4


class Peer(Protocol):
    """What the benchmarks drive."""

    def open(self, directory: str) -> None: ...

    def commit(self, payload: bytes) -> None: ...

    def close(self) -> None: ...


#: ``open_peer(system)``, the fixture in ``bench/conftest.py``: a fresh, opened peer.
OpenPeer = Callable[[str], Peer]


def _record(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LEN_BYTES, "little") + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_log_file(directory: str, name: str) -> int:
    """Open ``directory/name`` for appending, with the file's creation made durable."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _fsync_dir(directory)
    return fd


class Floor:
    """Append a 4-byte length + payload to one file, ``fdatasync`` per commit.

    No checksum, no compression, no lock: the least a durable log can do. Single writer only.
    """

    def __init__(self) -> None:
        self._fd = -1

    def open(self, directory: str) -> None:
        self._fd = _open_log_file(directory, "floor.log")

    def commit(self, payload: bytes) -> None:
        _write_all(self._fd, _record(payload))
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LockedFloor(Floor):
    """:class:`Floor` behind a mutex: thread-safe, one write + one sync per commit.

    The P2 reference for "no group commit".
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def commit(self, payload: bytes) -> None:
        with self._lock:
            super().commit(payload)


class GroupFloor:
    """:class:`Floor` with group commit; thread-safe.

    Leader/follower: a committer queues its record; if no flush is in progress it becomes the
    leader, takes every pending record, writes them with one ``os.write``, ``fdatasync``s once
    and wakes the others. Records queued during a flush go out in the next one. No deliberate
    delay. If a flush fails, that commit and every later one raise (the file is then suspect).
    """

    def __init__(self) -> None:
        self._fd = -1
        self._cond = threading.Condition()
        self._pending: list[bytes] = []
        self._queued = 0  # records ever queued
        self._durable = 0  # records ever made durable (a prefix of the queue)
        self._flushing = False
        self._failed: BaseException | None = None

    def open(self, directory: str) -> None:
        self._fd = _open_log_file(directory, "group_floor.log")

    def commit(self, payload: bytes) -> None:
        record = _record(payload)
        with self._cond:
            self._pending.append(record)
            self._queued += 1
            mine = self._queued
            while True:
                if self._failed is not None:
                    raise OSError("an earlier group flush failed") from self._failed
                if self._durable >= mine:
                    return
                if not self._flushing:
                    break
                self._cond.wait()
            self._flushing = True
            batch, self._pending = self._pending, []
            upto = self._queued
        try:
            _write_all(self._fd, b"".join(batch))
            os.fdatasync(self._fd)
        except BaseException as exc:
            with self._cond:
                self._failed = exc
                self._flushing = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._durable = upto
            self._flushing = False
            self._cond.notify_all()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SqliteFull:
    """stdlib ``sqlite3``, ``journal_mode=WAL``, ``synchronous=FULL``; thread-safe.

    One row (integer key, blob) per commit, one transaction per commit. Each thread gets its
    own connection; ``busy_timeout`` makes concurrent writers wait for the write lock (SQLite's
    busy handler polls with sleeps; that is what users get).
    """

    BUSY_TIMEOUT_MS = 60_000

    def __init__(self) -> None:
        self._path = ""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def open(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._path = os.path.join(directory, "peer.sqlite")
        conn = self._connection()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError(f"sqlite refused WAL mode: {mode!r}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS commits (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
        )

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT ourselves.
            # check_same_thread=False only so close() may run on another thread once the
            # workers are done; each connection is used by the thread that made it.
            conn = sqlite3.connect(
                self._path,
                timeout=self.BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=FULL")  # per connection, so set on each
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def commit(self, payload: bytes) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO commits (payload) VALUES (?)", (payload,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def count(self) -> int:
        row = self._connection().execute("SELECT count(*) FROM commits").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


class JsonRewrite:
    """The whole document rewritten per change: temp file, fsync, rename, directory fsync.

    ``commit(payload)`` takes the complete serialized document (e.g. a workflow state as JSON)
    and replaces the file with it. Thread-safe (commits are serialized).
    """

    def __init__(self, name: str = "state.json") -> None:
        self._name = name
        self._dir = ""
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return os.path.join(self._dir, self._name)

    def open(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._dir = directory

    def commit(self, payload: bytes) -> None:
        with self._lock:
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self._dir)

    def load(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def close(self) -> None:
        pass


class Wfstate:
    """``wfstate.wal.Log`` in the peers' shape: ``commit`` is ``Log.append``; thread-safe.

    Default settings (segment size, compression) unless given; durability ``always``.
    """

    def __init__(self, durability: Durability = "always", **options: object) -> None:
        self._durability = durability
        self._options = options
        self._log: Log | None = None

    def open(self, directory: str) -> None:
        self._log = Log.open(directory, durability=self._durability, **self._options)  # type: ignore[arg-type]

    def commit(self, payload: bytes) -> None:
        assert self._log is not None, "commit before open"
        self._log.append(payload)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


#: Every system the benchmarks can drive, by the name used in test ids and the report.
SYSTEMS: dict[str, Callable[[], Peer]] = {
    "floor": Floor,
    "floor_locked": LockedFloor,
    "group_floor": GroupFloor,
    "sqlite_full": SqliteFull,
    "json_rewrite": JsonRewrite,
    "wfstate": Wfstate,
}


# -- state peers (P3-P5b) -----------------------------------------------------------------------

_JSON_ENCODER: Final = msgspec.json.Encoder()
_JSON_STATE_DECODER: Final = msgspec.json.Decoder(WorkflowState)


class StatePeer(Protocol):
    """What the state benchmarks drive: whole workflow states, one handle, one thread."""

    def open(self, directory: str) -> None: ...

    def save(self, state: WorkflowState) -> None: ...

    def load(self, workflow_id: str) -> WorkflowState: ...

    def list_workflows(self) -> list[str]: ...

    def close(self) -> None: ...


#: ``open_state_peer(system)``, the fixture in ``bench/conftest.py``: a fresh, opened state peer.
OpenStatePeer = Callable[[str], StatePeer]


class SqliteStateRows:
    """SQLite (WAL, ``synchronous=FULL``), one row per workflow: its state as one JSON blob.

    ``save`` is one ``INSERT OR REPLACE`` in its own transaction; ``load`` one ``SELECT`` and a
    typed decode. ``open`` connects and creates the table (SQLite reads the file lazily).
    """

    FILE = "states.sqlite"

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None

    def open(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(os.path.join(directory, self.FILE), isolation_level=None)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise RuntimeError(f"sqlite refused WAL mode: {mode!r}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS states (workflow_id TEXT PRIMARY KEY, state BLOB NOT NULL)"
        )
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        assert self._conn is not None, "used before open"
        return self._conn

    def save(self, state: WorkflowState) -> None:
        conn = self._connection()
        blob = _JSON_ENCODER.encode(state)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO states (workflow_id, state) VALUES (?, ?)",
                (state.workflow.id, blob),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def load(self, workflow_id: str) -> WorkflowState:
        row = (
            self._connection()
            .execute("SELECT state FROM states WHERE workflow_id = ?", (workflow_id,))
            .fetchone()
        )
        if row is None:
            raise KeyError(workflow_id)
        return _JSON_STATE_DECODER.decode(row[0])

    def list_workflows(self) -> list[str]:
        rows = self._connection().execute("SELECT workflow_id FROM states ORDER BY workflow_id")
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class JsonStateFiles:
    """One JSON file per workflow, ``<workflow_id>.json``, rewritten whole on every save.

    ``save`` is :class:`JsonRewrite`'s commit (temp file, fsync, rename, directory fsync);
    ``load`` reads the file and decodes it into a ``WorkflowState``; ``list_workflows`` lists
    the directory. ``open`` only creates the directory: a JSON-file store has nothing to open.
    """

    SUFFIX = ".json"

    def __init__(self) -> None:
        self._dir = ""

    def open(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._dir = directory

    def save(self, state: WorkflowState) -> None:
        writer = JsonRewrite(state.workflow.id + self.SUFFIX)
        writer.open(self._dir)
        writer.commit(_JSON_ENCODER.encode(state))

    def load(self, workflow_id: str) -> WorkflowState:
        with open(os.path.join(self._dir, workflow_id + self.SUFFIX), "rb") as f:
            return _JSON_STATE_DECODER.decode(f.read())

    def list_workflows(self) -> list[str]:
        return sorted(
            name.removesuffix(self.SUFFIX)
            for name in os.listdir(self._dir)
            if name.endswith(self.SUFFIX)
        )

    def close(self) -> None:
        pass


class WfstateStore:
    """``wfstate.backends.local.LocalStore`` through its public methods; durability ``always``
    and the store's default checkpoint policy unless given. ``open`` is ``LocalStore.open``
    (lock, recover, replay)."""

    def __init__(
        self, durability: Durability = "always", checkpoints: CheckpointPolicy = DEFAULT_POLICY
    ) -> None:
        self._durability: Durability = durability
        self._checkpoints = checkpoints
        self._store: LocalStore | None = None

    def open(self, directory: str) -> None:
        self._store = LocalStore.open(
            directory, durability=self._durability, checkpoints=self._checkpoints
        )

    def store(self) -> LocalStore:
        assert self._store is not None, "used before open"
        return self._store

    def save(self, state: WorkflowState) -> None:
        self.store().save(state)

    def load(self, workflow_id: str) -> WorkflowState:
        return self.store().load(workflow_id)

    def list_workflows(self) -> list[str]:
        return self.store().list_workflows()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


#: The state systems, by the names the log systems use for the same peer in the report.
STATE_SYSTEMS: dict[str, Callable[[], StatePeer]] = {
    "sqlite_full": SqliteStateRows,
    "json_rewrite": JsonStateFiles,
    "wfstate": WfstateStore,
}
