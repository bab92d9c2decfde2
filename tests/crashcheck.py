"""Crash exploration of log workloads on the simulated file system (DESIGN.md §10 tier 2).

A workload runs on a :class:`SimFileSystem`, noting after which operation each append was
acknowledged. Then, for every operation of the trace and every disk a crash there could leave,
the real recovery (``Log.open``) runs and the result is checked against the model:

* recovery succeeds (no exception);
* the records read are exactly the first ``n`` records appended, byte for byte (no garbage,
  no gap, no reordering);
* every record acknowledged at or before the crash point is among them, except where the
  durability level's contract allows the loss (``none``/``interval``: an OS-crash state may
  lose what was not synced; a process-crash state never);
* recovering a second time changes nothing on disk and reads the same records;
* the recovered log accepts a new append, which reads back after another reopen.

The same code feeds ``tests/test_crash_log.py`` (quick) and ``docs/reliability.md``
(``python -m tests.reliability``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.simfs import SimFileSystem
from wfstate.wal import Compression, Durability, Log

WAL = "/store/wal"


@dataclass
class Ack:
    lsn: int
    payload: bytes
    after_op: int  # the append had returned once this many operations were recorded
    durable_after_op: int | None = None  # under none/interval: op count once a sync covered it


@dataclass
class Workload:
    """A finished workload: its file system (with the trace) and what it appended."""

    name: str
    durability: Durability
    fs: SimFileSystem
    appended: list[bytes]
    acks: list[Ack]


@dataclass
class Outcome:
    """What the exploration found; every list is expected to stay empty."""

    workload: str
    states: Counter[str] = field(default_factory=Counter)
    crash_points: int = 0
    acknowledged_lost: list[str] = field(default_factory=list)
    wrong_records: list[str] = field(default_factory=list)
    recovery_errors: list[str] = field(default_factory=list)
    recover_twice_differs: list[str] = field(default_factory=list)
    append_after_recovery_fails: list[str] = field(default_factory=list)

    @property
    def total_states(self) -> int:
        return sum(self.states.values())

    @property
    def violations(self) -> int:
        return (
            len(self.acknowledged_lost)
            + len(self.wrong_records)
            + len(self.recovery_errors)
            + len(self.recover_twice_differs)
            + len(self.append_after_recovery_fails)
        )


def _payload(i: int) -> bytes:
    """Varied sizes (below the compression threshold to several KiB), half-compressible, so
    records span several 512 B and 4 KiB pieces and tear in interesting places."""
    size = (37, 300, 900, 2600, 5000)[i % 5]
    rng = random.Random(i)
    text = f"workflow w{i % 3} step {i}: " + "".join(
        f"{rng.getrandbits(32):08x} " for _ in range(size // 9 + 1)
    )
    return text.encode()[:size]


class SlowSyncFS(SimFileSystem):
    """A simulated disk whose syncs take a millisecond, so concurrent appends form groups."""

    def fdatasync(self, fd: int) -> None:
        time.sleep(0.001)
        super().fdatasync(fd)


def run_workload(
    name: str,
    *,
    durability: Durability = "always",
    appends: int = 30,
    threads: int = 1,
    sync_every: int = 0,
    handles: int = 1,
    fs: SimFileSystem | None = None,
) -> Workload:
    """Append ``appends`` records (split over ``threads``) to a fresh log on a simulated disk.

    ``sync_every``: call ``sync()`` after every that many appends (for ``none``/``interval``).
    ``handles``: open the log that many times and give thread ``k`` handle ``k % handles``,
    as separate processes would (writers' lock, catch-up, rotation by whoever holds the lock).
    Segments are small (4 KiB) so the workload rotates several times.
    """
    fs = fs if fs is not None else SimFileSystem()
    payloads = [_payload(i) for i in range(appends)]
    acks: list[Ack] = []
    lock = threading.Lock()
    logs = [
        Log.open(
            WAL,
            fs=fs,
            durability=durability,
            segment_size=4096,
            compression=Compression(codec="lz4" if threads == 1 else "zstd"),
            epoch=0x5EED,
        )
        for _ in range(handles)
    ]

    def worker(k: int) -> None:
        log = logs[k % handles]
        for i in range(k, appends, threads):
            lsn = log.append(payloads[i])
            with lock:
                acks.append(Ack(lsn, payloads[i], fs.op_count))
                if sync_every and len(acks) % sync_every == 0:
                    log.sync()
                    synced = fs.op_count
                    for a in acks:
                        if a.durable_after_op is None:
                            a.durable_after_op = synced

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for log in logs:
        log.close()
    # The log assigns LSNs in append order; with threads the payload of each LSN is the one
    # whose append returned it.
    by_lsn = {a.lsn: a.payload for a in acks}
    appended = [by_lsn[lsn] for lsn in sorted(by_lsn)]
    if durability == "always":
        for a in acks:
            a.durable_after_op = a.after_op
    return Workload(name, durability, fs, appended, acks)


def _records(log: Log) -> list[tuple[int, bytes]]:
    return [(r.lsn, r.payload) for r in log.read()]


def explore(workload: Workload, *, stride: int = 1) -> Outcome:
    """Check every crash state at every ``stride``-th crash point of the workload's trace."""
    out = Outcome(workload.name)
    expected = [(i + 1, p) for i, p in enumerate(workload.appended)]
    for at in workload.fs.crash_points()[::stride]:
        out.crash_points += 1
        for label, disk in workload.fs.crash_states(at):
            kind = label.split(":")[0]
            out.states[kind] += 1
            where = f"{workload.name} op {at} {label}"
            _check_state(workload, disk, at, kind, where, expected, out)
    return out


def _check_state(
    workload: Workload,
    disk: SimFileSystem,
    at: int,
    kind: str,
    where: str,
    expected: list[tuple[int, bytes]],
    out: Outcome,
) -> None:
    try:
        with Log.open(WAL, fs=disk) as log:
            got = _records(log)
    except Exception as exc:
        out.recovery_errors.append(f"{where}: {type(exc).__name__}: {exc}")
        return
    if got != expected[: len(got)]:
        out.wrong_records.append(f"{where}: records are not a prefix of what was appended")
        return
    process_crash = kind == "prefix"
    for ack in workload.acks:
        must_survive = ack.after_op <= at and (
            process_crash or (ack.durable_after_op is not None and ack.durable_after_op <= at)
        )
        if must_survive and ack.lsn > len(got):
            out.acknowledged_lost.append(f"{where}: acknowledged LSN {ack.lsn} lost")
            break
    before = disk.snapshot()
    try:
        with Log.open(WAL, fs=disk) as log:
            again = _records(log)
    except Exception as exc:
        out.recover_twice_differs.append(f"{where}: second recovery raised {exc!r}")
        return
    if again != got or disk.snapshot() != before:
        out.recover_twice_differs.append(f"{where}: second recovery changed the log")
    try:
        with Log.open(WAL, fs=disk) as log:
            lsn = log.append(b"after recovery")
        with Log.open(WAL, fs=disk) as log:
            final = _records(log)
        if lsn != len(got) + 1 or final != [*got, (lsn, b"after recovery")]:
            raise AssertionError(f"append after recovery read back as {final[-2:]}")
    except Exception as exc:
        out.append_after_recovery_fails.append(f"{where}: {exc!r}")


WorkloadFactory = Callable[[], Workload]

QUICK_WORKLOADS: dict[str, WorkloadFactory] = {
    "always, 1 thread, 80 appends, rotating": lambda: run_workload("always-1t", appends=80),
    "always, 4 threads (group commit), 80 appends": lambda: run_workload(
        "always-4t", appends=80, threads=4, fs=SlowSyncFS()
    ),
    "always, 2 handles x 2 threads (two processes' writers), 80 appends": lambda: run_workload(
        "always-2h", appends=80, threads=4, handles=2, fs=SlowSyncFS()
    ),
    "none, sync every 5 appends": lambda: run_workload(
        "none-sync5", durability="none", appends=60, sync_every=5
    ),
}


class NoDataSyncFS(SimFileSystem):
    """A broken disk: fdatasync returns without syncing (acknowledges before durability)."""

    def fdatasync(self, fd: int) -> None:
        pass


class NoDirSyncFS(SimFileSystem):
    """A broken disk: directory fsync returns without syncing (new segments may vanish)."""

    def fsync_dir(self, path: str) -> None:
        pass


BROKEN_VARIANTS: dict[str, Callable[[], SimFileSystem]] = {
    "fdatasync dropped (acknowledge before the data is durable)": NoDataSyncFS,
    "directory fsync dropped (new segment entries not durable)": NoDirSyncFS,
}
"""Deliberately broken file systems the simulator must catch (proof that it sees bugs)."""


def states_showing_the_bug(outcome: Outcome) -> int:
    """Crash states in which a broken variant lost an acknowledged record or broke recovery."""
    return len(outcome.acknowledged_lost) + len(outcome.recovery_errors)
